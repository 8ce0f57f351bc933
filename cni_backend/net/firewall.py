"""The firewall rules our plug-ins want, per attachment (applied by `iptables`),
and macspoofchk's nftables rules.

filter RANCHER-CNI-FORWARD (jumped to from FORWARD)
    -i BR ! -o BR -j RANCHER-CNI-ISOLATION        per bridge in use, first
    -s IP -i BR -j ACCEPT                         the container's own traffic, and
    -d IP -o BR ctstate RELATED,ESTABLISHED,DNAT  replies and published ports back
                                                  to it: Docker's FORWARD DROP
                                                  policy would drop them; RETURN
                                                  instead with the reference firewall
                                                  chained (firewallChained): its
                                                  CNI-FORWARD, below our jump
                                                  (iptables.KEEP_ABOVE), decides
filter RANCHER-CNI-ISOLATION
    -i LAN ctstate RELATED,ESTABLISHED -j RETURN  per flat bridge, first: it is the
                                                  host's uplink (no DROP for it), so
                                                  the replies from it come back
    ctstate DNAT -j RETURN                        published ports stay reachable
    -o docker0 / -o br-+ -j DROP                  not into Docker's own networks
    -o BR -j DROP                                 per bridge: not into our others
nat RANCHER-CNI-MASQ (from POSTROUTING)           ipMasq, and published ports
                                                  reached from the host or subnet
nat RANCHER-CNI-HOSTPORT (PREROUTING, OUTPUT)     published ports: DNAT
raw RANCHER-CNI-LOCALNET (PREROUTING)             -d 127.0.0.0/8 -i BR -j DROP: the
                                                  guard of route_localnet (localnet)
bridge rancher_cni (nft)                          macspoofchk: a chain per attachment

Each attachment's rules of one of these chains live in a chain of its own
(RCNI-<digest of tag and chain>, iptables.attachment_chain), jumped to from
it by one rule carrying the tag, in the place the rules held before: ADD is
one restore that makes, fills and jumps to it, DEL one restore that removes
the jump and the chain, with no listing (iptables.remove).

Each rule and chain is tagged with its attachment and kind (`tags`:
rcni-<network>-<attachment>-<bridge|portmap|flat|spoof>). DEL, CHECK and
repair take an attachment's `tags.Tag`, and also find the rules the previous
version tagged without a kind. GC is by kind: each plug-in collects only the
kinds it makes (bridge: bridge + spoof; portmap: portmap; flat: those of the
bridge, and its fast path in flat_fastpath), so plug-ins chained in one
network never collect each other's rules; a network's removal collects all.
"""

import ipaddress
import json
import re

from . import container_guard, iptables, nft, tags, tools
from .iptables import FORWARD_CHAIN, HOSTPORT_CHAIN, LOCALNET_CHAIN, MASQ_CHAIN

NFT_TABLE = "rancher_cni"
_MULTICAST = {4: "224.0.0.0/4", 6: "ff00::/8"}
_IPTABLES_KINDS = frozenset({tags.BRIDGE, tags.PORTMAP})  # what iptables rules can be


def _host(iface) -> str:
    return f"{iface.ip}/{32 if iface.version == 4 else 128}"


