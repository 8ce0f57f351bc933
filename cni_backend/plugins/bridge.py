"""rancher-bridge: the reference bridge plug-in's behaviour, idempotent and
undone on failure.

A veth pair joins the sandbox to a Linux bridge; the IPAM plug-in picks the
addresses; with isGateway the bridge carries the gateway address; rules let the
traffic through Docker's FORWARD DROP policy and masquerade it with ipMasq.
"""

import contextlib
import dataclasses
import ipaddress
import os

from .. import beside, delegate, ifnames
from ..errors import CHECK_FAILED, CNIError, INVALID_CONFIG, UNKNOWN_CONTAINER
from ..net import features, firewall, netlink, netns, nft, sysctls, tags
from ..version import CURRENT
from . import fields
from . import ipam as ipam_plugin

# CHECK only: the interface's name in the sandbox when the runtime renamed it
# after ADD (Docker names it eth<N>); the attachment stays CNI_IFNAME's.
SANDBOX_IFNAME_ARG = "RANCHER_SANDBOX_IFNAME"
# At ADD: make the container's end of the veth in the plug-in's own namespace
# under this name, with no address or route, for the runtime to move where it
# belongs (see _handover_name)
HANDOVER_ARG = "RANCHER_HANDOVER_IFNAME"
# At DEL, "true": the runtime removes the network itself when it is done with
# it (Docker's DeleteNetwork, networks.forget), so the rules the network's
# attachments share stay until then, also when this DEL is its last (see
# iptables.remove). Without it, a network's last DEL takes them, as the CNI
# model has it: a CNI network lives only in its attachments.
HOLD_ARG = "RANCHER_NETWORK_HOLDS_RULES"


@dataclasses.dataclass
class BridgeConf:
    bridge: str
    is_gateway: bool            # the gateway address lives on the bridge
    is_default_gateway: bool    # the container's default route goes via the gateway
    force_address: bool
    ip_masq: bool
    mtu: int | None
    hairpin: bool
    promisc: bool
    vlan: int
    macspoofchk: bool
    mac: str | None
    ip_spoof_check: bool = False  # also drop frames with another source IP (flat)
    extra_routes: list = dataclasses.field(default_factory=list)
    forbidden_out: tuple = ()     # interfaces the host must never route its traffic to
    open_inbound: bool | str = False  # who may connect to it: see firewall.bridge_rules
    metadata: tuple | None = None     # flat's (metadata bridge, address): see firewall.bridge_rules
    internal: bool = False        # nothing leaves the subnet, nothing enters it from outside (--internal)
    firewall_chained: bool = False  # the reference firewall follows: our ACCEPTs yield (firewall.bridge_rules)


def load_conf(req) -> BridgeConf:
    config = req.config
    bridge = fields.ifname(config, "bridge", "cni0")
    ipam = config.get("ipam")
    if not isinstance(ipam, dict) or not isinstance(ipam.get("type"), str) or not ipam["type"]:
        raise CNIError(INVALID_CONFIG, "the 'ipam' section with a 'type' is required",
                       'e.g. "ipam": {"type": "rancher-ipam", "ranges": [[{"subnet": "10.22.0.0/16"}]]}')
    is_default_gateway = fields.flag(config, "isDefaultGateway")
    internal = fields.flag(config, "internal")
    if internal and (is_default_gateway or fields.flag(config, "ipMasq")):
        raise CNIError(INVALID_CONFIG, "an 'internal' network has no way out: 'isDefaultGateway' and 'ipMasq' "
                       "must be false")
    return BridgeConf(
        internal=internal,
        firewall_chained=fields.flag(config, "firewallChained"),
        bridge=bridge,
        is_gateway=fields.flag(config, "isGateway") or is_default_gateway,
        is_default_gateway=is_default_gateway,
        force_address=fields.flag(config, "forceAddress"),
        ip_masq=fields.flag(config, "ipMasq"),
        mtu=fields.integer(config, "mtu", 68, 65535),
        hairpin=fields.flag(config, "hairpinMode"),
        promisc=fields.flag(config, "promiscMode"),
        vlan=fields.integer(config, "vlan", 0, 4094) or 0,
        macspoofchk=fields.flag(config, "macspoofchk"),
        mac=fields.requested_mac(req),
    )


