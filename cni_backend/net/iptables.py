"""iptables rules owned by attachments, changed atomically; everything else
follows from them.

A rule belongs to an attachment through its comment tag (`tags`). Callers
add or remove an attachment's rules; this module works out the rest from what
the kernel holds: our chains and their jumps exist while some rule is in them,
and a bridge's isolation rules while some attachment's traffic enters from that
bridge (see `_bridge_rules`: a LAN bridge, flat's, is the host's uplink, not
an isolated container bridge). Each change is one `iptables-restore --noflush`
per family, under a host-wide lock, so parallel ADD/DEL never see or leave
half a rule set.
"""

import contextlib
import functools
import hashlib
import os
import re
import threading

from .. import locks, paths
from ..errors import CNIError, INTERNAL
from . import kept_restore, netns, nft_generation, tags, tools

FORWARD_CHAIN = "RANCHER-CNI-FORWARD"
ISOLATION_CHAIN = "RANCHER-CNI-ISOLATION"
MASQ_CHAIN = "RANCHER-CNI-MASQ"
HOSTPORT_CHAIN = "RANCHER-CNI-HOSTPORT"
LOCALNET_CHAIN = "RANCHER-CNI-LOCALNET"
BRIDGE_PREFIX = "rcnibr-"
STATIC_TAG = "rcni-isolation"
DOCKER_BRIDGES = ("docker0", "br-+")  # Docker's own bridge networks
_TOOLS = {4: ("iptables-save", "iptables-restore"), 6: ("ip6tables-save", "ip6tables-restore")}
_NOTE = "-m comment --comment rancher-cni"

# Our attachment chains per table, and the jumps into each from built-in chains.
CHAINS = {
    "filter": {FORWARD_CHAIN: (f"FORWARD {_NOTE} -j {FORWARD_CHAIN}",)},
    "nat": {
        MASQ_CHAIN: (f"POSTROUTING {_NOTE} -j {MASQ_CHAIN}",),
        HOSTPORT_CHAIN: (f"PREROUTING -m addrtype --dst-type LOCAL {_NOTE} -j {HOSTPORT_CHAIN}",
                         f"OUTPUT -m addrtype --dst-type LOCAL {_NOTE} -j {HOSTPORT_CHAIN}"),
    },
    "raw": {LOCALNET_CHAIN: (f"PREROUTING {_NOTE} -j {LOCALNET_CHAIN}",)},  # firewall.localnet_guard
}


# Foreign jumps ours must come before in a built-in chain: the reference
# firewall plug-in inserts `-j CNI-FORWARD` first in FORWARD (when absent) and
# accepts its containers' traffic there, which would decide before our
# isolation (tests/netns/test_reference_firewall.py). Ours goes back above it.
KEEP_ABOVE = {"FORWARD": ("CNI-FORWARD",)}


# Whitespace other than the space between tokens, or a control character: in
# a restore script a newline ends the rule and may open another table.
_UNSAFE = re.compile(r"[^\S ]|[\x00-\x1f\x7f-\x9f]")


def script_text(lines: list) -> str:
    """Restore lines -> the iptables-restore input. Every value in a rule was
    validated where it entered (addresses, interface names, tags); this is
    the second wall: a token holding whitespace or a control character is an
    internal error, never written."""
    for line in lines:
        if not isinstance(line, str) or _UNSAFE.search(line):
            raise CNIError(INTERNAL, "refusing to write an iptables-restore line with whitespace or a control "
                                     f"character inside a token: {line!r}")
    return "\n".join(lines) + "\n"


def host_lock(timeout: float | None = None):
    """The firewall's lock: one change of our rules in this network namespace at a time."""
    return locks.held(lock_path(), timeout=timeout)


def lock_path() -> str:
    """The lock over our rules in the calling thread's network namespace,
    named by the namespace (as the records are, `_records`), so every process
    there takes the same one whatever its mount or PID namespace. The rules
    are the namespace's: changes in two namespaces need not wait for each
    other (a CNI runtime's scratch hosts; the 200 simulated hosts of
    bench/control_plane.py, which queued for one host-wide lock)."""
    return f"{_records()}.lock"


def saved_tables(family: int) -> dict:
    """table -> (set of chain names, list of rule lines), from iptables-save,
    with each attachment's rules shown in the chain that jumps to its own
    chain (see `logical`)."""
    return logical(parse_saved(tools.run([_TOOLS[family][0]])))[0]


# -- an attachment's own chains ---------------------------------------------
#
# Each attachment's rules of one of our chains (PARENT) live in a chain of
# their own, ATTACHMENT_PREFIX + a digest of (tag, PARENT), jumped to from
# PARENT by one rule carrying the tag. DEL removes that jump and the chain in
# one restore, whatever else the table holds: no listing, no -D by rule text.
# The planner works on the `logical` view (each attachment's rules as if in
# PARENT, as the previous version kept them, which it still reads), and
# `physical` turns its plan into lines on the attachments' chains.

