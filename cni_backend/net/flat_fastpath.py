"""The flat network's fast path: unicast between a container and the uplink
is handed from one device to the other at ingress, before the bridge.

Why: Docker turns br_netfilter on for every bridge of the host (the global
bridge-nf-call-iptables sysctl; a bridge can only opt in, never out), so each
frame the flat bridge switches also walks iptables' PREROUTING, FORWARD and
POSTROUTING hooks. That was the whole gap to Docker's macvlan driver
(docs/performance.md). nftables' netdev family can forward a frame from one
device's ingress hook straight to another device.

table netdev rancher_flat_<S>     one per flat network (S: flatnet's suffix)
  set local     MACs that stay on the bridge: the bridge's own, every container's
  map ports     container MAC -> its host veth
  chain uplink  ingress of the uplink: unicast to a container's MAC -> its veth
                (counted: with the <tag> chains' counters, the proof that the
                fast path carries traffic, which `cnm-shim doctor` reports)
  chain out     forward to the uplink (rewritten by every ensure, so a
                re-created uplink is found by its new index)
  chain <tag>   ingress of one container's host veth: what `container_guard`
                forbids is dropped (tagged frames, redirects, router and
                foreign neighbour adverts); unicast IP that passes
                anti-spoofing (the container's MAC and addresses), not to a
                local MAC nor to the metadata address -> out
                (<tag>: the attachment's tag of kind flat, see `tags`; its
                elements carry it as their comment)

Everything else takes the bridge as before, where the bridge's rules apply:
broadcast, multicast, ARP, traffic between containers, to the host or over
the metadata link, and every frame the anti-spoofing chain would refuse.
Losing the fast path (a flushed ruleset) therefore costs speed, never
connectivity or isolation.
"""

import ipaddress
import json

from ..errors import CNIError
from . import container_guard, nft, tags, tools

_PREFIX = "rancher_flat_"


def table_name(suffix: str) -> str:
    return _PREFIX + suffix


def _nft(script: str, **values) -> None:
    nft.run(script, **values)


def listing_argv(suffix: str) -> list:
    """The command `_listing` runs for the network's table (to run it beside others: ensure_network)."""
    return ["nft", "-j", "list", "table", "netdev", table_name(suffix)]


def _parsed(out: str | None) -> list | None:
    return None if out is None else json.loads(out)["nftables"]


def _listing(table: str) -> list | None:
    """The table's objects as nft's JSON gives them; None when it does not exist."""
    return _parsed(tools.run(["nft", "-j", "list", "table", "netdev", table], check=False))


def ensure_network(suffix: str, uplink: str, bridge_mac: str, listed=tools.LIST_NOW) -> None:
    """The network's table, rewritten only when it is not in line: every ADD
    calls this, and a rewrite flushes rules, which makes nftables' commit wait
    for an RCU grace period (~15 ms here, serialised with every other commit
    of the host), where the listing that shows it in line costs ~3 ms. It
    also keeps the uplink counter counting. `listed`: the output of
    `listing_argv`, run by the caller beside its other listings (None: the
    table does not exist)."""
    table = table_name(suffix)
    script = nft.script(f"""table netdev {table} {{
  set local {{ type ether_addr; }}
  map ports {{ type ether_addr : iface_index; }}
  chain out {{ }}
  chain uplink {{ type filter hook ingress device "{uplink}" priority 0; }}
}}
flush chain netdev {table} out
add rule netdev {table} out fwd to "{uplink}"
flush chain netdev {table} uplink
add rule netdev {table} uplink ether daddr @ports counter fwd to ether daddr map @ports
add element netdev {table} local {{ {bridge_mac} }}
""", names=[table], ifnames=[uplink], macs=[bridge_mac])  # refused here, before anything is read or run
    listing = _listing(table) if listed is tools.LIST_NOW else _parsed(listed)
    if not _network_in_line(listing, uplink, bridge_mac):
        _nft(script, names=[table], ifnames=[uplink], macs=[bridge_mac])


