"""Who is where on a VXLAN network, shared through etcd.

Each host runs `cnm-shim vxlan-agent`. The plug-in only writes a local file per
container (its IPs and MAC) under `stateDir/vxlan/<vni>/`; the agent registers
the host's VTEP and those containers in etcd under the host's lease, and
programs, from everyone else's registrations, the VTEP's flood entries (one per
remote host: broadcast and ARP), FDB entries (remote MAC -> remote VTEP) and
neighbour entries (ARP answered locally), so unicast is never flooded. A host
that dies stops renewing its lease: its keys expire and every other host drops
its entries. A host that restarts registers again from its local files.
"""

import json
import logging
import os
import time
import urllib.parse

from . import files
from .net import netlink

try:
    from etcd3gw.lease import Lease
except ImportError:  # only the agent needs it
    Lease = None

log = logging.getLogger("rancher-cni")


def local_dir(state_dir: str, vni: int) -> str:
    return os.path.join(state_dir, "vxlan", str(vni))


def record_endpoint(state_dir: str, vni: int, name: str, ips: list, mac: str) -> None:
    directory = local_dir(state_dir, vni)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    files.write_atomic(os.path.join(directory, f"{name}.json"), json.dumps({"ips": ips, "mac": mac}), 0o600)


def forget_endpoint(state_dir: str, vni: int, name: str) -> None:
    try:
        os.unlink(os.path.join(local_dir(state_dir, vni), f"{name}.json"))
    except FileNotFoundError:
        pass


def local_endpoints(state_dir: str, vni: int) -> dict:
    """ip -> mac of this host's containers on the network."""
    found = {}
    directory = local_dir(state_dir, vni)
    for name in os.listdir(directory) if os.path.isdir(directory) else []:
        if name.endswith(".json"):
            try:
                with open(os.path.join(directory, name)) as f:
                    entry = json.load(f)
            except (OSError, ValueError):
                continue
            for ip in entry["ips"]:
                found[ip.split("/")[0]] = entry["mac"]
    return found


class Agent:
    def __init__(self, connect, prefix: str, vni: int, vtep_ip: str, state_dir: str, ttl: int = 10,
                 static_peers=()):
        """`connect()` returns a client for the next etcd member (called again
        whenever the current one fails)."""
        self.connect = connect
        self.client = connect()
        self.base = f"{prefix.rstrip('/')}/vxlan/{vni}"
        self.vni, self.vtep_ip, self.state_dir, self.ttl = vni, vtep_ip, state_dir, ttl
        self.static_peers = set(static_peers)
        self.lease = None
        self.registered = {}     # key -> value as last written under the current lease
        self.renewed = 0.0

    def _key(self, kind: str, name: str) -> str:
        return f"{self.base}/{kind}/{urllib.parse.quote(name, safe='')}"

    def _ensure_lease(self) -> None:
        if self.lease is not None and time.monotonic() - self.renewed < self.ttl / 3:
            return
        if self.lease is not None and self.lease.refresh() > 0:
            self.renewed = time.monotonic()
            return
        self.lease = self.client.lease(self.ttl)  # first start, or the old one expired
        self.renewed = time.monotonic()
        self.registered = {}
        log.info("vxlan agent: lease %s (ttl %ss) for VTEP %s", self.lease.id, self.ttl, self.vtep_ip)

    def register(self) -> None:
        """Our VTEP and our containers, under our lease; stale ones deleted."""
        self._ensure_lease()
        wanted = {self._key("vteps", self.vtep_ip): json.dumps({"vtep": self.vtep_ip})}
        for ip, mac in local_endpoints(self.state_dir, self.vni).items():
            wanted[self._key("endpoints", ip)] = json.dumps({"ip": ip, "mac": mac, "vtep": self.vtep_ip})
        for key, value in wanted.items():
            if self.registered.get(key) != value:
                self.client.put(key, value, lease=self.lease)
        for key in set(self.registered) - set(wanted):
            self.client.delete(key)
        self.registered = wanted

    def _everyone(self) -> tuple:
        vteps, endpoints = set(), {}
        for value, _ in self.client.get_prefix(self.base + "/"):
            entry = json.loads(value)
            if "ip" in entry:
                endpoints[entry["ip"]] = entry
            else:
                vteps.add(entry["vtep"])
        return vteps, endpoints

    def program(self) -> None:
        """The kernel's VTEP tables made equal to what the registry says."""
        vteps, endpoints = self._everyone()
        remote = {ip: e for ip, e in endpoints.items() if e["vtep"] != self.vtep_ip}
        with netlink.socket_in() as host:
            vtep = netlink.link(host, f"vtep{self.vni}")
            if vtep is None:
                return  # no container here yet: the network is not set up on this host
            index = vtep["index"]
            flood = (vteps - {self.vtep_ip}) | self.static_peers
            current = netlink.flood_peers(host, index)
            for peer in flood - current:
                netlink.set_flood_peer(host, index, peer, present=True)
            for peer in current - flood:
                netlink.set_flood_peer(host, index, peer, present=False)
            wanted_fdb = {e["mac"]: e["vtep"] for e in remote.values()}
            current_fdb = netlink.fdb_entries(host, index)
            for mac in current_fdb:
                if mac not in wanted_fdb:
                    netlink.set_fdb(host, index, mac, None)
            for mac, dst in wanted_fdb.items():
                if current_fdb.get(mac) != dst:
                    netlink.set_fdb(host, index, mac, dst)
            present = netlink.neighbours(host, index)
            for ip, mac in present.items():
                if remote.get(ip, {}).get("mac") != mac:
                    netlink.set_neighbour(host, index, ip, mac, present=False)
            for ip, entry in remote.items():
                if present.get(ip) != entry["mac"]:
                    netlink.set_neighbour(host, index, ip, entry["mac"], present=True)

    def run(self, interval: float = 1.0, stop=lambda: False) -> None:
        while not stop():
            try:
                self.register()
                self.program()
            except Exception as exc:  # noqa: BLE001 - etcd away: keep the tables, try the next member
                log.warning("vxlan agent: %s: %s", type(exc).__name__, exc)
                self.client = self.connect()
                if self.lease is not None:  # the same lease, through the new member
                    self.lease = Lease(self.lease.id, self.client)
            time.sleep(interval)
