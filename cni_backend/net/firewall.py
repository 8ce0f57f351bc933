"""Firewall rules owned by attachments, added and removed as a unit.

Each attachment's rules carry a comment tag derived from (network, container,
ifname), so DEL finds them without any state, even when the sandbox is gone.
All changes go through one `iptables-restore --noflush` per family, under a
host-wide lock, so concurrent ADD/DEL never see half a rule set. Everything
else is derived from the attachments' rules: a bridge's isolation rules exist
while some attachment uses the bridge, our chains and jumps while any does.

filter RANCHER-CNI-FORWARD (jumped to from FORWARD)
    -i BR ! -o BR -j RANCHER-CNI-ISOLATION      per bridge in use, first
    -s IP -i BR -j ACCEPT                       per container: its traffic, which
    -d IP -o BR ctstate RELATED,ESTABLISHED,DNAT  Docker's FORWARD DROP policy
                                                would drop, and replies and
                                                published ports back to it
filter RANCHER-CNI-ISOLATION
    ctstate DNAT -j RETURN                      published ports stay reachable
    -o docker0 / -o br-+ -j DROP                not into Docker's own networks
    -o BR -j DROP                               per bridge: not into our others
nat RANCHER-CNI-MASQ (from POSTROUTING)         ipMasq: what leaves the subnet
bridge rancher_cni (nft)                        macspoofchk: frames from the
                                                host veth carry the container's MAC
"""

import contextlib
import fcntl
import hashlib
import ipaddress
import os
import re
import subprocess

from ..errors import CNIError, FIREWALL_FAILURE

FORWARD_CHAIN = "RANCHER-CNI-FORWARD"
ISOLATION_CHAIN = "RANCHER-CNI-ISOLATION"
MASQ_CHAIN = "RANCHER-CNI-MASQ"
NFT_TABLE = "rancher_cni"
LOCK_PATH = "/run/rancher-cni/firewall.lock"
ATTACHMENT_PREFIX = "rcni-"
BRIDGE_PREFIX = "rcnibr-"
STATIC_TAG = "rcni-isolation"
DOCKER_BRIDGES = ("docker0", "br-+")
_JUMPS = {"filter": ("FORWARD", FORWARD_CHAIN), "nat": ("POSTROUTING", MASQ_CHAIN)}
_MULTICAST = {4: "224.0.0.0/4", 6: "ff00::/8"}
_TOOLS = {4: ("iptables-save", "iptables-restore"), 6: ("ip6tables-save", "ip6tables-restore")}


def network_tag(network: str) -> str:
    """The prefix every rule of `network` carries (GC finds a network's rules by it)."""
    return "rcni-" + hashlib.sha256(network.encode()).hexdigest()[:8] + "-"


def attachment_tag(network: str, container_id: str, ifname: str) -> str:
    digest = hashlib.sha256(f"{network}\0{container_id}\0{ifname}".encode()).hexdigest()
    return network_tag(network) + digest[:16]


@contextlib.contextmanager
def _host_lock():
    os.makedirs(os.path.dirname(LOCK_PATH), mode=0o755, exist_ok=True)
    with open(LOCK_PATH, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run(argv: list, stdin: str | None = None, check: bool = True):
    """stdout of the command; with check=False, None when it failed."""
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise CNIError(FIREWALL_FAILURE, f"{argv[0]} not found", "install the iptables and nftables packages") from None
    if done.returncode != 0:
        if not check:
            return None
        raise CNIError(FIREWALL_FAILURE, f"{argv[0]} failed", done.stderr.strip())
    return done.stdout


def _saved_tables(family: int) -> dict:
    """table -> (set of chain names, list of rule lines), from iptables-save."""
    tables, current = {}, None
    for line in _run([_TOOLS[family][0]]).splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:], (set(), []))
        elif line.startswith(":") and current is not None:
            current[0].add(line[1:].split()[0])
        elif line.startswith("-A ") and current is not None:
            current[1].append(line)
    return tables


def _comment_of(rule: str) -> str:
    match = re.search(r'--comment "?([^" ]+)"?', rule)
    return match.group(1) if match else ""


def _jump(table: str) -> str:
    parent, chain = _JUMPS[table]
    return f"{parent} -m comment --comment rancher-cni -j {chain}"