ATTACHMENT_PREFIX = "RCNI-"
_ATTACHMENT_CHAIN = re.compile(r"^RCNI-[0-9a-f]{20}$")
_JUMP = re.compile(r"^-A (\S+) -m comment --comment (\S+) -j (RCNI-[0-9a-f]{20})$")


def attachment_chain(tag: str, parent: str) -> str:
    """The chain of the attachment `tag`'s rules of our chain `parent` (28 characters at most)."""
    name = ATTACHMENT_PREFIX + hashlib.sha256(f"{tag}\0{parent}".encode()).hexdigest()[:20]
    assert _ATTACHMENT_CHAIN.match(name)
    return name


def _jump_to(parent: str, tag: str, chain: str) -> str:
    return f"{parent} -m comment --comment {tag} -j {chain}"


def logical(tables: dict) -> tuple:
    """parse_saved's tables -> (the same with each attachment chain's rules
    moved into its parent chain in place of the jump, the attachment chains
    and jumps left out; table -> {logical rule: attachment chain}; table ->
    {attachment chain: [its jump lines]})."""
    view, chain_of, jumps = {}, {}, {}
    for table, (chains, rules) in tables.items():
        mine = {c for c in chains if _ATTACHMENT_CHAIN.match(c)}
        body = {c: [] for c in mine}
        for rule in rules:
            if _chain_of(rule) in body:
                body[_chain_of(rule)].append(rule)
        out, where, jumped = [], {}, {}
        for rule in rules:
            if _chain_of(rule) in mine:
                continue
            m = _JUMP.match(rule)
            if m and m.group(3) in mine and m.group(1) in CHAINS.get(table, {}):
                first = m.group(3) not in jumped
                jumped.setdefault(m.group(3), []).append(rule)
                if first:
                    for inner in body[m.group(3)]:
                        moved = f"-A {m.group(1)} " + inner[len(f"-A {m.group(3)} "):]
                        where[moved] = m.group(3)
                        out.append(moved)
                continue
            out.append(rule)
        # a chain without a jump (half made) stays visible as itself: repair removes it with the planner's help
        view[table] = (chains - set(jumped), out)
        chain_of[table], jumps[table] = where, jumped
    return view, chain_of, jumps


def physical(script: list, chain_of: dict, jumps: dict) -> list:
    """The planner's restore lines (on the logical view) -> lines on the
    attachment chains: an attachment rule's removal becomes the removal of
    its chain and jump, an added one goes into its attachment's chain.

    The attachment chains go last in their table's section, and their jump
    is not deleted from a parent chain the section flushes: iptables-nft
    fails to delete a chain whose jump was deleted from a chain flushed in
    the same transaction (EBUSY)."""
    out, section = [], None
    for line in script:
        if line.startswith("*"):
            section = [line]
        elif line == "COMMIT" and section is not None:
            out += _physical_table(section, chain_of.get(section[0][1:], {}), jumps.get(section[0][1:], {}))
            out.append(line)
            section = None
        elif section is not None:
            section.append(line)
        else:
            out.append(line)
    return out


def _physical_table(section: list, where: dict, jumps: dict) -> list:
    table, lines = section[0][1:], section[1:]
    flushed = {line.split()[1] for line in lines if line.startswith("-F ")}
    header, body, tail, gone, made = [section[0]], [], [], {}, set()
    for line in lines:
        if line.startswith("-D ") and "-A" + line[2:] in where:
            chain = where["-A" + line[2:]]
            if chain not in gone:
                gone[chain] = True
                body += ["-D" + j[2:] for j in jumps.get(chain, []) if _chain_of(j) not in flushed]
            continue
        if line.startswith("-A ") and _chain_of(line) in CHAINS.get(table, {}) and _is_attachment(line):
            parent, tag = _chain_of(line), comment_of(line)
            chain = attachment_chain(tag, parent)
            if chain not in made:
                made.add(chain)
                wanted = f"-A {_jump_to(parent, tag, chain)}"
                present = jumps.get(chain, [])
                if chain in gone:  # replaced: the chain stays, emptied, and its jump if it is today's
                    del gone[chain]
                    if wanted in present and "-D" + wanted[2:] in body:
                        body.remove("-D" + wanted[2:])
                        present = [wanted]
                    body.append(f"-F {chain}")
                else:
                    header.append(f":{chain} - [0:0]")
                if wanted not in present:
                    body.append(wanted)
            body.append(f"-A {chain} " + line[len(f"-A {parent} "):])
            continue
        body.append(line)
    for chain in gone:
        tail += [f"-F {chain}", f"-X {chain}"]
    return header + body + tail