def _network_in_line(listing: list | None, uplink: str, bridge_mac: str) -> bool:
    """The table holds what ensure_network writes: the bridge's MAC in `local`,
    `out` forwarding to the uplink by name (a re-created uplink lists as the
    old index, a number) and the uplink chain's one forwarding rule. Anything
    unexpected reads as not in line: the rewrite is always safe."""
    if listing is None:
        return False
    rules = {}
    for entry in listing:
        rule = entry.get("rule")
        if rule:
            rules.setdefault(rule.get("chain"), []).append(rule.get("expr"))
    chains = {entry["chain"]["name"]: entry["chain"] for entry in listing if "chain" in entry}
    uplink_chain = chains.get("uplink", {})
    return (bridge_mac.lower() in [m.lower() for m, _ in _elements(listing, "local") if isinstance(m, str)]
            and any(entry.get("map", {}).get("name") == "ports" for entry in listing)
            and rules.get("out") == [[{"fwd": {"dev": uplink}}]]
            and uplink_chain.get("hook") == "ingress" and uplink_chain.get("dev", uplink) == uplink
            and len(rules.get("uplink", [])) == 1
            and any("counter" in expr for expr in rules["uplink"][0])
            and any("fwd" in expr for expr in rules["uplink"][0]))


def remove_network(suffix: str) -> None:
    if _listing(table_name(suffix)) is not None:
        _nft(f"delete table netdev {table_name(suffix)}\n", names=[table_name(suffix)])


def attachment_rules(mac: str, cidrs: list, metadata_ip: str | None) -> list:
    """The rules of an attachment's chain: what no container may send is
    dropped (container_guard), then what it sends that may skip the bridge."""
    addresses = [ipaddress.ip_interface(c).ip for c in cidrs]
    v4 = ", ".join(str(a) for a in addresses if a.version == 4)
    v6 = ", ".join(str(a) for a in addresses if a.version == 6)
    unicast_out = "ether daddr != @local meta pkttype other counter goto out"
    # What no container may send is dropped here too: unicast IP from a
    # legitimate source would otherwise skip the bridge's chain with it.
    rules = container_guard.rules(mac, cidrs) if cidrs else []
    if v4:
        not_metadata = f"ip daddr != {metadata_ip} " if metadata_ip else ""
        rules.append(f"ether saddr {mac} ether type ip ip saddr {{ {v4} }} {not_metadata}{unicast_out}")
    if v6:
        rules.append(f"ether saddr {mac} ether type ip6 ip6 saddr {{ {v6} }} {unicast_out}")
    return rules


def add_attachment(suffix: str, tag: tags.Tag, host_ifname: str, mac: str, cidrs: list, metadata_ip: str | None) -> None:
    nft.run_fresh(fresh_attachment(suffix, tag, host_ifname, mac, cidrs, metadata_ip))


def fresh_attachment(suffix: str, tag: tags.Tag, host_ifname: str, mac: str, cidrs: list,
                     metadata_ip: str | None) -> tuple:
    """(script, values, fallback) for adding the attachment: `script` (nft
    checked with `values`) makes it where nothing of it exists yet, and may
    run in another writer's nft transaction (the anti-spoofing chain's:
    `firewall.add_mac_filter`); when that transaction failed, `fallback()`
    adds it whatever is there."""
    table = table_name(suffix)
    rules = attachment_rules(mac, cidrs, metadata_ip)
    # One transaction, idempotent without reading the table first: the chain
    # is flushed before its rules go in, and each element is added, deleted
    # and added again with our comment, so an entry for this MAC left by a
    # DEL that never came changes owner. Only a stale map entry pointing at
    # another veth makes the first add fail: then it is removed and we retry.
    port = f'{mac} : "{host_ifname}"'
    script = (f'add chain netdev {table} {tag} {{ type filter hook ingress device "{host_ifname}" priority 0; }}\n'
              f"flush chain netdev {table} {tag}\n"
              + "".join(f"add rule netdev {table} {tag} {rule}\n" for rule in rules)
              + f"add element netdev {table} local {{ {mac} }}\n"
              f"delete element netdev {table} local {{ {mac} }}\n"
              f'add element netdev {table} local {{ {mac} comment "{tag}" }}\n'
              f"add element netdev {table} ports {{ {port} }}\n"
              f"delete element netdev {table} ports {{ {mac} }}\n"
              f'add element netdev {table} ports {{ {mac} comment "{tag}" : "{host_ifname}" }}\n')
    values = dict(names=[table, str(tag)], ifnames=[host_ifname], macs=[mac],
                  addresses=[*cidrs, *([metadata_ip] if metadata_ip else [])])
    nft.script(script, **values)  # refused here, before anything is removed
    # The usual case first, adds only: a transaction that deletes anything
    # (an element above) waits for an RCU grace period at commit. `create`
    # fails the whole transaction, changing nothing, when the chain or an
    # element exists already (a repeated ADD, a DEL that never came).
    fresh = (f'create chain netdev {table} {tag} {{ type filter hook ingress device "{host_ifname}" priority 0; }}\n'
             + "".join(f"add rule netdev {table} {tag} {rule}\n" for rule in rules)
             + f'create element netdev {table} local {{ {mac} comment "{tag}" }}\n'
             f'create element netdev {table} ports {{ {mac} comment "{tag}" : "{host_ifname}" }}\n')

    def fallback() -> None:
        try:
            _nft(script, **values)
        except CNIError:
            remove_attachment(suffix, tag, mac)
            _nft(script, **values)
    return nft.script(fresh, **values), values, fallback


