"""Reading the nftables generation's reply (cni_backend/net/nft_generation.py):
anything but a whole NFT_MSG_NEWGEN with its id is None, never a number; and
the firewall takes the generation as counting its restores only with
iptables-nft."""

import struct

import pytest

from cni_backend.net import iptables, nft_generation as gen


def message(kind: int, attributes: bytes, length: int | None = None) -> bytes:
    body = struct.pack("=BBH", 0, 0, 0) + attributes
    return struct.pack("=IHHII", length or 16 + len(body), kind, 0, 1, 0) + body


def attribute(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


NEWGEN = (gen.NFNL_SUBSYS_NFTABLES << 8) | gen.NFT_MSG_NEWGEN


def test_the_id_is_read_whatever_comes_around_it():
    name = attribute(3, b"iptables-restor\0")
    reply = message(NEWGEN, attribute(2, struct.pack("!I", 77)) + name + attribute(gen.NFTA_GEN_ID, struct.pack("!I", 4242)))
    assert gen.parse_reply(reply) == 4242


def test_anything_else_is_none():
    good = attribute(gen.NFTA_GEN_ID, struct.pack("!I", 9))
    assert gen.parse_reply(message(NEWGEN, good)) == 9
    assert gen.parse_reply(message(2, good)) is None                        # NLMSG_ERROR
    assert gen.parse_reply(message(NEWGEN, b"")) is None                    # no id
    assert gen.parse_reply(message(NEWGEN, good)[:20]) is None              # cut short
    assert gen.parse_reply(message(NEWGEN, good, length=200)) is None       # claims more than came
    assert gen.parse_reply(message(NEWGEN, attribute(gen.NFTA_GEN_ID, b"\1\2"))) is None   # not 4 bytes
    assert gen.parse_reply(message(NEWGEN, struct.pack("=HH", 2, 1) + good)) is None      # a zero-length loop
    assert gen.parse_reply(b"") is None


@pytest.mark.parametrize("version,counted", [("iptables-restore v1.8.9 (nf_tables)", True),
                                             ("iptables-restore v1.8.9 (legacy)", False), ("", False)])
def test_only_iptables_nft_restores_are_taken_as_counted_by_the_generation(tmp_path, monkeypatch, version, counted):
    """With iptables-legacy our restores commit nothing the generation counts:
    the fast path must then always list (no generation is read at all)."""
    for tool in ("iptables-restore", "ip6tables-restore"):
        (tmp_path / tool).write_text(f"#!/bin/sh\necho '{version}'\n")
        (tmp_path / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/bin:/usr/bin")
    iptables._nft_backed.cache_clear()
    try:
        assert iptables._nft_backed(4) is counted and iptables._nft_backed(6) is counted
    finally:
        iptables._nft_backed.cache_clear()


def test_the_commits_of_one_process_are_counted_among_everyone_elses():
    """What kept_restore waits for: the NEWGEN notifications naming its
    process, in a recv's worth of messages (others' commits, other kinds of
    message, a torn last one), and whether anything was deleted."""
    def newgen(generation: int, pid: int) -> bytes:
        return message(NEWGEN, attribute(gen.NFTA_GEN_ID, struct.pack("!I", generation))
                       + attribute(gen.NFTA_GEN_PROC_PID, struct.pack("!I", pid)) + attribute(3, b"x\0"))

    def notification(kind: int) -> bytes:
        return message((gen.NFNL_SUBSYS_NFTABLES << 8) | kind, attribute(1, b"filter\0"))
    newrule, delrule, delchain, delsetelem = (notification(k) for k in (6, 8, 5, 14))
    batch = newrule + newgen(10, 77) + newrule + newgen(11, 78) + newgen(12, 77)
    assert gen.notified(batch, 77) == (2, False)
    assert gen.notified(batch, 78) == (1, False)
    assert gen.notified(batch, 79) == (0, False)
    assert gen.notified(batch + newgen(13, 77)[:30], 77) == (2, False), "a torn message counts for nothing"
    assert gen.notified(message(NEWGEN, attribute(gen.NFTA_GEN_PROC_PID, struct.pack("!I", 77))), 77)[0] == 0, \
        "a message without the generation is no commit"
    assert gen.notified(b"", 77) == (0, False)
    for deletion in (delrule, delchain, delsetelem):
        assert gen.notified(newrule + deletion + newgen(14, 77), 77) == (1, True)
    ipset_message = struct.pack("=IHHII", 20, (6 << 8) | 8, 0, 1, 0) + b"\0" * 4  # another subsystem's type 8
    assert gen.notified(ipset_message + newgen(15, 77), 77) == (1, False)
