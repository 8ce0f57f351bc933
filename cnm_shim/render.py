"""The CNI conflist a Docker network stands for.

The same document is used by the shim for Docker's containers and, exported,
by CNI runtimes, so both models attach to the same bridge and draw from the same
address pool (the IPAM store keys addresses by subnet).
"""

import ipaddress

from .errors import DriverError

# 1.0.0: what containerd 1.6 (libcni 1.1) understands
CNI_VERSION = "1.0.0"


def _range(ipam_data: dict) -> dict:
    """Docker's IPAMData {Pool, Gateway 'ip/len', AuxAddresses} -> a CNI range."""
    try:
        subnet = ipaddress.ip_network(ipam_data["Pool"])
    except (KeyError, ValueError):
        raise DriverError(f"invalid IPAM pool {ipam_data.get('Pool')!r}") from None
    rng = {"subnet": str(subnet)}
    if ipam_data.get("Gateway"):
        rng["gateway"] = str(ipaddress.ip_interface(ipam_data["Gateway"]).ip)
    return rng


def _exclusions(ipam_data: dict) -> list:
    return [str(ipaddress.ip_address(a.split("/")[0])) for a in (ipam_data.get("AuxAddresses") or {}).values()]


def ipam_section(ipv4: list, ipv6: list, ipam_data_dir: str, sub_pools: dict, etcd_endpoints=(),
                 etcd_tls=None) -> dict:
    """Docker's IPAM data -> rancher-ipam's config: the same subnets, gateways,
    --ip-range and --aux-address, so CNI runtimes allocate as Docker does."""
    ranges, exclude = [], []
    for data in list(ipv4) + list(ipv6):
        rng = _range(data)
        sub_pool = sub_pools.get(rng["subnet"])
        if sub_pool:  # --ip-range: CNI runtimes allocate from it too (IPAM clamps the ends)
            hosts = ipaddress.ip_network(sub_pool)
            rng["rangeStart"], rng["rangeEnd"] = str(hosts.network_address), str(hosts.broadcast_address)
        ranges.append([rng])
        exclude += _exclusions(data)
    if not ranges:
        raise DriverError("the network has no IPAM pool; give --subnet or use an IPAM driver that assigns one")
    section = {"type": "rancher-ipam", "ranges": ranges, "exclude": exclude, "dataDir": ipam_data_dir}
    if etcd_endpoints:
        section["etcdEndpoints"] = list(etcd_endpoints)
        for key, path in (etcd_tls or {}).items():
            section[f"etcd{key.capitalize()}File"] = path
    return section


def bridge_plugin(bridge: str, opts: dict, ipam: dict) -> dict:
    plugin = {
        "type": "rancher-bridge", "bridge": bridge,
        "isGateway": True, "isDefaultGateway": True, "ipMasq": opts["ip_masq"],
        "hairpinMode": opts["hairpin"], "promiscMode": opts["promisc"], "macspoofchk": opts["macspoofchk"],
        "capabilities": {"ips": True, "mac": True}, "ipam": ipam,
    }
    if opts["mtu"]:
        plugin["mtu"] = opts["mtu"]
    if opts["vlan"]:
        plugin["vlan"] = opts["vlan"]
    return plugin


def flat_plugin(bridge: str, opts: dict, ipam: dict) -> dict:
    plugin = {"type": "rancher-flat", "bridge": bridge, "parent": opts["parent"], "hairpinMode": opts["hairpin"],
              "fastPath": opts["fast_path"], "stateDir": ipam["dataDir"], "capabilities": {"ips": True, "mac": True}, "ipam": ipam}
    for key in ("vlan", "mtu"):
        if opts[key]:
            plugin[key] = opts[key]
    if opts["metadata_link_ip"]:
        plugin["metadata"] = {"ip": opts["metadata_ip"], "linkIP": opts["metadata_link_ip"],
                              "bridge": opts["metadata_bridge"]}
    return plugin


def vxlan_plugin(bridge: str, opts: dict, ipam: dict) -> dict:
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


BACKEND_PLUGINS = {"bridge": bridge_plugin, "flat": flat_plugin, "vxlan": vxlan_plugin}
BRIDGE_PREFIX = {"bridge": "rb-", "flat": "rf-", "vxlan": "rv-"}


def conflist(cni_name: str, plugin: dict) -> dict:
    return {"cniVersion": CNI_VERSION, "name": cni_name, "plugins": [plugin]}


PORTMAP = {"type": "rancher-portmap", "capabilities": {"portMappings": True}, "snat": True}


def exported(conf: dict) -> dict:
    """What CNI runtimes get: the same network, with port mappings in the chain."""
    return dict(conf, plugins=conf["plugins"] + [PORTMAP])


def ports_conflist(conf: dict) -> dict:
    """Docker publishes ports only on the endpoint that gives the container its
    gateway, after Join: a separate list, run with the endpoint's result."""
    return {"cniVersion": conf["cniVersion"], "name": conf["name"] + "-ports", "plugins": [PORTMAP]}