def bridge_rules(tag: tags.Tag, bridge: str, cidrs: list, masquerade: bool, forbidden=(), open_inbound=False,
                 metadata=None, internal=False, firewall_chained=False) -> dict:
    """family -> table -> rules for a container on `bridge` with addresses `cidrs`;
    nothing it sends is routed out of the `forbidden` interfaces. Who may open
    connections to it: replies only (False), its own subnet ("subnet": VXLAN,
    where that subnet's other hosts come in through the VTEP), anyone (True:
    flat; the planner then takes `bridge` for a LAN, the host's uplink, see
    iptables._bridge_rules).
    `metadata` (bridge, address): flat's metadata service, which the container
    reaches over the link; the host routes both directions in and out of that
    bridge, where Docker's FORWARD DROP policy would drop them.
    `internal`: whatever the bridge sends out of the subnet and whatever
    comes into it from outside is dropped, whoever claims to send it (Docker's
    internal networks); every attachment carries the pair, ahead of its
    ACCEPTs, so they stand while any container of the network does.
    `firewall_chained`: the reference firewall plug-in follows ours in the
    chain; the container's own ACCEPT and its replies' become RETURNs, so
    that, past our isolation and DROPs, the firewall's CNI-FORWARD (and the
    admin's CNI-ADMIN in it) decides (the replies only: a published port's
    connection, NEW for CNI-FORWARD, is accepted here). What is open by
    design stays an ACCEPT: the subnet ("subnet"), anyone (flat). They stay, naming the bridge, so the
    bridge keeps its isolation rules (iptables._isolated_bridges). And the
    container's address coming from anywhere but its bridge is dropped:
    CNI-FORWARD's `-s IP -j ACCEPT` names no interface."""
    per_family = {}
    note = f"-m comment --comment {tag}"
    own = "RETURN" if firewall_chained else "ACCEPT"
    for iface in map(ipaddress.ip_interface, cidrs):
        rules = per_family.setdefault(iface.version, {"filter": [], "nat": []})
        if internal:
            rules["filter"] += [
                # in iptables-save's order of matches, which CHECK compares with
                f"-A {FORWARD_CHAIN} ! -d {iface.network} -i {bridge} ! -o {bridge} {note} -j DROP",
                f"-A {FORWARD_CHAIN} ! -s {iface.network} ! -i {bridge} -o {bridge} {note} -j DROP",
            ]
        metadata_rules = []
        if metadata and iface.version == 4:
            md_bridge, md_ip = metadata
            metadata_rules = [
                f"-A {FORWARD_CHAIN} -s {_host(iface)} -d {md_ip}/32 -i {md_bridge} -o {md_bridge} {note} -j ACCEPT",
                f"-A {FORWARD_CHAIN} -s {md_ip}/32 -d {_host(iface)} -i {md_bridge} -o {md_bridge} {note} -j ACCEPT",
            ]
        if firewall_chained:
            # CNI-FORWARD accepts `-s IP` from any interface: whatever claims
            # the container's address without coming from its bridge (a LAN
            # host, another bridge) is dropped here, before it gets there.
            # Flat's metadata requests, which do come in on the metadata
            # bridge with the container's address, are accepted first.
            rules["filter"] += metadata_rules
            metadata_rules = []
            rules["filter"].append(f"-A {FORWARD_CHAIN} -s {_host(iface)} ! -i {bridge} {note} -j DROP")
        rules["filter"] += [f"-A {FORWARD_CHAIN} -s {_host(iface)} -i {bridge} -o {out} {note} -j DROP"
                            for out in forbidden]
        rules["filter"].append(f"-A {FORWARD_CHAIN} -s {_host(iface)} -i {bridge} {note} -j {own}")
        inbound = [
            # open to anyone (flat) stays an ACCEPT even with the firewall chained: CNI-FORWARD accepts
            # only replies, and the planner knows a LAN bridge by this rule (iptables._OPEN_TO_ANYONE)
            f"-A {FORWARD_CHAIN} -d {_host(iface)} -o {bridge} {note} -j ACCEPT" if open_inbound is True else
            f"-A {FORWARD_CHAIN} -d {_host(iface)} -o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED,DNAT {note} -j ACCEPT"]
        if firewall_chained and open_inbound is not True:
            # the replies go on to CNI-FORWARD, which accepts them; a published port's connection (DNAT,
            # NEW for CNI-FORWARD, which would hand it on to Docker's DROP policy) is accepted here, whichever
            # portmap (ours, or the reference one, which adds no FORWARD rule) published it
            inbound = [
                f"-A {FORWARD_CHAIN} -d {_host(iface)} -o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED {note} -j RETURN",
                f"-A {FORWARD_CHAIN} -d {_host(iface)} -o {bridge} -m conntrack --ctstate DNAT {note} -j ACCEPT"]
        if open_inbound == "subnet":
            subnet = f"-A {FORWARD_CHAIN} -s {iface.network} -d {_host(iface)} -o {bridge} {note} -j ACCEPT"
            # Before the ctstate ACCEPT, not after: both accept, so the order
            # changes no verdict, but the subnet's packets (all the traffic
            # through the tunnel or VTEP) then stop at a rule of plain address
            # matches instead of also running the conntrack match (an xt
            # compat match in iptables-nft) on every packet. Not when the
            # ctstate rule RETURNs (firewall_chained): then it comes first,
            # as before, so the chained firewall still sees those replies.
            inbound = [subnet] + inbound if own == "ACCEPT" else inbound + [subnet]
        rules["filter"] += inbound + metadata_rules
        if masquerade:
            rules["nat"] += [
                f"-A {MASQ_CHAIN} -s {_host(iface)} -d {iface.network} {note} -j RETURN",
                f"-A {MASQ_CHAIN} -s {_host(iface)} ! -d {_MULTICAST[iface.version]} {note} -j MASQUERADE",
            ]
    return per_family


