"""Netlink through pyroute2, and through rtnl's raw socket for the requests
every ADD and DEL makes: the only module of the project that imports either.

Every helper takes an open socket bound to one namespace (see `socket_in`;
a plain pyroute2 `IPRoute` works too), turns netlink errors into `CNIError`s
that name the object and the errno, and tolerates "already exists" /
"already gone" where the caller wants idempotence.
"""

import contextlib
import errno
import ipaddress
import os
import secrets
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import rt_proto, rt_scope, rt_type

from .. import trace
from ..errors import CNIError, INTERFACE_EXISTS, KERNEL_FEATURE_MISSING, NETLINK_FAILURE
from . import netns, rtnl

IFF_UP = 0x1
IFF_PROMISC = 0x100
NUD_NOARP = 0x40      # a bridge FDB entry that never ages ("static")
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
NTF_MASTER = 0x04
# Bridge VLAN info flags (linux/if_bridge.h).
BRIDGE_VLAN_INFO_PVID = 0x2
BRIDGE_VLAN_INFO_UNTAGGED = 0x4
RT_TABLE_MAIN = 254   # linux/rtnetlink.h; pyroute2 has no name table for it
SCOPE_LINK = rt_scope["link"]
RTPROT_KERNEL = rt_proto["kernel"]   # a route the kernel made (a connected subnet)
RTN_UNICAST = rt_type["unicast"]
FAMILIES = (socket.AF_INET, socket.AF_INET6)


def family_of(version: int) -> int:
    """The address family of IP version 4 or 6."""
    return socket.AF_INET6 if version == 6 else socket.AF_INET


def _any_address(family: int) -> str:
    return "::" if family == socket.AF_INET6 else "0.0.0.0"


def _fail(what: str, exc: NetlinkError) -> CNIError:
    return CNIError(NETLINK_FAILURE, f"{what}: {os.strerror(exc.code)}", f"errno {exc.code}")


class Socket:
    """Netlink in one namespace. The requests every ADD and DEL makes (a link
    by name or index, a veth, enslaving a port, deleting a link, a link's
    addresses) go over `rtnl`, a raw socket: ~0.1 ms each, the kernel's own
    time. Anything else is an IPRoute's (pyroute2 spends ~0.3 ms making one
    and ~0.3-0.9 ms of Python per request), made in the same namespace on
    first use."""

    def __init__(self, netns_path: str | None):
        self._netns_path, self._ipr = netns_path, None
        self.rtnl = rtnl.Rtnl()  # in the namespace current now: socket_in's

    def __getattr__(self, name):  # what rtnl does not do: pyroute2's IPRoute
        if self._ipr is None:
            with netns.entered(self._netns_path) if self._netns_path else contextlib.nullcontext():
                self._ipr = IPRoute()
        return getattr(self._ipr, name)

    def close(self) -> None:
        self.rtnl.close()
        if self._ipr is not None:
            self._ipr.close()


@contextlib.contextmanager
def socket_in(netns_path: str | None = None):
    """A `Socket` bound to the namespace at `netns_path` (None: ours).

    The sockets are created inside the target namespace and keep working
    there after we come back, so no thread or child process is needed."""
    with netns.entered(netns_path) if netns_path else contextlib.nullcontext():
        sock = Socket(netns_path)
    traced = trace.target()
    if traced:
        sock.rtnl = trace.CountingNetlink(sock.rtnl, traced)
    try:
        yield trace.CountingNetlink(sock, traced) if traced else sock
    finally:
        sock.close()


def _rtnl(sock):
    """The raw socket of a `Socket`, None for a plain IPRoute."""
    return getattr(sock, "rtnl", None)


def link(ipr, name: str, full: bool = False):
    """The link message for `name`, or None: rtnl's (rtnl.Link: index,
    flags, name, MAC, MTU, master, kind), or with `full` pyroute2's, with
    the kind's own data (("linkinfo", "data")) and the counters ("stats64")."""
    try:
        raw = None if full else _rtnl(ipr)
        return raw.get_link(name=name) if raw else ipr.link("get", ifname=name)[0]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise _fail(f"looking up {name}", exc) from None


