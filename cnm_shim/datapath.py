"""The data path of each of the shim's networks, from a network's state
record (the kernel side is cni_backend/datapath.py); shown by `cnm-shim
status` and `cnm-shim doctor`."""

from cni_backend import datapath
from cni_backend.errors import CNIError

from . import backends
from .state import Network


def describe(net: Network) -> dict:
    """What carries `net`'s traffic, proven by counters; never raises for a
    network whose host side is half gone (that is what the doctor reports)."""
    try:
        found = backends.get(net.backend).host.datapath(net)
    except (CNIError, OSError) as exc:
        return {"path": "unknown", "summary": f"cannot tell: {exc}"}
    return dict(found, network=net.id, cni_name=net.cni_name, backend=net.backend)


def host() -> dict:
    return datapath.host()


def host_summary(found: dict) -> str:
    return datapath.host_summary(found)

