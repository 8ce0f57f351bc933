"""The host-network façade: what the Docker side (cnm_shim) may do to the
host's network, the address store and the firewall, outside a CNI call.

The other door is `runtime` (running CNI). `cnm_shim`'s Translator and Doctor
import nothing else of the CNI side (tests/unit/test_doors.py).

  a network's host side  `network_of(conflist)`: the object for the plug-in
                         type of the conflist's first plug-in (bridge, flat,
                         vxlan, ipsec), with ensure / remove / ports / reserved
                         addresses / data path; `missing_parts`, `forget`
  the host's charon      `ipsec_health`, `revive_ipsec` (doctor)
  addresses              `open_store`, `check_etcd_endpoints`, `holder_of`, `DOCKER_OWNER`,
                         `Allocation`, `SQLiteStore`, `reserve`, `validate_ipam`, `parse_range`
  staging namespaces     `create_staging`, `move_to_host`, `remove_staging`
  links                  `delete_link`, `sandbox_interface`, `NetnsGone`
  attachments            `restore_attachment` (doctor --repair)
  firewall               `firewall_drift`, `repair_firewall`, `stray_tags`,
                         `collect_rules`, `guard_localnet` / `unguard_localnet` (the
                         reference portmap on our bridge)
  address text           `addresses` (the one parser of both sides: no IPv6 scope IDs)
  host-wide locks        `held_lock` (an flock on a file, as the CNI side's own locks)
"""

import socket

from . import addresses, datapath, flatnet, ipsecnet, networks, repair, staging, vxlannet
from .errors import CNIError, INVALID_CONFIG
from .locks import held as held_lock
from .ipam import allocator, config as ipam_config
from .ipam.etcd_store import check_endpoints as check_etcd_endpoints
from .ipam.store import DOCKER_OWNER, Allocation, SQLiteStore, open_store
from .net import firewall, iptables, localnet, netlink, sysctls, tags
from .net.netns import NetnsGone
from .plugins import flat as flat_plugin, ipsec as ipsec_plugin, vxlan as vxlan_plugin

__all__ = ["addresses", "held_lock", "DOCKER_OWNER", "Allocation", "SQLiteStore", "NetnsGone", "open_store", "check_etcd_endpoints", "network_of", "Bridge", "missing_parts",
           "forget", "holder_of", "reserve", "validate_ipam", "parse_range", "create_staging", "move_to_host",
           "remove_staging", "delete_link", "sandbox_interface", "restore_attachment", "firewall_drift",
           "repair_firewall", "stray_tags", "collect_rules", "ipsec_health", "revive_ipsec",
           "guard_localnet", "unguard_localnet"]


# -- a network's host side, by plug-in type ---------------------------------------

class HostNetwork:
    """The host side of one network, from the config of its conflist's first plug-in."""

    bridge: str

    def ensure(self) -> None:
        raise NotImplementedError

    def remove(self) -> None:
        raise NotImplementedError

    def ports(self) -> list:
        """Links that must be enslaved to the network's bridge."""
        return []

    def reserved_addresses(self) -> list:
        """Addresses of the subnet the host side itself holds."""
        return []

    def datapath(self, cni_name: str) -> dict:
        raise NotImplementedError


class Bridge(HostNetwork):
    """rancher-bridge: a Linux bridge of the host."""

    def __init__(self, name: str, mtu: int | None):
        self.bridge, self.mtu = name, mtu

    def exists(self) -> bool:
        return networks.bridge_exists(self.bridge)

    def ensure(self) -> None:
        networks.ensure_bridge(self.bridge, self.mtu)

    def remove(self) -> None:
        networks.remove_bridge(self.bridge)

    def datapath(self, cni_name: str) -> dict:
        return datapath.bridge(self.bridge)


class _Loaded(HostNetwork):
    """A host side kept by a module of its own (`host.ensure` / `host.remove`)
    for the network its plug-in's config loads (`load`)."""

    load = host = None

    def __init__(self, plugin: dict):
        self.network = self.load(plugin)
        self.bridge = self.network.bridge

    def ensure(self) -> None:
        self.host.ensure(self.network)

    def remove(self) -> None:
        self.host.remove(self.network)