def link_by_index(ipr, index: int):
    try:
        raw = _rtnl(ipr)
        return raw.get_link(index=index) if raw else ipr.link("get", index=index)[0]
    except NetlinkError:
        return None


def kind(link_msg) -> str | None:
    return link_msg.get(("linkinfo", "kind"))


def describe(link_msg) -> dict:
    return {"name": link_msg.get("ifname"), "index": link_msg["index"],
            "mac": link_msg.get("address"), "mtu": link_msg.get("mtu"),
            "master": link_msg.get("master"), "kind": kind(link_msg),
            "up": bool(link_msg["flags"] & 1)}


def ensure_bridge(ipr, name: str, mtu: int | None, promisc: bool) -> dict:
    """The bridge `name`, created if missing; an existing non-bridge is an error."""
    existing = link(ipr, name)
    if existing is None:
        spec = {"ifname": name, "kind": "bridge"}
        if mtu:
            spec["mtu"] = mtu
        try:
            ipr.link("add", **spec)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:  # another ADD made it meanwhile: fine
                raise _fail(f"creating bridge {name}", exc) from None
        existing = link(ipr, name)
    if existing is None or kind(existing) != "bridge":
        raise CNIError(NETLINK_FAILURE, f"{name} already exists and is a {kind(existing) or 'device'}, not a bridge",
                       "choose another 'bridge' name in the network config")
    index = existing["index"]
    try:
        if promisc:
            ipr.link("set", index=index, flags=IFF_PROMISC, change=IFF_PROMISC)
        if not existing["flags"] & IFF_UP:  # after the first container, the network's later ones find it up
            ipr.link("set", index=index, state="up")
    except NetlinkError as exc:
        raise _fail(f"setting up bridge {name}", exc) from None
    return describe(existing)


def enable_vlan_filtering(ipr, bridge_index: int, bridge_name: str) -> None:
    try:
        ipr.link("set", index=bridge_index, kind="bridge", br_vlan_filtering=1)
    except NetlinkError as exc:
        if exc.code in (errno.EOPNOTSUPP, errno.EINVAL):
            raise CNIError(KERNEL_FEATURE_MISSING,
                           f"cannot enable VLAN filtering on {bridge_name}: this kernel lacks bridge vlan_filtering",
                           "build the kernel with CONFIG_BRIDGE_VLAN_FILTERING or drop the 'vlan' option") from None
        raise _fail(f"enabling VLAN filtering on {bridge_name}", exc) from None
    if not link(ipr, bridge_name, full=True).get(("linkinfo", "data", "br_vlan_filtering")):
        raise CNIError(KERNEL_FEATURE_MISSING,
                       f"VLAN filtering did not take effect on {bridge_name}: this kernel lacks bridge vlan_filtering")


def set_port_vlan(ipr, index: int, vlan: int) -> None:
    flags = BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED
    try:
        ipr.vlan_filter("add", index=index, vlan_info={"vid": vlan, "flags": flags})
        ipr.vlan_filter("del", index=index, vlan_info={"vid": 1})
    except NetlinkError as exc:
        raise _fail(f"setting VLAN {vlan} on port {index}", exc) from None


def create_veth(ipr, peer_name: str, peer_netns_fd: int, mtu: int | None, sandbox_ipr, peer_mac=None) -> str:
    """A veth pair: a random `veth…` name here, `peer_name` inside the sandbox
    (with `peer_mac`, if given)."""
    for _ in range(8):
        host_name = "veth" + secrets.token_hex(4)
        try:
            if raw := _rtnl(ipr):
                raw.add_veth(host_name, peer_name, peer_netns_fd=peer_netns_fd, mtu=mtu or None,
                             peer_mac=peer_mac or None)
            else:
                spec = {"ifname": host_name, "kind": "veth",
                        "peer": {"ifname": peer_name, "net_ns_fd": peer_netns_fd}}
                if peer_mac:
                    spec["peer"]["address"] = peer_mac
                if mtu:
                    spec["mtu"] = mtu
                    spec["peer"]["mtu"] = mtu
                ipr.link("add", **spec)
            return host_name
        except NetlinkError as exc:
            if exc.code == errno.EEXIST and link(sandbox_ipr, peer_name) is not None:
                raise CNIError(INTERFACE_EXISTS, f"interface {peer_name} already exists in the sandbox") from None
            if exc.code != errno.EEXIST or link(ipr, host_name) is None:
                raise _fail(f"creating veth pair for {peer_name}", exc) from None
    raise CNIError(NETLINK_FAILURE, "could not find a free veth name")


