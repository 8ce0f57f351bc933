"""rancher-portmap: the `portMappings` capability, chained after a main plug-in.

DNAT from host ports to the container's addresses in prevResult, reachable
from outside, from the host itself (127.0.0.1: route_localnet on the bridge and
masquerade) and from the container's own subnet (hairpin masquerade). The
rules carry the attachment's tag and disappear with DEL, chains included.
"""

import ipaddress

from .. import addresses
from ..errors import CHECK_FAILED, CNIError, INVALID_CONFIG
from ..net import firewall, sysctls, tags
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


def add(req) -> dict:
    mappings = load_mappings(req)
    snat = _snat(req)
    prev = req.prev_result
    if prev is None:
        raise CNIError(INVALID_CONFIG, "rancher-portmap must follow a plug-in that returns the container's addresses")
    if mappings:
        bridge = _host_interface(prev)
        if snat and bridge:
            try:  # lets DNAT'ed packets from 127.0.0.1 leave through the bridge
                sysctls.ensure(sysctls.interface_path("ipv4", bridge, "route_localnet"), "1",
                               "published ports answer on 127.0.0.1: DNAT'ed packets leave through the bridge")
            except FileNotFoundError:
                pass  # not a host interface (prevResult named a sandbox's)
            except ValueError as exc:
                raise CNIError(INVALID_CONFIG, f"prevResult: {exc}") from None
        for version in sorted({ipaddress.ip_interface(c).version for c in _container_cidrs(prev)}):
            sysctls.ensure_forwarding(version, "published ports: packets DNAT'ed to a container are routed by this host")
        firewall.add_rules(_tag(req), firewall.port_rules(_tag(req), mappings, _container_cidrs(prev), snat))
    return prev


def delete(req) -> None:
    firewall.remove_rules(_tag(req))


def check(req) -> None:
    if load_mappings(req) and not firewall.rules_of(_tag(req)):
        raise CNIError(CHECK_FAILED, "the port mapping rules are missing")


def gc(req) -> None:
    firewall.collect_garbage(req.network, ipam_plugin.valid_attachments(req), kinds={tags.PORTMAP})


def status(req) -> None:
    return None
