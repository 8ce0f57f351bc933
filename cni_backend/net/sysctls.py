"""Host sysctls a backend relies on: set when they differ, with the reason
logged, never left to whatever another program (dockerd) happened to set.

A fresh host has net.ipv4.ip_forward=0; a running dockerd turns it on, a
stopped one does not turn it off, a host with only a CNI runtime never had it.
The reference bridge plug-in sets forwarding itself for isGateway, and so do
we, for every backend that routes (see docs/host-requirements.md).
"""

import logging

from ..ifnames import is_ifname

log = logging.getLogger("rancher-cni")

FORWARDING = {4: "net/ipv4/ip_forward", 6: "net/ipv6/conf/all/forwarding"}


def read(path: str) -> str | None:
    """/proc/sys/<path> in the current namespace; None when it does not exist."""
    try:
        with open("/proc/sys/" + path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def ensure(path: str, value: str, reason: str) -> bool:
    """Set /proc/sys/<path> to `value` unless it is already; True when changed."""
    current = read(path)
    if current == value:
        return False
    with open("/proc/sys/" + path, "w") as f:
        f.write(value)
    log.warning("%s was %s, set to %s: %s", path.replace("/", "."), current, value, reason)
    return True


def ensure_forwarding(version: int, reason: str) -> bool:
    return ensure(FORWARDING[version], "1", reason)


def interface_path(family: str, ifname: str, key: str) -> str:
    """net/<family>/conf/<ifname>/<key>, for an interface name that cannot
    point anywhere else: not `all` or `default` (host-wide), no `/` or `..`."""
    if not is_ifname(ifname) or ifname in ("all", "default"):
        raise ValueError(f"{ifname!r} is not an interface name")
    return f"net/{family}/conf/{ifname}/{key}"
