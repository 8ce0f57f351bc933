"""The data path of each of the shim's networks, from a network's state
record (the kernel side is cni_backend/datapath.py); shown by `cnm-shim
status` and `cnm-shim doctor`."""

from cni_backend import datapath
from cni_backend.errors import CNIError
from cni_backend.plugins import flat as flat_plugin, vxlan as vxlan_plugin


def describe(net: dict) -> dict:
    """What carries `net`'s traffic, proven by counters; never raises for a
    network whose host side is half gone (that is what the doctor reports)."""
    plugin = net["conflist"]["plugins"][0]
    try:
        if net["backend"] == "flat":
            found = datapath.flat(net["cni_name"], flat_plugin.load_network(plugin))
        elif net["backend"] == "vxlan":
            found = datapath.vxlan(vxlan_plugin.load_network(plugin))
        else:
            found = datapath.bridge(net["bridge"])
    except (CNIError, OSError) as exc:
        return {"path": "unknown", "summary": f"cannot tell: {exc}"}
    return dict(found, network=net["id"], cni_name=net["cni_name"], backend=net["backend"])


def host() -> dict:
    return datapath.host()


def host_summary(found: dict) -> str:
    return datapath.host_summary(found)

