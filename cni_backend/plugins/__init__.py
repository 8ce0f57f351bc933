"""Our CNI plug-ins, by executable name. Imported lazily: the thick front must
not pay for pyroute2 when a daemon does the work."""

import importlib

PLUGINS = {
    "rancher-bridge": "cni_backend.plugins.bridge",
    "rancher-ipam": "cni_backend.plugins.ipam",
    "rancher-portmap": "cni_backend.plugins.portmap",
    "rancher-flat": "cni_backend.plugins.flat",
    "rancher-vxlan": "cni_backend.plugins.vxlan",
    "rancher-ipsec": "cni_backend.plugins.ipsec",
}


def load(name: str):
    return importlib.import_module(PLUGINS[name])
