"""The flat network's host side: what exists once per network, not per container.

  uplink      the parent interface (or its VLAN sub-interface, made here) is
              enslaved to the flat bridge; the host addresses and routes it
              carried move to the bridge and move back, exactly, at removal
  metadata    the source article's link between the flat bridge and the
              metadata bridge (docker0): a veth pair veth-cni-H / veth-doc-H,
              the link address bound (/32) on the metadata bridge, replies from
              the metadata address routed back over the link (policy routing),
              and ebtables rules that let only metadata traffic cross it
  arp         ARP requests for the link address never leave through the uplink
  fast path   unicast between containers and the uplink skips the bridge
              (net/flat_fastpath.py), unless the network turns it off

`ensure` is idempotent (it runs at network creation and before every ADD, so
a restart re-creates whatever is missing); `remove` undoes everything from a
record written before the first change.
"""

import contextlib
import dataclasses
import functools
import hashlib
import ipaddress
import json
import os
import re

from . import beside, files, locks, paths
from .errors import CNIError, FIREWALL_FAILURE, INVALID_CONFIG, NETLINK_FAILURE
from .net import features, flat_fastpath, iptables, netlink, nft, sysctls, tools

LOCK_DIR = paths.RUN_DIR
RULE_PRIORITY = 30000


@dataclasses.dataclass(frozen=True)
class Metadata:
    ip: str          # the metadata service, e.g. 169.254.169.250
    link_ip: str     # bound on the metadata bridge, inside the flat subnet
    bridge: str      # the metadata bridge, e.g. docker0


@dataclasses.dataclass(frozen=True)
class FlatNetwork:
    bridge: str
    parent: str
    vlan: int
    mtu: int | None
    subnets: tuple          # the flat subnets (for the metadata reply route)
    metadata: Metadata | None
    state_dir: str
    fast_path: bool = True

    @property
    def suffix(self) -> str:
        return hashlib.sha256(self.bridge.encode()).hexdigest()[:6]

    @property
    def link_names(self) -> tuple:
        return f"veth-cni-{self.suffix}", f"veth-doc-{self.suffix}"

    @property
    def uplink(self) -> str:
        """The interface enslaved to the bridge: the parent, or its VLAN sub-interface."""
        return netlink.vlan_name(self.parent, self.vlan) if self.vlan else self.parent

    @property
    def table(self) -> int:
        return 10000 + int(self.suffix, 16) % 50000

    @property
    def record_path(self) -> str:
        return os.path.join(self.state_dir, "flat", f"{self.bridge}.json")


def _locked(flat: FlatNetwork):
    return locks.held(os.path.join(LOCK_DIR, f"flat-{flat.bridge}.lock"))


def _write_record(flat: FlatNetwork, record: dict) -> None:
    os.makedirs(os.path.dirname(flat.record_path), mode=0o700, exist_ok=True)
    files.write_atomic(flat.record_path, json.dumps(record, indent=2), 0o600)


