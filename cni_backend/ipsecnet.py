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

charon's lifecycle: the first ADD starts it; the last network's removal
stops it (SIGTERM, then its owner file goes). A charon that died otherwise
(kill -9, a crash) leaves its owner file: the ipsec agent (`watch`, run by
`cnm-shim serve`, or `cnm-shim ipsec-agent` beside a CNI runtime) and the next
ADD start it again with every recorded network's peers (`revive`,
`_configure`), all or nothing: a charon whose loading failed is stopped again
and the next round tries anew. Rekeys (ikeRekeyTime, childRekeyTime) make the
new SA before the old one goes.

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
import logging
import os
import signal
import time

from . import ipsec_tunnels, locks, paths
from .errors import CNIError, INVALID_CONFIG, PLUGIN_FAILED
from .net import ipsec_guard, netlink, sysctls, tools

log = logging.getLogger("rancher-cni")

# outer IPv4 20 + UDP 8 + ESP SPI/sequence 8 + AES-CBC IV 16; then the inner
# packet + pad length + next header (2), padded to the AES block (16); then the ICV
OUTER_FIXED = 20 + 8 + 8 + 16
AES_BLOCK = 16
ICV_BYTES = {"sha1": 12, "md5": 12, "sha256": 16, "sha384": 24, "sha512": 32, "aesxcbc": 12}
STOP_TIMEOUT = 10.0
# the ipsec agent's retries of a connection charon gave up (`retry`): soon
# after it is found missing (the peer may not have loaded our connection yet
# and answered NO_PROPOSAL_CHOSEN), then less and less often (a wrong key)
FIRST_RETRY = 2.0
RETRY_INTERVAL = 30.0
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
    ike_rekey: int = ipsec_tunnels.DEFAULT_IKE_REKEY    # seconds
    child_rekey: int = ipsec_tunnels.DEFAULT_CHILD_REKEY
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
        return _root(self.state_dir)

    @property
    def charon_dir(self) -> str:
        return charon_dir(self.state_dir)

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

def _root(state_dir: str) -> str:
    return os.path.join(state_dir, "ipsec")


def charon_dir(state_dir: str) -> str:
    """Where the host's charon keeps its files (strongswan.conf, VICI socket, log)."""
    return os.path.join(_root(state_dir), "charon")


def _records(net: IpsecNetwork) -> dict:
    return records(net.state_dir)


def records(state_dir: str) -> dict:
    """{digest: record} of every IPsec network of the host that uses `state_dir`."""
    folder = os.path.join(_root(state_dir), "networks")
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
                   "ike_rekey": net.ike_rekey, "child_rekey": net.child_rekey,
                   "registry": net.registry}, f)
    os.replace(net.record + ".tmp", net.record)


def _guard(net: IpsecNetwork) -> None:
    peers = {p for r in _records(net).values() for p in r.get("peers", [])}
    if peers or _records(net):
        ipsec_guard.ensure(peers)
    else:
        ipsec_guard.remove()


# -- the host's charon --------------------------------------------------------

def _pid_file(state_dir: str) -> str:
    return os.path.join(charon_dir(state_dir), "charon.owner")


def _running_pid(net: IpsecNetwork) -> int | None:
    return charon_pid(net.state_dir)


def charon_pid(state_dir: str) -> int | None:
    """The pid of this host's charon when it runs (and is charon)."""
    try:
        with open(_pid_file(state_dir)) as f:
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


def died(state_dir: str) -> bool:
    """Whether this host's charon is gone without having been stopped (its
    owner file stays: only a stop removes it)."""
    return os.path.exists(_pid_file(state_dir)) and charon_pid(state_dir) is None


def _charon(state_dir: str, datapath: str) -> tuple:
    """(this host's charon, whether it was started now: then it knows no connection)."""
    charon = ipsec_tunnels.Charon(charon_dir(state_dir), datapath=datapath)
    if charon_pid(state_dir) is not None:
        return charon, False
    pid = charon.start(detached=True)  # it outlives this call: stopped by pid when the last network goes
    with open(_pid_file(state_dir), "w") as f:
        f.write(str(pid))
    return charon, True


