"""The IPsec network's host side (rancher-ipsec): the bridge with the
gateway, proxy ARP on it, and this host's charon (`ipsec_tunnels.Charon`) with
one connection per peer host, ESP in UDP 4500 between the underlay addresses.

One connection (one IKE_SA) per peer host, and in it one child (CHILD_SA) per
network that has the peer: were each network its own connection to the same
peer, charon would put a second network's CHILD_SA into the first one's IKE_SA,
and the responder would match it against the first network's child config.
Networks sharing a peer therefore share its key and IKE proposal (checked).
Adding or removing a network reloads the peer's connection with the children
changed; charon keeps the IKE_SA and the other children's SAs.

One subnet spans the hosts; each host hands out its own block of it (the ipam
range, rangeStart..rangeEnd). A connection to a peer proposes this host's
block as its local traffic selector and the whole subnet as the remote one;
IKEv2 narrows the remote side to the block the peer proposes as its own, so
no host needs to know the others' blocks. charon's user-space data path
(kernel-libipsec) routes each remote block in table 220 to its TUN device
ipsec0 (a rule at priority 220, before main), from an address of this host
inside its own block: the bridge's gateway, which therefore lies in the block
(each host its own gateway) and is set before any connection is loaded.

How a container reaches a remote one: the containers have the whole subnet
on-link, so they ARP for a remote address on the bridge. Proxy ARP on the
bridge answers for any address the host routes out of another interface:
remote blocks, routed to ipsec0 in table 220 (route lookups take the rules,
so table 220 is seen); the host's own containers are routed to the bridge
(main table) and answer for themselves. Plain routes in the containers could
not work: the remote blocks are on-link in the subnet. No table-220 route is
ours: charon installs and removes them with the CHILD_SAs.

One charon per host, shared by the host's IPsec networks: all of them must
use the same `stateDir`, in which live `ipsec/charon/` (charon's files) and
`ipsec/networks/<digest>.json` (one record per network: its peers, so that
the guard accepts the union and the last network stops charon). Only the
peers may reach UDP 500/4500 (`net/ipsec_guard`).

MTU: containers get the largest packet that, inside ESP in UDP, still fits
the underlay (`container_mtu`: 1422 on a 1500 underlay with aes128-sha256),
and on the user-space data path no more than ipsec0 takes (1400, fixed in
kernel-libipsec): a packet with DF set either crosses whole or is refused at
the container with "message too long".
"""

import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import os
import signal
import time

from . import ipsec_tunnels, locks, paths
from .errors import CNIError, INVALID_CONFIG, PLUGIN_FAILED
from .net import ipsec_guard, netlink, sysctls, tools

# outer IPv4 20 + UDP 8 + ESP SPI/sequence 8 + AES-CBC IV 16; then the inner
# packet + pad length + next header (2), padded to the AES block (16); then the ICV
OUTER_FIXED = 20 + 8 + 8 + 16
AES_BLOCK = 16
ICV_BYTES = {"sha1": 12, "md5": 12, "sha256": 16, "sha384": 24, "sha512": 32, "aesxcbc": 12}
STOP_TIMEOUT = 10.0
# kernel-libipsec's ipsec0: strongSwan 5.9.8 has no setting for its MTU, and it
# reads packets into buffers of this size, so raising the link's MTU from
# outside truncates larger packets (measured: a 1422-byte DF ping is lost)
LIBIPSEC_TUN_MTU = 1400


@dataclasses.dataclass(frozen=True)
class IpsecNetwork:
    name: str               # the CNI network's name
    bridge: str
    underlay: str | None    # this host's underlay address; None: the source of the route to the first peer
    peers: tuple            # the other hosts' underlay addresses
    psk_file: str
    subnet: str             # the one subnet across hosts
    local_block: str        # this host's part of it (covers rangeStart..rangeEnd)
    gateway: str            # the bridge's address, e.g. 10.42.1.1/16: inside local_block
    state_dir: str = paths.STATE_DIR
    mtu: int | None = None  # what the user asked for (at most container_mtu)
    ike_proposal: str = ipsec_tunnels.DEFAULT_IKE_PROPOSAL
    esp_proposal: str = ipsec_tunnels.DEFAULT_ESP_PROPOSAL
    # the key kept in etcd (ipsec_registry.EtcdSettings): fetched into psk_file when that is missing
    key_store: object = None
    registry: bool = False  # the peers come from etcd's registry (ipsec_registry.Agent, set_peers)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()[:8]

    def connection(self, peer: str) -> str:
        """The network's child (CHILD_SA config) in the peer's connection:
        network and peer digests (check_name's shape)."""
        return f"n{self.digest}-{hashlib.sha256(peer.encode()).hexdigest()[:8]}"

    @property
    def root(self) -> str:
        return os.path.join(self.state_dir, "ipsec")

    @property
    def charon_dir(self) -> str:
        return os.path.join(self.root, "charon")

    @property
    def record(self) -> str:
        return os.path.join(self.root, "networks", f"{self.digest}.json")