def configure_port(ipr, name: str, bridge_index: int, hairpin: bool) -> dict:
    """Enslave the host end to the bridge and bring it up."""
    port = describe(link(ipr, name))
    raw = _rtnl(ipr)
    try:
        if hairpin:  # a bridge port's setting: set once it is one, before it is up
            ipr.link("set", index=port["index"], master=bridge_index)
            ipr.brport("set", index=port["index"], mode=1)
            ipr.link("set", index=port["index"], state="up")
        elif raw:  # one request: the kernel enslaves it, then brings it up
            raw.set_link(port["index"], master=bridge_index, up=True)
        else:
            ipr.link("set", index=port["index"], master=bridge_index, state="up")
    except NetlinkError as exc:
        raise _fail(f"attaching {name} to the bridge", exc) from None
    return dict(port, master=bridge_index, up=True)


def bring_up(ipr, name: str, mac: str | None = None) -> dict:
    found = describe(link(ipr, name))
    try:
        if mac:
            ipr.link("set", index=found["index"], address=mac)
        ipr.link("set", index=found["index"], state="up")
    except NetlinkError as exc:
        raise _fail(f"setting up {name}" + (f" with MAC {mac}" if mac else ""), exc) from None
    return dict(found, mac=mac or found["mac"], up=True)