def _tag(req) -> tags.Tag:
    return tags.of(tags.BRIDGE, req.network, req.container_id, req.ifname)


def _spoof_tag(req) -> tags.Tag:
    return tags.of(tags.SPOOF, req.network, req.container_id, req.ifname)


# -- ADD ------------------------------------------------------------------

def add(req) -> dict:
    return attach(req, load_conf(req))


def _handover_name(req) -> str | None:
    """The name HANDOVER_ARG asks for, or None. Docker (up to 27) takes the
    container's interface from the host at Join, before the sandbox exists,
    moves it in and sets its addresses and routes itself: the interface is
    made where Docker takes it, and nothing is configured in it that the move
    would drop. Only into the plug-in's own namespace (CNI_NETNS), whose
    addresses and routes are the host's: anywhere else the arg is refused."""
    name = req.args.get(HANDOVER_ARG)
    if name is None:
        return None
    if not ifnames.is_ifname(name) or name in ("all", "default"):
        raise CNIError(INVALID_CONFIG, f"{HANDOVER_ARG}={name!r} is not an interface name",
                       f"{ifnames.RULE}; not 'all' or 'default'")
    try:
        own, target = os.stat("/proc/thread-self/ns/net"), os.stat(req.netns_path_for_use())
    except OSError:
        own = target = None
    if own is None or (own.st_dev, own.st_ino) != (target.st_dev, target.st_ino):
        raise CNIError(INVALID_CONFIG, f"{HANDOVER_ARG} makes the interface in the plug-in's own network "
                                       f"namespace: CNI_NETNS {req.netns} is another one")
    return name


def attach(req, conf: BridgeConf, nft_also=None) -> dict:
    """A veth from the sandbox to `conf.bridge`, addressed by IPAM; all or
    nothing. With HANDOVER_ARG, the sandbox's end is made unconfigured in
    our own namespace instead (_handover_name). `nft_also(host veth,
    container MAC, addresses)`: another writer's nft addition for the
    anti-spoofing chain's transaction (flat's fast path; see
    firewall.add_mac_filter), made once the veth exists; the caller undoes
    it if it fails later."""
    handover = _handover_name(req)  # refused before anything is made
    sandbox = req.netns_path_for_use()
    if conf.macspoofchk or conf.ip_spoof_check:
        features.require("nft_bridge", "anti-spoofing (macspoofchk)")  # before anything is made
    with contextlib.ExitStack() as undo:
        try:
            netns_fd = netns.open_netns(sandbox)
        except netns.NetnsGone:
            raise CNIError(UNKNOWN_CONTAINER, f"network namespace {req.netns} does not exist") from None
        undo.callback(os.close, netns_fd)
        # handed over, the container's end is made in our own namespace: one socket serves both
        with netlink.socket_in() as host, \
                (contextlib.nullcontext(host) if handover else netlink.socket_in(sandbox)) as inside:
            bridge = netlink.ensure_bridge(host, conf.bridge, conf.mtu, conf.promisc)
            if conf.vlan:
                netlink.enable_vlan_filtering(host, bridge["index"], conf.bridge)
            with contextlib.ExitStack() as rollback:
                # The veth first: if the interface exists (a repeated ADD), we
                # fail before IPAM, so the rollback cannot free its address.
                host_name = netlink.create_veth(host, handover or req.ifname, netns_fd, conf.mtu, inside,
                                                peer_mac=conf.mac if handover else None)
                rollback.callback(netlink.delete_link, host, host_name)
                ipam = delegate.add(req)
                rollback.callback(delegate.delete, req)
                # The rules need only the addresses: an iptables-restore
                # started for them (~3 ms, more with many rules in the
                # tables) runs while the links are configured; one a kept
                # process serves (~0.3 ms, firewall.restores_kept) runs
                # here. On a failure, the rollback waits for it before
                # removing what it made.
                rollback.callback(firewall.remove_rules, _tag(req))
                rules = _rules(req, conf, ipam["ips"])
                rules_added = beside.start("add-rules", firewall.add_rules, _tag(req), rules,
                                           here=firewall.restores_kept(rules))
                rollback.callback(rules_added)
                port = netlink.configure_port(host, host_name, bridge["index"], conf.hairpin)
                if conf.vlan:
                    netlink.set_port_vlan(host, port["index"], conf.vlan)
                routes = _container_routes(conf, ipam)
                container = (netlink.describe(netlink.link(inside, handover)) if handover else
                             _configure_sandbox(inside, sandbox, req.ifname, conf.mac, ipam["ips"], routes))
                if conf.is_gateway:
                    _ensure_gateway(host, bridge, ipam["ips"], conf.force_address)
                if (error := rules_added()) is not None:
                    raise error
                addresses = [ip["address"] for ip in ipam["ips"]]
                also = nft_also(host_name, container["mac"], addresses) if nft_also else None
                if conf.macspoofchk or conf.ip_spoof_check:
                    rollback.callback(firewall.remove_mac_filter, _spoof_tag(req))
                    firewall.add_mac_filter(_spoof_tag(req), host_name, container["mac"],
                                            addresses if conf.ip_spoof_check else (), also=also)
                elif also:
                    nft.run_fresh(also)
                rollback.pop_all()
            bridge = netlink.describe(netlink.link_by_index(host, bridge["index"]))
    interfaces = [
        {"name": conf.bridge, "mac": bridge["mac"]},
        {"name": host_name, "mac": port["mac"]},
        {"name": req.ifname, "mac": container["mac"], "mtu": container["mtu"], "sandbox": req.netns},
    ]
    ips = [dict(ip, interface=2) for ip in ipam["ips"]]
    return {"cniVersion": CURRENT, "interfaces": interfaces, "ips": ips,
            "routes": routes, "dns": ipam.get("dns") or {}}


