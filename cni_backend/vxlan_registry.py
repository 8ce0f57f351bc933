"""Who is where on a VXLAN network, shared through etcd.

Each host runs `cnm-shim vxlan-agent`. The plug-in only writes a local file per
container (its IPs and MAC) under `stateDir/vxlan/<vni>/`; the agent registers
the host's VTEP and those containers in etcd under the host's lease, and
programs, from everyone else's registrations, the VTEP's flood entries (one per
remote host: broadcast and ARP), FDB entries (remote MAC -> remote VTEP) and
neighbour entries (ARP answered locally), so unicast is never flooded. A host
that dies stops renewing its lease: its keys expire and every other host drops
its entries. A host that restarts registers again from its local files.

Layout: each host writes only under its own prefix, named by its VTEP address,
so etcd's RBAC can give a host's certificate write access to its keys alone
(docs/multi-host.md):

  <prefix>/vxlan/hosts/<vtep>/<vni>/vtep               {"vtep": "<vtep>"}
  <prefix>/vxlan/hosts/<vtep>/<vni>/endpoints/<ip>     {"ip", "mac", "vtep"}

Nothing read is trusted (`parse_entry`, `select`): an entry whose VTEP is not
the host its key lives under, an address outside the network's subnets or
equal to its network, broadcast or gateway address, a MAC that is not unicast,
or a claim on an address or MAC that another host (or this one) already holds
is skipped with one warning per key. The earliest registration of an address
or MAC wins (etcd's create revision), so a later entry never takes over an
honest host's container. The subnets come from the local side: the addresses
of the bridge the VTEP is enslaved to and the network record that
`vxlannet.ensure` writes (`record_network`).

The previous layout (`<prefix>/vxlan/<vni>/vteps|endpoints/...`, no host
prefix) is not read: every key in it was bound to its agent's lease, so it
vanishes within the TTL once that agent stops; an upgraded host and one not yet
upgraded do not see each other's containers until both run this version.
"""

import dataclasses
import ipaddress
import json
import logging
import os
import random
import socket
import time
import urllib.parse

from . import addresses, files
from .etcd_lease import LeasedKeys, WatchEnded, entry_object
from .net import neigh_batch, netlink, vxlan_guard


log = logging.getLogger("rancher-cni")

MAX_VALUE_BYTES = 1024  # an honest entry is under 150 bytes
NETWORK_RECORD = "network.json"


def local_dir(state_dir: str, vni: int) -> str:
    return os.path.join(state_dir, "vxlan", str(vni))


def _write(directory: str, name: str, content: dict, durable: bool = True) -> None:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    files.write_atomic(os.path.join(directory, name), json.dumps(content), 0o600, durable)


def record_endpoint(state_dir: str, vni: int, name: str, ips: list, mac: str) -> None:
    # not synced: a power loss takes the container with it (files.py)
    _write(local_dir(state_dir, vni), f"{name}.json", {"ips": ips, "mac": mac}, durable=False)


def forget_endpoint(state_dir: str, vni: int, name: str) -> None:
    try:
        os.unlink(os.path.join(local_dir(state_dir, vni), f"{name}.json"))
    except FileNotFoundError:
        pass


def record_network(state_dir: str, vni: int, subnets) -> None:
    """The network's subnets and gateways ([(subnet, gateway or None)]), for the
    agent to check remote entries against before any container is here."""
    wanted = {"subnets": [{"subnet": str(net), "gateway": str(gw) if gw else None} for net, gw in subnets]}
    path = os.path.join(local_dir(state_dir, vni), NETWORK_RECORD)
    try:
        with open(path) as f:
            if json.load(f) == wanted:
                return
    except (OSError, ValueError):
        pass
    _write(local_dir(state_dir, vni), NETWORK_RECORD, wanted)


