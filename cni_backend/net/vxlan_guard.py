"""Who may send VXLAN to this host: per VNI, UDP to the VTEP's port is
accepted from the peers' VTEP addresses and dropped from anyone else.

Where the kernel has ipset (`features.has("ipset")`), the peers are the
elements of a hash:ip set named after the VNI (`set_name`), and the rules
are fixed per VNI:

filter INPUT (at its head, so no broader ACCEPT of the host comes first)
    -p udp --dport PORT -m u32 VNI -m set --match-set rcni-vtep-VNI src -j ACCEPT
    -p udp --dport PORT -m u32 VNI -j DROP

A peer arriving or leaving is then one netlink element add or delete: no
exec, no iptables change, no firewall lock. Without ipset (the fallback,
logged once per process) there is one ACCEPT rule per peer instead:

    -s PEER/32 -p udp --dport PORT -m u32 VNI -j ACCEPT    one per peer
    -p udp --dport PORT -m u32 VNI -j DROP                 everyone else

and `update` rewrites those rules in one `iptables-restore --noflush`.

The u32 match reads the VNI out of the VXLAN header (bytes 4-6 after the UDP
header), so each VNI has its own peers and a network this module does not
guard (another VNI on the same port) is not touched. Every rule carries the
VNI's tag (`tags.for_vtep`), so the leak guard and `iptables-save` show whose
it is; rules are changed in one `iptables-restore --noflush` under the
firewall's lock. VTEPs are IPv4 here (vxlannet), so only iptables (v4) and
an IPv4 set.

`ensure` lists the rules (and the set) and rewrites what is not right, also
the rules of the other path (an earlier version, or the feature gone);
`remove` takes the rules away, then the set (a set a rule refers to cannot be
destroyed).
"""

import contextlib
import ipaddress
import logging
import os
import re
import threading

from . import features, iptables, tags, tools

log = logging.getLogger("rancher-cni")

_SOURCE = re.compile(r" -s (\S+?)(?:/32)? ")
_MATCH_SET = re.compile(r" --match-set (\S+) src ")
_SET_NAME = re.compile(r"rcni-vtep-[0-9]{1,8}\Z")
_logged_path = None   # the path last logged by this process


def _vni_match(vni: int) -> str:
    # IHL*4 bytes to the UDP header, 8 more to VXLAN, whose word 2 holds VNI << 8
    return f"-m u32 --u32 0>>22&0x3C@12>>8={vni}"


def _checked(vni, port=None) -> tuple:
    vni = int(vni)
    port = 4789 if port is None else int(port)
    if not 1 <= vni <= 16777215 or not 1 <= port <= 65535:
        raise ValueError(f"VNI {vni} / port {port} out of range (VNI 1-16777215, port 1-65535)")
    return vni, port


def _addresses(peers) -> set:
    """The peers as canonical IPv4 addresses; ValueError for anything else."""
    return {str(ipaddress.IPv4Address(p)) for p in peers}


def set_name(vni: int) -> str:
    """The name of the VNI's peer set (at most 31 characters, the kernel's limit)."""
    vni, _ = _checked(vni)
    name = f"rcni-vtep-{vni}"
    if not _SET_NAME.match(name) or len(name) > 31:
        raise ValueError(f"bad ipset name {name!r}")
    return name


def uses_set() -> bool:
    """Whether the peers are kept in an ipset here (else one rule per peer);
    which of the two is logged once per process."""
    global _logged_path
    on = features.has("ipset")
    if _logged_path is not on:
        _logged_path = on
        log.info("VXLAN UDP guard: %s", "peers in an ipset, changed over netlink" if on else
                 "no ipset in this kernel, one iptables rule per peer")
    return on


def rules(vni: int, port: int, peers) -> list:
    """iptables-restore lines (filter table) of the per-peer path, in order."""
    vni, port = _checked(vni, port)
    peers = sorted(_addresses(peers), key=ipaddress.IPv4Address)
    note = f"-m comment --comment {tags.for_vtep(vni)}"
    match = f"-p udp -m udp --dport {port} {_vni_match(vni)} {note}"
    return [f"-A INPUT -s {peer}/32 {match} -j ACCEPT" for peer in peers] + [f"-A INPUT {match} -j DROP"]


def set_rules(vni: int, port: int) -> list:
    """iptables-restore lines (filter table) of the ipset path, in order."""
    vni, port = _checked(vni, port)
    base = f"-p udp -m udp --dport {port} {_vni_match(vni)}"
    note = f"-m comment --comment {tags.for_vtep(vni)}"
    return [f"-A INPUT {base} -m set --match-set {set_name(vni)} src {note} -j ACCEPT",
            f"-A INPUT {base} {note} -j DROP"]