_RECORDS = paths.FIREWALL_DIR
_RESOURCE = re.compile(r"^[46]\.[a-z]+\.[\w.+-]+$")  # what _resources names: it becomes a file name
_HOLDER = re.compile(tags.HOLDER)  # a network's name for itself, beside attachments' tags in the records


def _records() -> str:
    """Where the attachments' records are kept, one directory per network
    namespace (the rules are the namespace's), named by netns.current_name."""
    return f"{_RECORDS}/{netns.current_name()}"


def _resources(family: int, new_rules: dict) -> list:
    """What an attachment's rules {table: [lines]} use that is shared: our
    chains, and the bridges whose isolation rules follow from them."""
    used = [f"{family}.{table}.{_chain_of(r)}" for table, rules in new_rules.items() for r in rules
            if _chain_of(r) in CHAINS.get(table, {}) and _is_attachment(r)]
    used += [f"{family}.bridge.{b}" for b in _isolated_bridges(new_rules.get("filter", []))]
    return sorted(set(used))


def _record(tag: str, per_family: dict) -> None:
    """Note, for a fast DEL, which chains the attachment `tag` has and what shared things it uses."""
    if not tags.is_attachment_tag(tag):
        return
    root = _records()
    lines = [resource for family, rules in per_family.items() for resource in _resources(family, rules)]
    _use(tag, lines)
    os.makedirs(f"{root}/att", exist_ok=True)
    with open(f"{root}/att/{tag}", "w") as f:
        f.write("".join(f"{line}\n" for line in lines))


def _recorded(tag: str) -> list | None:
    """The resources the record of `tag` names; None without a record (or
    for a string that is no attachment tag: it becomes a file name)."""
    if not tags.is_attachment_tag(tag):
        return None
    try:
        with open(f"{_records()}/att/{tag}") as f:
            return f.read().split()
    except FileNotFoundError:
        return None


def _forget(tag: str) -> list:
    """Remove the record of `tag`: the resources it named that nobody else
    uses now (their shared rules may have to go); None without a record."""
    root = _records()
    resources = _recorded(tag)
    if resources is None:
        return None
    last = []
    for resource in resources:
        if not _RESOURCE.match(resource):
            continue
        try:
            os.unlink(f"{root}/use/{resource}/{tag}")
        except FileNotFoundError:
            pass
        try:
            os.rmdir(f"{root}/use/{resource}")
            last.append(resource)
        except OSError:
            pass  # someone else still uses it
    os.unlink(f"{root}/att/{tag}")
    return last


def parse_saved(text: str) -> dict:
    """iptables-save's output -> table -> (set of chain names, list of rule lines)."""
    tables, current = {}, None
    for line in text.splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:], (set(), []))
        elif line.startswith(":") and current is not None:
            current[0].add(line[1:].split()[0])
        elif line.startswith("-A ") and current is not None:
            current[1].append(line)
    return tables


def comment_of(rule: str) -> str:
    match = re.search(r'--comment "?([^" ]+)"?', rule)
    return match.group(1) if match else ""


def _chain_of(rule: str) -> str:
    return rule.split()[1]


def _is_attachment(rule: str) -> bool:
    return tags.is_attachment_tag(comment_of(rule))


def _has_jump(rules: list, jump: str) -> bool:
    parent, chain = jump.split()[0], jump.split()[-1]
    return any(r.startswith(f"-A {parent} ") and r.endswith(f"-j {chain}") for r in rules)


def _moved_above(rules: list, jump: str) -> list:
    """Restore lines putting our `jump` (present) back first in its built-in
    chain when a jump of KEEP_ABOVE comes before it there; empty when in line."""
    parent, chain = jump.split()[0], jump.split()[-1]
    in_parent = [r for r in rules if r.startswith(f"-A {parent} ")]
    ours = next(i for i, r in enumerate(in_parent) if r.endswith(f"-j {chain}"))
    if not any(r.endswith(f"-j {foreign}") for r in in_parent[:ours] for foreign in KEEP_ABOVE.get(parent, ())):
        return []
    return ["-D" + in_parent[ours][2:], f"-I {_first(jump)}"]


def _first(rule: str) -> str:
    """'CHAIN spec' -> 'CHAIN 1 spec', for -I."""
    chain, _, spec = rule.partition(" ")
    return f"{chain} 1 {spec}"


