"""The registry of backends: one `Backend` entry per backend (base.py), one
module each. Everything that depends on which backend a network uses asks
here; see docs/architecture.md, "How to add a backend"."""

from ..errors import DriverError
from . import bridge, conflist, flat, ipsec, vxlan
from .base import Backend, HostSide

REGISTRY = {entry.name: entry for entry in (
    bridge.BACKEND,
    flat.BACKEND,
    vxlan.BACKEND,
    ipsec.BACKEND,
    conflist.BACKEND,
)}

# Docker driver (socket) name -> backend name
DRIVERS = {entry.driver: entry.name for entry in REGISTRY.values()}

__all__ = ["Backend", "HostSide", "REGISTRY", "DRIVERS", "get"]


def get(name: str) -> Backend:
    try:
        return REGISTRY[name]
    except KeyError:
        raise DriverError(f"unknown backend {name!r}; backends: " + ", ".join(REGISTRY)) from None
