"""The network-config fields several plug-ins read the same way (flags,
bounded integers, interface names, the requested MAC): validated once here,
every failure error 7 (INVALID_CONFIG) naming the field."""

import re

from ..errors import CNIError, INVALID_CONFIG
from ..ifnames import RULE, is_ifname

MAC_PATTERN = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}\Z")


def flag(config: dict, key: str) -> bool:
    value = config.get(key, False)
    if not isinstance(value, bool):
        raise CNIError(INVALID_CONFIG, f"'{key}' must be true or false, got {value!r}")
    return value


def integer(config: dict, key: str, low: int, high: int) -> int | None:
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise CNIError(INVALID_CONFIG, f"'{key}' must be an integer from {low} to {high}, got {value!r}")
    return value


def ifname(config: dict, key: str, default=None) -> str:
    value = config.get(key, default)
    if not is_ifname(value):
        raise CNIError(INVALID_CONFIG, f"'{key}' {value!r} is not a valid interface name", RULE)
    return value


def requested_mac(req) -> str | None:
    """The MAC the runtime asks for (runtimeConfig, then CNI_ARGS), lower case."""
    mac = req.runtime_config.get("mac") or req.args_cni.get("mac") or req.args.get("MAC")
    if mac is None:
        return None
    if not isinstance(mac, str) or not MAC_PATTERN.match(mac) or int(mac[:2], 16) & 1:
        raise CNIError(INVALID_CONFIG, f"requested MAC {mac!r} is not a unicast MAC address",
                       "expected six hex pairs separated by ':', first octet even")
    return mac.lower()