def _bridge_rules(bridge: str, lan: bool = False) -> tuple:
    """The two rules of a bridge our attachments' traffic enters from: that
    traffic, leaving by another interface, goes through the isolation chain
    (which keeps it out of Docker's bridges and our others); and, there,
    traffic routed into `bridge` from our other bridges is dropped.

    A LAN bridge (`lan`: flat's, whose containers anyone may connect to) is
    the host's uplink: it carries the addresses and routes the parent had,
    often the default route, so every network's traffic to the LAN and
    beyond leaves through it, as through a NIC. Nothing routed into it is
    dropped; what enters from it still may not open connections into a
    container bridge, but the replies to the connections those containers
    opened through it come back (the RETURN, first in the isolation chain)."""
    note = f"-m comment --comment {BRIDGE_PREFIX}{bridge}"
    jump = f"{FORWARD_CHAIN} -i {bridge} ! -o {bridge} {note} -j {ISOLATION_CHAIN}"
    if lan:
        return jump, f"{ISOLATION_CHAIN} -i {bridge} -m conntrack --ctstate RELATED,ESTABLISHED {note} -j RETURN"
    return jump, f"{ISOLATION_CHAIN} -o {bridge} {note} -j DROP"


def _added(rule: str) -> str:
    """The restore line adding one of `_bridge_rules`: a DROP goes last in the
    isolation chain, a jump or a RETURN first in its chain."""
    return f"-A {rule}" if rule.endswith(" -j DROP") else f"-I {_first(rule)}"


def _static_isolation() -> list:
    note = f"-m comment --comment {STATIC_TAG}"
    return ([f"-A {ISOLATION_CHAIN} -m conntrack --ctstate DNAT {note} -j RETURN"]  # published ports
            + [f"-A {ISOLATION_CHAIN} -o {bridge} {note} -j DROP" for bridge in DOCKER_BRIDGES])


def _bridge_of(rule: str) -> str | None:
    """The bridge an attachment rule's traffic enters from, leaving elsewhere.
    A rule for traffic that enters and leaves by the same bridge (flat's
    metadata requests and replies, routed in and out of the metadata bridge,
    docker0) names a bridge that is not ours: it needs no isolation rules."""
    if _chain_of(rule) != FORWARD_CHAIN:
        return None
    match = re.search(r" -i (\S+)", rule)
    if not match or re.search(rf"(?<!!) -o {re.escape(match.group(1))}(?=\s|$)", rule):
        return None
    return match.group(1)


# An attachment open to anyone (bridge_rules' open_inbound=True: flat's): its bridge is a LAN.
_OPEN_TO_ANYONE = re.compile(rf"^-A {FORWARD_CHAIN} -d \S+ -o (\S+) -m comment --comment \S+ -j ACCEPT$")


def _isolated_bridges(rules) -> dict:
    """bridge -> whether it is a LAN (see _bridge_rules), for the bridges
    that attachment `rules` enter from."""
    lans = {m.group(1) for m in map(_OPEN_TO_ANYONE.match, rules) if m}
    return {bridge: bridge in lans for bridge in sorted({_bridge_of(r) for r in rules} - {None})}


def _plan(table: str, saved: tuple, is_stale, new_rules: list, held=frozenset()) -> list:
    """restore lines taking `table` from `saved` to: its attachment rules less
    the stale ones plus `new_rules`, with the chains, jumps and isolation
    rules that follow from those, and those `held` ("table.chain",
    "bridge.name": see _held) by a network that has no attachment now."""
    chains, rules = saved
    ours = [r for r in rules if _chain_of(r) in CHAINS[table] and _is_attachment(r)]
    stale = [r for r in ours if is_stale(comment_of(r))]
    remaining = [r for r in ours if r not in stale] + new_rules
    used = {_chain_of(r) for r in remaining} | {c for c in CHAINS[table] if f"{table}.{c}" in held}
    declare, lines = [], ["-D" + r[2:] for r in stale]
    for chain, jumps in CHAINS[table].items():
        if chain in used:
            if chain not in chains:
                declare.append(f":{chain} - [0:0]")
            lines += [f"-I {_first(j)}" for j in jumps if not _has_jump(rules, j)]
            lines += [line for j in jumps if _has_jump(rules, j) for line in _moved_above(rules, j)]
        elif chain in chains:
            lines += [f"-D {j}" for j in jumps if _has_jump(rules, j)] + [f"-F {chain}", f"-X {chain}"]
    if table == "filter":
        lines += _plan_isolation(chains, rules, remaining, declare,
                                 {r[len("bridge."):] for r in held if r.startswith("bridge.")})
    return declare + lines + new_rules


# The reference firewall plug-in's ingressPolicy=same-bridge: per bridge, a
# rule in each of its two chains, jumped to from FORWARD. Its DEL leaves them
# (it cannot tell whether the bridge is still in use); ours can: they go with
# our bridge's isolation rules, when the bridge's last attachment goes.
SAME_BRIDGE_CHAINS = ("CNI-ISOLATION-STAGE-1", "CNI-ISOLATION-STAGE-2")
SAME_BRIDGE_NOTE = "CNI firewall plugin rules (ingressPolicy: same-bridge)"


