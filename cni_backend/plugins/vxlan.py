"""rancher-vxlan: one subnet across hosts. The bridge plug-in's attach on a
bridge that also holds the VTEP, with the containers' MTU set to fit the
VXLAN header."""

from .. import paths, vxlan_registry, vxlannet
from ..errors import CNIError, INVALID_CONFIG
from ..ipam import config as ipam_config
from . import bridge as bridge_plugin
from . import fields


def load_network(config: dict) -> vxlannet.VxlanNetwork:
    vni = fields.integer(config, "vni", 1, 16777215) or 1042
    return vxlannet.VxlanNetwork(
        bridge=fields.ifname(config, "bridge", f"vxbr{vni}"[:15]),
        vni=vni,
        port=fields.integer(config, "port", 1, 65535) or 4789,
        vtep_dev=fields.ifname(config, "vtepDev") if config.get("vtepDev") else None,
        peers=vxlannet.parse_peers(config.get("peers")),
        state_dir=str(config.get("stateDir") or paths.STATE_DIR),
        registry=bool(config.get("etcdEndpoints")),
        subnets=_subnets(config.get("ipam")),
    )


def _subnets(ipam) -> tuple:
    """(subnet, gateway) of each range the ipam section gives; none when it
    gives no ranges of that shape (the IPAM plug-in itself judges its section)."""
    if not isinstance(ipam, dict):
        return ()
    raw = ipam.get("ranges") or ([[{k: ipam[k] for k in ("subnet", "gateway") if ipam.get(k)}]]
                                 if ipam.get("subnet") else None)
    try:
        return tuple((r.subnet, r.gateway) for s in ipam_config.parse_range_sets(raw) for r in s)
    except CNIError:
        return ()


def _bridge_conf(req, net, mtu: int | None = None):
    """The bridge plug-in's view of this network (mtu: what the underlay allows, known at ADD)."""
    conf = bridge_plugin.load_conf(req)
    if mtu and conf.mtu and conf.mtu > mtu:
        raise CNIError(INVALID_CONFIG, f"mtu {conf.mtu} does not fit: the underlay allows {mtu} inside VXLAN")
    conf.bridge = net.bridge
    conf.mtu = conf.mtu or mtu
    conf.open_inbound = "subnet"  # the subnet's containers on other hosts arrive through the VTEP
    return conf


def _record_name(req) -> str:
    return f"{req.container_id}-{req.ifname}"


def add(req) -> dict:
    net = load_network(req.config)
    mtu = vxlannet.ensure(net)
    result = bridge_plugin.attach(req, _bridge_conf(req, net, mtu))
    sandbox = next(i for i in result["interfaces"] if i.get("sandbox"))
    # for the host's vxlan-agent, which tells the other hosts where this container is
    vxlan_registry.record_endpoint(net.state_dir, net.vni, _record_name(req),
                                   [ip["address"] for ip in result["ips"]], sandbox["mac"])
    return result


def delete(req) -> None:
    net = load_network(req.config)
    bridge_plugin.detach(req, _bridge_conf(req, net))
    vxlan_registry.forget_endpoint(net.state_dir, net.vni, _record_name(req))


check, repair, gc, status = bridge_plugin.on_own_bridge(lambda req: _bridge_conf(req, load_network(req.config)))