def port_rules(tag: tags.Tag, mappings: list, cidrs: list, snat: bool, localnet_bridge: str | None = None) -> dict:
    """family -> table -> DNAT rules for `mappings` to the container at `cidrs`,
    with the guard of route_localnet on `localnet_bridge` (see localnet_guard)."""
    per_family = {4: localnet_guard(tag, localnet_bridge)} if localnet_bridge else {}
    note = f"-m comment --comment {tag}"
    for iface in map(ipaddress.ip_interface, cidrs):
        for m in mappings:
            host_ip = ipaddress.ip_address(m["hostIP"]) if m.get("hostIP") else None
            if host_ip is not None and host_ip.version != iface.version:
                continue
            rules = per_family.setdefault(iface.version, {})
            rules.setdefault("filter", [])
            rules.setdefault("nat", [])
            match = f"-p {m['protocol']} -m {m['protocol']}"
            target = f"{iface.ip}:{m['containerPort']}" if iface.version == 4 else f"[{iface.ip}]:{m['containerPort']}"
            only = f"-d {host_ip}/{host_ip.max_prefixlen} " if host_ip else ""
            rules["nat"].append(f"-A {HOSTPORT_CHAIN} {only}{match} --dport {m['hostPort']} {note} -j DNAT --to-destination {target}")
            rules["filter"].append(f"-A {FORWARD_CHAIN} -d {_host(iface)} {match} --dport {m['containerPort']} "
                                   f"-m conntrack --ctstate DNAT {note} -j ACCEPT")
            if snat:  # from the host's loopback, and from the container's own subnet (hairpin)
                sources = (["127.0.0.0/8"] if iface.version == 4 else []) + [str(iface.network)]
                rules["nat"] += [f"-A {MASQ_CHAIN} -s {source} -d {_host(iface)} {match} --dport {m['containerPort']} "
                                 f"-m conntrack --ctstate DNAT {note} -j MASQUERADE" for source in sources]
    return per_family


def localnet_guard(tag: tags.Tag, bridge: str) -> dict:
    """table -> rules: what comes in on `bridge` addressed to 127.0.0.0/8 is dropped.

    route_localnet=1 on a bridge (published ports answer on the host's
    127.0.0.1: the DNAT'ed packet leaves through the bridge with source
    127.0.0.1) also makes the host accept packets sent to 127.0.0.0/8 from
    the bridge: its containers, and on a flat network every LAN neighbour,
    would reach services bound to the host's loopback (CVE-2020-8558).
    kube-proxy drops those in filter INPUT (! -s 127.0.0.0/8 -d 127.0.0.0/8,
    conntrack not RELATED, ESTABLISHED or DNAT). We drop them in raw
    PREROUTING, for the bridge only: before conntrack (a probe leaves no
    entry) and before any ACCEPT the host's own INPUT rules may hold. Nothing
    legitimate matches there: a reply to a published-port connection from
    127.0.0.1 still carries the bridge's address (conntrack turns it back
    into 127.0.0.1 after raw), and the host's own loopback traffic comes in
    on lo. Tagged as the attachment's port rules, so it goes with them."""
    return {"raw": [f"-A {LOCALNET_CHAIN} -d 127.0.0.0/8 -i {bridge} -m comment --comment {tag} -j DROP"]}