def _same_bridge_rules_gone(chains: set, rules: list, bridges: set) -> list:
    """Restore lines removing the same-bridge rules of `bridges` (ours, whose
    last attachment goes), and the plug-in's chains and jump when no other
    bridge's rule is left in them."""
    stage1, stage2 = SAME_BRIDGE_CHAINS
    if not bridges or stage1 not in chains:
        return []
    in_chains = [r for r in rules if _chain_of(r) in SAME_BRIDGE_CHAINS]
    pattern = re.compile(rf"^-A (?:{stage1} -i (\S+) ! -o \1 |{stage2} -o (\S+) )-m comment --comment "
                         rf'"{re.escape(SAME_BRIDGE_NOTE)}" -j (?:{stage2}|DROP)$')
    of_bridge = {r: next(g for g in m.groups() if g) for r in in_chains if (m := pattern.match(r))}
    gone = [r for r, bridge in of_bridge.items() if bridge in bridges]
    if not gone:
        return []
    if any(bridge not in bridges for bridge in of_bridge.values()) or \
            any(r not in of_bridge and not r.endswith(" -j RETURN") for r in in_chains):
        return ["-D" + r[2:] for r in gone]  # another bridge's, or someone else's rule: the chains stay
    jumps = [r for r in rules if r.startswith("-A FORWARD ") and r.endswith(f" -j {stage1}")]
    return ["-D" + r[2:] for r in jumps] + [f"-F {stage1}", f"-F {stage2}", f"-X {stage1}", f"-X {stage2}"]


def _plan_isolation(chains: set, rules: list, remaining: list, declare: list, held_bridges: set) -> list:
    needed = _isolated_bridges(remaining)
    present = [r[len("-A "):] for r in rules if comment_of(r).startswith(BRIDGE_PREFIX)]
    # a held bridge without attachments keeps its rules as they are (whether
    # it is a LAN follows from attachment rules, and it has none)
    held = [r for r in present if comment_of(r)[len(BRIDGE_PREFIX):] in held_bridges - set(needed)]
    gone = {comment_of(r)[len(BRIDGE_PREFIX):] for r in present if r.startswith(f"{FORWARD_CHAIN} ")} \
        - set(needed) - held_bridges
    return _same_bridge_rules_gone(chains, rules, gone) + _plan_our_isolation(chains, rules, remaining, declare,
                                                                              needed, present, held)


def _plan_our_isolation(chains: set, rules: list, remaining: list, declare: list, needed: dict,
                        present: list, held: list) -> list:
    if not needed and not held:
        if ISOLATION_CHAIN not in chains:
            return []
        # A rule without a bridge (a published port's) can keep the attachment
        # chain, and with it the bridges' jumps into the isolation chain, which
        # then cannot go (EBUSY) unless they go first.
        kept = any(_chain_of(r) == FORWARD_CHAIN for r in remaining)
        jumps = [f"-D {rule}" for rule in present if rule.startswith(f"{FORWARD_CHAIN} ")] if kept else []
        return jumps + [f"-F {ISOLATION_CHAIN}", f"-X {ISOLATION_CHAIN}"]
    wanted = [rule for bridge, lan in needed.items() for rule in _bridge_rules(bridge, lan)] + held
    lines = []
    if ISOLATION_CHAIN not in chains:
        declare.append(f":{ISOLATION_CHAIN} - [0:0]")
        lines += _static_isolation()
    lines += [f"-D {rule}" for rule in present if rule not in wanted]  # a flat bridge's DROP of old too
    lines += [_added(rule) for rule in wanted if rule not in present]
    return lines


def restore_script(saved: dict, is_stale, new_rules: dict, held=frozenset()) -> list:
    """The iptables-restore lines (empty: nothing to change) that take the
    tables `saved` (see parse_saved) to their attachment rules less those
    whose tag `is_stale`, plus `new_rules` {table: [lines]}, keeping what is `held`."""
    script = []
    for table in CHAINS:
        lines = _plan(table, saved.get(table, (set(), [])), is_stale, new_rules.get(table, []), held)
        if lines:
            script += [f"*{table}", *lines, "COMMIT"]
    return script


def apply(family: int, is_stale, new_rules: dict) -> None:
    """The slow, always-correct path: list, plan, restore."""
    view, chain_of, jumps = logical(parse_saved(tools.run([_TOOLS[family][0]])))
    script = restore_script(view, is_stale, new_rules, _held(family))
    if script:
        tools.run([_TOOLS[family][1], "-w", "--noflush"], script_text(physical(script, chain_of, jumps)))


def _listed(family: int, checks: list) -> tuple:
    """The chains the `checks`' rules live in, each once, and the
    `iptables -S CHAIN` listing each."""
    tool = _TOOLS[family][0].replace("-save", "")
    chains = sorted({(table, spec.split()[0]) for table, spec in checks})
    return chains, [[tool, "-w", "-t", table, "-S", chain] for table, chain in chains]


