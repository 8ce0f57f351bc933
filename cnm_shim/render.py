"""The CNI conflist a Docker network stands for.

The same document is used by the shim for Docker's containers and, exported,
by CNI runtimes, so both models attach to the same bridge and draw from the same
address pool (the IPAM store keys addresses by subnet).
"""

import ipaddress
import os

from cni_backend.ipam.etcd_store import CONFIG_KEYS

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
                 etcd_tls=None, etcd_insecure=False) -> dict:
    """Docker's IPAM data (IPv4Data / IPv6Data entries as Docker sends them;
    cnm.IPAMData.to_wire) -> rancher-ipam's config: the same subnets, gateways,
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
        for key, value in (etcd_tls or {}).items():
            section[CONFIG_KEYS[key]] = value
        if etcd_insecure:  # serve --insecure-etcd: the IPAM plug-in accepts http:// members too
            section["insecureEtcd"] = True
    return section


def conflist(cni_name: str, plugin: dict, chained=()) -> dict:
    return {"cniVersion": CNI_VERSION, "name": cni_name, "plugins": [plugin, *chained]}


MIN_BURST_BITS = 24000  # two full-size frames: a burst smaller than a packet never lets it through


def _burst(rate: int, burst: int | None) -> int:
    return burst if burst else max(rate // 10, MIN_BURST_BITS)


# -o tuning.KEY -> the reference tuning plug-in's key
TUNING_KEYS = (("tuning.mtu", "mtu"), ("tuning.promisc", "promisc"), ("tuning.allmulti", "allmulti"))


def meta_plugins(opts: dict, tuning_dir: str | None = None) -> list:
    """The reference meta plug-ins the network's options ask for, chained after
    its own plug-in (they read its result): tuning for the container
    interface's link attributes, bandwidth for rate limits, firewall (first:
    it reads the container's addresses; its iptables backend, never
    firewalld) for the admin's CNI-ADMIN rules. `tuning_dir`:
    where tuning keeps the values it changed (to restore them at a DEL that
    finds the interface, which ours never does: it is back on the host by
    then), so that the shim can remove them (tuning_backup)."""
    if opts.get("firewall") and opts.get("cni.export"):
        raise DriverError("option firewall=true cannot go with cni.export=true: after the firewall plug-in's ADD "
                          "the shim puts this driver's isolation back above the plug-in's CNI-FORWARD chain, "
                          "which a CNI runtime running the exported conflist would not do")
    policy = opts.get("firewall.ingress_policy")
    if policy and not opts.get("firewall"):
        raise DriverError(f"option firewall.ingress_policy={policy} needs firewall=true: it is a setting of the "
                          "reference firewall plug-in, which only -o firewall=true chains")
    chained = [{"type": "firewall", "backend": "iptables", **({"ingressPolicy": policy} if policy else {})}] \
        if opts.get("firewall") else []
    tuning = {conf_key: opts[key] for key, conf_key in TUNING_KEYS if opts.get(key) is not None}
    if tuning:
        chained.append({"type": "tuning", **tuning, **({"dataDir": tuning_dir} if tuning_dir else {})})
    bandwidth = {}
    for direction in ("ingress", "egress"):
        rate, burst = opts.get(f"bandwidth.{direction}_rate"), opts.get(f"bandwidth.{direction}_burst")
        if burst and not rate:
            raise DriverError(f"option bandwidth.{direction}_burst needs bandwidth.{direction}_rate")
        if rate:
            bandwidth[f"{direction}Rate"], bandwidth[f"{direction}Burst"] = rate, _burst(rate, burst)
    if bandwidth:
        chained.append({"type": "bandwidth", **bandwidth})
    if opts.get("portmap") == "reference":
        chained.append(_reference_portmap(opts))
    return chained


# The reference portmap, last in the network's own list (it reads the
# container's addresses from the result before it). Its settings are fixed:
# snat (127.0.0.1 and hairpin, as Docker's -p answers; route_localnet only
# behind our guard, translate.py), the default mark bit, no conditions.
REFERENCE_PORTMAP = {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}


def _reference_portmap(opts: dict) -> dict:
    """-o portmap=reference, refused where it cannot be what -p means."""
    if opts.get("internal"):
        raise DriverError("option portmap=reference cannot go with --internal: an internal network publishes no "
                          "ports (valid: leave portmap out, or portmap=rancher)")
    if opts.get("cni.export"):
        raise DriverError("option portmap=reference cannot go with cni.export=true: the exported conflist chains "
                          "rancher-portmap for CNI runtimes, and a list with two plug-ins taking portMappings would "
                          "publish every port twice; the shim also guards route_localnet around the reference "
                          "portmap, which a CNI runtime would not (valid: portmap=rancher with cni.export=true)")
    return dict(REFERENCE_PORTMAP, capabilities=dict(REFERENCE_PORTMAP["capabilities"]))


def chains_firewall(conf: dict) -> bool:
    """Whether the reference firewall follows the network's own plug-in."""
    return any(plugin.get("type") == "firewall" for plugin in conf["plugins"][1:])


def tuning_backup(conf: dict, container_id: str, ifname: str) -> str | None:
    """The file the tuning plug-in of `conf` saved an attachment's old link
    attributes in (dataDir/CONTAINERID_IFNAME.json), if it chains tuning with
    a dataDir of ours."""
    for plugin in conf["plugins"][1:]:
        if plugin["type"] == "tuning" and plugin.get("dataDir"):
            return os.path.join(plugin["dataDir"], f"{container_id}_{ifname}.json")
    return None


PORTMAP = {"type": "rancher-portmap", "capabilities": {"portMappings": True}, "snat": True}


def exported(conf: dict) -> dict:
    """What CNI runtimes get: the same network, with port mappings in the chain."""
    return dict(conf, plugins=conf["plugins"] + [PORTMAP])


def ports_name(cni_name: str) -> str:
    return cni_name + "-ports"


def names_of(cni_name: str) -> tuple:
    """Every CNI network name a network uses: its own, and its ports list's.
    Rules and addresses are found by these names, so no other network, ours
    or a CNI runtime's, may use one of them."""
    return cni_name, ports_name(cni_name)


def ports_conflist(conf: dict) -> dict:
    """Docker publishes ports only on the endpoint that gives the container its
    gateway, after Join: a separate list, run with the endpoint's result."""
    return {"cniVersion": conf["cniVersion"], "name": ports_name(conf["name"]), "plugins": [PORTMAP]}