def container_mtu(underlay_mtu: int, esp_proposal: str = ipsec_tunnels.DEFAULT_ESP_PROPOSAL) -> int:
    """The largest inner packet whose ESP-in-UDP packet fits `underlay_mtu`:
    OUTER_FIXED + roundup(inner + 2, 16) + ICV <= underlay. With the default
    aes128-sha256 (ICV 16) and 1500: 68 + 1424 = 1492 fits, 68 + 1440 does
    not, so 1422 (78 bytes of overhead at this size, 93 at most at others).
    An unknown integrity algorithm counts as the largest ICV (32)."""
    icv = max([n for alg, n in ICV_BYTES.items() if alg in esp_proposal.split("-")] or [32])
    return (underlay_mtu - OUTER_FIXED - icv) // AES_BLOCK * AES_BLOCK - 2


# -- the underlay -------------------------------------------------------------

def _underlay(net: IpsecNetwork) -> tuple:
    """(this host's underlay address, its interface's MTU)."""
    if net.underlay:
        for entry in json.loads(tools.run(["ip", "-j", "-4", "addr", "show"]) or "[]"):
            for a in entry.get("addr_info", []):
                if a.get("local") == net.underlay:
                    return net.underlay, int(entry["mtu"])
        raise CNIError(INVALID_CONFIG, f"ipsec: underlay address {net.underlay} is not on any interface of this host",
                       "set 'underlay' to an IPv4 address of the interface that reaches the peers")
    if not net.peers:
        raise CNIError(INVALID_CONFIG, "ipsec: without peers, set 'underlay' to this host's underlay address")
    route = json.loads(tools.run(["ip", "-j", "-4", "route", "get", net.peers[0]]) or "[{}]")[0]
    if not route.get("prefsrc") or not route.get("dev"):
        raise CNIError(INVALID_CONFIG, f"ipsec: no route with a source address to the peer {net.peers[0]}",
                       "set 'underlay' to this host's underlay address")
    link = json.loads(tools.run(["ip", "-j", "link", "show", "dev", netlink_name(route["dev"])]))[0]
    return route["prefsrc"], int(link["mtu"])


def netlink_name(name: str) -> str:
    if not isinstance(name, str) or not 0 < len(name) <= 15 or "/" in name or name in (".", "..") or \
            any(c.isspace() for c in name):
        raise CNIError(PLUGIN_FAILED, f"ipsec: unexpected interface name {name!r}")
    return name


# -- records ------------------------------------------------------------------

def _records(net: IpsecNetwork) -> dict:
    return _records_in(os.path.dirname(net.record))


def _records_in(folder: str) -> dict:
    out = {}
    for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if entry.endswith(".json"):
            with contextlib.suppress(OSError, ValueError):
                with open(os.path.join(folder, entry)) as f:
                    out[entry[:-5]] = json.load(f)
    return out


def _write_record(net: IpsecNetwork, local: str) -> None:
    os.makedirs(os.path.dirname(net.record), mode=0o700, exist_ok=True)
    with open(net.record + ".tmp", "w") as f:
        json.dump({"name": net.name, "child": f"n{net.digest}", "local": local, "peers": list(net.peers),
                   "block": net.local_block, "subnet": net.subnet, "psk_file": net.psk_file,
                   "ike_proposal": net.ike_proposal, "esp_proposal": net.esp_proposal,
                   "registry": net.registry}, f)
    os.replace(net.record + ".tmp", net.record)


def _guard(net: IpsecNetwork) -> None:
    peers = {p for r in _records(net).values() for p in r.get("peers", [])}
    if peers or _records(net):
        ipsec_guard.ensure(peers)
    else:
        ipsec_guard.remove()


# -- the host's charon --------------------------------------------------------

def _pid_file(net: IpsecNetwork) -> str:
    return os.path.join(net.charon_dir, "charon.owner")


def _running_pid(net: IpsecNetwork) -> int | None:
    """The pid of this host's charon when it runs (and is charon)."""
    try:
        with open(_pid_file(net)) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)
        if fields[1].split()[0] == "Z":
            return None
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if not f.read().split(b"\0")[0].endswith(b"charon"):
                return None
        return pid
    except (OSError, ValueError, IndexError):
        return None