def _in_place(checks: list, chains: list, listings: list) -> bool:
    """Whether each checked rule is in its chain's listing, word for word as
    iptables prints it (as `-C` would find it), and no foreign jump of
    KEEP_ABOVE comes before it."""
    rules = {}
    for chain, listing in zip(chains, listings):
        if listing is None:
            return False
        rules[chain] = [line for line in listing.splitlines() if line.startswith("-A ")]
    for table, spec in checks:
        in_chain = rules[(table, spec.split()[0])]
        if f"-A {spec}" not in in_chain or _moved_above(in_chain, spec):
            return False
    return True


def append_fast(family: int, new_rules: dict) -> bool:
    """Append in one restore call when the chains, jumps and bridge rules the
    new rules need exist; False when one does not: then the caller's `apply`
    plans from the listing, and replaces whatever this appended.

    Any -D or -C inside iptables-restore makes iptables-nft load every rule of
    the table (~50 ms per call at 1,000 containers, growing with their number),
    so the script only appends, which fails as a whole when a chain is missing.
    The jumps are looked for in listings of the small built-in chains
    (`iptables -S FORWARD`, ~1.5 ms whatever the table holds), not with
    `iptables -C`, which loads the rules of the chain it jumps to: 13 ms
    at 3,000 attachments.
    The listings run beside the restore, not before it (~3 ms less per ADD):
    the restore changes none of the rules they look for, and until this ADD
    returns, no packet of the attachment's has been sent to miss a jump.
    They are skipped when no commit but ours came since they last found
    what this ADD needs (`Verified`).
    A bridge's isolation jump lives in our large attachment chain, where a
    listing would cost as much; it is made and removed in the same restore as
    the bridge's DROP in the small isolation chain, so that DROP stands for both."""
    checks, script = fast_append_plan(new_rules)
    if not script:
        return True
    text = script_text(script)  # before any command runs: a refused line changes nothing
    if not _all_recorded(family, new_rules):
        return False
    restore = [_TOOLS[family][1], "-w", "--noflush"]
    verified = Verified.read(family)
    needed = {f"{family} {table} {spec}" for table, spec in checks}
    chains, listings = ([], []) if needed <= verified.lines else _listed(family, checks)
    label = f"{restore[0]} + listings" if listings else restore[0]
    outputs = tools.outputs_side_by_side([restore] + listings, label, stdin=text)
    done = outputs[0] is not None
    if listings:
        done = done and _in_place(checks, chains, outputs[1:])
        verified = Verified(verified.generation, verified.lines | needed if done else set())
    if done:
        verified.carry(script.count("COMMIT"))
    return done


def restores_kept(family: int) -> bool:
    """Whether this process's restores of `family` go to a kept process (kept_restore)."""
    return kept_restore.available(_TOOLS[family][1])


@functools.lru_cache(maxsize=None)
def _nft_backed(family: int) -> bool:
    """Whether this host's iptables-restore is iptables-nft ("v1.8.9
    (nf_tables)"), whose commits the nftables generation counts; the legacy
    one's it does not. Asked once per process."""
    version = tools.run([_TOOLS[family][1], "--version"], check=False) or ""
    return "(nf_tables)" in version


class Verified:
    """What the last listings found in place and the nftables generation they
    hold at; the file of the namespace's records keeps it between calls. A
    generation moved by commits other than our own attachments' (anyone's
    change, to any table) makes it hold nothing. Lines: `family table spec`
    for the fast path's checks (append_fast); a line of their own for other
    checks of the host side an ADD makes (the VXLAN guard, a flat network's
    firewall: see `verified`).

    The kernel adds one to the generation per commit, and an iptables-restore
    commits once per table; so after a restore of N tables, a generation
    N ahead of the one before means no one else committed in between.
    Only changes that touch nothing but one attachment's own rules carry it
    forward (keeping_listings): appending its rules, removing its chains,
    its anti-spoofing chain and fast path entries. None of them touches
    what the listings look for."""

    def __init__(self, generation: int | None, lines: set):
        self.generation, self.lines = generation, lines

    @staticmethod
    def path() -> str:
        return f"{_records()}/verified"

    @classmethod
    def read(cls, family: int) -> "Verified":
        now = nft_generation.current() if _nft_backed(family) else None
        try:
            with open(cls.path()) as f:
                first, *rest = f.read().splitlines()
        except (OSError, ValueError):
            return cls(now, set())
        return cls(now, set(rest) if now is not None and first == str(now) else set())

    def holds(self, line: str) -> bool:
        """Whether `line` was found in place and still is."""
        return line in self.lines

    def note(self, line: str) -> None:
        """Record `line`, which a listing of the caller's (under host_lock)
        found in place after this record was read, unless someone committed
        since: then the listing may have seen a ruleset that is gone."""
        if self.generation is None or nft_generation.current() != self.generation or line in self.lines:
            return
        self.lines = self.lines | {line}
        self._write(self.generation)

    def carry(self, commits: int) -> None:
        """After our change of `commits` commits: keep what was found, at the
        generation now, when no one else committed; else forget it."""
        now = nft_generation.current()
        if self.generation is not None and now == self.generation:
            return  # nothing was committed: what the record holds still holds
        keep = self.generation is not None and now == (self.generation + commits) % 2 ** 32 and self.lines
        self._write(now if keep else None)

    def _write(self, generation: int | None) -> None:
        """The record at `generation`; None removes it."""
        try:
            if generation is None:
                os.unlink(self.path())
                return
            os.makedirs(_records(), mode=0o700, exist_ok=True)
            tmp = f"{self.path()}.{os.getpid()}.{threading.get_ident()}"
            with open(tmp, "w") as f:
                f.write("\n".join([str(generation), *sorted(self.lines)]) + "\n")
            os.replace(tmp, self.path())
        except OSError:
            pass  # no record: the next ADD lists again