def _read_record(flat: FlatNetwork) -> dict | None:
    try:
        with open(flat.record_path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


# -- ensure -------------------------------------------------------------------

def ensure(flat: FlatNetwork) -> None:
    """The network's host side in place: the bridge with the uplink and its
    addresses, the metadata link, the ebtables policy, NOTRACK and the fast
    path's table. Every ADD calls it; each part is changed only when it is
    not as it should be."""
    error = ensure_beside(flat)()
    if error is not None:
        raise error


def ensure_beside(flat: FlatNetwork):
    """`ensure`, its second half (the metadata link, then the firewall: the
    listings, the ebtables policy, NOTRACK, the fast path's table) left
    running on a thread beside the caller, who may meanwhile attach a
    container: that half needs only the bridge the first half made, and an
    attachment needs none of it until its fast path's entries go into the
    fast path's table. The function returned waits for that half and gives
    what it raised, or None. The network's lock is held until it is done."""
    features.require("nft_bridge", "a flat network's anti-spoofing")  # before anything is changed
    held = contextlib.ExitStack()
    try:
        held.enter_context(_locked(flat))
        links = _ensure_links(flat)
    except BaseException:
        held.close()
        raise

    def second_half():
        with held:
            _ensure_beside_attachment(flat, *links)
    return beside.start("flat-ensure", second_half)


def _ensure_links(flat: FlatNetwork) -> tuple:
    """The bridge with the uplink and its addresses, the sysctls; (uplink, bridge, bridge MAC)."""
    with netlink.socket_in() as host:
        if flat.metadata:
            _metadata_bridge(host, flat)  # refused before the uplink is touched
        record = _read_record(flat)
        uplink = _ensure_uplink(host, flat, record)
        bridge = netlink.ensure_bridge(host, flat.bridge, flat.mtu, promisc=False)
        port = netlink.link(host, uplink)
        if port.get("master") != bridge["index"]:
            if record is None:
                record = _snapshot(host, flat, uplink, bool(flat.vlan))
                _write_record(flat, record)
            _move_addresses(host, port["index"], bridge["index"], record)
            # the last step: until it is done, a rerun redoes the move
            netlink.set_master(host, uplink, bridge["index"])
            netlink.set_mac(host, bridge["index"], port.get("address"))  # pinned: see _pin_bridge_mac
        bridge_mac = _pin_bridge_mac(host, bridge["index"], port.get("address"))
        # Answer ARP only for the bridge's own addresses: the link address is the
        # metadata bridge's, and must be answered from there, over the link.
        sysctls.ensure(sysctls.interface_path("ipv4", flat.bridge, "arp_ignore"), "1",
                       f"{flat.bridge} answers ARP for its own addresses only, not for the metadata link's")
        if flat.metadata:
            features.require("ebtables_filter", "the metadata link's policy")
            sysctls.ensure_forwarding(4, f"{flat.bridge}: metadata requests are routed from the flat bridge "
                                         f"to {flat.metadata.bridge} and back")
    return uplink, bridge, bridge_mac


def _ensure_beside_attachment(flat: FlatNetwork, uplink: str, bridge: dict, bridge_mac: str) -> None:
    """The metadata link and the firewall (ensure_beside's second half)."""
    if flat.metadata:
        with netlink.socket_in() as host:
            _ensure_metadata_link(host, flat, bridge)
    fast_path = fast_path_usable(flat)
    verified, found = iptables.verified(), _found_line(flat, uplink, bridge_mac, fast_path)
    if verified.holds(found) and _ebtables_in_nftables():
        return
    # what the three checks read, listed side by side (~3 ms each, one after the other)
    ebtables, notrack, *fast = tools.outputs_side_by_side(
        [["ebtables-save"], _notrack_listing_argv(flat)]
        + ([flat_fastpath.listing_argv(flat.suffix)] if fast_path else []), "flat listings")
    _ensure_ebtables(flat, uplink, ebtables)  # None: listed again, a failure raising with its message
    _ensure_notrack(flat, bridge_mac, notrack)
    if fast_path:
        flat_fastpath.ensure_network(flat.suffix, uplink, bridge_mac, listed=fast[0])
    with iptables.host_lock():
        verified.note(found)  # unless anything committed since it was read: a change of ours above too


def _found_line(flat: FlatNetwork, uplink: str, bridge_mac: str, fast_path: bool) -> str:
    """What iptables.verified records when the three checks found the
    network's firewall in place: the network and a digest of everything
    the wanted rules follow from. While no one commits but our attachments'
    restores and anti-spoofing chains, the next ADDs do not list again
    (ebtables-save, the NOTRACK chain, the fast path's table: ~4 ms of three
    processes beside the attachment, which they slow down)."""
    wanted = repr((_ebtables_rules(flat, uplink), flat.bridge, bridge_mac, uplink, fast_path))
    return f"4 flat-network {flat.suffix} {hashlib.sha256(wanted.encode()).hexdigest()[:32]}"


@functools.lru_cache(maxsize=1)
def _ebtables_in_nftables() -> bool:
    """Whether ebtables is ebtables-nft ("1.8.9 (nf_tables)"), whose commits
    the nftables generation counts: the legacy one's it does not, so its
    rules are listed at every ADD. Asked once per process."""
    return "(nf_tables)" in (tools.run(["ebtables", "--version"], check=False) or "")


def fast_path_usable(flat: FlatNetwork) -> bool:
    """The fast path when the network wants it and the kernel can forward at
    ingress (nft netdev `fwd`); otherwise every frame takes the bridge."""
    return flat.fast_path and features.has("nft_netdev_fwd")


def _pin_bridge_mac(host, bridge_index: int, uplink_mac: str) -> str:
    """The bridge keeps the uplink's MAC: the host's address, moved onto the
    bridge, stays at the MAC the business network knows, and the MAC no longer
    follows the lowest port's (the fast path must know which MAC is local).
    Only a MAC set explicitly is kept: the one a bridge took from its only
    port, the uplink, would change to the metadata link veth's, or to any
    lower port's, as it joins; so `ensure` sets it once when it enslaves the
    uplink, and here only when it differs (setting it flushes the bridge's
    neighbours)."""
    if netlink.link_by_index(host, bridge_index).get("address") != uplink_mac:
        netlink.set_mac(host, bridge_index, uplink_mac)
    return uplink_mac


def _ensure_uplink(host, flat: FlatNetwork, record: dict | None) -> str:
    parent = netlink.link(host, flat.parent)
    if parent is None:
        raise CNIError(INVALID_CONFIG, f"parent interface {flat.parent} does not exist",
                       "give the host interface facing the business network, e.g. parent=eth1")
    if netlink.kind(parent) in ("bridge", "veth-peer") or flat.parent == "lo":
        raise CNIError(INVALID_CONFIG, f"parent {flat.parent} cannot be an uplink ({netlink.kind(parent)})")
    uplink = netlink.create_vlan(host, flat.parent, flat.vlan) if flat.vlan else flat.parent
    found = netlink.link(host, uplink)
    master = found.get("master")
    if master:
        owner = netlink.link_by_index(host, master)
        owner_name = owner.get("ifname") if owner else str(master)
        if owner_name != flat.bridge:
            raise CNIError(INVALID_CONFIG, f"parent {uplink} is already part of {owner_name}",
                           "an uplink serves one flat network; pick another parent or remove that network")
    return uplink


def _snapshot(host, flat: FlatNetwork, uplink: str, vlan_created: bool) -> dict:
    """Everything about the uplink that the network changes, taken before the change."""
    found = netlink.link(host, uplink)
    return {"uplink": uplink, "parent": flat.parent, "vlan_created": vlan_created,
            "up": bool(found["flags"] & 1),
            "addresses": [str(a) for a in netlink.global_addresses(host, found["index"])],
            "routes": netlink.routes_via(host, found["index"])}


def _move_addresses(host, from_index: int, to_index: int, record: dict) -> None:
    """The recorded addresses and the routes that depend on them, from one
    link to the other: added to the new link first, the routes moved over
    (replaced, one step each), and only then removed from the old link (its
    connected routes go with them). A kill at any point leaves each address
    on one link or both, never on none; running it again completes it."""
    for cidr in record["addresses"]:
        netlink.add_address(host, to_index, cidr)
    for route in record["routes"]:
        netlink.add_route_spec(host, route, to_index, replace=True)
    for cidr in record["addresses"]:
        netlink.delete_address(host, from_index, cidr)


def _metadata_bridge(host, flat: FlatNetwork) -> dict:
    md_bridge = netlink.link(host, flat.metadata.bridge)
    if md_bridge is None or netlink.kind(md_bridge) != "bridge":
        raise CNIError(INVALID_CONFIG, f"metadata bridge {flat.metadata.bridge} does not exist or is not a bridge",
                       "set metadata_bridge to the bridge the metadata service is on")
    return md_bridge


def _ensure_metadata_link(host, flat: FlatNetwork, bridge: dict) -> None:
    md = flat.metadata
    md_bridge = _metadata_bridge(host, flat)
    cni_end, doc_end = flat.link_names
    netlink.create_veth_pair(host, cni_end, doc_end)
    netlink.set_master(host, cni_end, bridge["index"])
    netlink.set_master(host, doc_end, md_bridge["index"])
    netlink.add_address(host, md_bridge["index"], f"{md.link_ip}/32")
    for subnet in flat.subnets:  # replies from the metadata address go back over the link
        if ipaddress.ip_network(subnet).version == 4:
            netlink.add_route_spec(host, {"dst": subnet, "scope": netlink.SCOPE_LINK}, md_bridge["index"],
                                   table=flat.table)
            netlink.set_rule(host, f"{md.ip}/32", subnet, flat.table, RULE_PRIORITY, present=True)


# -- ebtables -----------------------------------------------------------------

EBTABLES_ATTEMPTS = 3


def _ebtables(*argv, check=True) -> bool:
    """True when ebtables succeeded; a failure raises unless check=False.
    A missing ebtables raises either way."""
    return tools.run(["ebtables", *argv], check=check) is not None


def _ebtables_rules(flat: FlatNetwork, uplink: str) -> list:
    """(table, chain, rule) the network needs; chains named after the network.

    The article uses the broute table (DROP = route instead of bridge). Kernels
    without broute get the same policy from the filter table: what may not be
    bridged from or to the link is dropped there."""
    if not flat.metadata:
        return []
    md, (cni_end, _) = flat.metadata, flat.link_names
    into, out = f"RFLAT-{flat.suffix}-IN", f"RFLAT-{flat.suffix}-OUT"
    return [
        ("filter", into, f"-p IPv4 --ip-src {md.ip} -j RETURN"),
        ("filter", into, f"-p ARP --arp-op Reply --arp-ip-src {md.link_ip} -j RETURN"),
        ("filter", into, "-j DROP"),
        ("filter", out, f"-p IPv4 --ip-dst {md.ip} -j RETURN"),
        ("filter", out, f"-p ARP --arp-op Request --arp-ip-dst {md.link_ip} -j RETURN"),
        ("filter", out, "-j DROP"),
        ("filter", "FORWARD", f"-i {cni_end} -j {into}"),
        ("filter", "INPUT", f"-i {cni_end} -j {into}"),
        ("filter", "FORWARD", f"-o {cni_end} -j {out}"),
        ("filter", "OUTPUT", f"-o {cni_end} -j {out}"),
        ("nat", "POSTROUTING", f"-o {uplink} -p ARP --arp-op Request --arp-ip-dst {md.link_ip} -j DROP"),
    ]


def _own_chains(rules: list) -> list:
    return sorted({(table, chain) for table, chain, _ in rules if chain.startswith("RFLAT-")})


def _installed_ebtables(saved: str | None = None) -> dict:
    """(table, chain) -> rules as token sets (ebtables prints options in its
    own order), from `saved` (ebtables-save's output) or a new listing."""
    installed, table = {}, None
    if saved is None:
        saved = tools.run(["ebtables-save"])  # a failure raises: never read as "nothing installed"
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-A ") and table:
            _, chain, *rule = line.split()
            installed.setdefault((table, chain), []).append(frozenset(rule))
    return installed


def _already_installed(installed: dict, wanted: dict) -> bool:
    """Our chains hold exactly the wanted rules; each jump is there once."""
    for (table, chain), rules in wanted.items():
        present = installed.get((table, chain), [])
        if chain.startswith("RFLAT-"):
            if sorted(map(sorted, present)) != sorted(map(sorted, rules)):
                return False
        elif any(present.count(rule) != 1 for rule in rules):
            return False
    return True


def _ensure_ebtables(flat: FlatNetwork, uplink: str, saved: str | None = None) -> None:
    """Rebuilt only when what the kernel holds (`saved`: ebtables-save's
    output) differs: our chains have policy DROP, so even mid-rebuild the
    link fails closed (ebtables has no "check"; its -C changes counters)."""
    rules = _ebtables_rules(flat, uplink)
    installed = _installed_ebtables(saved)
    wanted = {}
    for table, chain, rule in rules:
        wanted.setdefault((table, chain), []).append(frozenset(rule.split()))
    if _already_installed(installed, wanted):
        return
    # ebtables-nft (1.8.9) fails a command whose commit meets another
    # commit, anyone's: "RULE_DELETE failed (No such file or directory)" (4 of
    # 240 commands beside a loop of iptables-restore). Under the firewall's
    # lock ours (an ADD's rules, made beside this) wait; the rebuild, which
    # starts from whatever the kernel holds, is tried again for the others.
    with iptables.host_lock():
        for attempt in range(EBTABLES_ATTEMPTS):
            try:
                _rebuild_ebtables(rules)
                return
            except CNIError:
                if attempt == EBTABLES_ATTEMPTS - 1:
                    raise


def _rebuild_ebtables(rules: list) -> None:
    _remove_jumps(rules)
    for table, chain in _own_chains(rules):
        if not _ebtables("-t", table, "-F", chain, check=False):
            _ebtables("-t", table, "-N", chain, "-P", "DROP")
    for table, chain, rule in rules:
        _ebtables("-t", table, "-A", chain, *rule.split())


def _remove_jumps(rules: list) -> None:
    for table, chain, rule in rules:
        if not chain.startswith("RFLAT-"):
            while _ebtables("-t", table, "-D", chain, *rule.split(), check=False):
                pass


def _remove_ebtables(flat: FlatNetwork, uplink: str) -> None:
    rules = _ebtables_rules(flat, uplink)
    _remove_jumps(rules)
    for table, chain in _own_chains(rules):
        _ebtables("-t", table, "-F", chain, check=False)
        _ebtables("-t", table, "-X", chain, check=False)


def metadata_link_frames(flat: FlatNetwork) -> int | None:
    """Frames allowed across the metadata link (the counters of our chains'
    RETURN rules, both directions); None when the chains are missing."""
    into, out = f"RFLAT-{flat.suffix}-IN", f"RFLAT-{flat.suffix}-OUT"
    frames = 0
    for chain in (into, out):
        listing = tools.run(["ebtables", "-t", "filter", "-L", chain, "--Lc"], check=False)
        if listing is None:
            return None
        frames += sum(int(m) for m in re.findall(r"-j RETURN\s*, pcnt = (\d+)", listing))
    return frames


# -- conntrack ------------------------------------------------------------------

NOTRACK_TABLE = "rancher_flatraw_"  # + suffix: table inet, one per flat network


def _notrack_table(flat: FlatNetwork) -> str:
    return NOTRACK_TABLE + flat.suffix


def _legacy_notrack_rule(flat: FlatNetwork) -> list:
    """The previous version's rule (iptables and ip6tables raw), removed on
    sight: it untracked what the host routes in from the LAN as well."""
    return ["PREROUTING", "-i", flat.bridge, "-m", "addrtype", "!", "--dst-type", "LOCAL",
            "-m", "comment", "--comment", f"rancher-flat {flat.bridge}", "-j", "NOTRACK"]


def _ensure_notrack(flat: FlatNetwork, bridge_mac: str, listed=tools.LIST_NOW) -> None:
    """Traffic the flat bridge merely switches (LAN <-> flat containers) skips
    connection tracking: with br_netfilter on, as Docker leaves it, the kernel
    would otherwise track every bridged packet, which costs throughput and
    buys a flat network nothing (no NAT, no stateful rules of ours).

    What the bridge switches, and only that, is a frame not addressed to the
    bridge's own MAC (pinned to the uplink's, `_pin_bridge_mac`; broadcast and
    multicast included, as before). A frame to that MAC goes to the host: to
    the host itself, or to be routed on, e.g. a LAN router's reply to a
    container of a bridge network without masquerading. That must be tracked,
    or it is neither RELATED nor ESTABLISHED and FORWARD drops it. No address
    test can tell the two apart (the router's replies and its bridged frames
    to flat containers share sources; whether the host would route a
    destination out of the bridge depends on the host's routes, not the
    LAN's), and iptables cannot read a destination MAC, nor see through
    br_netfilter's PACKET_HOST which frames were bridged: hence an nftables
    inet chain at the raw table's priority, which reads the Ethernet header
    br_netfilter keeps, for IPv4 and IPv6 alike."""
    table = _notrack_table(flat)
    rule = f'iifname "{flat.bridge}" ether daddr != {bridge_mac} counter notrack comment "rancher-flat {flat.bridge}"'
    if listed is tools.LIST_NOW:  # else the caller's listing (ensure), None when the chain is missing
        listed = tools.run(_notrack_listing_argv(flat), check=False)
    if _notrack_rules(listed) != [rule]:  # rewritten only when it differs: the counter keeps counting
        nft.run(f"""table inet {table} {{
  chain prerouting {{ type filter hook prerouting priority raw; }}
}}
flush chain inet {table} prerouting
add rule inet {table} prerouting {rule}
""", names=[table], ifnames=[flat.bridge], macs=[bridge_mac])
        # the previous version's rules go when today's table is written: once
        # it is in place they went with it, and every ADD calls this (~3 ms
        # of iptables runs that would find nothing)
        _remove_legacy_notrack(flat)


def _remove_legacy_notrack(flat: FlatNetwork) -> None:
    rule = _legacy_notrack_rule(flat)
    for tool in ("iptables", "ip6tables"):
        while tools.run([tool, "-w", "-t", "raw", "-D", *rule], check=False) is not None:
            pass


def _remove_notrack(flat: FlatNetwork) -> None:
    """Both shapes: today's table and the previous version's raw rules."""
    table = _notrack_table(flat)
    if tools.run(["nft", "list", "table", "inet", table], check=False) is not None:
        tools.run(["nft", "delete", "table", "inet", table])
    _remove_legacy_notrack(flat)


def _notrack_listing_argv(flat: FlatNetwork) -> list:
    return ["nft", "list", "chain", "inet", _notrack_table(flat), "prerouting"]


def _notrack_rules(out: str | None) -> list | None:
    """The chain's rules in its listing (`_notrack_listing_argv`'s output, None
    when the chain is missing) as nft lists them, counters blanked; None when missing."""
    if out is None:
        return None
    rules = [line.strip() for line in out.splitlines() if "notrack" in line or "iifname" in line]
    return [re.sub(r"counter packets \d+ bytes \d+", "counter", rule) for rule in rules]


# -- remove -------------------------------------------------------------------

def remove(flat: FlatNetwork) -> None:
    """Undo `ensure`: the uplink gets back its master, addresses and routes."""
    with _locked(flat) as lock, netlink.socket_in() as host:
        record = _read_record(flat)
        uplink = record["uplink"] if record else flat.uplink
        _remove_ebtables(flat, uplink)
        _remove_notrack(flat)
        flat_fastpath.remove_network(flat.suffix)
        if flat.metadata:
            _remove_metadata_link(host, flat)
        bridge = netlink.link(host, flat.bridge)
        port = netlink.link(host, uplink)
        if record is not None:  # back on the uplink before they leave the bridge: the host never lacks them
            _restore_uplink(host, record, bridge)
        if port is not None and bridge is not None and port.get("master") == bridge["index"]:
            netlink.set_master(host, uplink, None)
        if record is not None:
            _restore_uplink_state(host, record)
        if bridge is not None:
            netlink.delete_link(host, flat.bridge)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(flat.record_path)
        lock.discard()  # the network's lock goes with it (locks.py: safe against waiters)


def _restore_uplink(host, record: dict, bridge: dict | None) -> None:
    """The addresses and routes go back to the uplink (a VLAN link we made
    had none: it is deleted later, theirs leave with the bridge)."""
    port = netlink.link(host, record["uplink"])
    if record["vlan_created"] or port is None:
        if bridge is not None:
            for cidr in record["addresses"]:
                netlink.delete_address(host, bridge["index"], cidr)
        return
    if bridge is None:  # nothing to move from
        for cidr in record["addresses"]:
            netlink.add_address(host, port["index"], cidr)
        for route in record["routes"]:
            netlink.add_route_spec(host, route, port["index"])
        return
    _move_addresses(host, bridge["index"], port["index"], record)


def _restore_uplink_state(host, record: dict) -> None:
    """Once free of the bridge: a VLAN link we made goes, the uplink's link state comes back."""
    port = netlink.link(host, record["uplink"])
    if port is None:
        return
    if record["vlan_created"]:
        netlink.delete_link(host, record["uplink"])
        return
    if not record["up"]:
        try:
            host.link("set", index=port["index"], state="down")
        except Exception as exc:  # noqa: BLE001 - report, the rest is restored
            raise CNIError(NETLINK_FAILURE, f"setting {record['uplink']} down again: {exc}") from None


def _remove_metadata_link(host, flat: FlatNetwork) -> None:
    md = flat.metadata
    md_bridge = netlink.link(host, md.bridge)
    for subnet in flat.subnets:
        if ipaddress.ip_network(subnet).version == 4:
            netlink.set_rule(host, f"{md.ip}/32", subnet, flat.table, RULE_PRIORITY, present=False)
            if md_bridge is not None:
                netlink.delete_route_spec(host, {"dst": subnet}, md_bridge["index"], table=flat.table)
    if md_bridge is not None:
        netlink.delete_address(host, md_bridge["index"], f"{md.link_ip}/32")
    netlink.delete_link(host, flat.link_names[0])