def local_endpoints(state_dir: str, vni: int) -> dict:
    """ip -> mac of this host's containers on the network (a file that is not
    a record of ours is passed over)."""
    found = {}
    directory = local_dir(state_dir, vni)
    for name in os.listdir(directory) if os.path.isdir(directory) else []:
        if name.endswith(".json") and name != NETWORK_RECORD:
            try:
                with open(os.path.join(directory, name)) as f:
                    entry = json.load(f)
                found.update({str(ipaddress.ip_interface(ip).ip): parse_mac(entry["mac"]) for ip in entry["ips"]})
            except (OSError, ValueError, TypeError, KeyError, AttributeError):
                continue
    return found


# -- what an entry must be ------------------------------------------------

class BadEntry(ValueError):
    """A registry entry that is not programmed; the message says why."""


@dataclasses.dataclass(frozen=True)
class Subnet:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None

    def refuses(self, ip) -> str | None:
        """Why `ip` (in this subnet) cannot be a container's address, or None."""
        if ip == self.network.network_address:
            return f"{ip} is the network address of {self.network}"
        if self.network.version == 4 and ip == self.network.broadcast_address:
            return f"{ip} is the broadcast address of {self.network}"
        if ip == self.gateway:
            return f"{ip} is the gateway of {self.network}"
        return None


@dataclasses.dataclass(frozen=True)
class Vtep:
    host: str          # the VTEP address: the host the key lives under
    revision: int      # etcd's create revision: the earlier registration wins


@dataclasses.dataclass(frozen=True)
class Endpoint:
    ip: str
    mac: str
    vtep: str
    revision: int


def parse_mac(text) -> str:
    """A unicast, non-zero MAC in the kernel's notation (lower case), or ValueError."""
    parts = text.split(":") if isinstance(text, str) else []
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts):
        raise ValueError(f"MAC {text!r} is not six hex pairs such as 02:42:0a:2a:00:05")
    octets = bytes(int(p, 16) for p in parts)
    if octets[0] & 1:
        raise ValueError(f"MAC {text} is a multicast or broadcast address, not a container's")
    if not any(octets):
        raise ValueError(f"MAC {text} is all zeros")
    return ":".join(parts).lower()


_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def _vtep_address(text: str) -> str:
    try:
        ip = ipaddress.IPv4Address(text)
    except ValueError:
        raise BadEntry(f"host {text!r} is not an IPv4 VTEP address") from None
    if str(ip) != text or ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip == _BROADCAST:
        raise BadEntry(f"host {text!r} is not a unicast VTEP address")
    return text


def parse_entry(root: str, key: str, value, revision, vni: int, subnets):
    """The entry at `key` (under `root`, the hosts' prefix) as a Vtep or an
    Endpoint of network `vni`; None when it belongs to another VNI; BadEntry
    saying why when it must not be programmed."""
    if not isinstance(key, str) or not key.startswith(root):
        raise BadEntry("not under the hosts' prefix")
    parts = key[len(root):].split("/")
    if len(parts) < 3:
        raise BadEntry("not <vtep>/<vni>/vtep or <vtep>/<vni>/endpoints/<ip>")
    host = _vtep_address(urllib.parse.unquote(parts[0]))
    if not parts[1].isdigit() or str(int(parts[1])) != parts[1]:
        raise BadEntry(f"VNI {parts[1]!r} is not a number")
    if int(parts[1]) != vni:
        return None
    try:
        entry = entry_object(value, MAX_VALUE_BYTES)
    except ValueError as exc:
        raise BadEntry(str(exc)) from None
    if entry.get("vtep") != host:
        raise BadEntry(f"vtep {entry.get('vtep')!r} is not {host}, the host the key is registered under")
    if isinstance(revision, str) and revision.isdigit():
        revision = int(revision)
    if type(revision) is not int or revision < 0:
        raise BadEntry(f"create revision {revision!r} is not a number")
    if parts[2:] == ["vtep"]:
        return Vtep(host, revision)
    if len(parts) != 4 or parts[2] != "endpoints":
        raise BadEntry("not <vtep>/<vni>/vtep or <vtep>/<vni>/endpoints/<ip>")
    return Endpoint(_endpoint_ip(urllib.parse.unquote(parts[3]), entry.get("ip"), subnets),
                    _endpoint_mac(entry.get("mac")), host, revision)