def addresses(ipr, index: int, version: int | None = None) -> list:
    """Addresses on the link as interfaces, e.g. IPv4Interface('10.0.0.2/24'),
    of one IP version if given.

    The kernel answers an address dump with every address of the namespace
    and pyroute2 filters by link afterwards: on a host with 1,000 veths (each
    with its IPv6 link-local address) an unfiltered dump costs ~400 ms. Asking
    for one family makes the kernel leave the others out (~2 ms for IPv4),
    and rtnl's socket asks the kernel to filter by link too."""
    if raw := _rtnl(ipr):
        families = [family_of(version)] if version else FAMILIES
        return [ipaddress.ip_interface(f"{address}/{prefixlen}")
                for family in families for address, prefixlen in raw.addresses(index, family)]
    found = []
    for msg in ipr.get_addr(index=index, **({"family": family_of(version)} if version else {})):
        found.append(ipaddress.ip_interface(f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}"))
    return found


def add_address(ipr, index: int, cidr: str) -> None:
    iface = ipaddress.ip_interface(cidr)
    try:
        ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise _fail(f"adding address {cidr}", exc) from None


def delete_address(ipr, index: int, cidr: str) -> None:
    iface = ipaddress.ip_interface(cidr)
    try:
        ipr.addr("del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
    except NetlinkError as exc:
        if exc.code not in (errno.EADDRNOTAVAIL, errno.ENODEV):
            raise _fail(f"removing address {cidr}", exc) from None


def add_route(ipr, dst: str, gateway: str | None, index: int) -> None:
    network = ipaddress.ip_network(dst)
    spec = {"dst": str(network.network_address), "dst_len": network.prefixlen,
            "oif": index, "family": family_of(network.version)}
    if gateway:
        spec["gateway"] = gateway
    try:
        ipr.route("add", **spec)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            via = f" via {gateway}" if gateway else ""
            raise _fail(f"adding route {dst}{via}", exc) from None


def routes(ipr, index: int) -> list:
    """(dst CIDR, gateway or None) for every route through the link."""
    found = []
    for family in FAMILIES:
        for msg in ipr.get_routes(family=family, oif=index, table=RT_TABLE_MAIN):
            dst = msg.get("RTA_DST") or _any_address(family)
            found.append((str(ipaddress.ip_network(f"{dst}/{msg['dst_len']}")), msg.get("RTA_GATEWAY")))
    return found


def delete_link(ipr, name: str) -> bool:
    """Delete `name` if present; True when something was deleted."""
    try:
        if raw := _rtnl(ipr):
            raw.delete_link(name)
        else:
            ipr.link("del", ifname=name)
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return False
        raise _fail(f"deleting {name}", exc) from None
    return True


def move_link(ipr, name: str, new_name: str, target_netns_fd: int) -> None:
    """Rename `name` and move it into another namespace (down: the kernel needs it)."""
    existing = link(ipr, name)
    if existing is None:
        raise CNIError(NETLINK_FAILURE, f"interface {name} is missing from the staging namespace")
    try:
        ipr.link("set", index=existing["index"], state="down")
        ipr.link("set", index=existing["index"], ifname=new_name, net_ns_fd=target_netns_fd)
    except NetlinkError as exc:
        raise _fail(f"moving {name} to the host as {new_name}", exc) from None


def set_master(ipr, name: str, master_index: int | None) -> None:
    """Enslave `name` to `master_index` (or free it with None), up. What is
    so already is left alone: a change takes the kernel's RTNL lock, which
    every other netlink change on the host waits for (a flat ADD checks its
    metadata link's two ends while its container's veth is made)."""
    found = link(ipr, name)
    if found is None:
        raise CNIError(NETLINK_FAILURE, f"setting the master of {name}: it does not exist")
    try:
        if (found.get("master") or 0) != (master_index or 0):
            ipr.link("set", index=found["index"], master=master_index or 0)
        if not found["flags"] & IFF_UP:
            ipr.link("set", index=found["index"], state="up")
    except NetlinkError as exc:
        raise _fail(f"setting the master of {name}", exc) from None


def set_mac(ipr, index: int, mac: str) -> None:
    try:
        ipr.link("set", index=index, address=mac)
    except NetlinkError as exc:
        raise _fail(f"setting MAC {mac} on interface {index}", exc) from None


def vlan_name(parent: str, vlan: int) -> str:
    """PARENT.VLAN, the parent cut to 10 characters so that any VLAN id fits IFNAMSIZ."""
    return f"{parent[:10]}.{vlan}"


def create_vlan(ipr, parent: str, vlan: int) -> str:
    name = vlan_name(parent, vlan)
    if link(ipr, name) is not None:
        return name
    try:
        ipr.link("add", ifname=name, kind="vlan", link=link(ipr, parent)["index"], vlan_id=vlan)
    except NetlinkError as exc:
        if exc.code in (errno.EOPNOTSUPP, errno.EINVAL):
            raise CNIError(KERNEL_FEATURE_MISSING, f"cannot create VLAN {vlan} on {parent}: this kernel lacks 802.1q VLAN links",
                           "load the 8021q module or drop the 'vlan' option") from None
        raise _fail(f"creating VLAN interface {name}", exc) from None
    return name


def create_veth_pair(ipr, name: str, peer: str) -> None:
    """A veth pair with both ends here; an existing pair of these names is kept."""
    if link(ipr, name) is not None and link(ipr, peer) is not None:
        return
    delete_link(ipr, name)
    try:
        ipr.link("add", ifname=name, kind="veth", peer={"ifname": peer})
    except NetlinkError as exc:
        raise _fail(f"creating veth pair {name}/{peer}", exc) from None


def global_addresses(ipr, index: int) -> list:
    """Addresses that are the administrator's, not the kernel's (no link-local)."""
    return [a for a in addresses(ipr, index) if not a.ip.is_link_local]


def routes_via(ipr, index: int) -> list:
    """Static routes of the main table through the link, as re-addable specs."""
    found = []
    for family in FAMILIES:
        for msg in ipr.get_routes(family=family, oif=index, table=RT_TABLE_MAIN):
            if msg["proto"] == RTPROT_KERNEL or msg.get("RTA_DST", "").startswith("fe80") or msg["type"] != RTN_UNICAST:
                continue  # kernel-made (connected) routes come back with the addresses
            dst = msg.get("RTA_DST") or _any_address(family)
            spec = {"dst": f"{dst}/{msg['dst_len']}", "gateway": msg.get("RTA_GATEWAY"),
                    "priority": msg.get("RTA_PRIORITY"), "prefsrc": msg.get("RTA_PREFSRC"),
                    "proto": msg["proto"], "scope": msg["scope"]}
            found.append({k: v for k, v in spec.items() if v is not None})
    return found


def add_route_spec(ipr, spec: dict, index: int, table: int = RT_TABLE_MAIN, replace: bool = False) -> None:
    """Add the route through `index`; with `replace`, a route to the same
    destination (same metric) through another link moves here in one step."""
    network = ipaddress.ip_network(spec["dst"])
    args = {"dst": str(network.network_address), "dst_len": network.prefixlen, "oif": index,
            "family": family_of(network.version), "table": table}
    for key in ("gateway", "priority", "prefsrc", "proto", "scope"):
        if spec.get(key) is not None:
            args[key] = spec[key]
    try:
        ipr.route("replace" if replace else "add", **args)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise _fail(f"adding route {spec['dst']}", exc) from None


def delete_route_spec(ipr, spec: dict, index: int, table: int = RT_TABLE_MAIN) -> None:
    network = ipaddress.ip_network(spec["dst"])
    try:
        ipr.route("del", dst=str(network.network_address), dst_len=network.prefixlen, oif=index,
                  family=family_of(network.version), table=table)
    except NetlinkError as exc:
        if exc.code not in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
            raise _fail(f"removing route {spec['dst']}", exc) from None


def set_neighbour(ipr, index: int, ip: str, mac: str, present: bool) -> None:
    """A permanent neighbour entry (present) or its removal."""
    raw = _rtnl(ipr)
    try:
        if raw:
            raw.set_neighbour(index, ip, mac if present else None, NUD_PERMANENT)
        elif present:
            ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=index, state="permanent")
        else:
            ipr.neigh("del", dst=ip, ifindex=index)
    except NetlinkError as exc:
        if present or exc.code not in (errno.ENOENT, errno.ESRCH, errno.ENODEV):
            raise _fail(f"{'setting' if present else 'removing'} neighbour {ip}", exc) from None


def set_rule(ipr, src: str, dst: str, table: int, priority: int, present: bool) -> None:
    """A policy-routing rule `from src to dst lookup table`."""
    s, d = ipaddress.ip_network(src), ipaddress.ip_network(dst)
    spec = {"family": family_of(s.version), "src": str(s.network_address), "src_len": s.prefixlen,
            "dst": str(d.network_address), "dst_len": d.prefixlen, "table": table, "priority": priority}
    try:
        ipr.rule("add" if present else "del", **spec)
    except NetlinkError as exc:
        if (present and exc.code == errno.EEXIST) or (not present and exc.code in (errno.ENOENT, errno.ESRCH)):
            return
        raise _fail(f"{'adding' if present else 'removing'} rule from {src} to {dst}", exc) from None


def default_route_device(ipr) -> str | None:
    for msg in ipr.get_routes(family=socket.AF_INET, table=RT_TABLE_MAIN):
        if msg["dst_len"] == 0 and msg.get("RTA_OIF"):
            found = link_by_index(ipr, msg.get("RTA_OIF"))
            return found.get("ifname") if found else None
    return None


def ensure_vxlan(ipr, name: str, vni: int, local_ip: str, port: int, underlay_index: int, mtu: int,
                 proxy: bool = False) -> dict:
    """A VTEP with learning off (FDB entries are programmed, not learned);
    with `proxy`, ARP for remote endpoints is answered from its neighbour table."""
    existing = link(ipr, name)
    if existing is None:
        try:
            ipr.link("add", ifname=name, kind="vxlan", vxlan_id=vni, vxlan_local=local_ip, vxlan_port=port,
                     vxlan_link=underlay_index, vxlan_learning=0, vxlan_proxy=int(proxy), mtu=mtu)
        except NetlinkError as exc:
            if exc.code == errno.EOPNOTSUPP:  # the link type is unknown to this kernel
                raise CNIError(KERNEL_FEATURE_MISSING, f"cannot create VTEP {name}: this kernel lacks VXLAN links",
                               "build the kernel with CONFIG_VXLAN (module vxlan)") from None
            if exc.code != errno.EEXIST:
                raise _fail(f"creating VTEP {name} (VNI {vni}, UDP {port})", exc) from None
        existing = link(ipr, name)
    if kind(existing) != "vxlan":
        raise CNIError(NETLINK_FAILURE, f"{name} already exists and is a {kind(existing) or 'device'}, not a VXLAN device")
    found = _vni_of(existing)
    if found not in (None, vni):
        raise CNIError(NETLINK_FAILURE, f"{name} exists with VNI {found}, not {vni}")
    return describe(existing)


def _vni_of(link_msg) -> int | None:
    """A VXLAN link's VNI, from rtnl's message or pyroute2's."""
    vni = link_msg.get(("linkinfo", "vxlan_id"))  # rtnl's
    if vni is None:
        data = link_msg.get(("linkinfo", "data"))  # pyroute2's
        vni = data.get("vxlan_id") if data is not None else None
    return vni


def _vtep_fdb(ipr, index: int) -> list:
    """(MAC, remote) of the VTEP's own FDB entries. The raw socket's dump is
    filtered by the kernel; pyroute2's asks for every link's entries, which
    grow with the host's containers (each port's MACs)."""
    raw = _rtnl(ipr)
    if raw:
        try:
            return raw.vtep_fdb(index)
        except NetlinkError as exc:
            raise _fail(f"listing the FDB of link {index}", exc) from None
    return [(msg.get("NDA_LLADDR"), msg.get("NDA_DST")) for msg in ipr.fdb("dump", ifindex=index)
            if msg.get("ifindex") == index and msg.get("NDA_LLADDR") and msg.get("NDA_DST")]


def flood_peers(ipr, vtep_index: int) -> set:
    """Peers of the all-zero FDB entries (head-end replication of broadcast)."""
    return {dst for mac, dst in _vtep_fdb(ipr, vtep_index) if mac == "00:00:00:00:00:00"}


def set_flood_peer(ipr, vtep_index: int, peer: str, present: bool) -> None:
    try:
        ipr.fdb("append" if present else "del", ifindex=vtep_index, lladdr="00:00:00:00:00:00", dst=peer,
                state=NUD_PERMANENT, flags=NTF_SELF)
    except NetlinkError as exc:
        if not ((present and exc.code == errno.EEXIST) or (not present and exc.code == errno.ENOENT)):
            raise _fail(f"{'adding' if present else 'removing'} VXLAN peer {peer}", exc) from None


def fdb_entries(ipr, index: int) -> dict:
    """Unicast FDB entries of a VTEP: MAC -> remote VTEP address."""
    return {mac: dst for mac, dst in _vtep_fdb(ipr, index) if mac != "00:00:00:00:00:00"}


def set_fdb(ipr, index: int, mac: str, dst: str | None) -> None:
    """Point `mac` at the remote VTEP `dst`; None removes the entry."""
    try:
        if dst:  # the VTEP's own table (NTF_SELF), not the bridge's
            ipr.fdb("replace", ifindex=index, lladdr=mac, dst=dst, state=NUD_PERMANENT, flags=NTF_SELF)
        else:
            ipr.fdb("del", ifindex=index, lladdr=mac, flags=NTF_SELF)
    except NetlinkError as exc:
        if dst or exc.code not in (errno.ENOENT, errno.ESRCH):
            raise _fail(f"{'setting' if dst else 'removing'} FDB entry {mac}", exc) from None


def pin_bridge_fdb(ipr, port_index: int, mac: str) -> None:
    """A static entry in the bridge's FDB: `mac` lives behind this port."""
    raw = _rtnl(ipr)
    try:
        if raw:
            raw.replace_bridge_fdb(port_index, mac, NUD_NOARP, NTF_MASTER)
        else:
            ipr.fdb("replace", ifindex=port_index, lladdr=mac, state=NUD_NOARP, flags=NTF_MASTER)
    except NetlinkError as exc:
        raise _fail(f"pinning {mac} in the bridge FDB", exc) from None


def neighbours(ipr, index: int) -> dict:
    """Permanent neighbour entries of a link: IP -> MAC."""
    return {msg.get("NDA_DST"): msg.get("NDA_LLADDR") for msg in ipr.get_neighbours(ifindex=index)
            if msg["state"] & NUD_PERMANENT and msg.get("NDA_LLADDR")}
