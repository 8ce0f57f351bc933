"""Published ports as Docker means them: host ports allocated, held and
released per endpoint, like libnetwork's port allocator.

Docker hands a remote driver `com.docker.network.portmap`: one entry per
published container port, with the host side as Docker's CLI parsed it:

  -p 8080:80         HostPort 8080, HostPortEnd 8080   that port
  -p 8000-8003:80    HostPort 8000, HostPortEnd 8003   ONE free port of the range
  -p 80, -P          HostPort 0                        one free port of the
                                                        ephemeral range
                                                        (net.ipv4.ip_local_port_range)

A port is free when no other endpoint holds it (same protocol; an address
overlaps another when they are equal or either is a wildcard: "", 0.0.0.0 and
:: all publish on every host address) and nothing on the host has bound it
(we try to bind it, as Docker's userland proxy would). Allocations live in a
table of their own in the shim's SQLite file, so they survive restarts; each
allocation is one IMMEDIATE transaction, so two endpoints asking at once for
the same range get different ports. Rows whose endpoint record is gone (a
kill between allocating and recording) are dropped at the next allocation.
"""

import contextlib
import dataclasses
import errno
import secrets
import socket

from cni_backend import addresses, sqlite_file

from .errors import DriverError

PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}
WILDCARDS = ("", "0.0.0.0", "::")
EPHEMERAL_RANGE_PATH = "/proc/sys/net/ipv4/ip_local_port_range"
DEFAULT_EPHEMERAL = (49153, 60999)  # libnetwork's fallback when the sysctl cannot be read
_SCHEMA = """
CREATE TABLE IF NOT EXISTS host_ports (
    protocol TEXT NOT NULL, host_ip TEXT NOT NULL, host_port INTEGER NOT NULL,
    owner TEXT NOT NULL, container_port INTEGER NOT NULL,
    PRIMARY KEY (protocol, host_ip, host_port));
CREATE INDEX IF NOT EXISTS host_ports_owner ON host_ports (owner);
"""
_BUSY_TIMEOUT_S = 30


@dataclasses.dataclass(frozen=True)
class Request:
    """One portmap entry: container port, host address, host port range (0, 0 = ephemeral)."""
    protocol: str
    container_port: int
    host_ip: str  # "" for every host address
    first: int
    last: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def where(self) -> str:
        ip = self.host_ip or "0.0.0.0"
        return f"[{ip}]" if ":" in ip else ip


def _host_ip(value, where: str) -> str:
    if value in (None, *WILDCARDS):
        return ""
    try:
        return str(addresses.address(value, f"{where}.HostIP"))
    except ValueError as error:
        raise DriverError(f"{error} (or empty for every address)") from None


def _int(entry: dict, key: str, where: str) -> int:
    value = entry.get(key) or 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise DriverError(f"{where}.{key} {value!r} must be an integer from 0 to 65535")
    return value


def requests(raw) -> list:
    """com.docker.network.portmap -> [Request], checked."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raise DriverError("com.docker.network.portmap must be a list of objects")
    found = []
    for n, entry in enumerate(raw):
        where = f"com.docker.network.portmap[{n}]"
        proto = PROTOCOLS.get(entry.get("Proto")) if not isinstance(entry.get("Proto"), bool) else None
        if proto is None:
            raise DriverError(f"{where}.Proto {entry.get('Proto')!r} is not one of 6 (tcp), 17 (udp), 132 (sctp)")
        port, first, last = (_int(entry, key, where) for key in ("Port", "HostPort", "HostPortEnd"))
        if not port:
            raise DriverError(f"{where}.Port must be a container port from 1 to 65535")
        last = last or first
        if last < first or (first == 0 and last):
            raise DriverError(f"{where}: HostPortEnd {last} is below HostPort {first}")
        found.append(Request(proto, port, _host_ip(entry.get("HostIP"), where), first, last))
    return found


def ephemeral_range(path: str = EPHEMERAL_RANGE_PATH) -> tuple:
    """The kernel's local port range, where Docker takes ports for -P and -p PORT."""
    try:
        with open(path) as f:
            low, high = (int(v) for v in f.read().split())
        if 1 <= low <= high <= 65535:
            return low, high
    except (OSError, ValueError):
        pass
    return DEFAULT_EPHEMERAL


def _overlap(a: str, b: str) -> bool:
    return a == "" or b == "" or a == b


def host_uses(protocol: str, host_ip: str, port: int) -> str | None:
    """Why the host cannot give `port` to a container (something has bound it,
    or the address is not the host's), or None. Found by binding it, as
    Docker's userland proxy would; in the plug-in's own (the host's) namespace."""
    targets = [("0.0.0.0", socket.AF_INET), ("::", socket.AF_INET6)] if not host_ip else \
        [(host_ip, socket.AF_INET6 if ":" in host_ip else socket.AF_INET)]
    kind, proto = {"tcp": (socket.SOCK_STREAM, 0), "udp": (socket.SOCK_DGRAM, 0),
                   "sctp": (socket.SOCK_STREAM, socket.IPPROTO_SCTP)}[protocol]
    for address, family in targets:
        try:
            sock = socket.socket(family, kind, proto)
        except OSError:
            continue  # no IPv6 or no SCTP here: nothing can listen there either
        with sock:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if kind == socket.SOCK_STREAM:  # as Go's net.Listen: TIME_WAIT leftovers do not count
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return "port is already in use by a process on the host"
                if exc.errno == errno.EADDRNOTAVAIL and host_ip:
                    return f"cannot assign requested address: {host_ip} is not an address of this host"
                # a wildcard family the host lacks, or a port we may not bind: cannot tell, so free
    return None