def _stop_charon(state_dir: str) -> None:
    pid = charon_pid(state_dir)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # charon takes its SAs, routes, rule and ipsec0 with it
        deadline = time.monotonic() + STOP_TIMEOUT
        while charon_pid(state_dir) is not None and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # our child when a daemon started it
            time.sleep(0.05)
        if charon_pid(state_dir) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_pid_file(state_dir))


def peer_connection(peer: str) -> str:
    """charon's connection to a peer host: one per peer, one IKE_SA, shared by
    the host's networks, each of which is a child (`IpsecNetwork.connection`)."""
    return f"peer-{hashlib.sha256(peer.encode()).hexdigest()[:12]}"


def _tunnel(record: dict, name: str, peer: str, datapath: str) -> ipsec_tunnels.Tunnel:
    return ipsec_tunnels.Tunnel.from_config(
        datapath=datapath, name=name, local_address=record["local"], remote_address=peer,
        local_subnets=[record["block"]], remote_subnets=[record["subnet"]], psk_file=record["psk_file"],
        ike_proposal=record["ike_proposal"], esp_proposal=record["esp_proposal"],
        # records written before rekey times were settings: the defaults
        ike_rekey=record.get("ike_rekey", ipsec_tunnels.DEFAULT_IKE_REKEY),
        child_rekey=record.get("child_rekey", ipsec_tunnels.DEFAULT_CHILD_REKEY))


def _users(records: dict, peer: str) -> list:
    """The records of the networks that reach `peer`, checked to agree on what
    their one IKE_SA to it has: key, IKE proposal, IKE rekey time, underlay."""
    users = [(digest, r) for digest, r in sorted(records.items()) if peer in r.get("peers", [])]
    shared = ("psk_file", "ike_proposal", "local", "ike_rekey")
    for digest, r in users[1:]:
        first = users[0][1]
        if tuple(r.get(k) for k in shared) != tuple(first.get(k) for k in shared):
            raise CNIError(INVALID_CONFIG, f"ipsec: networks {first['name']!r} and {r['name']!r} both reach the peer "
                           f"{peer}, over one IKE_SA: they must have the same pskFile, ikeProposal, ikeRekeyTime "
                           "and underlay")
    return users


def _load_peer(charon: ipsec_tunnels.Charon, records: dict, peer: str) -> None:
    """The peer's connection loaded with a child per network that has the
    peer; unloaded (its IKE_SA ends) when none has."""
    users = _users(records, peer)
    if not users:
        charon.unload(peer_connection(peer))
        return
    charon.load(_tunnel(users[0][1], peer_connection(peer), peer, charon.datapath),
                children=tuple(_tunnel(r, r["child"] + "-" + _short(peer), peer, charon.datapath)
                               for _, r in users))


def _short(peer: str) -> str:
    return hashlib.sha256(peer.encode()).hexdigest()[:8]


def _all_peers(records: dict) -> list:
    return sorted({p for r in records.values() for p in r.get("peers", [])})


def _configure(state_dir: str, charon: ipsec_tunnels.Charon, records: dict, restarted: bool) -> None:
    """A charon started now gets every recorded network's peers (a fresh charon
    knows no connection). The initiating side starts its tunnels on load; after
    a charon died (`restarted`) the answering side starts them too: the peer
    still holds the SAs of the dead charon, and would notice only after DPD's
    retransmissions gave up (minutes); a new IKE_SA replaces those SAs at once
    (`unique = replace`). Not on a first start, when the peer has no SA to
    replace and starts its own as soon as it is configured.
    All or nothing: when a load fails, charon is stopped again, so that it is
    never left with some of the host's tunnels; the caller says so, and the
    next ADD or round of the agent starts over."""
    try:
        for peer in _all_peers(records):
            _load_peer(charon, records, peer)
        for peer in _all_peers(records):
            users = _users(records, peer)
            if restarted and not _tunnel(users[0][1], peer_connection(peer), peer, charon.datapath).initiator:
                charon.initiate(peer_connection(peer), [r["child"] + "-" + _short(peer) for _, r in users])
    except BaseException:
        _stop_charon(state_dir)
        raise


