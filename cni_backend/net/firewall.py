"""Firewall rules owned by one attachment, added and removed as a unit.

Each attachment's rules carry a comment tag derived from (network, container,
ifname), so DEL finds them without any state, even when the sandbox is gone.
All changes go through one `iptables-restore --noflush` per family, under a
host-wide lock, so concurrent ADD/DEL never see half a rule set; our chains and
their jumps exist exactly while some attachment has rules in them.

Rules (per container address):
  filter RANCHER-CNI-FORWARD   from the container, and replies to it: Docker's
                               FORWARD policy DROP would cut the bridge off otherwise
  nat    RANCHER-CNI-MASQ      ipMasq: masquerade what leaves the subnet
  bridge rancher_cni (nft)     macspoofchk: frames from the host-side veth must
                               carry the container's MAC
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
MASQ_CHAIN = "RANCHER-CNI-MASQ"
NFT_TABLE = "rancher_cni"
LOCK_PATH = "/run/rancher-cni/firewall.lock"
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


def _comment_of(rule: str) -> str | None:
    match = re.search(r'--comment "?([^" ]+)"?', rule)
    return match.group(1) if match else None


def _plan_table(table: str, saved: tuple, is_stale, new_rules: list) -> list:
    """restore lines for one table: drop the rules whose tag `is_stale`, add
    `new_rules`, and create or remove our chain and its jump as needed."""
    chains, rules = saved
    parent, chain = _JUMPS[table]
    jump = f"-A {parent} -m comment --comment rancher-cni -j {chain}"
    ours = [r for r in rules if r.startswith(f"-A {chain} ")]
    stale = [r for r in ours if is_stale(_comment_of(r) or "")]
    remaining = len(ours) - len(stale) + len(new_rules)
    has_jump = any(r.startswith(f"-A {parent} ") and r.endswith(f"-j {chain}") for r in rules)
    lines = []
    if remaining and chain not in chains:
        lines.append(f":{chain} - [0:0]")
    if remaining and not has_jump:
        lines.append(jump.replace("-A ", "-I ", 1).replace(parent, f"{parent} 1", 1))
    lines += ["-D" + r[2:] for r in stale]
    lines += new_rules
    if not remaining and chain in chains:
        if has_jump:
            lines.append("-D" + jump[2:])
        lines.append(f"-X {chain}")
    return lines


def _apply(family: int, is_stale, new_rules: dict) -> None:
    saved = _saved_tables(family)
    script = []
    for table in ("filter", "nat"):
        lines = _plan_table(table, saved.get(table, (set(), [])), is_stale, new_rules.get(table, []))
        if lines:
            script += [f"*{table}", *lines, "COMMIT"]
    if script:
        _run([_TOOLS[family][1], "-w", "--noflush"], "\n".join(script) + "\n")


def _rules_for(tag: str, bridge: str, ips: list, masquerade: bool) -> dict:
    """family -> table -> rule lines for the container addresses `ips`."""
    per_family = {}
    for iface in ips:
        rules = per_family.setdefault(iface.version, {"filter": [], "nat": []})
        ip, note = iface.ip, f"-m comment --comment {tag}"
        host = f"{ip}/{32 if iface.version == 4 else 128}"
        rules["filter"] += [
            f"-A {FORWARD_CHAIN} -s {host} -i {bridge} {note} -j ACCEPT",
            f"-A {FORWARD_CHAIN} -d {host} -o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED {note} -j ACCEPT",
        ]
        if masquerade:
            rules["nat"] += [
                f"-A {MASQ_CHAIN} -s {host} -d {iface.network} {note} -j RETURN",
                f"-A {MASQ_CHAIN} -s {host} ! -d {_MULTICAST[iface.version]} {note} -j MASQUERADE",
            ]
    return per_family


def _append_fast(family: int, new_rules: dict) -> bool:
    """Append in one call, assuming our chains and jumps exist. Re-inserting the
    jump makes the whole restore fail (changing nothing) when they do not."""
    script = []
    for table, rules in new_rules.items():
        if rules:
            parent, chain = _JUMPS[table]
            jump = f"-m comment --comment rancher-cni -j {chain}"
            script += [f"*{table}", f"-D {parent} {jump}", f"-I {parent} 1 {jump}", *rules, "COMMIT"]
    return _run([_TOOLS[family][1], "-w", "--noflush"], "\n".join(script) + "\n", check=False) is not None


def add_attachment_rules(tag: str, bridge: str, cidrs: list, masquerade: bool) -> None:
    ips = [ipaddress.ip_interface(c) for c in cidrs]
    with _host_lock():
        for family, rules in _rules_for(tag, bridge, ips, masquerade).items():
            if not _append_fast(family, rules):
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