def present(vni: int) -> list:
    """The VNI's rules as the kernel shows them, in order. Only INPUT is
    listed: the agent asks every round, and the attachment chains can be long."""
    tag = str(tags.for_vtep(vni))
    return [line for line in tools.run(["iptables", "-w", "-S", "INPUT"]).splitlines()
            if line.startswith("-A INPUT ") and iptables.comment_of(line) == tag]


def _shape(lines: list) -> list:
    """(source or None, set or None, target) per rule: what two rule sets are
    compared by (iptables-save rewrites the u32 expression in its own notation)."""
    shape = []
    for line in lines:
        source, match_set = _SOURCE.search(line + " "), _MATCH_SET.search(line + " ")
        shape.append((source.group(1) if source else None, match_set.group(1) if match_set else None,
                      line.rsplit(" -j ", 1)[-1]))
    return shape


def _same(current: list, wanted: list) -> bool:
    """The same ACCEPTs (in any order) and then the one DROP."""
    have, want = _shape(current), _shape(wanted)
    return (len(have) == len(want) and have[-1:] == want[-1:] and sorted(have[:-1], key=str) == sorted(want[:-1], key=str))


# -- the set, over netlink ------------------------------------------------------------------

_kept = None                 # ((pid, netns inode), the IPSet socket opened there)
_kept_lock = threading.Lock()  # one user of the kept socket at a time


def _new_lock() -> None:
    global _kept_lock
    _kept_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock)  # a forked child may inherit it held


@contextlib.contextmanager
def _ipset():
    """An IPSet socket in this thread's network namespace, kept for the next
    call of any thread (opening one, with its asyncio loop, costs ~1 ms,
    about as much as the element changes of a whole arrival; the shim and
    the CNI daemon serve each call on a thread of its own). The agent's
    thread stays in its host's namespace; a caller in another namespace
    gets a new socket, and the kept one is closed. A socket that failed
    other than with a kernel's answer is not kept."""
    global _kept
    from pyroute2.ipset import IPSet, IPSetError   # only on the ipset path
    where = (os.getpid(), os.stat("/proc/thread-self/ns/net").st_ino)
    with _kept_lock:
        kept = _kept
        if kept is None or kept[0] != where:
            if kept is not None and kept[0][0] == where[0]:
                kept[1].close()   # (a forked child leaves its parent's socket alone)
            _kept = kept = (where, IPSet())
        try:
            yield kept[1]
        except IPSetError:
            raise   # the kernel answered: the socket is fine
        except BaseException:
            _kept = None
            kept[1].close()
            raise


def _no_such_set(exc: Exception) -> bool:
    from pyroute2.ipset import NoSuchObject
    return isinstance(exc, NoSuchObject)


def _elements(ipset, name: str) -> set | None:
    """The set's IPv4 elements; None when there is no such set."""
    try:
        found = set()
        for msg in ipset.list(name):
            if msg.get_attr("IPSET_ATTR_TYPENAME") != "hash:ip" or msg.get_attr("IPSET_ATTR_FAMILY") != 2:
                raise RuntimeError(f"ipset {name} is no IPv4 hash:ip set: remove it (ipset destroy {name})")
            adt = msg.get_attr("IPSET_ATTR_ADT")
            for data in adt.get_attrs("IPSET_ATTR_DATA") if adt else ():
                found.add(data.get_attr("IPSET_ATTR_IP_FROM").get_attr("IPSET_ATTR_IPADDR_IPV4"))
        return found
    except Exception as exc:
        if _no_such_set(exc):
            return None
        raise


def _change(ipset, name: str, add, delete) -> None:
    """Elements added, then deleted (exclusive=False: one already there, or
    already gone, is no error)."""
    for peer in sorted(add):
        ipset.add(name, peer, exclusive=False)
    for peer in sorted(delete):
        ipset.delete(name, peer, exclusive=False)


def _destroy(names) -> None:
    """The sets gone, those that are not there passed over."""
    with _ipset() as ipset:
        for name in names:
            try:
                ipset.destroy(name)
            except Exception as exc:
                if not _no_such_set(exc):
                    raise


def _referenced_sets(lines: list) -> set:
    """Our sets that the rules refer to (names checked before they reach netlink)."""
    return {s for _, s, _ in _shape(lines) if s and _SET_NAME.match(s)}