class PortAllocator:
    """Host ports held by endpoints, in `path` (the shim's state.db)."""

    def __init__(self, path: str, ephemeral=ephemeral_range, host_check=host_uses):
        self.path = path
        self.ephemeral = ephemeral
        self.host_check = host_check
        sqlite_file.connect(path, _SCHEMA, _BUSY_TIMEOUT_S).close()

    @contextlib.contextmanager
    def _db(self):
        db = sqlite_file.open_db(self.path, _BUSY_TIMEOUT_S)  # synchronous=FULL: Docker never asks again
        try:
            yield db
        finally:
            db.close()

    def allocate(self, owner: str, wanted: list) -> list:
        """Host ports for `owner`'s requests, all or none, replacing what it
        held; as CNI portMappings. Raises DriverError with Docker's wording."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                self._drop_orphans(db, owner)
                db.execute("DELETE FROM host_ports WHERE owner = ?", (owner,))
                mappings = [self._take(db, owner, request) for request in wanted]
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return mappings

    @staticmethod
    def _drop_orphans(db, owner: str) -> None:
        """Rows of endpoints whose record is gone (killed between allocating and
        recording, or removed while the plug-in was away)."""
        if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'objects'").fetchone():
            db.execute("DELETE FROM host_ports WHERE owner != ? AND owner NOT IN "
                       "(SELECT key FROM objects WHERE kind = 'endpoint')", (owner,))

    def _take(self, db, owner: str, request: Request) -> dict:
        first, last = (request.first, request.last) if request.first else self.ephemeral()
        held = {}
        for host_ip, port, holder in db.execute(
                "SELECT host_ip, host_port, owner FROM host_ports WHERE protocol = ? AND host_port BETWEEN ? AND ?",
                (request.protocol, first, last)):
            if _overlap(host_ip, request.host_ip):
                held[port] = holder
        where = request.where()
        if first == last:
            candidates = [first]
        else:  # a range: the first free port; ephemeral: any, starting anywhere
            start = 0 if request.first else secrets.randbelow(last - first + 1)
            size = last - first + 1
            candidates = [first + (start + i) % size for i in range(size)]
        reason = None
        for port in candidates:
            if port in held:
                continue
            reason = self.host_check(request.protocol, request.host_ip, port)
            if reason is None:
                db.execute("INSERT INTO host_ports (protocol, host_ip, host_port, owner, container_port) "
                           "VALUES (?, ?, ?, ?, ?)", (request.protocol, request.host_ip, port, owner,
                                                      request.container_port))
                mapping = {"hostPort": port, "containerPort": request.container_port, "protocol": request.protocol}
                if request.host_ip:
                    mapping["hostIP"] = request.host_ip
                return mapping
        if first == last:
            if first in held:
                raise DriverError(f"Bind for {where}:{first} failed: port is already allocated")
            raise DriverError(f"Bind for {where}:{first} failed: {reason} ({request.protocol})")
        raise DriverError(f"Bind for {where}:{first}-{last} failed: all ports are allocated "
                          f"({request.protocol}; held by other containers or by processes on the host)")

    def adopt(self, owner: str, mappings: list) -> None:
        """Hold what an endpoint published before allocations were recorded
        (a record written by an older version): its rules exist, so its ports
        are taken. Idempotent; a port someone holds already stays theirs."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                if not db.execute("SELECT 1 FROM host_ports WHERE owner = ?", (owner,)).fetchone():
                    db.executemany("INSERT OR IGNORE INTO host_ports (protocol, host_ip, host_port, owner, "
                                   "container_port) VALUES (?, ?, ?, ?, ?)",
                                   [(m["protocol"], m.get("hostIP", ""), m["hostPort"], owner, m["containerPort"])
                                    for m in mappings])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def release(self, owner: str) -> None:
        """What `owner` held is free again (nothing held: nothing to do)."""
        with self._db() as db:
            db.execute("DELETE FROM host_ports WHERE owner = ?", (owner,))

    def held(self, owner: str | None = None) -> list:
        """[(protocol, host_ip, host_port, container_port, owner)], by port."""
        sql = "SELECT protocol, host_ip, host_port, container_port, owner FROM host_ports"
        with self._db() as db:
            rows = db.execute(sql + (" WHERE owner = ?" if owner else "") + " ORDER BY host_port, protocol",
                              (owner,) if owner else ()).fetchall()
        return rows


def docker_portmap(mappings: list) -> list:
    """CNI portMappings -> com.docker.network.portmap (what Docker's bridge
    driver answers in EndpointOperInfo), with the host port chosen."""
    numbers = {name: number for number, name in PROTOCOLS.items()}
    return [{"Proto": numbers[m["protocol"]], "IP": "", "Port": m["containerPort"], "HostIP": m.get("hostIP", ""),
             "HostPort": m["hostPort"], "HostPortEnd": m["hostPort"]} for m in mappings or []]
