"""rancher-ipsec's shared state in etcd: the network's pre-shared key, and who
the IPsec hosts of a network are.

Both are keyed by the network's subnet, which every host of the network
shares (Docker's network IDs differ per host for local-scope networks; the
etcd IPAM keys its pools by subnet too). Layout under the prefix
(/rancher-cni), the subnet written as etcd_store writes pools
(10.42.0.0%2F16):

  ipsec/keys/<subnet>                 the pre-shared key: 32 random bytes in
                                      base64 (44 characters), written once
  ipsec/hosts/<underlay>/<subnet>     {"underlay", "block"}: a host of the
                                      network, its underlay address and its
                                      block of the subnet, under its lease

The key is created by the first host that needs it, in one transaction that
writes only when the key is absent; every host then reads what etcd holds,
so two hosts creating the network at once agree on one key. It lands in a
local file (mode 0600, written atomically) that the network's pskFile names:
`key_file`. Nothing logs it, and no error message carries it.

Each host writes only under its own prefix, named by its underlay address, so
etcd's RBAC can give a host's certificate write access to its entry alone
(docs/multi-host.md). `Agent` (run by `cnm-shim ipsec-registry`) registers
this host's networks under its lease and sets each network's peers
(`ipsecnet.set_peers`) to the other hosts registered for the same subnet; a
host that stops renewing its lease disappears from etcd within the TTL, and
its connection is unloaded on the others (its SAs and routes go).

Nothing read is trusted: a key that is not 44 characters of base64 for 32
bytes is refused; an entry whose underlay is not the host its key lives
under, not a unicast address, whose block is not a part of the subnet
(smaller than it), overlaps this host's block or a block registered earlier
(etcd's create revision), is skipped with one warning per key.
"""

import base64
import binascii
import dataclasses
import hashlib
import ipaddress
import json
import logging
import os
import random
import re
import secrets
import time
import urllib.parse

from . import files, ipsec_tunnels, ipsecnet
from .etcd_lease import LeasedKeys, WatchEnded, entry_object
from .errors import CNIError, INVALID_CONFIG, TRY_AGAIN_LATER


log = logging.getLogger("rancher-cni")

KEY_BYTES = 32
_KEY_TEXT = re.compile(rb"[A-Za-z0-9+/]{43}=")
MAX_VALUE_BYTES = 1024  # an honest host entry is under 80 bytes


def subnet_part(subnet: str) -> str:
    """The subnet as it appears in a key: canonical, '/' quoted (%2F)."""
    net = ipaddress.IPv4Network(subnet)
    return urllib.parse.quote(str(net), safe="")


# -- the pre-shared key -------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EtcdSettings:
    """How to reach etcd: the ipam section's etcdEndpoints, etcdPrefix and the
    client settings (etcd_store.client_for's `tls`, as sorted items)."""
    endpoints: tuple
    prefix: str = "/rancher-cni"
    tls: tuple = ()

    @classmethod
    def from_ipam(cls, ipam_config) -> "EtcdSettings":
        return cls(tuple(ipam_config.etcd_endpoints), ipam_config.etcd_prefix,
                   tuple(sorted((ipam_config.etcd_tls or {}).items())))

    def key(self, subnet: str) -> str:
        return f"{self.prefix.rstrip('/')}/ipsec/keys/{subnet_part(subnet)}"


def key_file(state_dir: str, subnet: str) -> str:
    """Where this host keeps the subnet's key taken from etcd."""
    digest = hashlib.sha256(str(ipaddress.IPv4Network(subnet)).encode()).hexdigest()[:16]
    return os.path.join(state_dir, "ipsec", "keys", f"{digest}.psk")


def parse_key(value) -> bytes:
    """The key as read from etcd, checked: 44 characters of base64 that
    decode to 32 bytes. The error never shows the value."""
    if isinstance(value, str):
        value = value.encode("utf-8", "replace")
    if not isinstance(value, bytes) or not _KEY_TEXT.fullmatch(value):
        raise ValueError(f"not {KEY_BYTES} bytes in base64 (44 characters of A-Z a-z 0-9 + / and one '=')")
    try:
        if len(base64.b64decode(value, validate=True)) != KEY_BYTES:
            raise ValueError(f"not {KEY_BYTES} bytes once decoded")
    except binascii.Error:
        raise ValueError("not valid base64") from None
    return value