def _rules(req, conf: BridgeConf, ips: list) -> dict:
    return firewall.bridge_rules(_tag(req), conf.bridge, [ip["address"] for ip in ips], conf.ip_masq,
                                 conf.forbidden_out, conf.open_inbound, conf.metadata, conf.internal,
                                 conf.firewall_chained)


def _container_routes(conf: BridgeConf, ipam: dict) -> list:
    routes = [dict(r) for r in ipam.get("routes") or []] + [dict(r) for r in conf.extra_routes]
    if conf.is_default_gateway:
        for ip in ipam["ips"]:
            if not ip.get("gateway"):
                continue
            default = "0.0.0.0/0" if ipaddress.ip_address(ip["gateway"]).version == 4 else "::/0"
            if not any(r["dst"] == default for r in routes):
                routes.append({"dst": default, "gw": ip["gateway"]})
    return routes


def _gateway_for(ips: list, dst: str) -> str | None:
    family = ipaddress.ip_network(dst).version
    return next((ip["gateway"] for ip in ips if ip.get("gateway")
                 and ipaddress.ip_address(ip["gateway"]).version == family), None)


def _configure_sandbox(inside, sandbox: str, ifname: str, mac, ips: list, routes: list) -> dict:
    if any(ipaddress.ip_interface(ip["address"]).version == 6 for ip in ips):
        with netns.entered(sandbox):
            _enable_ipv6_without_dad(ifname)
    link = netlink.bring_up(inside, ifname, mac)
    for ip in ips:
        netlink.add_address(inside, link["index"], ip["address"])
    for route in routes:
        netlink.add_route(inside, route["dst"], route.get("gw") or _gateway_for(ips, route["dst"]),
                          link["index"])
    return link


def _enable_ipv6_without_dad(ifname: str) -> None:
    # Docker disables IPv6 in sandboxes that did not ask for it, and duplicate
    # address detection would leave the address unusable for a second or two.
    for key, value in (("disable_ipv6", "0"), ("accept_dad", "0")):
        try:
            netns.write_sysctl(sysctls.interface_path("ipv6", ifname, key), value)
        except FileNotFoundError:
            pass  # a kernel without IPv6: adding the address will say so


