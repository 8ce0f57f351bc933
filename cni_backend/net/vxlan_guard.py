"""Who may send VXLAN to this host: per VNI, UDP to the VTEP's port is
accepted from the peers' VTEP addresses and dropped from anyone else.

filter INPUT (at its head, so no broader ACCEPT of the host comes first)
    -s PEER/32 -p udp --dport PORT -m u32 VNI -j ACCEPT    one per peer
    -p udp --dport PORT -m u32 VNI -j DROP                 everyone else

The u32 match reads the VNI out of the VXLAN header (bytes 4-6 after the UDP
header), so each VNI has its own peers and a network this module does not
guard (another VNI on the same port) is not touched. Every rule carries the
VNI's tag (`tags.for_vtep`), so the leak guard and `iptables-save` show whose
it is; the set is replaced in one `iptables-restore --noflush` under the
firewall's lock. VTEPs are IPv4 here (vxlannet), so only iptables (v4).

The VXLAN agent changes the set as hosts come and go with `update`: the
rules of the peers that left deleted and the new peers' inserted at the head,
in one restore, without listing the chain; the order of the ACCEPT rules is
not significant (each matches one source), only that the DROP comes after
them. `ensure` lists and rewrites the whole set when it is not right.
"""

import ipaddress
import re

from . import iptables, tags, tools

_SOURCE = re.compile(r" -s (\S+?)(?:/32)? ")


def _vni_match(vni: int) -> str:
    # IHL*4 bytes to the UDP header, 8 more to VXLAN, whose word 2 holds VNI << 8
    return f"-m u32 --u32 0>>22&0x3C@12>>8={vni}"


def rules(vni: int, port: int, peers) -> list:
    """iptables-restore lines (filter table), in the order they must stand."""
    vni, port = int(vni), int(port)
    if not 1 <= vni <= 16777215 or not 1 <= port <= 65535:
        raise ValueError(f"VNI {vni} / port {port} out of range")
    peers = sorted({str(ipaddress.IPv4Address(p)) for p in peers}, key=ipaddress.IPv4Address)
    note = f"-m comment --comment {tags.for_vtep(vni)}"
    match = f"-p udp -m udp --dport {port} {_vni_match(vni)} {note}"
    return [f"-A INPUT -s {peer}/32 {match} -j ACCEPT" for peer in peers] + [f"-A INPUT {match} -j DROP"]


def present(vni: int) -> list:
    """The VNI's rules as the kernel shows them, in order. Only INPUT is
    listed: the agent asks every round, and the attachment chains can be long."""
    tag = str(tags.for_vtep(vni))
    return [line for line in tools.run(["iptables", "-w", "-S", "INPUT"]).splitlines()
            if line.startswith("-A INPUT ") and iptables.comment_of(line) == tag]


def _shape(lines: list) -> list:
    """(source or None, target) per rule: what two rule sets are compared by
    (iptables-save rewrites the u32 expression in its own notation)."""
    shape = []
    for line in lines:
        source = _SOURCE.search(line + " ")
        shape.append((source.group(1) if source else None, line.rsplit(" -j ", 1)[-1]))
    return shape


def allowed_peers(vni: int) -> set:
    """The addresses the kernel accepts the VNI's VXLAN from (empty: no guard)."""
    return {source for source, target in _shape(present(vni)) if source and target == "ACCEPT"}


def _same(current: list, wanted: list) -> bool:
    """The same ACCEPTs (in any order) and then the one DROP."""
    have, want = _shape(current), _shape(wanted)
    return (len(have) == len(want) and have[-1:] == want[-1:] and sorted(have[:-1], key=str) == sorted(want[:-1], key=str))


def ensure(vni: int, port: int, peers) -> bool:
    """The VNI's rules made to accept exactly `peers`; True when they changed."""
    wanted = rules(vni, port, peers)
    with iptables.host_lock():
        current = present(vni)
        if _same(current, wanted) and all(f"--dport {port} " in line for line in current):
            return False
        script = ["*filter", *("-D" + line[2:] for line in current),
                  *(f"-I INPUT {n} {line[len('-A INPUT '):]}" for n, line in enumerate(wanted, 1)), "COMMIT"]
        tools.run(["iptables-restore", "-w", "--noflush"], "\n".join(script) + "\n")
    return True


def update(vni: int, port: int, old, new, lock_wait: float | None = None) -> bool | None:
    """From accepting exactly `old` (as the caller last made it with
    `ensure` or `update`) to exactly `new`: one restore that deletes the
    leavers' rules and inserts the newcomers' at the head, with no listing.
    When that restore fails (a rule of `old` is gone: someone else changed
    the chain), `ensure` makes the set right. True when anything changed;
    None, with nothing changed, when the firewall's host lock stayed taken
    for `lock_wait` seconds (None: wait as long as it takes)."""
    old, new = set(old), set(new)
    if old == new:
        return False
    gone = rules(vni, port, old - new)[:-1]   # the ACCEPT lines only
    added = rules(vni, port, new - old)[:-1]
    script = ["*filter", *("-D" + line[2:] for line in gone),
              *(f"-I INPUT 1 {line[len('-A INPUT '):]}" for line in added), "COMMIT"]
    try:
        with iptables.host_lock(timeout=lock_wait):
            if tools.run(["iptables-restore", "-w", "--noflush"], "\n".join(script) + "\n", check=False) is not None:
                return True
    except TimeoutError:
        return None
    ensure(vni, port, new)
    return True


def remove(vni: int) -> None:
    """The VNI's rules gone (idempotent)."""
    with iptables.host_lock():
        current = present(vni)
        if current:
            script = ["*filter", *("-D" + line[2:] for line in current), "COMMIT"]
            tools.run(["iptables-restore", "-w", "--noflush"], "\n".join(script) + "\n")
