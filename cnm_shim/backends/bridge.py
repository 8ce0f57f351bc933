"""The bridge backend: containers on a Linux bridge of the host, NATed out
through the host (`rancher-bridge`)."""

from cni_backend import datapath, networks

from .. import options
from ..options import Option
from .base import Backend, HostSide

OPTIONS = (
    options.BRIDGE,
    options.BRIDGE_SHARED,
    options.MTU,
    options.IP_MASQ,
    options.HAIRPIN,
    Option("promisc", options.boolean, False, "promiscuous mode on the bridge"),
    Option("macspoofchk", options.boolean, False, "drop frames whose source MAC is not the container's"),
    Option("vlan", options.int_between(0, 4094), 0, "VLAN id of the container ports (needs bridge vlan_filtering)"),
    options.CNI_EXPORT,
    options.CNI_NAME,
)


def render(bridge: str, opts: dict, ipam: dict) -> dict:
    plugin = {
        "type": "rancher-bridge", "bridge": bridge,
        "isGateway": True, "hairpinMode": opts["hairpin"], "promiscMode": opts["promisc"],
        "macspoofchk": opts["macspoofchk"], "capabilities": {"ips": True, "mac": True}, "ipam": ipam,
    }
    plugin.update(options.way_out(opts))
    if opts["mtu"]:
        plugin["mtu"] = opts["mtu"]
    if opts["vlan"]:
        plugin["vlan"] = opts["vlan"]
    return plugin


class BridgeHost(HostSide):
    """A bridge of the host; one that existed before (docker0) is reused and left in place."""

    def create(self, net: dict, undo) -> None:
        net["bridge_created"] = not networks.bridge_exists(net["bridge"])
        networks.ensure_bridge(net["bridge"], net["options"]["mtu"])
        if net["bridge_created"]:
            undo.callback(networks.remove_bridge, net["bridge"])

    def remove(self, net: dict) -> None:
        if net["bridge_created"]:
            networks.remove_bridge(net["bridge"])

    def ensure(self, net: dict) -> None:
        networks.ensure_bridge(net["bridge"], net["options"]["mtu"])

    def made_by_us(self, net: dict) -> bool:
        return bool(net.get("bridge_created"))

    def datapath(self, net: dict) -> dict:
        return datapath.bridge(net["bridge"])


BACKEND = Backend(name="bridge", driver="rancher-bridge", options=OPTIONS, render=render,
                  bridge_prefix="rb-", cni_type="rancher-bridge", host=BridgeHost())