def revive(state_dir: str) -> int | None:
    """This host's charon started again, if it is not running while IPsec
    networks are recorded, with every network's peers loaded (the watcher:
    `cnm-shim ipsec-agent`, and doctor --repair). Returns the new charon's pid,
    None when nothing had to be done. Raises CNIError when charon could not be
    started or configured; then it is not running (never half-configured)."""
    ipsec_tunnels.check_path(state_dir, "stateDir")
    if not records(state_dir) or charon_pid(state_dir) is not None:
        return None  # cheap: the common case takes no lock
    with locks.held(os.path.join(_root(state_dir), "lock"), mode=0o600):
        found = records(state_dir)
        if not found or charon_pid(state_dir) is not None:
            return None
        for peer in _all_peers(found):  # refused before charon starts
            _users(found, peer)
        charon, _ = _charon(state_dir, ipsec_tunnels.probe_datapath())
        # networks recorded and no charon: it died (or a revival failed), and
        # the peers may hold SAs of the last one
        _configure(state_dir, charon, found, restarted=True)
        return charon_pid(state_dir)


def retry(state_dir: str, missing: dict, now: float) -> list:
    """Start again the connections this host initiates that have no IKE_SA:
    charon gives up on a peer that answered NO_PROPOSAL_CHOSEN (it had not
    loaded our connection yet: a host that learns of its peer from the
    registry before the peer learns of it) or refused our authentication (a
    wrong key there; keyingtries cover only a peer that does not answer), and
    the peer, which only answers, never starts one. The first retry comes
    FIRST_RETRY seconds after the IKE_SA is found missing, each next one
    twice as late, up to RETRY_INTERVAL. `missing` (peer -> (when next, the
    delay after that), kept by the caller between rounds) makes a connection
    just loaded, whose IKE_SA charon is starting, never be started twice.
    Returns the peers started again."""
    found = records(state_dir)
    if not found or charon_pid(state_dir) is None:
        missing.clear()
        return []
    with locks.held(os.path.join(_root(state_dir), "lock"), mode=0o600):
        found = records(state_dir)
        if not found or charon_pid(state_dir) is None:
            return []
        charon = ipsec_tunnels.Charon(charon_dir(state_dir), datapath=ipsec_tunnels.probe_datapath())
        sas, started = charon.sas(), []
        for peer in _all_peers(found):
            users, connection = _users(found, peer), peer_connection(peer)
            if connection in sas or not _tunnel(users[0][1], connection, peer, charon.datapath).initiator:
                missing.pop(peer, None)
                continue
            due, delay = missing.setdefault(peer, (now + FIRST_RETRY, FIRST_RETRY))
            if now >= due:
                missing[peer] = next_retry(now, delay)
                charon.initiate(connection, [r["child"] + "-" + _short(peer) for _, r in users])
                started.append(peer)
        for peer in set(missing) - set(_all_peers(found)):
            del missing[peer]
        return started


def next_retry(now: float, delay: float) -> tuple:
    """(when the retry after one made `now` is due, the delay after that):
    the delay doubles, up to RETRY_INTERVAL."""
    delay = min(delay * 2, RETRY_INTERVAL)
    return now + delay, delay