def _charon(net: IpsecNetwork, datapath: str) -> tuple:
    """(this host's charon, whether it was started now: then it knows no connection)."""
    charon = ipsec_tunnels.Charon(net.charon_dir, datapath=datapath)
    if _running_pid(net) is not None:
        return charon, False
    charon.start()
    with open(_pid_file(net), "w") as f:
        f.write(str(charon.process.pid))
    charon.process = None  # it outlives this call: stopped by pid when the last network goes
    return charon, True


def _stop_charon(net: IpsecNetwork) -> None:
    pid = _running_pid(net)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # charon takes its SAs, routes, rule and ipsec0 with it
        deadline = time.monotonic() + STOP_TIMEOUT
        while _running_pid(net) is not None and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # our child when a daemon started it
            time.sleep(0.05)
        if _running_pid(net) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_pid_file(net))


def peer_connection(peer: str) -> str:
    """charon's connection to a peer host: one per peer, one IKE_SA, shared by
    the host's networks, each of which is a child (`IpsecNetwork.connection`)."""
    return f"peer-{hashlib.sha256(peer.encode()).hexdigest()[:12]}"


def _tunnel(record: dict, name: str, peer: str, datapath: str) -> ipsec_tunnels.Tunnel:
    return ipsec_tunnels.Tunnel.from_config(
        datapath=datapath, name=name, local_address=record["local"], remote_address=peer,
        local_subnets=[record["block"]], remote_subnets=[record["subnet"]], psk_file=record["psk_file"],
        ike_proposal=record["ike_proposal"], esp_proposal=record["esp_proposal"])


def _load_peer(charon: ipsec_tunnels.Charon, records: dict, peer: str) -> None:
    """The peer's connection loaded with a child per network that has the
    peer; unloaded (its IKE_SA ends) when none has."""
    users = [(digest, r) for digest, r in sorted(records.items()) if peer in r.get("peers", [])]
    if not users:
        charon.unload(peer_connection(peer))
        return
    first = users[0][1]
    for digest, r in users[1:]:
        if (r["psk_file"], r["ike_proposal"], r["local"]) != (first["psk_file"], first["ike_proposal"], first["local"]):
            raise CNIError(INVALID_CONFIG, f"ipsec: networks {first['name']!r} and {r['name']!r} both reach the peer "
                           f"{peer}, over one IKE_SA: they must have the same pskFile, ikeProposal and underlay")
    charon.load(_tunnel(first, peer_connection(peer), peer, charon.datapath),
                children=tuple(_tunnel(r, r["child"] + "-" + _short(peer), peer, charon.datapath)
                               for _, r in users))


def _short(peer: str) -> str:
    return hashlib.sha256(peer.encode()).hexdigest()[:8]


# -- ensure / remove ----------------------------------------------------------

def ensure(net: IpsecNetwork) -> int:
    """Bridge (proxy ARP on), charon running with this network's connections
    loaded, the guard; returns the containers' MTU. Idempotent."""
    if net.key_store is not None and not os.path.exists(net.psk_file):
        from . import ipsec_registry  # etcd's client: only for a key kept there
        ipsec_registry.fetch_key(net.key_store, net.subnet, net.psk_file)
    ipsec_tunnels.read_psk(net.psk_file)  # a bad key file is refused before anything is made
    with locks.held(os.path.join(net.root, "lock"), mode=0o600):
        if net.registry:  # the peers are the registry's (set_peers), kept across ADDs
            net = dataclasses.replace(net, peers=tuple((_records(net).get(net.digest) or {}).get("peers", [])))
        local, underlay_mtu = _underlay(net)
        if local in net.peers:
            raise CNIError(INVALID_CONFIG, f"ipsec: the peers list this host's own underlay address {local}")
        mtu = container_mtu(underlay_mtu, net.esp_proposal)
        datapath = ipsec_tunnels.probe_datapath()
        if datapath == "libipsec":
            mtu = min(mtu, LIBIPSEC_TUN_MTU)
        if net.mtu and net.mtu > mtu:
            raise CNIError(INVALID_CONFIG, f"ipsec: mtu {net.mtu} does not fit: the underlay ({underlay_mtu}) "
                           f"allows at most {mtu} inside ESP in UDP")
        mtu = net.mtu or mtu
        with netlink.socket_in() as host:
            bridge = netlink.ensure_bridge(host, net.bridge, mtu, promisc=False)
            # before any tunnel: kernel-libipsec routes a CHILD_SA's remote block
            # from an address of this host in the local block, the gateway
            netlink.add_address(host, bridge["index"], net.gateway)
        sysctls.ensure(sysctls.interface_path("ipv4", net.bridge, "proxy_arp"), "1",
                       "rancher-ipsec answers ARP for the containers on other hosts")
        previous = _records(net).get(net.digest)
        _write_record(net, local)
        try:
            _program_peers(net, (previous or {}).get("peers", []), datapath)
        except CNIError:
            if previous is None:  # nothing half-made: the record goes again
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(net.record)
                _guard(net)
            raise
        return mtu