def _bridge_rules(bridge: str) -> list:
    """(chain, rule body) pairs isolating one bridge from our others."""
    note = f"-m comment --comment {BRIDGE_PREFIX}{bridge}"
    return [(FORWARD_CHAIN, f"-i {bridge} ! -o {bridge} {note} -j {ISOLATION_CHAIN}"),
            (ISOLATION_CHAIN, f"-o {bridge} {note} -j DROP")]


def _static_isolation() -> list:
    note = f"-m comment --comment {STATIC_TAG}"
    return ([f"-A {ISOLATION_CHAIN} -m conntrack --ctstate DNAT {note} -j RETURN"]
            + [f"-A {ISOLATION_CHAIN} -o {bridge} {note} -j DROP" for bridge in DOCKER_BRIDGES])


def _is_attachment(rule: str) -> bool:
    tag = _comment_of(rule)
    return tag.startswith(ATTACHMENT_PREFIX) and tag != STATIC_TAG


def _bridge_of(rule: str) -> str | None:
    match = re.search(r" -i (\S+)", rule)
    return match.group(1) if match else None


def _plan_filter(saved: tuple, is_stale, new_rules: list) -> list:
    chains, rules = saved
    ours = [r for r in rules if r.startswith(f"-A {FORWARD_CHAIN} ") and _is_attachment(r)]
    stale = [r for r in ours if is_stale(_comment_of(r))]
    remaining = [r for r in ours if r not in stale] + new_rules
    needed = {_bridge_of(r) for r in remaining} - {None}
    present = {_comment_of(r)[len(BRIDGE_PREFIX):] for r in rules if _comment_of(r).startswith(BRIDGE_PREFIX)}
    lines = ["-D" + r[2:] for r in stale]
    for bridge in present - needed:
        lines += [f"-D {chain} {rule}" for chain, rule in _bridge_rules(bridge)]
    if not remaining:
        if FORWARD_CHAIN in chains:
            lines += [f"-D {_jump('filter')}"] if f"-A {_jump('filter')}" in rules else []
            lines += [f"-F {FORWARD_CHAIN}", f"-X {FORWARD_CHAIN}"]
        if ISOLATION_CHAIN in chains:
            lines += [f"-F {ISOLATION_CHAIN}", f"-X {ISOLATION_CHAIN}"]
        return lines
    for chain in (FORWARD_CHAIN, ISOLATION_CHAIN):
        if chain not in chains:
            lines.insert(0, f":{chain} - [0:0]")
    if ISOLATION_CHAIN not in chains:
        lines += _static_isolation()
    if f"-A {_jump('filter')}" not in rules:
        lines.append(f"-I {_jump('filter').replace(' ', ' 1 ', 1)}")
    for bridge in needed - present:
        (fwd, jump), (iso, drop) = _bridge_rules(bridge)
        lines += [f"-I {fwd} 1 {jump}", f"-A {iso} {drop}"]
    return lines + new_rules


def _plan_nat(saved: tuple, is_stale, new_rules: list) -> list:
    chains, rules = saved
    ours = [r for r in rules if r.startswith(f"-A {MASQ_CHAIN} ") and _is_attachment(r)]
    stale = [r for r in ours if is_stale(_comment_of(r))]
    remaining = len(ours) - len(stale) + len(new_rules)
    lines = ["-D" + r[2:] for r in stale]
    if not remaining:
        if MASQ_CHAIN in chains:
            lines += [f"-D {_jump('nat')}"] if f"-A {_jump('nat')}" in rules else []
            lines += [f"-F {MASQ_CHAIN}", f"-X {MASQ_CHAIN}"]
        return lines
    if MASQ_CHAIN not in chains:
        lines.insert(0, f":{MASQ_CHAIN} - [0:0]")
    if f"-A {_jump('nat')}" not in rules:
        lines.append(f"-I {_jump('nat').replace(' ', ' 1 ', 1)}")
    return lines + new_rules


def _apply(family: int, is_stale, new_rules: dict) -> None:
    """Bring the kernel to: the rules now there, less those whose tag is_stale,
    plus new_rules, with the bridge rules and chains that follow from that."""
    saved = _saved_tables(family)
    script = []
    for table, plan in (("filter", _plan_filter), ("nat", _plan_nat)):
        lines = plan(saved.get(table, (set(), [])), is_stale, new_rules.get(table, []))
        if lines:
            script += [f"*{table}", *lines, "COMMIT"]
    if script:
        _run([_TOOLS[family][1], "-w", "--noflush"], "\n".join(script) + "\n")