def watch(state_dir: str, interval: float = 2.0, stop=lambda: False) -> None:
    """Revive charon whenever it is found dead (kill -9, a crash) while IPsec
    networks are recorded; idle (a directory listing and a /proc read a round)
    otherwise. A failed revival is logged and tried again the next round.
    Connections this host initiates and charon gave up are started again (`retry`)."""
    missing = {}
    while not stop():
        with contextlib.suppress(ChildProcessError):  # the charons this process started, once they die
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        try:
            pid = revive(state_dir)
            if pid is not None:
                log.warning("ipsec agent: charon was not running: started it again (pid %d) with the tunnels "
                            "of %d network(s)", pid, len(records(state_dir)))
        except (CNIError, OSError) as exc:
            log.error("ipsec agent: charon could not be started with the tunnels (%s); it is stopped, "
                      "trying again in %.0f s", exc, interval)
        try:
            for peer in retry(state_dir, missing, time.monotonic()):
                log.warning("ipsec agent: no IKE_SA with the peer %s (it refused the last one: not ready yet, "
                            "or another key?): initiated it again", peer)
        except Exception as exc:  # noqa: BLE001 - a charon that does not answer now is looked at next round
            log.error("ipsec agent: could not look at charon's IKE_SAs (%s: %s)", type(exc).__name__, exc)
        deadline = time.monotonic() + interval
        while not stop() and time.monotonic() < deadline:
            time.sleep(min(0.2, interval))


def health(state_dir: str) -> list:
    """[(subject, problem)] of the host's charon for the recorded networks:
    not running, not answering, or a peer without an ESTABLISHED IKE_SA or
    without the network's CHILD_SA INSTALLED (with the authentication failure
    charon logged, if any). [] when all is well or no network is recorded."""
    found = records(state_dir)
    if not found:
        return []
    pid = charon_pid(state_dir)
    if pid is None:
        return [("charon", f"not running, while {len(found)} IPsec network(s) are recorded: their tunnels are down")]
    charon = ipsec_tunnels.Charon(charon_dir(state_dir))
    try:
        sas = charon.sas()
    except Exception as exc:  # noqa: BLE001 - whatever the socket does, it is the finding
        return [("charon", f"pid {pid} does not answer on its VICI socket ({type(exc).__name__})")]
    failures = charon.auth_failures()
    problems = []
    for _, r in sorted(found.items()):
        for peer in r.get("peers", []):
            connection, child = peer_connection(peer), r["child"] + "-" + _short(peer)
            sa = sas.get(connection)
            if sa is None or sa["ike"] != "ESTABLISHED":
                problem = f"IKE_SA {sa['ike'] if sa else 'missing'}"
                if connection in failures:
                    problem += f": {failures[connection]}"
            elif sa["children"].get(child) != "INSTALLED":
                problem = f"IKE_SA ESTABLISHED, but CHILD_SA {sa['children'].get(child) or 'missing'}"
            else:
                continue
            problems.append((f"{r.get('name')} peer {peer}", problem))
    return problems


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
    guard first. A charon started now (the first, or one that died) gets every
    network's peers (`_configure`)."""
    found = _records(net)
    for peer in net.peers:  # refused before charon hears of it
        _tunnel(found[net.digest], net.connection(peer), peer, datapath)
        _users(found, peer)
    _guard(net)
    restarted = died(net.state_dir)
    charon, fresh = _charon(net.state_dir, datapath)
    if fresh:  # a charon that died (or the first): every network's peers, not just ours
        _configure(net.state_dir, charon, found, restarted)
    else:
        for peer in sorted(set(before) | set(net.peers)):
            _load_peer(charon, found, peer)
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
                                  ike_rekey=record.get("ike_rekey", ipsec_tunnels.DEFAULT_IKE_REKEY),
                                  child_rekey=record.get("child_rekey", ipsec_tunnels.DEFAULT_CHILD_REKEY),
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
    return [r for r in records(state_dir).values()
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
                _stop_charon(net.state_dir)
        _guard(net)
        with netlink.socket_in() as host:
            netlink.delete_link(host, net.bridge)


def block_of(start: str, end: str) -> str:
    """The smallest network that holds rangeStart..rangeEnd: this host's block."""
    first, last = ipaddress.IPv4Address(start), ipaddress.IPv4Address(end)
    prefix = 32 - (int(first) ^ int(last)).bit_length()
    return str(ipaddress.IPv4Network(f"{first}/{prefix}", strict=False))
