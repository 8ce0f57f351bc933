"""rancher-flat: containers straight on the business network, no NAT.

A bridge with the host's uplink enslaved; the business router is the
containers' gateway (it is not on the bridge); with a metadata link, each
container also gets a host route to the metadata address via the link address.
Frames a container sends must carry its own MAC and IP (anti-spoofing).
Unicast between a container and the uplink skips the bridge (the fast path,
net/flat_fastpath.py) unless "fastPath" is false.
"""

import copy
import ipaddress

from .. import addresses, flatnet, paths
from ..errors import CHECK_FAILED, CNIError, INVALID_CONFIG
from ..ipam import config as ipam_config
from ..net import firewall, flat_fastpath, netlink, tags
from . import bridge as bridge_plugin
from . import ipam as ipam_plugin
from . import fields
from .bridge import BridgeConf

DEFAULT_METADATA_IP = "169.254.169.250"
DEFAULT_METADATA_BRIDGE = "docker0"


def _subnets(config: dict) -> list:
    if not config.get("ipam"):
        return []
    conf = ipam_config.load(config["ipam"], {})  # a malformed ipam section is error 7, naming the field
    return [str(r.subnet) for s in conf.range_sets for r in s]


def _metadata(config: dict, subnets: list):
    raw = config.get("metadata")
    if not raw:
        return None
    if not isinstance(raw, dict) or not raw.get("linkIP"):
        raise CNIError(INVALID_CONFIG, "'metadata' needs at least 'linkIP' (an address inside the subnet)")
    try:
        md_ip = addresses.address(raw.get("ip") or DEFAULT_METADATA_IP, "metadata ip")
        link_ip = addresses.address(raw["linkIP"], "metadata linkIP")
    except ValueError as exc:
        raise CNIError(INVALID_CONFIG, f"metadata: {exc}") from None
    if md_ip.version != 4 or link_ip.version != 4:
        raise CNIError(INVALID_CONFIG, "metadata: the metadata and link addresses are IPv4 addresses")
    if not any(link_ip in ipaddress.ip_network(s) for s in subnets):
        raise CNIError(INVALID_CONFIG, f"metadata linkIP {link_ip} is outside the subnet {', '.join(subnets)}",
                       "the link address must be an address of the flat subnet, reserved for the link")
    return flatnet.Metadata(str(md_ip), str(link_ip), fields.ifname(raw, "bridge", DEFAULT_METADATA_BRIDGE))


def load_network(config: dict) -> flatnet.FlatNetwork:
    subnets = _subnets(config)
    if not subnets:
        raise CNIError(INVALID_CONFIG, "rancher-flat needs the ipam section's subnet")
    if "parent" not in config:
        raise CNIError(INVALID_CONFIG, "'parent' is required: the host interface facing the business network")
    return flatnet.FlatNetwork(
        bridge=fields.ifname(config, "bridge", "rflat0"),
        parent=fields.ifname(config, "parent"),
        vlan=fields.integer(config, "vlan", 0, 4094) or 0,
        mtu=fields.integer(config, "mtu", 68, 65535),
        subnets=tuple(subnets),
        metadata=_metadata(config, subnets),
        state_dir=str(config.get("stateDir") or paths.STATE_DIR),
        fast_path=fields.flag(config, "fastPath") if "fastPath" in config else True,
    )


def _bridge_conf(req, flat: flatnet.FlatNetwork) -> BridgeConf:
    extra = [{"dst": f"{flat.metadata.ip}/32", "gw": flat.metadata.link_ip}] if flat.metadata else []
    return BridgeConf(bridge=flat.bridge, is_gateway=False, is_default_gateway=True, force_address=False,
                      ip_masq=False, mtu=flat.mtu, hairpin=fields.flag(req.config, "hairpinMode"), promisc=False,
                      vlan=0, macspoofchk=True, mac=fields.requested_mac(req), ip_spoof_check=True, extra_routes=extra,
                      forbidden_out=(flat.metadata.bridge,) if flat.metadata else (), open_inbound=True,
                      metadata=(flat.metadata.bridge, flat.metadata.ip) if flat.metadata else None,
                      firewall_chained=fields.flag(req.config, "firewallChained"))


def _with_link_excluded(req, flat: flatnet.FlatNetwork):
    """The request, with the link address added to IPAM's exclusions: it is
    bound on every host's metadata bridge, no container may have it."""
    if not flat.metadata:
        return req
    config = copy.deepcopy(req.config)
    ipam = config.setdefault("ipam", {})
    ipam["exclude"] = list(ipam.get("exclude") or []) + [flat.metadata.link_ip]
    req.config = config
    return req


def _set_metadata_neighbours(flat, result: dict, present: bool) -> None:
    """Replies from the metadata address reach the container over the link:
    the metadata bridge knows the container's MAC without asking (an ARP
    request from that side may not cross into the flat network)."""
    if not flat.metadata:
        return
    sandbox_ifaces = [i for i in result.get("interfaces", []) if i.get("sandbox")]
    with netlink.socket_in() as host:
        md_bridge = netlink.link(host, flat.metadata.bridge)
        if md_bridge is None:
            return
        for ip in result.get("ips", []):
            address = ipaddress.ip_interface(ip["address"])
            if address.version == 4 and sandbox_ifaces:
                netlink.set_neighbour(host, md_bridge["index"], str(address.ip), sandbox_ifaces[0]["mac"], present)


