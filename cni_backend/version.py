"""Spec versions we speak, and conversion of results between them.

Results are handled internally in the 1.1.0 shape and converted to the
request's version only when written out, as libcni's `types/100` does.
"""

import ipaddress

from .errors import CNIError, INCOMPATIBLE_VERSION

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


def normalize_result(raw: dict) -> dict:
    """Any supported result version -> the internal (1.1.0) shape."""
    if not isinstance(raw, dict):
        raise CNIError(INCOMPATIBLE_VERSION, "a result must be a JSON object")
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
    return result


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
