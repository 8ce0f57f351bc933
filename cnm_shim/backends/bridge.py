"""The bridge backend: containers on a Linux bridge of the host, NATed out
through the host (`rancher-bridge`)."""

from cni_backend import hostnet

from .. import options
from ..state import Network
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
    *options.BANDWIDTH,
    *options.TUNING,
    *options.firewall_options(),
    options.PORTMAP_OPTION,
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
    plugin.update(options.firewall_chained(opts))
    return plugin


class BridgeHost(HostSide):
    """A bridge of the host; one that existed before (docker0) is reused and left in place."""

    @staticmethod
    def _bridge(net: Network) -> hostnet.Bridge:
        return hostnet.Bridge(net.bridge, net.options["mtu"])

    def create(self, net: Network, undo) -> None:
        bridge = self._bridge(net)
        net.bridge_created = not bridge.exists()
        bridge.ensure()
        if net.bridge_created:
            undo.callback(bridge.remove)

    def remove(self, net: Network) -> None:
        if net.bridge_created:
            hostnet.Bridge(net.bridge, None).remove()

    def ensure(self, net: Network) -> None:
        self._bridge(net).ensure()

    def made_by_us(self, net: Network) -> bool:
        return bool(net.bridge_created)

    def datapath(self, net: Network) -> dict:
        return hostnet.Bridge(net.bridge, None).datapath(net.cni_name)


BACKEND = Backend(name="bridge", driver="rancher-bridge", options=OPTIONS, render=render,
                  bridge_prefix="rb-", cni_type="rancher-bridge", host=BridgeHost())