def get_or_create_key(client, key: str) -> tuple:
    """(the key etcd holds at `key`, whether this call created it). A new one
    is written only if none is there (one transaction); what is returned is
    always what etcd holds afterwards, checked. A key already there is only
    read: a host whose etcd user may read the keys but not write them (RBAC,
    docs/multi-host.md) takes it."""
    from etcd3gw.utils import _encode
    found, created = client.get(key), False
    if not found:
        fresh = base64.b64encode(secrets.token_bytes(KEY_BYTES))
        reply = client.transaction({
            "compare": [{"key": _encode(key), "result": "EQUAL", "target": "VERSION", "version": 0}],
            "success": [{"request_put": {"key": _encode(key), "value": base64.b64encode(fresh).decode()}}],
            "failure": []})
        created = bool(reply.get("succeeded"))
        found = client.get(key)
    if not found:
        raise CNIError(TRY_AGAIN_LATER, f"ipsec: the pre-shared key at {key} vanished from etcd while it was read")
    try:
        return parse_key(found[0]), created
    except ValueError as exc:
        raise CNIError(INVALID_CONFIG, f"ipsec: the pre-shared key in etcd at {key} is refused: {exc}",
                       f"remove it (etcdctl del {key}) and create the network again to have a new one made") from None


def fetch_key(settings: EtcdSettings, subnet: str, path: str) -> None:
    """The subnet's key from etcd (made there if absent) into `path`, mode
    0600, written atomically. Any member will do; none answering is a
    TRY_AGAIN_LATER error naming the members, never the key."""
    import requests
    from etcd3gw.exceptions import Etcd3Exception
    from .ipam.etcd_store import client_for
    ipsec_tunnels.check_path(path, "PSK file")
    key = settings.key(subnet)
    errors = []
    for endpoint in settings.endpoints:
        try:
            value, created = get_or_create_key(client_for(endpoint, dict(settings.tls)), key)
        except Etcd3Exception as exc:
            if "permission denied" not in _etcd_reason(exc):
                errors.append(f"{endpoint}: {type(exc).__name__}: {_etcd_reason(exc)}")
                continue
            raise CNIError(INVALID_CONFIG, f"ipsec: etcd refused this host's user the pre-shared key of {subnet} "
                           f"at {key}: permission denied",
                           "a host whose etcd role may only read the keys needs the key made first: create the "
                           "network on a host allowed to write them, or put one there once: etcdctl put "
                           f"{key} \"$(head -c 32 /dev/urandom | base64)\" (docs/multi-host.md)") from None
        except (requests.RequestException, OSError) as exc:
            errors.append(f"{endpoint}: {type(exc).__name__}: {_etcd_reason(exc)}")
            continue
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        files.write_atomic(path, value + b"\n", 0o600)
        log.info("ipsec: the pre-shared key of %s %s etcd (%s)", subnet, "created in" if created else "taken from", key)
        return
    raise CNIError(TRY_AGAIN_LATER, f"ipsec: the pre-shared key of {subnet} could not be read from etcd",
                   "; ".join(errors)[:2000])


def _etcd_reason(exc) -> str:
    """etcd's own words (e.g. "permission denied"), which never echo a value we sent."""
    return str(getattr(exc, "detail_text", "") or exc)[:300].strip()


# -- the hosts of a network ---------------------------------------------------

class BadEntry(ValueError):
    """A registry entry that is not used; the message says why."""


@dataclasses.dataclass(frozen=True)
class Host:
    underlay: str
    block: ipaddress.IPv4Network
    revision: int