def _elements(listing: list, name: str) -> list:
    """(mac, comment) of the set or map `name`."""
    found = []
    for entry in listing:
        obj = entry.get("set") or entry.get("map")
        if not obj or obj["name"] != name:
            continue
        for elem in obj.get("elem", []):
            key = elem[0] if isinstance(elem, list) else elem
            inner = key.get("elem", key) if isinstance(key, dict) else {"val": key}
            found.append((inner["val"], inner.get("comment")))
    return found


def _chains(listing: list) -> set:
    return {entry["chain"]["name"] for entry in listing if "chain" in entry}


def remove_attachment(suffix: str, tag: tags.Tag, mac: str | None = None) -> None:
    """Remove the attachment's chain and elements (found by their comment,
    today's or a legacy one, and with `mac`, any element for that MAC);
    nothing there is fine."""
    _remove(suffix, tag.every, mac)


def remove_legacy(suffix: str, tag: tags.Tag) -> None:
    """Remove what the previous version made for the attachment (its chain
    and elements, tagged without a kind)."""
    _remove(suffix, {tag.legacy})


def removal(suffix: str, tag: tags.Tag) -> tuple:
    """remove_attachment's nft (script, names), to run in another removal's transaction."""
    return _removal(suffix, tag.every)


def _removal(suffix: str, names, mac: str | None = None) -> tuple:
    table = table_name(suffix)
    listing = _listing(table)
    if listing is None:
        return "", []
    script = ""
    for name in ("local", "ports"):
        for value, comment in _elements(listing, name):
            if comment in names or (mac and value == mac.lower() and comment):
                script += f"delete element netdev {table} {name} {{ {value} }}\n"
    for chain in sorted(_chains(listing) & set(names)):
        script += f"flush chain netdev {table} {chain}\ndelete chain netdev {table} {chain}\n"
    return script, [table, *(c for c in names if c in script)] if script else []


def _remove(suffix: str, names, mac: str | None = None) -> None:
    script, names = _removal(suffix, names, mac)
    if script:
        _nft(script, names=names)


def attachment_present(suffix: str, tag: tags.Tag) -> bool:
    """The attachment's chain and port entry are there (today's or legacy ones)."""
    listing = _listing(table_name(suffix))
    return listing is not None and any(
        name in _chains(listing) and any(comment == name for _, comment in _elements(listing, "ports"))
        for name in tag.every)


def packets(suffix: str) -> dict | None:
    """Packets the fast path moved, from its rules' counters: `from_uplink`
    (the uplink chain) and `to_uplink` (every container chain); None when the
    network has no fast-path table. A counter counts only what matched its
    rule, so these are frames that really skipped the bridge."""
    listing = _listing(table_name(suffix))
    if listing is None:
        return None
    counted = {"from_uplink": 0, "to_uplink": 0}
    for entry in listing:
        rule = entry.get("rule")
        if rule is None or rule["chain"] == "out":
            continue
        key = "from_uplink" if rule["chain"] == "uplink" else "to_uplink"
        counted[key] += sum(expr["counter"]["packets"] for expr in rule["expr"] if "counter" in expr)
    return counted


def collect_garbage(suffix: str, network: str, valid_attachments) -> list:
    """Remove the fast-path entries of `network` (kind flat) whose attachment
    (container_id, ifname) is not in `valid_attachments`; the removed tags."""
    listing = _listing(table_name(suffix))
    if listing is None:
        return []
    found = {comment for name in ("local", "ports") for _, comment in _elements(listing, name) if comment}
    found |= _chains(listing)
    stale = sorted(filter(tags.stale_test(network, {tags.FLAT}, valid_attachments), found))
    if stale:
        _remove(suffix, set(stale))
    return stale
