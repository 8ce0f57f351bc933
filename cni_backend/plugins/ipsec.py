"""rancher-ipsec: one subnet across hosts, the hosts joined by IPsec tunnels
(ESP in UDP 4500) that this host's charon negotiates with each peer. The
bridge plug-in's attach on a bridge with proxy ARP (ipsecnet), with the
containers' MTU set to fit the ESP-in-UDP overhead.

Config keys (besides the bridge plug-in's):
    bridge      the bridge (default ipsbr-<8 hex of the network name>)
    mtu         the containers' MTU; default and maximum: what fits the tunnel
    underlay    this host's underlay IPv4 address; default: the source address
                of the route to the first peer
    peers       the other hosts' underlay IPv4 addresses (a list)
    pskFile     absolute path of the pre-shared key file (mode 0600, root's);
                left out with etcdEndpoints in the ipam section: the key is
                kept in etcd, one per subnet, made by the first host
                (ipsec_registry), copied to stateDir/ipsec/keys/
    peers       empty with etcdEndpoints in the ipam section: the peers come
                from etcd's registry (`cnm-shim ipsec-registry`); then
                'underlay' is required
    ikeProposal, espProposal   default aes128-sha256-modp2048 / aes128-sha256;
                no AEAD (GCM, CCM, ChaCha20) on the user-space data path
    ikeRekeyTime, childRekeyTime   seconds between rekeys of the IKE_SA and of
                the CHILD_SAs (default 14400 / 3600, 5 to 2592000); a rekey makes
                the new SA before the old one goes: no packet waits for it
    stateDir    where the host's charon and network records live (one per host)
    ipam        one range: subnet (the whole network), rangeStart/rangeEnd
                (this host's block of it) and gateway (inside the block)
"""

import hashlib
import ipaddress

from .. import ipsec_registry, ipsec_tunnels, ipsecnet, paths
from ..errors import CNIError, INVALID_CONFIG
from ..ipam import config as ipam_config
from . import bridge as bridge_plugin
from . import fields


def _invalid(msg: str, details: str = "") -> CNIError:
    return CNIError(INVALID_CONFIG, msg, details)


def load_network(config: dict) -> ipsecnet.IpsecNetwork:
    name = config.get("name")
    if not isinstance(name, str) or not name:
        raise _invalid("ipsec: the network config has no 'name'")
    underlay = config.get("underlay")
    if underlay is not None:
        underlay = _ipv4(underlay, "underlay")
    peers = _peers(config.get("peers"))
    if underlay in peers:
        raise _invalid(f"ipsec: 'peers' lists this host's own underlay address {underlay}")
    datapath = "libipsec"  # the stricter check: what the user-space data path can do
    ike = ipsec_tunnels.check_proposal(config.get("ikeProposal", ipsec_tunnels.DEFAULT_IKE_PROPOSAL), "IKE", datapath)
    esp = ipsec_tunnels.check_proposal(config.get("espProposal", ipsec_tunnels.DEFAULT_ESP_PROPOSAL), "ESP", datapath)
    rekey = {key: ipsec_tunnels.check_rekey(config.get(name, default), name) for key, name, default in (
        ("ike_rekey", "ikeRekeyTime", ipsec_tunnels.DEFAULT_IKE_REKEY),
        ("child_rekey", "childRekeyTime", ipsec_tunnels.DEFAULT_CHILD_REKEY))}
    subnet, block, gateway = _ranges(config.get("ipam"))
    state_dir = config.get("stateDir") or paths.STATE_DIR
    ipsec_tunnels.check_path(str(state_dir), "stateDir")
    etcd = _etcd(config.get("ipam"))
    psk = config.get("pskFile")
    if psk is None and etcd is not None:  # the key kept in etcd, by subnet; a local copy in the state dir
        psk = ipsec_registry.key_file(str(state_dir), subnet)
    elif not isinstance(psk, str) or not psk.startswith("/"):
        raise _invalid(f"ipsec: 'pskFile' must be the absolute path of the pre-shared key file, not {psk!r}",
                       "or leave it out with etcdEndpoints in the ipam section: the key is then kept in etcd")
    registry = not peers and etcd is not None
    if registry and underlay is None:
        raise _invalid("ipsec: with the peers from etcd's registry ('peers' empty, etcdEndpoints in the ipam "
                       "section), set 'underlay' to this host's underlay address")
    return ipsecnet.IpsecNetwork(
        name=name,
        bridge=fields.ifname(config, "bridge", "ipsbr-" + hashlib.sha256(name.encode()).hexdigest()[:8]),
        underlay=underlay, peers=peers, psk_file=ipsec_tunnels.check_path(psk, "pskFile"),
        subnet=subnet, local_block=block, gateway=gateway, state_dir=str(state_dir),
        mtu=fields.integer(config, "mtu", 576, 65535), ike_proposal=ike, esp_proposal=esp, **rekey,
        key_store=etcd if config.get("pskFile") is None else None, registry=registry)