def parse_entry(root: str, key, value, revision, subnet: ipaddress.IPv4Network):
    """The entry at `key` as a Host of the network `subnet`; None when it
    belongs to another subnet; BadEntry saying why when it must not be used."""
    if not isinstance(key, str) or not key.startswith(root):
        raise BadEntry("not under the hosts' prefix")
    parts = key[len(root):].split("/")
    if len(parts) != 2:
        raise BadEntry("not <underlay>/<subnet>")
    host = urllib.parse.unquote(parts[0])
    try:
        ipaddress.IPv4Address(host)
        if ipsec_tunnels.check_unicast(host, "underlay") != host:
            raise BadEntry(f"host {host!r} is not written the canonical way")
    except (ValueError, CNIError):
        raise BadEntry(f"host {host!r} is not a unicast IPv4 underlay address") from None
    if parts[1] != subnet_part(str(subnet)):
        return None
    try:
        entry = entry_object(value, MAX_VALUE_BYTES)
    except ValueError as exc:
        raise BadEntry(str(exc)) from None
    if entry.get("underlay") != host:
        raise BadEntry(f"underlay {entry.get('underlay')!r} is not {host}, the host the key is registered under")
    try:
        block = ipaddress.IPv4Network(entry.get("block") if isinstance(entry.get("block"), str) else "")
    except ValueError:
        raise BadEntry(f"block {entry.get('block')!r} is not an IPv4 network such as 10.42.2.0/24") from None
    if str(block) != entry["block"]:
        raise BadEntry(f"block {entry['block']!r} is not written the canonical way ({block})")
    if not block.subnet_of(subnet) or block == subnet:
        raise BadEntry(f"block {block} is not a part of the network's subnet {subnet}")
    if isinstance(revision, str) and revision.isdigit():
        revision = int(revision)
    if type(revision) is not int or revision < 0:
        raise BadEntry(f"create revision {revision!r} is not a number")
    return Host(host, block, revision)


def select(root: str, rows, subnet: str, own_underlay: str, own_block: str) -> tuple:
    """({peer underlay: its block}, {key: why it is skipped}) from `rows`
    ((key, value, create revision) read under `root`) for this host's
    network. Per block the earliest registration wins; none may overlap this
    host's block."""
    subnet, own = ipaddress.IPv4Network(subnet), ipaddress.IPv4Network(own_block)
    bad, found = {}, []
    for key, value, revision in rows:
        try:
            entry = parse_entry(root, key, value, revision, subnet)
        except BadEntry as exc:
            bad[key] = str(exc)
            continue
        if entry is not None and entry.underlay != own_underlay:
            found.append((entry.revision, key, entry))
    peers = {}
    for _, key, entry in sorted(found, key=lambda item: (item[0], item[1])):
        if entry.block.overlaps(own):
            bad[key] = f"block {entry.block} overlaps this host's block {own}"
            continue
        holder = next((h for h, b in peers.items() if b.overlaps(entry.block)), None)
        if holder is not None:
            bad[key] = f"block {entry.block} overlaps {peers[holder]}, registered earlier by host {holder}"
            continue
        peers[entry.underlay] = entry.block
    return peers, bad