def localnet_guards() -> dict:
    """bridge -> tags of the guards on it (localnet_guard), as the kernel holds them."""
    guards = {}
    for rule in iptables.saved_tables(4).get("raw", (set(), []))[1]:
        match = re.match(rf"-A {LOCALNET_CHAIN} .*?-i (\S+) ", rule)
        if match and tags.is_attachment_tag(iptables.comment_of(rule)):
            guards.setdefault(match.group(1), set()).add(iptables.comment_of(rule))
    return guards


def add_rules(tag: tags.Tag, per_family: dict) -> None:
    iptables.add(per_family, str(tag))


def restores_kept(per_family: dict) -> bool:
    """Whether the restores of rules `per_family` go to kept processes
    (net/kept_restore.py), which answer in ~0.3 ms, not to a command started
    for them (~3 ms)."""
    return all(iptables.restores_kept(family) for family in per_family)


def remove_rules(tag: tags.Tag, families=(4, 6), network_holds: bool = False) -> None:
    """Remove the attachment's rules of `tag`'s kind, legacy-tagged ones too.
    `network_holds`: the rules its network's attachments share stay, also
    when this is the last of them, until `release_network`."""
    iptables.remove(tag.every.__contains__, families, tag=str(tag),
                    holder=tags.holder_of(tag) if network_holds else None)


def release_network(network: str) -> None:
    """The network is gone: the shared rules it held (remove_rules'
    `network_holds`) go too, unless another network's attachments use them."""
    iptables.release(tags.holder(network))


def rules_of(tag: tags.Tag) -> list:
    return iptables.rules_tagged(tag.every.__contains__)


def missing_rules(tag: tags.Tag, per_family: dict) -> list:
    """The rules of `per_family` (see bridge_rules) the kernel does not hold;
    a rule the previous version tagged counts as present."""
    legacy = re.compile(rf"--comment {re.escape(tag.legacy)}(?=\s|$)")
    present = {legacy.sub(f"--comment {tag}", rule) for rule in rules_of(tag)}
    return [r for tables in per_family.values() for rules in tables.values() for r in rules if r not in present]


def replace_rules(tag: tags.Tag, per_family: dict) -> None:
    """The attachment's rules of `tag`'s kind become exactly `per_family`
    (legacy-tagged ones replaced, not kept beside), chains and jumps with them."""
    iptables.replace(tag.every.__contains__, per_family, tag=str(tag))


def collect_garbage(network: str, valid_attachments, kinds=tags.KINDS) -> list:
    """Remove every rule and anti-spoofing chain of `network` of one of
    `kinds` whose attachment (container_id, ifname) is not in
    `valid_attachments`; the removed tags. (flat's fast path: flat_fastpath.)"""
    return collect_garbage_checked(network, lambda: valid_attachments, kinds)


def stray_tags(network: str, valid_attachments) -> list:
    """Tags of `network`'s iptables rules, of any kind, that belong to no
    attachment in `valid_attachments`."""
    is_stale = tags.stale_test(network, tags.KINDS, valid_attachments)
    return sorted(set(map(iptables.comment_of, iptables.rules_tagged(is_stale))))


def collect_garbage_checked(network: str, valid_attachments, kinds=tags.KINDS) -> list:
    """collect_garbage, with `valid_attachments()` read under the firewall lock
    (so an attachment added meanwhile keeps its rules); the removed tags."""
    kinds = frozenset(kinds)
    # listed before valid_attachments() is read: ADD makes a chain after its
    # IPAM allocation, so a chain listed here is counted valid if it is
    chains = _mac_filter_chains(network) if tags.SPOOF in kinds else []
    removed = set()
    if kinds & _IPTABLES_KINDS:
        removed |= set(iptables.collect(
            lambda: tags.stale_test(network, kinds & _IPTABLES_KINDS, valid_attachments())))
    if chains:
        is_stale = tags.stale_test(network, {tags.SPOOF}, valid_attachments())
        for chain in filter(is_stale, chains):
            _remove_mac_filter_chains({chain})
            removed.add(chain)
    return sorted(removed)