def verified(family: int = 4) -> Verified:
    """What listings found in place that still is. For a check of the
    caller's own: `holds(line)` before listing, and `note(line)`, under
    host_lock, once the listing found what it looks for (the line names
    the check and everything its wanted rules follow from; no newline)."""
    return Verified.read(family)


@contextlib.contextmanager
def keeping_listings(commits: int = 1, family: int = 4):
    """Around a change of ours, under host_lock, of at most `commits` commits
    (one `nft -f` run: one; an iptables-restore: one per table) that changes
    none of the rules the listings look for (Verified): what they last
    found still holds after it. Nothing is carried when the block raises;
    a block that committed nothing leaves the record as it was, one that
    committed part of its tables (a failed restore) forgets it."""
    verified = Verified.read(family)
    yield
    verified.carry(commits)


def _all_recorded(family: int, new_rules: dict) -> bool:
    """Whether some attachment's record says each shared thing the rules need
    is in use, so made: when one is not (the first attachment, or after the
    last one's DEL), the checks would fail anyway, and cost ~4 ms."""
    root = _records()
    return all(os.path.isdir(f"{root}/use/{resource}") for resource in _resources(family, new_rules))


def fast_append_plan(new_rules: dict) -> tuple:
    """append_fast's plan for {table: [rules]}: the (table, rule spec) that
    must exist for the appends to be complete, and the restore lines."""
    checks, script = [], []
    for table, rules in new_rules.items():
        if not rules:
            continue
        for chain in sorted({_chain_of(r) for r in rules}):
            checks += [(table, jump) for jump in CHAINS[table][chain]]
        for bridge, lan in _isolated_bridges(rules).items():
            checks.append((table, _bridge_rules(bridge, lan)[1]))
        script += [f"*{table}", *rules, "COMMIT"]
    return checks, physical(script, {}, {})


def remove_fast(family: int, tag: str) -> bool:
    """One restore removing the jumps and chains the record of `tag` names;
    False, changing nothing, when there is no record or the restore fails."""
    resources = _recorded(tag)
    if resources is None:
        return False
    script = []
    for table in CHAINS:
        parents = [p for p in CHAINS[table] if f"{family}.{table}.{p}" in resources]
        if parents:
            script += [f"*{table}"]
            for parent in parents:
                chain = attachment_chain(tag, parent)
                script += [f"-D {_jump_to(parent, tag, chain)}", f"-F {chain}", f"-X {chain}"]
            script += ["COMMIT"]
    if not script:
        return True
    with keeping_listings(script.count("COMMIT"), family):  # it removes the attachment's chains only
        return tools.run([_TOOLS[family][1], "-w", "--noflush"], script_text(script), check=False) is not None


def add(per_family: dict, tag: str) -> None:
    """Add rules {family: {table: [lines]}} that all carry `tag`."""
    with host_lock():
        _forget(tag)  # made again (a repeated ADD): its chains are flushed and filled again
        for family, rules in per_family.items():
            if not append_fast(family, rules):
                apply(family, tag.__eq__, rules)
        _record(tag, per_family)