def _program_peers(net: IpsecNetwork, before, datapath: str) -> None:
    """charon made to carry the network's child to each of `net.peers` (its
    record written already) and to none of the peers it had `before`; the
    guard first. charon is started when not running, then with every network's peers."""
    records = _records(net)
    for peer in net.peers:  # refused before charon hears of it
        _tunnel(records[net.digest], net.connection(peer), peer, datapath)
    _guard(net)
    charon, fresh = _charon(net, datapath)
    peers = set(before) | set(net.peers)
    if fresh:  # a charon that died (or the first): every network's peers, not just ours
        peers |= {p for r in records.values() for p in r.get("peers", [])}
    for peer in sorted(peers):
        _load_peer(charon, records, peer)
        if peer not in net.peers:
            charon.terminate_child(net.connection(peer))


def set_peers(state_dir: str, name: str, peers) -> bool:
    """The network `name`'s peers changed to `peers` (its record and charon's
    connections: a peer gone is unloaded with its SAs and routes, unless
    another network still has it); False when the network has no record here
    (it went meanwhile) or the peers are unchanged. A peer charon refuses
    leaves the record as it was."""
    probe = IpsecNetwork(name=name, bridge="", underlay=None, peers=(), psk_file="", subnet="", local_block="",
                         gateway="", state_dir=state_dir)
    with locks.held(os.path.join(probe.root, "lock"), mode=0o600):
        record = _records(probe).get(probe.digest)
        if record is None or sorted(record.get("peers", [])) == sorted(peers):
            return False
        net = dataclasses.replace(probe, underlay=record["local"], peers=tuple(peers), psk_file=record["psk_file"],
                                  subnet=record["subnet"], local_block=record["block"],
                                  ike_proposal=record["ike_proposal"], esp_proposal=record["esp_proposal"],
                                  registry=bool(record.get("registry")))
        if record["local"] in net.peers:
            raise CNIError(INVALID_CONFIG, f"ipsec: the peers list this host's own underlay address {record['local']}")
        _write_record(net, record["local"])
        try:
            _program_peers(net, record.get("peers", []), ipsec_tunnels.probe_datapath())
        except CNIError:
            _write_record(dataclasses.replace(net, peers=tuple(record.get("peers", []))), record["local"])
            _guard(net)
            raise
        return True


def registry_records(state_dir: str) -> list:
    """The records of this host's networks whose peers come from the registry."""
    folder = os.path.join(state_dir, "ipsec", "networks")
    return [r for r in _records_in(folder).values()
            if isinstance(r, dict) and r.get("registry") is True and
            all(isinstance(r.get(k), str) for k in ("name", "local", "subnet", "block"))]


def remove(net: IpsecNetwork) -> None:
    """The network's connections unloaded (their SAs and routes go), charon
    stopped when no other network of the host needs it, the bridge and the
    guard's rules gone. Idempotent."""
    with locks.held(os.path.join(net.root, "lock"), mode=0o600):
        record = _records(net).get(net.digest)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(net.record)
        others = _records(net)
        if net.key_store is not None and not any(r.get("psk_file") == net.psk_file for r in others.values()):
            with contextlib.suppress(FileNotFoundError):  # etcd keeps it for the next host or network
                os.unlink(net.psk_file)
        if _running_pid(net) is not None:
            if others:
                charon = ipsec_tunnels.Charon(net.charon_dir, datapath=ipsec_tunnels.probe_datapath())
                for peer in (record or {}).get("peers", list(net.peers)):
                    _load_peer(charon, others, peer)  # without this network's child
                    charon.terminate_child(net.connection(peer))
            else:
                _stop_charon(net)
        _guard(net)
        with netlink.socket_in() as host:
            netlink.delete_link(host, net.bridge)


def block_of(start: str, end: str) -> str:
    """The smallest network that holds rangeStart..rangeEnd: this host's block."""
    first, last = ipaddress.IPv4Address(start), ipaddress.IPv4Address(end)
    prefix = 32 - (int(first) ^ int(last)).bit_length()
    return str(ipaddress.IPv4Network(f"{first}/{prefix}", strict=False))