# -- macspoofchk, with nftables' bridge family ----------------------------

def _nft(script: str, **values) -> str:
    return nft.run(script, **values)


def mac_filter_rules(tag: tags.Tag, mac: str, cidrs=()) -> list:
    """The rules of an attachment's macspoofchk chain (see add_mac_filter)."""
    note = f'comment "{tag}"'
    # The counter first: every frame the bridge got from this container, the
    # proof of what took the bridge path (`bridge_path_frames`).
    rules = [f"counter {note}", f"ether saddr != {mac} drop {note}"]
    if cidrs:  # the IP checks: no tagged frames, no router's messages (container_guard), own sources only
        rules += container_guard.rules(mac, cidrs, note)
    v4 = [str(ipaddress.ip_interface(c).ip) for c in cidrs if ipaddress.ip_interface(c).version == 4]
    if v4:
        allowed = "{ " + ", ".join(v4) + " }"
        rules += [f"ether type ip ip saddr != {allowed} drop {note}",
                  f"ether type arp arp saddr ip != {allowed} drop {note}",
                  f"ether type arp arp saddr ether != {mac} drop {note}"]
    return rules


def add_mac_filter(tag: tags.Tag, host_ifname: str, mac: str, cidrs=(), also=None) -> None:
    """Frames from the container's veth must carry its MAC, and, with `cidrs`,
    its IP addresses (IPv4, ARP sender, IPv6 but link-local) and pass
    `container_guard` (untagged, no router's messages). One chain per
    attachment, reached through a verdict map keyed by the veth: each frame
    costs one lookup, however many containers the host has.
    `also`: another writer's (script, values, fallback) to add in the same nft
    transaction (flat's fast path: flat_fastpath.fresh_attachment), one nft
    run instead of two; when that transaction fails, the chain is added on
    its own and then `fallback()` runs."""
    rules = mac_filter_rules(tag, mac, cidrs)
    chain = (f"add chain bridge {NFT_TABLE} {tag}\nflush chain bridge {NFT_TABLE} {tag}\n"
             + "".join(f"add rule bridge {NFT_TABLE} {tag} {rule}\n" for rule in rules)
             + f'add element bridge {NFT_TABLE} ports {{ "{host_ifname}" : jump {tag} }}\n')
    values = dict(names=[NFT_TABLE, str(tag)], ifnames=[host_ifname], macs=[mac], addresses=list(cidrs))
    nft.script(chain, **values)  # refused before the table is made
    other, other_values, fallback = also if also is not None else ("", {}, None)
    both = {key: [*values.get(key, ()), *other_values.get(key, ())] for key in {*values, *other_values}}
    with iptables.host_lock(), iptables.keeping_listings():  # one commit below, whichever way
        # The table is there but for the host's first attachment: the
        # transaction is tried as if it were (one nft run). Asking first would
        # cost as much again, and more with each attachment: libnftables
        # reads every element of the map to answer (0.4 ms with 10, 3.8 ms
        # with 1,000 attachments here). A transaction that fails changes nothing.
        if nft.succeeds(chain + other, **both):
            return
        if not _mac_filter_table_exists():
            # the table in the chain's transaction: one commit
            chain = f"""table bridge {NFT_TABLE} {{
  map ports {{ type ifname : verdict; }}
  chain prerouting {{ type filter hook prerouting priority -300; iifname vmap @ports; }}
}}
""" + chain
            if other and nft.succeeds(chain + other, **both):
                return
        _nft(chain, **values)  # on its own: what nft says when even that fails
    if fallback is not None:
        fallback()  # outside the lock: the other writer takes what it needs itself