def _endpoint_ip(in_key: str, in_value, subnets) -> str:
    if in_value != in_key:
        raise BadEntry(f"ip {in_value!r} is not {in_key!r}, the address in the key")
    try:
        ip = addresses.address(in_key, "ip")  # no scope ID: str() keeps it, so it passed as canonical
    except ValueError as exc:
        raise BadEntry(str(exc)) from None
    if str(ip) != in_key:
        raise BadEntry(f"ip {in_key!r} is not written the canonical way ({ip})")
    home = [s for s in subnets if s.network.version == ip.version and ip in s.network]
    if not home:
        known = ", ".join(str(s.network) for s in subnets) or "none known on this host yet"
        raise BadEntry(f"ip {ip} is outside the network's subnets ({known})")
    reason = next(filter(None, (s.refuses(ip) for s in home)), None)
    if reason:
        raise BadEntry(f"ip {reason}")
    return in_key


def _endpoint_mac(text) -> str:
    try:
        return parse_mac(text)
    except ValueError as exc:
        raise BadEntry(str(exc)) from None


@dataclasses.dataclass
class View:
    """What the registry says, once checked: what to program."""
    vteps: set          # remote VTEP addresses
    endpoints: dict     # ip -> Endpoint, remote only
    bad: dict           # key -> why it is skipped


def select(root: str, rows, vni: int, subnets, own_vtep: str, local: dict, parse=parse_entry) -> View:
    """The programmable view of `rows` ((key, value, create revision) read
    under `root`) for this host (`own_vtep`, `local`: ip -> mac of its own
    containers). Per address and per MAC the earliest registration wins; a
    claim on this host's own containers never does. `parse`: parse_entry, or
    one that remembers what it parsed (the agent's)."""
    vteps, bad, parsed = set(), {}, []
    for key, value, revision in rows:
        try:
            entry = parse(root, key, value, revision, vni, subnets)
        except BadEntry as exc:
            bad[key] = str(exc)
            continue
        if isinstance(entry, Vtep):
            if entry.host != own_vtep:
                vteps.add(entry.host)
        elif isinstance(entry, Endpoint) and entry.vtep != own_vtep:
            parsed.append((entry.revision, key, entry))
    endpoints, macs = {}, {mac: own_vtep for mac in local.values()}
    for _, key, entry in sorted(parsed, key=lambda item: (item[0], item[1])):
        if entry.ip in local:
            bad[key] = f"ip {entry.ip} belongs to a container on this host"
        elif entry.ip in endpoints:
            bad[key] = f"ip {entry.ip} is already registered by host {endpoints[entry.ip].vtep}"
        elif macs.setdefault(entry.mac, entry.vtep) != entry.vtep:
            holder = macs[entry.mac]
            bad[key] = f"MAC {entry.mac} is already registered by " + (
                "a container on this host" if holder == own_vtep else f"host {holder}")
        else:
            endpoints[entry.ip] = entry
    return View(vteps, endpoints, bad)


def local_subnets(state_dir: str, vni: int, bridge_addresses=()) -> list:
    """The network's subnets on this host: the addresses of the VTEP's bridge
    (each its subnet's gateway) and the network record (`record_network`)."""
    found = {}
    for iface in bridge_addresses:
        found.setdefault(iface.network, set()).add(iface.ip)
    try:
        with open(os.path.join(local_dir(state_dir, vni), NETWORK_RECORD)) as f:
            for item in json.load(f)["subnets"]:
                gateways = found.setdefault(ipaddress.ip_network(item["subnet"]), set())
                if item.get("gateway"):
                    gateways.add(ipaddress.ip_address(item["gateway"]))
    except (OSError, ValueError, TypeError, KeyError):
        pass
    return [Subnet(net, gw) for net, gateways in found.items() for gw in (sorted(gateways) or [None])]