def remove(is_stale, families=(4, 6), tag: str | None = None, holder: str | None = None) -> None:
    """Remove every attachment rule whose tag `is_stale`. With `tag` (whose
    rules are all those of `is_stale` today's version makes) and its record,
    one restore removes its chains; the listing and planning only run when
    it was the last user of something shared, or for rules of the previous
    version.

    With `holder` (tags.holder: its network's name for itself), what the
    attachment shares is recorded as used by the network too, so it stays
    when this is the network's last attachment, and its next first one finds
    it made: a network that comes and goes with its containers (`docker run
    --rm`) neither removes nor lists (iptables-save) and re-plans the shared
    rules at each container's two ends. `release` ends the hold. Anything that
    plans from the listing meanwhile (a GC, another network's last DEL) may
    still remove a held rule no attachment uses; the next ADD finds it
    missing, as its checks would any other, and makes it again."""
    with host_lock():
        if tag is not None:
            resources = _recorded(tag)
            if resources is not None and holder is not None:
                _use(holder, resources)
            if resources is not None and not _last_user(tag, resources):
                fast = all(remove_fast(family, tag) for family in families)
                _forget(tag)
                if fast:
                    return
            elif resources is not None:
                # The last user of something shared: the plan removes the
                # attachment's chains with the shared rules, in one restore.
                # A restore that deletes waits for an RCU grace period (the
                # clean-up, ~15 ms here; kept_restore waits as the command's
                # exit does), so one, not two.
                families = sorted({int(r[0]) for r in resources} & set(families)) or families
                for family in families:
                    apply(family, is_stale, {})
                _forget(tag)
                return
        for family in families:
            apply(family, is_stale, {})


def _use(user: str, resources: list) -> None:
    """Record `user` (an attachment's tag, or a network's holder) as using each of `resources`."""
    root = _records()
    for resource in resources:
        if _RESOURCE.match(resource):
            os.makedirs(f"{root}/use/{resource}", exist_ok=True)
            open(f"{root}/use/{resource}/{user}", "w").close()


def _held(family: int) -> frozenset:
    """The shared things of `family` a network holds (see remove), as
    _plan takes them: "table.chain" and "bridge.name"."""
    root, held = _records(), set()
    try:
        resources = os.listdir(f"{root}/use")
    except FileNotFoundError:
        return frozenset()
    for resource in resources:
        if resource.startswith(f"{family}.") and _RESOURCE.match(resource):
            with contextlib.suppress(OSError):
                if any(map(_HOLDER.fullmatch, os.listdir(f"{root}/use/{resource}"))):
                    held.add(resource[2:])
    return frozenset(held)


def release(holder: str) -> None:
    """End `holder`'s hold (see remove): the shared rules that no attachment
    and no other network uses now go, in one listing and restore per family."""
    if not _HOLDER.fullmatch(holder):
        raise ValueError(f"not a holder's name: {holder!r}")
    with host_lock():
        root = _records()
        try:
            resources = sorted(os.listdir(f"{root}/use"))
        except FileNotFoundError:
            return
        last = set()
        for resource in filter(_RESOURCE.match, resources):
            try:
                os.unlink(f"{root}/use/{resource}/{holder}")
            except FileNotFoundError:
                continue
            with contextlib.suppress(OSError):
                os.rmdir(f"{root}/use/{resource}")
                last.add(int(resource[0]))
        for family in sorted(last):
            apply(family, lambda tag: False, {})


def _last_user(tag: str, resources: list) -> bool:
    """Whether `tag` is the only attachment recorded as using one of its shared `resources`."""
    root = _records()
    for resource in resources:
        if not _RESOURCE.match(resource):
            continue
        try:
            if set(os.listdir(f"{root}/use/{resource}")) <= {tag}:
                return True
        except FileNotFoundError:
            return True
    return False


def rules_tagged(is_wanted) -> list:
    found = []
    for family in (4, 6):
        for _, rules in saved_tables(family).values():
            found += [r for r in rules if is_wanted(comment_of(r))]
    return found


def _nothing_stale(tag: str) -> bool:
    return False


def derived_drift() -> list:
    """(family, restore line) for each chain, jump or isolation rule that does
    not follow from the attachment rules present (empty: all in line)."""
    drift = []
    for family in (4, 6):
        saved = saved_tables(family)
        for table in CHAINS:
            drift += [(family, line) for line in _plan(table, saved.get(table, (set(), [])), _nothing_stale, [],
                                                       _held(family))]
    return drift


def repair_derived() -> None:
    """Put our chains, jumps and isolation rules back in line with the attachment rules."""
    with host_lock():
        for family in (4, 6):
            apply(family, _nothing_stale, {})


def replace(is_replaced, per_family: dict, tag: str | None = None) -> None:
    """The rules whose tag `is_replaced` become exactly `per_family` (idempotent)."""
    with host_lock():
        for family in (4, 6):
            apply(family, is_replaced, per_family.get(family, {}))
        if tag is not None:
            _forget(tag)
            _record(tag, per_family)


def collect(stale_test) -> list:
    """Remove the attachment rules whose tag the predicate `stale_test()`
    returns accepts; it is called under the host lock, so an attachment made
    while this runs cannot lose its rules. Returns the removed tags."""
    with host_lock():
        is_stale = stale_test()
        removed = set()
        for family in (4, 6):
            found = {comment_of(r) for _, rules in saved_tables(family).values() for r in rules}
            stale = {t for t in found if is_stale(t)}
            if stale:
                apply(family, stale.__contains__, {})
                removed |= stale
        for tag in removed:
            _forget(tag)
    return sorted(removed)