def _rules_for(tag: str, bridge: str, ips: list, masquerade: bool) -> dict:
    """family -> table -> rule lines for the container addresses `ips`."""
    per_family = {}
    for iface in ips:
        rules = per_family.setdefault(iface.version, {"filter": [], "nat": []})
        note = f"-m comment --comment {tag}"
        host = f"{iface.ip}/{32 if iface.version == 4 else 128}"
        rules["filter"] += [
            f"-A {FORWARD_CHAIN} -s {host} -i {bridge} {note} -j ACCEPT",
            f"-A {FORWARD_CHAIN} -d {host} -o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED,DNAT {note} -j ACCEPT",
        ]
        if masquerade:
            rules["nat"] += [
                f"-A {MASQ_CHAIN} -s {host} -d {iface.network} {note} -j RETURN",
                f"-A {MASQ_CHAIN} -s {host} ! -d {_MULTICAST[iface.version]} {note} -j MASQUERADE",
            ]
    return per_family


def _append_fast(family: int, bridge: str, new_rules: dict) -> bool:
    """Append in one call, assuming our chains, jumps and the bridge's rules
    exist: each is deleted and put back in the same restore, which therefore
    fails as a whole, changing nothing, when one of them does not."""
    script = []
    for table, rules in new_rules.items():
        if not rules:
            continue
        script += [f"*{table}", f"-D {_jump(table)}", f"-I {_jump(table).replace(' ', ' 1 ', 1)}"]
        if table == "filter":
            (fwd, jump), (iso, drop) = _bridge_rules(bridge)
            script += [f"-D {fwd} {jump}", f"-I {fwd} 1 {jump}", f"-D {iso} {drop}", f"-A {iso} {drop}"]
        script += [*rules, "COMMIT"]
    return _run([_TOOLS[family][1], "-w", "--noflush"], "\n".join(script) + "\n", check=False) is not None


def add_attachment_rules(tag: str, bridge: str, cidrs: list, masquerade: bool) -> None:
    ips = [ipaddress.ip_interface(c) for c in cidrs]
    with _host_lock():
        for family, rules in _rules_for(tag, bridge, ips, masquerade).items():
            if not _append_fast(family, bridge, rules):
                _apply(family, tag.__eq__, rules)


def remove_attachment_rules(tag: str, families=(4, 6)) -> None:
    with _host_lock():
        for family in families:
            _apply(family, tag.__eq__, {})


def collect_garbage(network: str, valid_tags: set) -> None:
    """Remove every rule of `network` whose attachment is not in `valid_tags`."""
    prefix = network_tag(network)
    with _host_lock():
        for family in (4, 6):
            _apply(family, lambda tag: tag.startswith(prefix) and tag not in valid_tags, {})


def attachment_rules(tag: str) -> list:
    """Every iptables rule carrying `tag` (for CHECK and tests)."""
    found = []
    for family in (4, 6):
        for _, rules in _saved_tables(family).values():
            found += [r for r in rules if _comment_of(r) == tag]
    return found


# -- macspoofchk, with nftables' bridge family ----------------------------

def _nft(script: str) -> str:
    return _run(["nft", "-f", "-"], script)


def add_mac_filter(tag: str, host_ifname: str, mac: str) -> None:
    with _host_lock():
        _nft(f"""table bridge {NFT_TABLE} {{
  chain prerouting {{ type filter hook prerouting priority -300; }}
}}
add rule bridge {NFT_TABLE} prerouting iifname "{host_ifname}" ether saddr != {mac} drop comment "{tag}"
""")


def remove_mac_filter(tag: str) -> None:
    with _host_lock():
        try:
            listing = _run(["nft", "-a", "list", "chain", "bridge", NFT_TABLE, "prerouting"])
        except CNIError:
            return  # no table: nothing of ours
        rules = [line for line in listing.splitlines() if "# handle" in line and " drop " in line]
        mine = [line for line in rules if f'comment "{tag}"' in line]
        if not mine:
            return
        if len(mine) == len(rules):
            _nft(f"delete table bridge {NFT_TABLE}\n")
            return
        handles = [line.rsplit("# handle", 1)[1].strip() for line in mine]
        _nft("".join(f"delete rule bridge {NFT_TABLE} prerouting handle {h}\n" for h in handles))
