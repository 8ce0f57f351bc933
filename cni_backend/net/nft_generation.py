"""The nftables ruleset generation of the calling thread's network namespace.

The kernel adds one to it at every commit, by anyone: iptables-nft (one per
table an iptables-restore changes), nft, Docker, firewalld. It does not say
who made the last one (the pid it gives is the asking process's). Two equal
readings mean no rule, chain or table of any family changed in between,
which lets the firewall's fast path skip listings it made at the first
reading (iptables.append_fast).

One NFT_MSG_GETGEN request on a netlink socket of our own (~0.05 ms; a
pyroute2 socket costs ~0.6 ms to open). The kernel also sends a NEWGEN
message to group NFNLGRP_NFTABLES at every commit, naming the process that
made it (`notified`: how kept_restore knows its process committed).
Standard library only.
"""

import socket
import struct

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = 15
NFT_MSG_GETGEN = 16
NFTA_GEN_ID = 1
NFTA_GEN_PROC_PID = 2
NFNLGRP_NFTABLES = 7  # the multicast group of nftables' change notifications
_DELETIONS = {2, 5, 8, 11, 14, 20, 24}  # NFT_MSG_DEL{TABLE,CHAIN,RULE,SET,SETELEM,OBJ,FLOWTABLE}
NLM_F_REQUEST = 0x1
_HEADER = struct.Struct("=IHHII")    # nlmsghdr: length, type, flags, sequence, port
_NFGENMSG = struct.Struct("=BBH")    # family, version, resource id
_ATTRIBUTE = struct.Struct("=HH")    # nlattr: length, type


def _ask() -> bytes | None:
    """The kernel's NFT_MSG_NEWGEN reply to a GETGEN request, or None."""
    request = _HEADER.pack(_HEADER.size + _NFGENMSG.size, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN,
                           NLM_F_REQUEST, 1, 0) + _NFGENMSG.pack(socket.AF_UNSPEC, 0, 0)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER) as sock:
            sock.settimeout(2)
            sock.send(request)
            return sock.recv(4096)
    except OSError:
        return None


def current() -> int | None:
    """The generation now, or None when it cannot be read (no nf_tables)."""
    reply = _ask()
    return None if reply is None else parse_reply(reply)


def asker_as_the_kernel_names_it() -> int | None:
    """The calling thread as the kernel names the asker in the generation's
    messages (NFTA_GEN_PROC_PID: the task's id in the initial PID namespace,
    a thread's own id, not its process's), or None when it cannot be read.
    It differs from threading.get_native_id() in a PID namespace of our own
    (a container's)."""
    reply = _ask()
    found = None if reply is None else _newgen(reply)
    return found[1] if found else None


def parse_reply(reply: bytes) -> int | None:
    """NFTA_GEN_ID of an NFT_MSG_NEWGEN message; None for anything else
    (an error, a short or malformed message)."""
    found = _newgen(reply)
    return found[0] if found else None


def notified(messages: bytes, pid: int) -> tuple:
    """Among `messages` (what one recv on a socket in group NFNLGRP_NFTABLES
    gave): how many NFT_MSG_NEWGEN notifications name `pid` as the process
    that committed (the kernel sends one per commit, after the rest of the
    commit's notifications, once it took effect), and whether any message
    tells of something deleted (a rule, a chain, a set or its element...)."""
    count, deleted, offset = 0, False, 0
    while offset + _HEADER.size <= len(messages):
        length, kind = _HEADER.unpack_from(messages, offset)[:2]
        if length < _HEADER.size or offset + length > len(messages):
            break
        found = _newgen(messages[offset:offset + length])
        count += found is not None and found[1] == pid
        deleted = deleted or (kind >> 8 == NFNL_SUBSYS_NFTABLES and kind & 0xff in _DELETIONS)
        offset += (length + 3) & ~3
    return count, deleted


def _newgen(message: bytes) -> tuple | None:
    """(NFTA_GEN_ID, NFTA_GEN_PROC_PID or None) of the NFT_MSG_NEWGEN message
    `message` starts with; None for anything else (an error, a short or
    malformed message, no id)."""
    if len(message) < _HEADER.size + _NFGENMSG.size:
        return None
    length, kind, _, _, _ = _HEADER.unpack_from(message)
    if kind != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN or not _HEADER.size <= length <= len(message):
        return None
    generation = pid = None
    offset = _HEADER.size + _NFGENMSG.size
    while offset + _ATTRIBUTE.size <= length:
        size, attribute = _ATTRIBUTE.unpack_from(message, offset)
        if size < _ATTRIBUTE.size or offset + size > length:
            return None
        if attribute & 0x3fff in (NFTA_GEN_ID, NFTA_GEN_PROC_PID) and size == _ATTRIBUTE.size + 4:
            value = struct.unpack_from("!I", message, offset + _ATTRIBUTE.size)[0]
            if attribute & 0x3fff == NFTA_GEN_ID:
                generation = value
            else:
                pid = value
        offset += (size + 3) & ~3
    return None if generation is None else (generation, pid)
