"""rancher-portmap: the `portMappings` capability, chained after a main plug-in.

DNAT from host ports to the container's addresses in prevResult, reachable
from outside, from the host itself (127.0.0.1: route_localnet on the bridge,
guarded, see net/localnet.py, and masquerade) and from the container's own
subnet (hairpin masquerade). The rules carry the attachment's tag and
disappear with DEL, chains included.
"""

import ipaddress

from .. import addresses
from ..errors import CHECK_FAILED, CNIError, INVALID_CONFIG
from ..net import firewall, localnet, netlink, sysctls, tags
from . import ipam as ipam_plugin

PROTOCOLS = ("tcp", "udp", "sctp")


def _port(value, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise CNIError(INVALID_CONFIG, f"portMappings: {what} {value!r} must be a port from 1 to 65535")
    return value


def load_mappings(req) -> list:
    raw = req.runtime_config.get("portMappings") or []
    if not isinstance(raw, list):
        raise CNIError(INVALID_CONFIG, "runtimeConfig.portMappings must be a list")
    mappings = []
    for entry in raw:
        if not isinstance(entry, dict):
            raise CNIError(INVALID_CONFIG, f"a port mapping must be an object, got {entry!r}")
        protocol = str(entry.get("protocol") or "tcp").lower()
        if protocol not in PROTOCOLS:
            raise CNIError(INVALID_CONFIG, f"portMappings: protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
        mapping = {"hostPort": _port(entry.get("hostPort"), "hostPort"),
                   "containerPort": _port(entry.get("containerPort"), "containerPort"), "protocol": protocol}
        if entry.get("hostIP") not in (None, "", "0.0.0.0", "::"):
            try:
                mapping["hostIP"] = str(addresses.address(entry["hostIP"], "portMappings: hostIP"))
            except ValueError as exc:
                raise CNIError(INVALID_CONFIG, str(exc)) from None
        mappings.append(mapping)
    return mappings


def _snat(req) -> bool:
    value = req.config.get("snat", True)
    if not isinstance(value, bool):
        raise CNIError(INVALID_CONFIG, f"'snat' must be true or false, got {value!r}")
    return value


def _tag(req) -> tags.Tag:
    # Its own kind: the main plug-in's DEL and GC must not take the port rules, nor ours its rules.
    return tags.of(tags.PORTMAP, req.network, req.container_id, req.ifname)


def _container_cidrs(prev: dict) -> list:
    return [ip["address"] for ip in prev.get("ips", [])]


def _host_interface(prev: dict) -> str | None:
    return next((i["name"] for i in prev.get("interfaces", []) if not i.get("sandbox")), None)


def _localnet_bridge(prev: dict) -> str | None:
    """The bridge that gets route_localnet: prevResult's first host interface
    (the main plug-in's bridge), refused unless it is a bridge of this host.
    The name reaches a /proc/sys path: `all` or `default` would change every
    interface, `../..` a file elsewhere; a NIC named here would open the host's
    loopback to its LAN."""
    name = _host_interface(prev)
    if name is None:
        return None
    try:
        sysctls.interface_path("ipv4", name, "route_localnet")
    except ValueError as exc:
        raise CNIError(INVALID_CONFIG, f"prevResult: {exc}", "the first host interface must be the bridge") from None
    with netlink.socket_in() as host:
        link = netlink.link(host, name)
    if link is None:
        raise CNIError(INVALID_CONFIG, f"prevResult: host interface {name!r} does not exist on this host",
                       "the first host interface must be the bridge the container is attached to")
    if netlink.kind(link) != "bridge":
        raise CNIError(INVALID_CONFIG, f"prevResult: host interface {name!r} is a {netlink.kind(link) or 'device'}, "
                       "not a bridge", "route_localnet is set only on the bridge the container is attached to")
    return name


def add(req) -> dict:
    mappings = load_mappings(req)
    snat = _snat(req)
    prev = req.prev_result
    if prev is None:
        raise CNIError(INVALID_CONFIG, "rancher-portmap must follow a plug-in that returns the container's addresses")
    if mappings:
        bridge = _localnet_bridge(prev) if snat else None
        for version in sorted({ipaddress.ip_interface(c).version for c in _container_cidrs(prev)}):
            sysctls.ensure_forwarding(version, "published ports: packets DNAT'ed to a container are routed by this host")
        firewall.add_rules(_tag(req), firewall.port_rules(_tag(req), mappings, _container_cidrs(prev), snat, bridge))
        if bridge:  # after its guard, which add_rules put in place
            localnet.turn_on(bridge)
    return prev


def delete(req) -> None:
    localnet.release(_tag(req).every.__contains__)
    firewall.remove_rules(_tag(req))


def check(req) -> None:
    if load_mappings(req) and not firewall.rules_of(_tag(req)):
        raise CNIError(CHECK_FAILED, "the port mapping rules are missing")


def gc(req) -> None:
    valid = ipam_plugin.valid_attachments(req)
    localnet.release(tags.stale_test(req.network, {tags.PORTMAP}, valid))
    firewall.collect_garbage(req.network, valid, kinds={tags.PORTMAP})


def status(req) -> None:
    return None