def _ensure_gateway(host, bridge: dict, ips: list, force: bool) -> None:
    # one dump per IP version in use: the host's IPv6 link-locals (one per
    # veth) stay out of an IPv4-only network's ADD
    versions = {ipaddress.ip_address(ip["gateway"]).version for ip in ips if ip.get("gateway")}
    present = [a for version in sorted(versions) for a in netlink.addresses(host, bridge["index"], version)]
    for ip in ips:
        if not ip.get("gateway"):
            continue
        wanted = ipaddress.ip_interface(f"{ip['gateway']}/{ipaddress.ip_interface(ip['address']).network.prefixlen}")
        clashing = [a for a in present if a.version == wanted.version
                    and a.network.overlaps(wanted.network) and a != wanted]
        for other in clashing:
            if not force:
                raise CNIError(INVALID_CONFIG, f"bridge {bridge['name']} already has address {other}, not {wanted}",
                               "set forceAddress to replace it, or use another bridge")
            netlink.delete_address(host, bridge["index"], str(other))
        if wanted not in present:  # after the first container, the network's later ones find it there
            netlink.add_address(host, bridge["index"], str(wanted))
        sysctls.ensure_forwarding(wanted.version, f"{bridge['name']} is the gateway of {wanted.network}: "
                                                  "its containers' traffic is routed by this host")


# -- DEL ------------------------------------------------------------------

def delete(req) -> None:
    detach(req, load_conf(req))


def detach(req, conf: BridgeConf, nft_also=None) -> None:
    """Undo `attach`; fine when any part of it is gone already.

    The rules go while the links do, side by side: both wait in the kernel
    for an RCU grace period (a veth's unregistering; the clean-up after a
    restore that deletes, at the command's exit or in kept_restore: ~15 ms
    each here), and two waits at the same time cost one. Neither order opens anything: without its rules the
    container's traffic is no longer accepted, and its links go either way.
    `nft_also`: a function giving another nft removal (script, names) of the
    attachment's, run in the anti-spoofing chain's transaction (flat's fast path)."""
    rules_removed = beside.start("remove-rules", firewall.remove_rules, _tag(req), _families(req.prev_result),
                                 _network_holds_rules(req))
    try:
        with netlink.socket_in() as host:
            if req.netns:
                try:
                    with netlink.socket_in(req.netns_path_for_use()) as inside:
                        netlink.delete_link(inside, req.ifname)
                except netns.NetnsGone:
                    pass  # the sandbox and with it our veth are gone already
            for iface in _host_interfaces(req.prev_result, conf):
                netlink.delete_link(host, iface)
    finally:
        error = rules_removed()
    if error is not None:
        raise error
    if conf.macspoofchk or conf.ip_spoof_check:
        firewall.remove_mac_filter(_spoof_tag(req), also=nft_also)
    elif nft_also:
        script, names = nft_also()
        if script:
            nft.run(script, names=names)
    delegate.delete(req)


def _network_holds_rules(req) -> bool:
    value = req.args.get(HOLD_ARG)
    if value not in (None, "true"):
        raise CNIError(INVALID_CONFIG, f"{HOLD_ARG}={value!r} is not understood", f'{HOLD_ARG}=true, or leave it out')
    return value == "true"


def _families(prev: dict | None) -> tuple:
    """IP families whose rules DEL must look at: those of prevResult, else both."""
    if not prev or not prev.get("ips"):
        return (4, 6)
    return tuple(sorted({ipaddress.ip_interface(ip["address"]).version for ip in prev["ips"]}))


def _host_interfaces(prev: dict | None, conf: BridgeConf) -> list:
    """Host-side veth names recorded in prevResult (never the bridge)."""
    if not prev:
        return []
    return [i["name"] for i in prev.get("interfaces", [])
            if not i.get("sandbox") and i.get("name") != conf.bridge and i.get("name", "").startswith("veth")]


# -- CHECK ----------------------------------------------------------------

def check(req) -> None:
    verify(req, load_conf(req))


def verify(req, conf: BridgeConf) -> None:
    prev = req.prev_result
    if not prev:
        raise CNIError(CHECK_FAILED, "CHECK needs the ADD result as prevResult")
    mine = [(n, i) for n, i in enumerate(prev.get("interfaces", []))
            if i.get("name") == req.ifname and i.get("sandbox")]
    if not mine:
        raise CNIError(CHECK_FAILED, f"prevResult has no interface {req.ifname} in a sandbox")
    position, expected = mine[0]
    try:
        with netlink.socket_in(req.netns_path_for_use()) as inside:
            _check_sandbox(inside, req, prev, position, expected)
    except netns.NetnsGone:
        raise CNIError(UNKNOWN_CONTAINER, f"network namespace {req.netns} does not exist") from None
    with netlink.socket_in() as host:
        _check_host(host, conf, prev)
    missing = firewall.missing_rules(_tag(req), _rules(req, conf, prev.get("ips", [])))
    if missing:
        raise CNIError(CHECK_FAILED, f"{len(missing)} firewall rule(s) of {req.container_id}/{req.ifname} missing",
                       "; ".join(missing))
    delegate.check(req)