class Flat(_Loaded):
    """rancher-flat: the uplink, the metadata link and their rules (flatnet)."""

    load, host = staticmethod(flat_plugin.load_network), flatnet

    def ports(self) -> list:
        return [self.network.uplink]

    def reserved_addresses(self) -> list:
        return [self.network.metadata.link_ip] if self.network.metadata else []

    def datapath(self, cni_name: str) -> dict:
        return datapath.flat(cni_name, self.network)


class Vxlan(_Loaded):
    """rancher-vxlan: the bridge and its VTEP (vxlannet)."""

    load, host = staticmethod(vxlan_plugin.load_network), vxlannet

    def ports(self) -> list:
        return [self.network.vtep]

    def datapath(self, cni_name: str) -> dict:
        return datapath.vxlan(self.network)


class Ipsec(_Loaded):
    """rancher-ipsec: the bridge with proxy ARP, the host's charon and its tunnels (ipsecnet)."""

    load, host = staticmethod(ipsec_plugin.load_network), ipsecnet

    def datapath(self, cni_name: str) -> dict:
        return datapath.ipsec(self.network)


# plug-in type (the conflist's first plug-in) -> its host side
HOST_NETWORKS = {
    "rancher-bridge": lambda plugin: Bridge(plugin["bridge"], plugin.get("mtu")),
    "rancher-flat": Flat,
    "rancher-vxlan": Vxlan,
    "rancher-ipsec": Ipsec,
}


def network_of(conflist: dict) -> HostNetwork:
    """The host side of the network `conflist` configures, chosen by its first plug-in's type."""
    # as a runtime hands it to the plug-in: with the list's name and version
    plugin = dict(conflist["plugins"][0], name=conflist.get("name"), cniVersion=conflist.get("cniVersion"))
    make = HOST_NETWORKS.get(plugin.get("type"))
    if make is None:
        raise CNIError(INVALID_CONFIG, f"plug-in {plugin.get('type')!r} has no host-side network; "
                                       f"known: {', '.join(HOST_NETWORKS)}")
    return make(plugin)


def missing_parts(bridge: str, ports=()) -> list:
    """What of a network's host side is gone: its bridge, or one of its ports."""
    return networks.missing_parts(bridge, ports)


def forget(cni_network: str | None, store, ports_list: str | None = None) -> None:
    """Drop every firewall rule and IPAM entry still carrying the network's
    name, and the port rules of its ports list (networks.forget)."""
    networks.forget(cni_network, store, ports_list=ports_list)


def ipsec_health(state_dir: str) -> list:
    """What is wrong with the host's charon for the IPsec networks recorded in
    `state_dir` (the conflists' stateDir): [(subject, problem)], [] when it
    runs and every peer of every network has an ESTABLISHED IKE_SA with the
    network's CHILD_SA INSTALLED, or when no IPsec network is recorded."""
    return ipsecnet.health(state_dir)


def revive_ipsec(state_dir: str) -> int | None:
    """Start the host's charon again with every recorded network's tunnels
    (all or nothing); its new pid, None if it was running."""
    return ipsecnet.revive(state_dir)


# -- addresses ----------------------------------------------------------------------

def holder_of(store, subnet: str, ip: str):
    """The allocation holding `ip` in the pool of `subnet`, or None."""
    return networks.holder_of(store, subnet, ip)


def reserve(txn, conf, owner: tuple, wanted=None):
    """An address of `conf`'s ranges (or `wanted`) for `owner`, inside the store's transaction."""
    return allocator.reserve(txn, conf, owner, wanted)


def validate_ipam(ipam: dict, runtime_config: dict | None = None):
    """The IPAM section as the rancher-ipam plug-in reads it; its errors as CNIError."""
    return ipam_config.load(ipam, runtime_config or {})


def parse_range(raw: dict):
    """One range ({"subnet", "rangeStart", …}) checked as the IPAM plug-in does."""
    return ipam_config.parse_range(raw)


# -- staging namespaces and links -----------------------------------------------------

def create_staging(path: str) -> None:
    staging.create(path)


def move_to_host(path: str, ifname: str, host_name: str) -> dict:
    return staging.move_to_host(path, ifname, host_name)