def _mac_filter_table_exists() -> bool:
    # its map, made with it: listing the table would read every attachment's
    # chain and rules (a cost that grows with them), and libnftables lists
    # `tables` from a cache of every table's content (~7 ms beside iptables-nft's)
    return tools.run(["nft", "list", "map", "bridge", NFT_TABLE, "ports"], check=False) is not None


def mac_filter_size(tag: tags.Tag, host_ifname: str) -> int | None:
    """How many rules the attachment's macspoofchk chain holds, when the veth
    `host_ifname` jumps to it; None when the chain or the jump is missing.
    (A chain made by an older version holds fewer rules than today's.)"""
    listing = tools.run(["nft", "-j", "list", "table", "bridge", NFT_TABLE], check=False)
    if listing is None:
        return None
    objects = json.loads(listing)["nftables"]
    jumps = any(elem[0] == host_ifname and elem[1].get("jump", {}).get("target") == str(tag)
                for entry in objects if entry.get("map", {}).get("name") == "ports"
                for elem in entry["map"].get("elem", []))
    chain = any(entry.get("chain", {}).get("name") == str(tag) for entry in objects)
    if not (jumps and chain):
        return None
    return sum(1 for entry in objects if entry.get("rule", {}).get("chain") == str(tag))


def bridge_path_frames(network: str) -> int | None:
    """Frames the bridge received from `network`'s containers (the counters
    at the head of their macspoofchk chains); None when none has a chain."""
    listing = tools.run(["nft", "-j", "list", "table", "bridge", NFT_TABLE], check=False)
    if listing is None:
        return None
    prefix, chains, frames = tags.network_prefix(network), 0, 0
    for entry in json.loads(listing)["nftables"]:
        if "chain" in entry and entry["chain"]["name"].startswith(prefix):
            chains += 1
        rule = entry.get("rule")
        if rule and rule["chain"].startswith(prefix):
            frames += sum(expr["counter"]["packets"] for expr in rule["expr"] if "counter" in expr)
    return frames if chains else None


def _mac_filter_chains(network: str) -> list:
    prefix = tags.network_prefix(network)
    listing = tools.run(["nft", "list", "table", "bridge", NFT_TABLE], check=False) or ""
    return re.findall(rf"^\s*chain ({re.escape(prefix)}[\w.-]+) {{", listing, re.M)


def remove_mac_filter(tag: tags.Tag, also=None) -> None:
    """Remove the attachment's macspoofchk chain (today's or a legacy one).
    `also`: a function giving another removal's nft (script, names), made
    part of the same transaction: each nft commit that deletes waits for an
    RCU grace period (~15 ms here), so a DEL makes one."""
    _remove_mac_filter_chains(tag.every, also)


def _remove_mac_filter_chains(names, also=None) -> None:
    with iptables.host_lock(), iptables.keeping_listings():  # at most one commit below
        other, other_names = also() if also else ("", [])
        listing = tools.run(["nft", "list", "map", "bridge", NFT_TABLE, "ports"], check=False)
        script, mine = "", []
        if listing is not None:  # without the table, nothing of ours is there
            ports = re.findall(r'"([^"]+)"\s*:\s*jump\s+([\w.-]+)', listing)
            mine = [name for name, chain in ports if chain in names]
            script = "".join(f'delete element bridge {NFT_TABLE} ports {{ "{name}" }}\n' for name in mine)
            for chain in sorted(names):
                if tools.run(["nft", "list", "chain", "bridge", NFT_TABLE, chain], check=False) is not None:
                    script += f"flush chain bridge {NFT_TABLE} {chain}\ndelete chain bridge {NFT_TABLE} {chain}\n"
            if len(mine) == len(ports):
                script, mine = f"delete table bridge {NFT_TABLE}\n", []  # the last one: nothing of ours stays
        if script or other:
            _nft(script + other, names=[NFT_TABLE, *(c for c in names if c in script), *other_names], ifnames=mine)