class Agent(LeasedKeys):
    """Registers this host's networks, and sets each one's peers from the
    registry, driven by an etcd watch on the hosts' prefix from the revision
    of the last full read (as the VXLAN agent: vxlan_registry.Agent). A full
    read happens only at start, when the watch ends (compacted, the member
    gone: then the next member), when a call fails, and every `resync`
    seconds; between changes the agent reads only its own network records."""
    LABEL = "ipsec registry"

    def __init__(self, connect, prefix: str, state_dir: str, ttl: int = 10, resync: float = 300.0):
        """`connect()` returns a client for the next etcd member (called again
        whenever the current one fails); nothing connects before this host has
        a network that takes its peers from etcd."""
        super().__init__(connect, ttl)
        self.root = f"{prefix.rstrip('/')}/ipsec/hosts/"
        self.state_dir = state_dir
        self.warned = {}         # key -> the reason last logged for it: once per key, not every round
        self.resync_every = resync
        self.rows = {}           # key -> (value, create revision): the registry as last read and watched
        self.watch = None
        self.next_resync = 0.0
        self.applied = None      # the records the peers were last set for

    def networks(self) -> list:
        """This host's networks that take their peers from the registry (ipsecnet's records)."""
        return ipsecnet.registry_records(self.state_dir)

    def _key(self, record: dict) -> str:
        return f"{self.root}{record['local']}/{subnet_part(record['subnet'])}"

    def register(self, records) -> None:
        """This host's entry per network, under our lease; stale ones deleted."""
        wanted = {self._key(r): json.dumps({"underlay": r["local"], "block": r["block"]}) for r in records}
        if not wanted and not self.registered:
            return
        self._publish(wanted)

    def peers(self, records, rows=None) -> dict:
        """{network name: [peer underlay addresses]} from the registry
        (`rows`: (key, value, create revision), the agent's as last read and
        watched; else read now), checked; each skipped key warned about once."""
        rows, out, bad = self._rows(self.root) if rows is None else rows, {}, {}
        for record in records:
            found, skipped = select(self.root, rows, record["subnet"], record["local"], record["block"])
            out[record["name"]] = sorted(found)
            bad.update(skipped)
        for key, reason in bad.items():
            if self.warned.get(key) != reason:
                log.warning("ipsec registry: skipping key %s: %s", key, reason)
        self.warned = bad
        return out

    def _set_peers(self, records) -> None:
        wanted = self.peers(records, [(k, v, r) for k, (v, r) in self.rows.items()])
        self.applied = records
        for record in records:
            peers = wanted[record["name"]]
            if sorted(record.get("peers", [])) != peers:
                log.info("ipsec registry: network %s: peers %s", record["name"], ", ".join(peers) or "none")
                try:
                    ipsecnet.set_peers(self.state_dir, record["name"], peers)
                except CNIError as exc:  # this network's peers stay; the others go on, the next round retries
                    log.warning("ipsec registry: network %s: %s", record["name"], exc)
                    self.applied = None

    def _stop_watch(self) -> None:
        if self.watch is not None:
            self.watch.stop()
            self.watch = None

    def resync(self, records) -> None:
        """Register, read the prefix in full, watch it from there, set the peers."""
        self._stop_watch()
        self.register(records)
        revision, rows = self._snapshot(self.root)
        own = tuple({f"{self.root}{r['local']}/" for r in records})
        leftovers = [key for key, _, _ in rows if own and key.startswith(own) and key not in self.registered]
        if leftovers:   # ours, from an earlier run of this agent (its lease still alive): not ours now
            log.info("%s: deleting %d key(s) of this host no longer wanted", self.LABEL, len(leftovers))
            self._publish(dict(self.registered), stale=leftovers)
        self.rows = {key: (value, created) for key, value, created in rows}
        self.watch = self._watch(self.root, revision + 1)
        self.next_resync = time.monotonic() + self.resync_every * random.uniform(0.9, 1.1)
        self._set_peers(records)

    def program(self) -> None:
        """Register, then each network's peers made what the registry says."""
        records = self.networks()
        if not records and not self.registered:
            self._stop_watch()   # no network here takes its peers from etcd: nothing to follow
            return
        if self.client is None:
            self.client = self.connect()
        if self.watch is None or time.monotonic() >= self.next_resync:
            self.resync(records)
            return
        self.register(records)   # writes only what changed; renews the lease when due
        try:
            changes = self.watch.take()
        except WatchEnded as exc:
            log.warning("ipsec registry: the watch ended (%s): resyncing", exc)
            if not str(exc).startswith("compacted"):
                self._reconnect()
            self.watch = None
            self.resync(records)
            return
        for key, row in changes.items():
            if row is None:
                self.rows.pop(key, None)
            else:
                self.rows[key] = row
        if changes or records != self.applied:
            self._set_peers(records)

    def _run(self, interval: float, stop) -> None:
        while not stop():
            try:
                self.program()
            except CNIError as exc:  # one network refused (e.g. charon): the next round tries again
                log.warning("ipsec registry: %s", exc)
            except Exception as exc:  # noqa: BLE001 - etcd away: keep the peers, try the next member
                log.warning("ipsec registry: %s: %s", type(exc).__name__, exc)
                self._stop_watch()   # the next round reads everything again
                self._reconnect()
            if self.watch is not None and self.watch.wait(interval):
                time.sleep(0.02)   # a burst of changes comes as one batch
            elif self.watch is None:
                time.sleep(interval)