def _etcd(ipam):
    """The ipam section's etcd settings (ipsec_registry.EtcdSettings), None without etcdEndpoints."""
    if not isinstance(ipam, dict) or not ipam.get("etcdEndpoints"):
        return None
    return ipsec_registry.EtcdSettings.from_ipam(ipam_config.load(ipam, {}))


def _ipv4(raw, what: str) -> str:
    try:
        address = ipaddress.IPv4Address(raw if isinstance(raw, str) else "")
    except ValueError:
        raise _invalid(f"ipsec: {what} {raw!r} is not an IPv4 address") from None
    return ipsec_tunnels.check_unicast(str(address), what)


def _peers(raw) -> tuple:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _invalid("ipsec: 'peers' must be a list of the other hosts' underlay IPv4 addresses")
    peers = tuple(_ipv4(p, "peer") for p in raw)
    if len(set(peers)) != len(peers):
        raise _invalid(f"ipsec: 'peers' lists an address twice: {list(peers)}")
    return peers


def _ranges(ipam) -> tuple:
    """(the subnet, this host's block) from the ipam section's one range."""
    hint = ('e.g. "ranges": [[{"subnet": "10.42.0.0/16", "gateway": "10.42.1.1", '
            '"rangeStart": "10.42.1.2", "rangeEnd": "10.42.1.254"}]]')
    if not isinstance(ipam, dict):
        raise _invalid("ipsec: the network needs an 'ipam' section with this host's range", hint)
    raw = ipam.get("ranges") or ([[{k: ipam[k] for k in ("subnet", "gateway", "rangeStart", "rangeEnd")
                                    if ipam.get(k)}]] if ipam.get("subnet") else None)
    sets = ipam_config.parse_range_sets(raw)
    ranges = [r for s in sets for r in s]
    if len(ranges) != 1 or ranges[0].subnet.version != 4:
        raise _invalid("ipsec: the ipam section must give exactly one IPv4 range", hint)
    r = ranges[0]
    start, end = (raw[0][0].get("rangeStart"), raw[0][0].get("rangeEnd"))
    if not start or not end:
        raise _invalid("ipsec: the ipam range needs rangeStart and rangeEnd: this host's block of the subnet "
                       "(each host its own, not overlapping)", hint)
    block = ipsecnet.block_of(str(start), str(end))
    if not ipaddress.IPv4Network(block).subnet_of(r.subnet) or block == str(r.subnet):
        raise _invalid(f"ipsec: this host's block {block} (rangeStart..rangeEnd) must be a part of the "
                       f"subnet {r.subnet}, smaller than it", hint)
    if r.gateway is None or r.gateway not in ipaddress.IPv4Network(block):
        raise _invalid(f"ipsec: the ipam gateway {r.gateway} must lie in this host's block {block} "
                       f"(e.g. {next(ipaddress.IPv4Network(block).hosts())}, outside rangeStart..rangeEnd): "
                       "the tunnels are routed from it", hint)
    return str(r.subnet), block, f"{r.gateway}/{r.subnet.prefixlen}"


def _bridge_conf(req, net, mtu: int | None = None):
    conf = bridge_plugin.load_conf(req)
    conf.bridge = net.bridge
    conf.mtu = conf.mtu or mtu
    conf.open_inbound = "subnet"  # the subnet's containers on other hosts arrive through ipsec0
    return conf


def add(req) -> dict:
    net = load_network(req.config)
    mtu = ipsecnet.ensure(net)
    return bridge_plugin.attach(req, _bridge_conf(req, net, mtu))


def delete(req) -> None:
    bridge_plugin.detach(req, _bridge_conf(req, load_network(req.config)))


check, repair, gc, status = bridge_plugin.on_own_bridge(lambda req: _bridge_conf(req, load_network(req.config)))
