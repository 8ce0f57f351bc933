"""The VXLAN backend: one subnet across hosts, the network's bridge plus a
VTEP (`rancher-vxlan`)."""

from cni_backend import datapath, vxlannet
from cni_backend.plugins import vxlan as vxlan_plugin

from .. import options
from ..options import Option
from .base import Backend, HostSide

OPTIONS = (
    Option("vni", options.int_between(1, 16777215), 1042, "the VXLAN network identifier; the VTEP is vtep<VNI>"),
    Option("vtep_dev", options.ifname(), None, "the underlay interface (default: the one with the default route)"),
    Option("peers", options.ipv4_list, [], "comma-separated underlay addresses of the other hosts"),
    Option("bridge", options.BRIDGE.parse, None, "the network's bridge (default rv-<network id>)"),
    options.MTU,
    options.IP_MASQ,
    options.CNI_EXPORT,
    options.CNI_NAME,
)


def render(bridge: str, opts: dict, ipam: dict) -> dict:
    plugin = {"type": "rancher-vxlan", "bridge": bridge, "vni": opts["vni"], "peers": opts["peers"],
              "isGateway": True, "isDefaultGateway": True, "ipMasq": opts["ip_masq"], "stateDir": ipam["dataDir"],
              "capabilities": {"ips": True, "mac": True}, "ipam": ipam}
    if ipam.get("etcdEndpoints") and not opts["peers"]:
        # remote endpoints come from the registry (cnm-shim vxlan-agent); a network
        # given its peers floods to them and learns nothing from etcd
        plugin["etcdEndpoints"] = ipam["etcdEndpoints"]
    if opts["vtep_dev"]:
        plugin["vtepDev"] = opts["vtep_dev"]
    if opts["mtu"]:
        plugin["mtu"] = opts["mtu"]
    return plugin


def _network(net: dict) -> vxlannet.VxlanNetwork:
    return vxlan_plugin.load_network(net["conflist"]["plugins"][0])


class VxlanHost(HostSide):
    """The bridge and its VTEP (cni_backend/vxlannet.py)."""

    def create(self, net: dict, undo) -> None:
        net["bridge_created"] = True
        vxlan = _network(net)
        vxlannet.ensure(vxlan)
        undo.callback(vxlannet.remove, vxlan)

    def remove(self, net: dict) -> None:
        vxlannet.remove(_network(net))

    def ensure(self, net: dict) -> None:
        vxlannet.ensure(_network(net))

    def ports(self, net: dict) -> list:
        return [_network(net).vtep]

    def datapath(self, net: dict) -> dict:
        return datapath.vxlan(_network(net))


BACKEND = Backend(name="vxlan", driver="rancher-vxlan", options=OPTIONS, render=render,
                  bridge_prefix="rv-", cni_type="rancher-vxlan", host=VxlanHost(), unique=(("vni", "VNI"),))