def add(req) -> dict:
    flat = load_network(req.config)
    # the network's metadata link and firewall are checked while the container is attached
    firewall_checked = flatnet.ensure_beside(flat)
    req = _with_link_excluded(req, flat)
    fast_path = flatnet.fast_path_usable(flat)

    def fast_path_entries(host_veth, mac, cidrs):
        # they go into the network's fast path table: once it is in place
        _raise_if_any(firewall_checked())
        return flat_fastpath.fresh_attachment(flat.suffix, _tag(req), host_veth, mac, cidrs,
                                              flat.metadata.ip if flat.metadata else None)
    try:
        # the fast path's entries go in the anti-spoofing chain's nft transaction
        result = bridge_plugin.attach(req, _bridge_conf(req, flat), nft_also=fast_path_entries if fast_path else None)
    finally:
        error = firewall_checked()  # waited for even when the attachment failed (it undid itself)
    try:
        _raise_if_any(error)
        _set_metadata_neighbours(flat, result, present=True)
        if fast_path:
            host_veth, container = _ends(result, flat)
            _pin_to_its_veth(host_veth, container["mac"])
    except BaseException:  # whatever the other thread raised, too
        _detach_made(req, flat, result)
        raise
    return result


def _raise_if_any(error) -> None:
    if error is not None:
        raise error


def _detach_made(req, flat: flatnet.FlatNetwork, result: dict) -> None:
    """Undo an attachment this ADD made, as its DEL would: the result names
    the host's veth (also when the container's end was handed over)."""
    req.config = dict(req.config, prevResult=result)
    flat_fastpath.remove_attachment(flat.suffix, _tag(req))
    bridge_plugin.detach(req, _bridge_conf(req, flat))


def _tag(req) -> tags.Tag:
    return tags.of(tags.FLAT, req.network, req.container_id, req.ifname)


def _ends(result: dict, flat: flatnet.FlatNetwork) -> tuple:
    """(the host veth's name, the container's interface) in an ADD result."""
    host_veth = next(i["name"] for i in result["interfaces"] if not i.get("sandbox") and i["name"] != flat.bridge)
    return host_veth, next(i for i in result["interfaces"] if i.get("sandbox"))


def _add_fast_path(req, flat: flatnet.FlatNetwork, result: dict) -> None:
    """The attachment's fast path on its own (repair; ADD makes it in the
    anti-spoofing chain's transaction), and its pinned bridge entry."""
    host_veth, container = _ends(result, flat)
    flat_fastpath.add_attachment(flat.suffix, _tag(req), host_veth, container["mac"],
                                 [ip["address"] for ip in result["ips"]],
                                 flat.metadata.ip if flat.metadata else None)
    _pin_to_its_veth(host_veth, container["mac"])


def _pin_to_its_veth(host_veth: str, mac: str) -> None:
    """With the fast path, the bridge no longer sees the container's unicast
    to the uplink, so the entry it learned would age out and frames from the
    host to the container would then flood every port. A static entry goes
    with the veth."""
    with netlink.socket_in() as host:
        netlink.pin_bridge_fdb(host, netlink.link(host, host_veth)["index"], mac)


def delete(req) -> None:
    flat = load_network(req.config)
    req = _with_link_excluded(req, flat)
    if req.prev_result:
        _set_metadata_neighbours(flat, req.prev_result, present=False)
    # the fast path's entries go in the anti-spoofing chain's nft transaction
    bridge_plugin.detach(req, _bridge_conf(req, flat), nft_also=lambda: flat_fastpath.removal(flat.suffix, _tag(req)))


def _spoof_filter(req, flat: flatnet.FlatNetwork, result: dict) -> tuple:
    """(tag, host veth, the rules its anti-spoofing chain must hold, container MAC, cidrs)."""
    host_veth = next((i["name"] for i in result.get("interfaces", [])
                      if not i.get("sandbox") and i["name"] != flat.bridge), None)
    container = next((i for i in result.get("interfaces", []) if i.get("sandbox")), None)
    cidrs = [ip["address"] for ip in result.get("ips", [])]
    tag = tags.of(tags.SPOOF, req.network, req.container_id, req.ifname)
    mac = container["mac"] if container else None
    return tag, host_veth, firewall.mac_filter_rules(tag, mac, cidrs) if mac else [], mac, cidrs


def check(req) -> None:
    flat = load_network(req.config)
    bridge_plugin.verify(_with_link_excluded(req, flat), _bridge_conf(req, flat))
    tag, host_veth, wanted, _, _ = _spoof_filter(req, flat, req.prev_result)
    if host_veth and firewall.mac_filter_size(tag, host_veth) != len(wanted):
        raise CNIError(CHECK_FAILED, f"the anti-spoofing chain of {req.container_id}/{req.ifname} is missing "
                                     "or out of date", "cnm-shim doctor --repair puts it back")
    if flatnet.fast_path_usable(flat) and not flat_fastpath.attachment_present(flat.suffix, _tag(req)):
        raise CNIError(CHECK_FAILED, f"the fast path of {req.container_id}/{req.ifname} is missing",
                       "cnm-shim doctor --repair puts it back")


def repair(req) -> None:
    flat = load_network(req.config)
    bridge_plugin.restore(_with_link_excluded(req, flat), _bridge_conf(req, flat))
    tag, host_veth, _, mac, cidrs = _spoof_filter(req, flat, req.prev_result)
    if host_veth and mac:  # today's chain (flushed and filled again), and the veth's jump to it
        firewall.add_mac_filter(tag, host_veth, mac, cidrs)
    if flatnet.fast_path_usable(flat):
        flatnet.ensure(flat)
        flat_fastpath.remove_legacy(flat.suffix, _tag(req))  # made by the previous version: replaced
        _add_fast_path(req, flat, req.prev_result)


def gc(req) -> None:
    bridge_plugin.gc(req)
    flat = load_network(req.config)
    flat_fastpath.collect_garbage(flat.suffix, req.network, ipam_plugin.valid_attachments(req))


def status(req) -> None:
    bridge_plugin.status(req)
