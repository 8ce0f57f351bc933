"""The VXLAN network's host side: the bridge plus a VTEP `vtep<VNI>` on UDP
4789 enslaved to it, so one subnet spans every host; MTU 50 below the
underlay's (the VXLAN header); learning off, broadcast and unknown unicast
replicated to each peer by all-zero FDB entries (head-end replication).

Its network record (subnets and gateways, `vxlan_registry.record_network`) is
what the registry agent checks other hosts' entries against. Only the peers
may send to the VNI's UDP port (`net/vxlan_guard`): the static peers, set here,
or with a registry the hosts the agent learns; the rules go with the network."""

import dataclasses
import ipaddress
import os

from . import locks, paths, vxlan_registry
from .errors import CNIError, INVALID_CONFIG
from .net import netlink, vxlan_guard

VXLAN_OVERHEAD = 50
LOCK_DIR = paths.RUN_DIR


@dataclasses.dataclass(frozen=True)
class VxlanNetwork:
    bridge: str
    vni: int
    port: int
    vtep_dev: str | None    # the underlay interface; None: the default route's
    peers: tuple
    state_dir: str = paths.STATE_DIR
    registry: bool = False  # an agent programs remote endpoints from etcd: answer ARP locally
    subnets: tuple = ()     # (subnet, gateway) from the ipam section, when it gives them

    @property
    def vtep(self) -> str:
        return f"vtep{self.vni}"


def local_address(net: VxlanNetwork) -> str:
    """The underlay address this host sends VXLAN from."""
    with netlink.socket_in() as host:
        return _underlay(host, net)[1]


def _underlay(host, net: VxlanNetwork) -> tuple:
    name = net.vtep_dev or netlink.default_route_device(host)
    found = netlink.link(host, name) if name else None
    if found is None:
        raise CNIError(INVALID_CONFIG, f"underlay interface {name or '(default route)'} does not exist",
                       "set vtepDev (-o vtep_dev=IF) to the interface that reaches the other hosts")
    addresses = [a for a in netlink.global_addresses(host, found["index"]) if a.version == 4]
    if not addresses:
        raise CNIError(INVALID_CONFIG, f"underlay interface {name} has no IPv4 address to send VXLAN from")
    return netlink.describe(found), str(addresses[0].ip)


def ensure(net: VxlanNetwork) -> int:
    """Bridge, VTEP and flood entries; returns the containers' MTU."""
    with locks.held(_lock_path(net)):
        with netlink.socket_in() as host:
            underlay, local_ip = _underlay(host, net)
            mtu = underlay["mtu"] - VXLAN_OVERHEAD
            bridge = netlink.ensure_bridge(host, net.bridge, mtu, promisc=False)
            vtep = netlink.ensure_vxlan(host, net.vtep, net.vni, local_ip, net.port, underlay["index"], mtu,
                                        proxy=net.registry)
            if vtep.get("master") != bridge["index"]:
                netlink.set_master(host, net.vtep, bridge["index"])
            wanted = {p for p in net.peers if p != local_ip}
            present = netlink.flood_peers(host, vtep["index"])
            for peer in wanted - present:
                netlink.set_flood_peer(host, vtep["index"], peer, present=True)
            for peer in present - wanted:
                netlink.set_flood_peer(host, vtep["index"], peer, present=False)
            if not net.registry and wanted:  # a registry's agent keeps the guard in line with the peers it learns
                vxlan_guard.ensure(net.vni, net.port, wanted)
        if net.subnets:
            vxlan_registry.record_network(net.state_dir, net.vni, net.subnets)
        return mtu


def remove(net: VxlanNetwork) -> None:
    with locks.held(_lock_path(net)) as lock:
        vxlan_guard.remove(net.vni)
        with netlink.socket_in() as host:
            netlink.delete_link(host, net.vtep)
            netlink.delete_link(host, net.bridge)
        lock.discard()  # the network's lock goes with it (locks.py: safe against waiters)


def _lock_path(net: VxlanNetwork) -> str:
    return os.path.join(LOCK_DIR, f"vxlan-{net.vni}.lock")


def parse_peers(raw) -> tuple:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise CNIError(INVALID_CONFIG, "'peers' must be a list of IPv4 addresses")
    try:
        return tuple(str(ipaddress.IPv4Address(p)) for p in raw)
    except ValueError as exc:
        raise CNIError(INVALID_CONFIG, f"peers: {exc}") from None