class Agent(LeasedKeys):
    """Registers this host, and programs the VTEP from everyone else's
    registrations, driven by an etcd watch on the hosts' prefix from the
    revision of the last full read: a change in the registry reaches the
    kernel as the few netlink calls it needs, with no read of etcd and no dump
    of the kernel. A full resync (read the prefix, dump the flood list, FDB
    and neighbours, reconcile) happens only at start, when the watch ends
    (its revision compacted: ErrCompacted; the member gone, then the next
    member is used), when a call fails, and every `resync` seconds as a safety
    net. Between changes the agent only renews its lease and looks at its
    local records' directory (one stat, at most every 0.25 s); the
    network's subnets are read again when those records change."""

    # the per-peer rules' guard only (no ipset): the ipset's takes no lock and has no exec
    GUARD_SPACING = 0.5   # seconds: new peers enter the UDP guard at most this often
    GUARD_LOCK_WAIT = 0.2  # seconds: the firewall lock is waited for at most this long per try

    def __init__(self, connect, prefix: str, vni: int, vtep_ip: str, state_dir: str, ttl: int = 10,
                 static_peers=(), port: int = 4789, resync: float = 300.0):
        """`connect()` returns a client for the next etcd member (called again
        whenever the current one fails)."""
        super().__init__(connect, ttl, client=connect())
        self.root = f"{prefix.rstrip('/')}/vxlan/hosts/"
        self.base = f"{self.root}{vtep_ip}/{vni}"   # this host's keys
        self.vni, self.vtep_ip, self.state_dir, self.port = vni, vtep_ip, state_dir, port
        self.static_peers = set(static_peers)
        self.LABEL = f"vxlan agent (VTEP {vtep_ip})"
        self.warned = {}         # key -> the reason last logged for it: once per key, not every round
        self.resync_every = resync
        self.rows = {}           # key -> (value, create revision): the registry as last read and watched
        self.watch = None        # PrefixWatch from the revision of the last full read
        self.next_resync = 0.0
        self.parsed, self.parsed_for = {}, None   # (key, value, revision) -> parse result, for these subnets
        self.local, self.local_seen = {}, None    # our containers (ip -> mac), and the records' directory stamp
        self.subnets, self.subnets_stale = [], True
        self.programmed = None   # (vtep index, flood set, {mac: vtep}, {ip: mac}, guard's peers) as last made
        self.current = None      # (View, {mac: vtep} it holds, subnets, local) kept up to date by the watch, or None
        self.guard_at, self.guard_due = 0.0, None   # the guard's last rewrite; when new peers are due in it
        self.resyncs = 0

    def _key(self, kind: str, name: str) -> str:
        return f"{self.base}/{kind}/{urllib.parse.quote(name, safe='')}"

    def register(self) -> None:
        """Our VTEP and our containers, under our lease; stale ones deleted."""
        self.local = local_endpoints(self.state_dir, self.vni)
        wanted = {f"{self.base}/vtep": json.dumps({"vtep": self.vtep_ip})}
        for ip, mac in self.local.items():
            wanted[self._key("endpoints", ip)] = json.dumps({"ip": ip, "mac": mac, "vtep": self.vtep_ip})
        self._publish(wanted)

    def _parse(self, root, key, value, revision, vni, subnets):
        """parse_entry, remembered per (key, value, revision) while the subnets
        stay (`view` forgets what was parsed for others)."""
        memo = (key, bytes(value) if isinstance(value, (bytes, bytearray)) else value, revision)
        try:
            hash(memo)
        except TypeError:   # not what etcd hands out: parsed (and refused) every time
            return parse_entry(root, key, value, revision, vni, subnets)
        if memo not in self.parsed:
            try:
                self.parsed[memo] = parse_entry(root, key, value, revision, vni, subnets)
            except BadEntry as exc:
                self.parsed[memo] = exc
        found = self.parsed[memo]
        if isinstance(found, BadEntry):
            raise found
        return found

    def view(self, subnets, rows=None) -> View:
        """The registry, checked: `rows` ((key, value, create revision), the
        agent's: as last read and watched), or read now from etcd; each
        skipped key warned about once."""
        if rows is None:
            rows, self.local = self._rows(self.root), local_endpoints(self.state_dir, self.vni)
        if self.parsed_for != subnets:   # once per view, not per entry: comparing subnets is not free
            self.parsed, self.parsed_for = {}, list(subnets)
        view = select(self.root, rows, self.vni, subnets, self.vtep_ip, self.local, parse=self._parse)
        if len(self.parsed) > 2 * len(self.rows) + 64:   # entries no longer in the registry
            live = {(k, bytes(v) if isinstance(v, (bytes, bytearray)) else v, r) for k, (v, r) in self.rows.items()}
            self.parsed = {m: e for m, e in self.parsed.items() if m in live}
        for key, reason in view.bad.items():
            if self.warned.get(key) != reason:
                log.warning("vxlan agent: skipping registry key %s: %s", key, reason)
        self.warned = dict(view.bad)
        return view

    def _kept(self, key, value, revision) -> bool:
        """False for another network's entry (another VNI under a sound host):
        never read again, so a busy network does not cost this one anything."""
        try:
            return parse_entry(self.root, key, value, revision, self.vni, []) is not None
        except BadEntry:
            return True   # judged (and warned about) with the subnets, in view()

    def _follow(self, changes: dict) -> bool:
        """The current view brought up to date with `changes` (from the
        watch, not yet in self.rows) without selecting from every row again;
        False when that cannot be done for sure (then select() does it): a
        changed value, an entry that is refused, one that claims an address
        or MAC someone holds, or the removal of a winner while some entry
        is refused (it may win now). What is followed here is what select()
        would find: a new key's create revision is later than every other's,
        so it wins exactly when nobody holds its address and MAC."""
        if self.current is None:
            return False
        view, macs, subnets, _ = self.current
        if len(self.parsed) > 2 * len(self.rows) + 64:
            return False   # view() prunes what it remembers
        removed = [key for key, row in changes.items() if row is None]
        try:
            added = sorted((int(row[1]), key) for key, row in changes.items() if row is not None)
        except (TypeError, ValueError):
            return False   # no create revision to order by: select() refuses the entry
        for key in removed:
            old = self.rows.get(key)
            if old is None:
                continue
            if key in view.bad:
                del view.bad[key]
                self.warned.pop(key, None)
                continue
            try:
                entry = self._parse(self.root, key, old[0], old[1], self.vni, subnets)
            except BadEntry:
                return False
            if isinstance(entry, Vtep):
                view.vteps.discard(entry.host)
            elif isinstance(entry, Endpoint) and view.endpoints.get(entry.ip) == entry:
                if view.bad:
                    return False
                del view.endpoints[entry.ip]
                if not any(e.mac == entry.mac for e in view.endpoints.values()) and entry.mac not in self.local.values():
                    macs.pop(entry.mac, None)
        for _, key in added:
            if key in self.rows:
                return False
            value, revision = changes[key]
            try:
                entry = self._parse(self.root, key, value, revision, self.vni, subnets)
            except BadEntry:
                return False
            if isinstance(entry, Vtep):
                if entry.host != self.vtep_ip:
                    view.vteps.add(entry.host)
            elif isinstance(entry, Endpoint) and entry.vtep != self.vtep_ip:
                if entry.ip in self.local or entry.ip in view.endpoints or macs.get(entry.mac, entry.vtep) != entry.vtep:
                    return False
                view.endpoints[entry.ip] = entry
                macs[entry.mac] = entry.vtep
        return True

    def _local_stamp(self):
        try:
            st = os.stat(local_dir(self.state_dir, self.vni))
            return (st.st_ino, st.st_mtime_ns)
        except FileNotFoundError:
            return None

    def resync(self) -> None:
        """Everything again from scratch: register, read the prefix, watch it
        from there, and make the kernel's tables (dumped) what it says."""
        if self.watch is not None:
            self.watch.stop()
            self.watch = None
        self.resyncs += 1
        self.local_seen = self._local_stamp()
        self.register()
        revision, rows = self._snapshot(self.root)
        leftovers = [key for key, _, _ in rows if key.startswith(f"{self.base}/") and key not in self.registered]
        if leftovers:   # ours, from an earlier run of this agent (its lease still alive): not ours now
            log.info("%s: deleting %d key(s) of this host no longer wanted", self.LABEL, len(leftovers))
            self._publish(dict(self.registered), stale=leftovers)
        self.rows = {key: (value, created) for key, value, created in rows if self._kept(key, value, created)}
        self.watch = self._watch(self.root, revision + 1)
        self.programmed = self.current = None
        self.program()
        self.next_resync = time.monotonic() + self.resync_every * random.uniform(0.9, 1.1)

    def _vtep_index(self):
        """The VTEP's ifindex in our namespace (one ioctl), None when it is not there."""
        try:
            return socket.if_nametoindex(f"vtep{self.vni}")
        except OSError:
            return None

    def program(self) -> None:
        """The kernel's VTEP tables made equal to what the registry says:
        dumped and reconciled after a resync, else only the differences from
        what was last programmed, written in one netlink batch. The UDP guard
        follows the set of peers: a peer that left is taken out at once, and
        so are new ones where the guard's peers are an ipset (a netlink
        element add each); with one iptables rule per peer instead, new ones
        wait until the guard was rewritten GUARD_SPACING ago (a burst of
        arrivals, as when many hosts start, is then one rewrite, not one per
        host). A peer is given its flood
        entry and its endpoints' entries only once the guard lets it in,
        so nothing is programmed that could not answer."""
        index = self._vtep_index()
        if index is None:
            self.programmed = None
            return  # no container here yet: the network is not set up on this host
        if self.programmed is not None and self.programmed[0] != index:
            self.programmed = None   # the VTEP was made again: its tables are new
        dumped = None
        if self.programmed is None or self.subnets_stale:   # the network record may have changed
            with netlink.socket_in() as host:
                vtep = netlink.link(host, f"vtep{self.vni}")
                if vtep is None:
                    self.programmed = None
                    return
                if vtep["index"] != index:
                    index, self.programmed = vtep["index"], None
                self.subnets_stale = False
                bridge = vtep.get("master")
                self.subnets = local_subnets(self.state_dir, self.vni,
                                             netlink.addresses(host, bridge) if bridge else ())
                if self.programmed is None:
                    dumped = (netlink.flood_peers(host, index), netlink.fdb_entries(host, index),
                              netlink.neighbours(host, index))
        if self.current is None or self.current[2] != self.subnets or self.current[3] != self.local:
            view = self.view(self.subnets, [(key, value, rev) for key, (value, rev) in self.rows.items()])
            macs = {mac: self.vtep_ip for mac in self.local.values()}
            macs.update((e.mac, e.vtep) for e in view.endpoints.values())
            self.current = (view, macs, list(self.subnets), dict(self.local))
        view = self.current[0]
        peers = (view.vteps | self.static_peers) - {self.vtep_ip}
        now = time.monotonic()
        spacing = 0.0 if vxlan_guard.uses_set() else self.GUARD_SPACING
        if self.programmed is None:
            vxlan_guard.ensure(self.vni, self.port, peers)  # before the entries: only these may send to us
            guarded, self.guard_at = set(peers), now
            current, current_fdb, present = dumped
        else:
            _, current, current_fdb, present, guarded = self.programmed
            if guarded - peers or (peers - guarded and now >= self.guard_at + spacing):
                # not waiting long for the firewall's lock (per-peer rules only): the loop goes on meanwhile
                if vxlan_guard.update(self.vni, self.port, guarded, peers, lock_wait=self.GUARD_LOCK_WAIT) is None:
                    self.guard_at = now - spacing + self.GUARD_LOCK_WAIT   # busy: again shortly
                else:
                    guarded, self.guard_at = set(peers), now
        # a peer not yet in the guard gets no entries yet either: whatever the
        # kernel says is reachable can also answer
        flood = peers & guarded
        self.guard_due = self.guard_at + spacing if guarded != peers else None
        remote = {ip: e for ip, e in view.endpoints.items() if e.vtep in flood}
        wanted_fdb = {e.mac: e.vtep for e in remote.values()}
        wanted_neigh = {ip: e.mac for ip, e in remote.items()}
        self.programmed = None   # until every change below went through
        batch = neigh_batch.Batch(index)
        for peer in flood - current:
            batch.flood_peer(peer, True)
        for peer in current - flood:
            batch.flood_peer(peer, False)
        for mac in current_fdb:
            if mac not in wanted_fdb:
                batch.fdb(mac, None)
        for mac, dst in wanted_fdb.items():
            if current_fdb.get(mac) != dst:
                batch.fdb(mac, dst)
        for ip, mac in present.items():
            if wanted_neigh.get(ip) != mac:
                batch.neighbour(ip, None)
        for ip, mac in wanted_neigh.items():
            if present.get(ip) != mac:
                batch.neighbour(ip, mac)
        batch.apply()
        self.programmed = (index, flood, wanted_fdb, wanted_neigh, guarded)

    def step(self) -> None:
        """One wake-up: a resync when due, else the lease, our own records
        and what the watch brought."""
        if self.watch is None or time.monotonic() >= self.next_resync:
            self.resync()
            return
        lease = self.lease
        stamp = self._local_stamp()
        self._ensure_lease()
        changed = False
        if stamp != self.local_seen or self.lease is not lease:   # a container came or went, or a new lease
            self.local_seen = stamp
            self.subnets_stale = True
            self.register()
            changed = True
        try:
            changes = self.watch.take()
        except WatchEnded as exc:
            log.warning("vxlan agent: the registry's watch ended (%s): resyncing", exc)
            if not str(exc).startswith("compacted"):
                self._reconnect()   # the member is gone or refused us: the next one
            self.watch = None
            self.resync()
            return
        changes = {key: row for key, row in changes.items() if row is None or self._kept(key, *row)}
        if changes and not self._follow(changes):
            self.current = None   # the next program() selects from every row again
        for key, row in changes.items():
            if row is None:
                self.rows.pop(key, None)
            else:
                self.rows[key] = row
        if changes or changed or self.programmed is None or (
                self.guard_due is not None and time.monotonic() >= self.guard_due):
            self.program()

    def _run(self, interval: float, stop) -> None:
        while not stop():
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - etcd away: keep the tables, try the next member
                log.warning("vxlan agent: %s: %s", type(exc).__name__, exc)
                if self.watch is not None:
                    self.watch.stop()
                    self.watch = None   # the next round resyncs in full
                self._reconnect()
                time.sleep(interval)
                continue
            # our own records are looked at (one stat) 4 times a second at most
            # often, the lease every interval; a change in the registry wakes us at once
            wait = min(interval, 0.25)
            if self.guard_due is not None:   # new peers waiting for the guard: wake up when they are due
                wait = max(0.01, min(wait, self.guard_due - time.monotonic()))
            if self.watch is not None and self.watch.wait(wait):
                time.sleep(0.05)   # a burst of changes comes as one batch
            elif self.watch is None:
                time.sleep(interval)