def _check_sandbox(inside, req, prev, position, expected) -> None:
    name = req.args.get(SANDBOX_IFNAME_ARG) or req.ifname
    link = netlink.link(inside, name)
    if link is None:
        raise CNIError(CHECK_FAILED, f"interface {name} is missing from {req.netns}")
    found = netlink.describe(link)
    if expected.get("mac") and found["mac"] != expected["mac"].lower():
        raise CNIError(CHECK_FAILED, f"{name} has MAC {found['mac']}, expected {expected['mac']}")
    present = {str(a) for a in netlink.addresses(inside, found["index"])}
    for ip in prev.get("ips", []):
        if ip.get("interface", position) == position and str(ipaddress.ip_interface(ip["address"])) not in present:
            raise CNIError(CHECK_FAILED, f"address {ip['address']} is missing from {name}")
    installed = netlink.routes(inside, found["index"])
    for route in prev.get("routes", []):
        dst = str(ipaddress.ip_network(route["dst"]))
        if not any(d == dst and (not route.get("gw") or g == route["gw"]) for d, g in installed):
            raise CNIError(CHECK_FAILED, f"route {route['dst']} is missing from {name}")


def _check_host(host, conf: BridgeConf, prev: dict) -> None:
    bridge = netlink.link(host, conf.bridge)
    if bridge is None or netlink.kind(bridge) != "bridge":
        raise CNIError(CHECK_FAILED, f"bridge {conf.bridge} is missing")
    for name in _host_interfaces(prev, conf):
        port = netlink.link(host, name)
        if port is None or port.get("master") != bridge["index"]:
            raise CNIError(CHECK_FAILED, f"host interface {name} is missing or not on {conf.bridge}")


# -- repair (not a CNI command: `cnm-shim doctor --repair`) -----------------

def repair(req) -> None:
    restore(req, load_conf(req))


def restore(req, conf: BridgeConf) -> None:
    """Put back the host side of an attachment as prevResult recorded it: its
    host veth on the bridge, the gateway address, its firewall rules. Only
    what prevResult names; the sandbox is the container's and left alone."""
    prev = req.prev_result
    if not prev:
        raise CNIError(CHECK_FAILED, "repair needs the ADD result as prevResult")
    with netlink.socket_in() as host:
        found = netlink.link(host, conf.bridge)
        if found is None or netlink.kind(found) != "bridge":
            raise CNIError(CHECK_FAILED, f"bridge {conf.bridge} is missing: the network's repair puts it back")
        bridge = netlink.describe(found)
        for name in _host_interfaces(prev, conf):
            port = netlink.link(host, name)
            if port is not None and port.get("master") != bridge["index"]:
                netlink.configure_port(host, name, bridge["index"], conf.hairpin)
        if conf.is_gateway:
            _ensure_gateway(host, bridge, prev.get("ips", []), conf.force_address)
    firewall.replace_rules(_tag(req), _rules(req, conf, prev.get("ips", [])))


# -- GC / STATUS ----------------------------------------------------------

def gc(req) -> None:
    firewall.collect_garbage(req.network, ipam_plugin.valid_attachments(req), kinds={tags.BRIDGE, tags.SPOOF})
    delegate.gc(req)


def status(req) -> None:
    delegate.status(req)


# -- plug-ins that are this one on a bridge of their own -------------------------

def on_own_bridge(conf_of):
    """CHECK, repair, GC and STATUS of a plug-in that is the bridge plug-in on
    a bridge its own host side keeps (vxlan, ipsec): `conf_of(req)` is that
    plug-in's view of the bridge plug-in's config. Its ADD and DEL are its own
    (they keep the host side, and vxlan its registry, in step)."""
    return (lambda req: verify(req, conf_of(req)), lambda req: restore(req, conf_of(req)), gc, status)