# -- the guard ------------------------------------------------------------------------------

def allowed_peers(vni: int) -> set:
    """The addresses the kernel accepts the VNI's VXLAN from (empty: no guard):
    the sources of per-peer ACCEPT rules and the elements of a set an ACCEPT
    rule matches on."""
    allowed = set()
    for source, match_set, target in _shape(present(vni)):
        if target != "ACCEPT":
            continue
        if source:
            allowed.add(source)
        elif match_set and _SET_NAME.match(match_set):
            with _ipset() as ipset:
                allowed |= _elements(ipset, match_set) or set()
    return allowed


def _rewrite(current: list, wanted: list) -> None:
    script = ["*filter", *("-D" + line[2:] for line in current),
              *(f"-I INPUT {n} {line[len('-A INPUT '):]}" for n, line in enumerate(wanted, 1)), "COMMIT"]
    tools.run(["iptables-restore", "-w", "--noflush"], "\n".join(script) + "\n")


def ensure(vni: int, port: int, peers) -> bool:
    """The VNI's guard made to accept exactly `peers`; True when it changed.
    On the ipset path the set is made (if missing) and its elements made
    `peers` before the rules are: no moment where a peer is dropped."""
    peers = _addresses(peers)
    if not uses_set():
        wanted = rules(vni, port, peers)
        with iptables.host_lock():
            current = _unless_in_place(vni, port, wanted, _found_line(vni, port, peers))
            if current is None:
                return False
            _rewrite(current, wanted)
            if _referenced_sets(current):   # the ipset path's rules, before the feature went
                _destroy(_referenced_sets(current))
        return True
    name, wanted = set_name(vni), set_rules(vni, port)
    with iptables.host_lock():
        with _ipset() as ipset:
            have = _elements(ipset, name)
            if have is None:
                ipset.create(name, stype="hash:ip", exclusive=False)
                have = set()
            _change(ipset, name, peers - have, have - peers)
        current = _unless_in_place(vni, port, wanted, _found_line(vni, port, None))
        if current is None:
            return have != peers
        _rewrite(current, wanted)
    return True


def _unless_in_place(vni: int, port: int, wanted: list, found: str) -> list | None:
    """None when the VNI's rules are `wanted` (under host_lock): found so by
    a listing before, with no commit since but our attachments' (`found`,
    the record's line for it), or by one now; else the rules listed now."""
    verified = iptables.verified()
    if verified.holds(found):
        return None
    current = present(vni)
    if _same(current, wanted) and all(f"--dport {port} " in line for line in current):
        verified.note(found)
        return None
    return current


def _found_line(vni: int, port: int, peers) -> str:
    """What iptables.verified records when `present` found the guard in place
    (the ipset path's rules name no peer: None). Every ADD ensures the guard;
    while no one commits but our attachments' restores, it is not listed
    again (`iptables -S INPUT`, ~2.5 ms)."""
    vni, port = _checked(vni, port)
    return f"4 filter vxlan-guard vni={vni} port={port} peers={','.join(sorted(peers)) if peers is not None else '(set)'}"


def update(vni: int, port: int, old, new, lock_wait: float | None = None) -> bool | None:
    """From accepting exactly `old` (as the caller last made it with
    `ensure` or `update`) to exactly `new`. On the ipset path: the
    difference added to and deleted from the set over netlink, no lock; when
    the set is gone, `ensure` makes the guard right. On the per-peer path:
    one restore that deletes the leavers' rules and inserts the newcomers' at
    the head, with no listing; when that restore fails (a rule of `old` is
    gone: someone else changed the chain), `ensure` makes the set right.
    True when anything changed; None, with nothing changed, when the
    firewall's host lock stayed taken for `lock_wait` seconds (None: wait as
    long as it takes; the ipset path takes no lock)."""
    old, new = _addresses(old), _addresses(new)
    if old == new:
        return False
    if uses_set():
        name = set_name(vni)
        try:
            with _ipset() as ipset:
                _change(ipset, name, new - old, old - new)
            return True
        except Exception as exc:
            if not _no_such_set(exc):
                raise
        ensure(vni, port, new)
        return True
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
    """The VNI's rules gone, then its set (idempotent)."""
    with iptables.host_lock():
        current = present(vni)
        if current:
            _rewrite(current, [])
        names = _referenced_sets(current) | ({set_name(vni)} if features.has("ipset") else set())
        if names:
            _destroy(names)
