"""Spec versions we speak, and conversion of results between them.

Results are handled internally in the 1.1.0 shape and converted to the
request's version only when written out, as libcni's `types/100` does.
"""

import ipaddress
import re

from . import addresses
from .errors import CNIError, INCOMPATIBLE_VERSION, INVALID_CONFIG
from .ifnames import RULE, is_ifname

SUPPORTED_VERSIONS = ("0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT = "1.1.0"

# Fields that spec 1.1.0 added; older readers must not see them.
_INTERFACE_FIELDS_1_1 = ("mtu", "socketPath", "pciID")
_ROUTE_FIELDS_1_1 = ("mtu", "advmss", "priority", "table", "scope")


def parse(version: str) -> tuple:
    """'1.0.0' -> (1, 0, 0); raises CNIError(1) for anything else."""
    try:
        parts = tuple(int(p) for p in str(version).split("."))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise CNIError(INCOMPATIBLE_VERSION, f"invalid cniVersion {version!r}",
                       "expected MAJOR.MINOR.PATCH, e.g. 1.0.0")
    return parts


def require_supported(version: str) -> str:
    parse(version)
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(INCOMPATIBLE_VERSION,
                       f"cniVersion {version} is not supported",
                       "supported versions: " + ", ".join(SUPPORTED_VERSIONS))
    return version


def at_least(version: str, minimum: str) -> bool:
    return parse(version) >= parse(minimum)


def highest_supported(versions) -> str | None:
    """The highest of `versions` we support (for a conflist's `cniVersions`)."""
    ours = [v for v in versions if v in SUPPORTED_VERSIONS]
    return max(ours, key=parse) if ours else None


def normalize_result(raw: dict, what: str = "result") -> dict:
    """Any supported result version -> the internal (1.1.0) shape, its
    addresses and interface names checked (see `check_result`)."""
    if not isinstance(raw, dict):
        raise CNIError(INCOMPATIBLE_VERSION, f"{what}: a result must be a JSON object")
    for key in ("interfaces", "ips", "routes"):
        if not isinstance(raw.get(key) or [], list) or not all(isinstance(e, dict) for e in raw.get(key) or []):
            raise CNIError(INVALID_CONFIG, f"{what}: '{key}' must be a list of objects")
    version = raw.get("cniVersion", "")
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(INCOMPATIBLE_VERSION,
                       f"cannot read a result of cniVersion {version!r}",
                       "supported versions: " + ", ".join(SUPPORTED_VERSIONS))
    result = {
        "cniVersion": CURRENT,
        "interfaces": [dict(i) for i in raw.get("interfaces") or []],
        "ips": [],
        "routes": [dict(r) for r in raw.get("routes") or []],
        "dns": dict(raw.get("dns") or {}),
    }
    for ip in raw.get("ips") or []:
        ip = dict(ip)
        ip.pop("version", None)
        result["ips"].append(ip)
    check_result(result, what)
    return result


_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}\Z")


def check_result(result: dict, what: str = "result") -> None:
    """What a result names reaches rules, sysctl paths, nft scripts and
    netlink (a chained plug-in acts on prevResult): every interface name is
    one the kernel would accept, every MAC six hex pairs, every address and
    route one `addresses` accepts (no IPv6 scope ID)."""
    try:
        for n, iface in enumerate(result["interfaces"]):
            if not is_ifname(iface.get("name")):
                raise ValueError(f"interfaces[{n}].name {iface.get('name')!r} is not an interface name ({RULE})")
            if iface.get("mac") not in (None, "") and not (isinstance(iface["mac"], str) and _MAC.match(iface["mac"])):
                raise ValueError(f"interfaces[{n}].mac {iface['mac']!r} is not a MAC address such as 02:42:0a:16:00:05")
            if not isinstance(iface.get("sandbox", ""), str):
                raise ValueError(f"interfaces[{n}].sandbox must be a path string")
        for n, ip in enumerate(result["ips"]):
            addresses.interface(ip.get("address"), f"ips[{n}].address")
            if ip.get("gateway") not in (None, ""):
                addresses.address(ip["gateway"], f"ips[{n}].gateway")
            index = ip.get("interface", 0)
            if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                raise ValueError(f"ips[{n}].interface {index!r} must be an index into 'interfaces'")
        for n, route in enumerate(result["routes"]):
            addresses.network(route.get("dst"), f"routes[{n}].dst", strict=False)
            if route.get("gw") not in (None, ""):
                addresses.address(route["gw"], f"routes[{n}].gw")
    except ValueError as exc:
        raise CNIError(INVALID_CONFIG, f"{what}: {exc}") from None


def convert_result(result: dict, version: str) -> dict:
    """The internal result -> the shape of spec `version`."""
    out = {"cniVersion": version}
    interfaces = [dict(i) for i in result.get("interfaces") or []]
    routes = [dict(r) for r in result.get("routes") or []]
    ips = [dict(i) for i in result.get("ips") or []]
    if version != "1.1.0":
        for iface in interfaces:
            for key in _INTERFACE_FIELDS_1_1:
                iface.pop(key, None)
        for route in routes:
            for key in _ROUTE_FIELDS_1_1:
                route.pop(key, None)
    if not at_least(version, "1.0.0"):
        for ip in ips:
            address = ipaddress.ip_interface(ip["address"])
            ip["version"] = str(address.version)
    if interfaces:
        out["interfaces"] = interfaces
    if ips:
        out["ips"] = ips
    if routes:
        out["routes"] = routes
    out["dns"] = dict(result.get("dns") or {})
    return out
