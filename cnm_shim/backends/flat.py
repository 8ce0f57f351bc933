"""The flat backend: containers directly on the business network through an
uplink enslaved to the network's bridge, with an optional metadata link
(`rancher-flat`)."""

from .. import options
from ..errors import DriverError
from ..options import Option
from .base import Backend, LoadedHost

# Why the reference firewall's ingressPolicy=same-bridge is refused here.
FLAT_SAME_BRIDGE = (
    "the flat bridge is this host's uplink (the parent's addresses and routes move to it), and the plug-in's "
    "CNI-ISOLATION-STAGE-2 rule '-o BRIDGE -j DROP', with no exception for replies, would drop everything the "
    "host's other same-bridge networks route out through it and every reply coming back to them from the "
    "business network; a flat network is open to its business network by design, so there is nothing for "
    "same-bridge to close. Use ingress_policy=open (the default)")

OPTIONS = (
    Option("parent", options.ifname(), None, "the host interface facing the business network (required)"),
    Option("vlan", options.int_between(0, 4094), 0, "use the VLAN sub-interface PARENT.VLAN, made and removed by us"),
    Option("bridge", options.BRIDGE.parse, None, "the flat bridge (default rf-<network id>)"),
    options.MTU,
    options.HAIRPIN,
    Option("metadata_ip", options.ipv4, "169.254.169.250", "the metadata service's address"),
    Option("metadata_link_ip", options.ipv4, None,
           "an address of the subnet bound on the metadata bridge; turns the metadata link on"),
    Option("metadata_bridge", options.BRIDGE.parse, "docker0", "the bridge the metadata service is on"),
    Option("fast_path", options.boolean, True,
           "unicast between containers and the uplink skips the bridge and its br_netfilter hooks"),
    *options.BANDWIDTH,
    *options.TUNING,
    *options.firewall_options({"same-bridge": FLAT_SAME_BRIDGE}),
    options.CNI_EXPORT,
    options.CNI_NAME,
)


def render(bridge: str, opts: dict, ipam: dict) -> dict:
    if opts["firewall"] and opts["fast_path"]:
        raise DriverError("rancher-flat: option firewall=true needs fast_path=false: with the fast path the "
                          "containers' unicast with the business network skips the bridge and its br_netfilter "
                          "hooks, so the firewall plug-in's CNI-FORWARD and the admin's CNI-ADMIN rules would "
                          "never see it")
    plugin = {"type": "rancher-flat", "bridge": bridge, "parent": opts["parent"], "hairpinMode": opts["hairpin"],
              "fastPath": opts["fast_path"], "stateDir": ipam["dataDir"], "capabilities": {"ips": True, "mac": True}, "ipam": ipam}
    for key in ("vlan", "mtu"):
        if opts[key]:
            plugin[key] = opts[key]
    if opts["metadata_link_ip"]:
        plugin["metadata"] = {"ip": opts["metadata_ip"], "linkIP": opts["metadata_link_ip"],
                              "bridge": opts["metadata_bridge"]}
    plugin.update(options.firewall_chained(opts))
    return plugin


class FlatHost(LoadedHost):
    """The uplink, the metadata link and their rules (cni_backend/flatnet.py),
    made at `network create` so a wrong parent fails there."""


BACKEND = Backend(name="flat", driver="rancher-flat", options=OPTIONS, render=render,
                  bridge_prefix="rf-", cni_type="rancher-flat", host=FlatHost(),
                  required={"parent": "the host interface facing the business network, e.g. -o parent=eth1"},
                  internal_refused="its containers are on the business network itself, through the uplink, "
                                   "so there is no outside to cut them off from; use rancher-bridge or "
                                   "rancher-vxlan for an internal network")