def answer_arp_on_routed_peers(result: dict) -> list:
    """Proxy ARP on each host-side veth of a CNI result that is routed, not
    bridged (the reference ptp: an address of its own, no master). Such a
    plug-in gives its container a /32 and a route via the host; Docker gives
    it its pool's mask instead, so the container ARPs for the subnet's other
    addresses on the veth, and the host answers for those it routes elsewhere.
    The names of the interfaces set (the setting goes with the veth)."""
    answered = []
    with netlink.socket_in() as host:
        for iface in result.get("interfaces", []):
            name = iface.get("name")
            if iface.get("sandbox") or not isinstance(name, str) or not sysctls.is_ifname(name):
                continue
            found = netlink.link(host, name)
            if found is None or netlink.kind(found) != "veth" or found.get("master"):
                continue
            if not [a for a in netlink.global_addresses(host, found["index"]) if a.version == 4]:
                continue
            sysctls.ensure(sysctls.interface_path("ipv4", name, "proxy_arp"), "1",
                           "a routed CNI veth (ptp) answers ARP for Docker's on-link subnet")
            answered.append(name)
    return answered


def move_back_to_staging(path: str, host_name: str, ifname: str, addresses: list) -> bool:
    return staging.move_back(path, host_name, ifname, addresses)


def remove_staging(path: str) -> None:
    staging.remove(path)


def delete_link(name: str) -> bool:
    """Delete the host's link `name`; whether it was there."""
    with netlink.socket_in() as host:
        return netlink.delete_link(host, name)


def sandbox_interface(sandbox: str, mac: str) -> dict:
    """The name of the sandbox's interface with `mac` ("ifname", None if none
    has it), and whether the sandbox's default route leaves through it
    ("default_here"; also true when there is no default route). Raises
    NetnsGone when the sandbox is."""
    with netlink.socket_in(sandbox) as inside:
        ours = next((netlink.describe(link) for link in inside.get_links()
                     if (link.get("address") or "").lower() == mac.lower()), None)
        if ours is None:
            return {"ifname": None, "default_here": False}
        defaults = [msg for family in (socket.AF_INET, socket.AF_INET6)
                    for msg in inside.get_routes(family=family, table=netlink.RT_TABLE_MAIN)
                    if msg["dst_len"] == 0]
        here = not defaults or any(msg.get("RTA_OIF") == ours["index"] for msg in defaults)
        return {"ifname": ours["name"], "default_here": here}


# -- attachments and the firewall ------------------------------------------------------

def restore_attachment(conf: dict, container_id: str, netns: str, ifname: str, args: list,
                       capability_args: dict, result: dict) -> None:
    """Put back the host side of an attachment from its cached result."""
    repair.restore_attachment(conf, container_id, netns, ifname, args, capability_args, result)


def firewall_drift() -> list:
    """(family, line) of each of our chains, jumps or isolation rules out of line."""
    return iptables.derived_drift()


def repair_firewall() -> None:
    iptables.repair_derived()


def stray_tags(network: str, valid_attachments) -> list:
    """Tags of `network`'s rules that belong to no attachment in `valid_attachments`."""
    return firewall.stray_tags(network, valid_attachments)


def collect_rules(network: str, valid_attachments) -> list:
    """Remove `network`'s rules whose attachment is not in `valid_attachments()`
    (read under the firewall lock); the removed tags."""
    return firewall.collect_garbage_checked(network, valid_attachments)


# -- route_localnet around a portmap that is not ours -----------------------------------

def guard_localnet(ports_list: str, container_id: str, ifname: str, bridge: str) -> None:
    """rancher-portmap's guard of route_localnet on `bridge` (localnet.py), for
    a portmap that sets route_localnet and never guards it (the reference
    one): the guard rule first, then route_localnet=1 with our mark, so that
    unguard_localnet turns it off again with the last guard. Tagged as
    rancher-portmap's rules of the attachment on `ports_list`, so network
    removal, GC and the doctor treat it as theirs."""
    tag = tags.of(tags.PORTMAP, ports_list, container_id, ifname)
    firewall.add_rules(tag, {4: firewall.localnet_guard(tag, bridge)})
    localnet.turn_on(bridge)


def unguard_localnet(ports_list: str, container_id: str, ifname: str) -> None:
    """Undo guard_localnet, after the portmap's DEL: route_localnet back to 0
    if no other guard stays on the bridge, then the guard."""
    tag = tags.of(tags.PORTMAP, ports_list, container_id, ifname)
    localnet.release(tag.every.__contains__)
    firewall.remove_rules(tag)
