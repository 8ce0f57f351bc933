"""The VXLAN backend: one subnet across hosts, the network's bridge plus a
VTEP (`rancher-vxlan`)."""

from .. import options
from ..options import Option
from .base import Backend, LoadedHost

OPTIONS = (
    Option("vni", options.int_between(1, 16777215), 1042, "the VXLAN network identifier; the VTEP is vtep<VNI>"),
    Option("vtep_dev", options.ifname(), None, "the underlay interface (default: the one with the default route)"),
    Option("peers", options.ipv4_list, [], "comma-separated underlay addresses of the other hosts"),
    Option("bridge", options.BRIDGE.parse, None, "the network's bridge (default rv-<network id>)"),
    options.MTU,
    options.IP_MASQ,
    *options.BANDWIDTH,
    *options.TUNING,
    *options.firewall_options(),
    options.PORTMAP_OPTION,
    options.CNI_EXPORT,
    options.CNI_NAME,
)


def render(bridge: str, opts: dict, ipam: dict) -> dict:
    plugin = {"type": "rancher-vxlan", "bridge": bridge, "vni": opts["vni"], "peers": opts["peers"],
              "isGateway": True, "stateDir": ipam["dataDir"], "capabilities": {"ips": True, "mac": True}, "ipam": ipam}
    plugin.update(options.way_out(opts))
    if ipam.get("etcdEndpoints") and not opts["peers"]:
        # remote endpoints come from the registry (cnm-shim vxlan-agent); a network
        # given its peers floods to them and learns nothing from etcd
        plugin["etcdEndpoints"] = ipam["etcdEndpoints"]
    if opts["vtep_dev"]:
        plugin["vtepDev"] = opts["vtep_dev"]
    if opts["mtu"]:
        plugin["mtu"] = opts["mtu"]
    plugin.update(options.firewall_chained(opts))
    return plugin


class VxlanHost(LoadedHost):
    """The bridge and its VTEP (cni_backend/vxlannet.py)."""


BACKEND = Backend(name="vxlan", driver="rancher-vxlan", options=OPTIONS, render=render,
                  bridge_prefix="rv-", cni_type="rancher-vxlan", host=VxlanHost(), unique=(("vni", "VNI"),))
