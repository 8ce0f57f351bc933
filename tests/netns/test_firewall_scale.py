"""Issue 18, item 3: a DEL does not list the table (iptables-save) and the
work of an ADD or a DEL does not grow with the attachments the host holds.

The firewall module is called as the plug-ins call it, against the sandbox's
real iptables; iptables-save, iptables and iptables-restore are reached through
wrappers on PATH that count the lines each one reads or prints."""

import os
import shutil
import stat

import pytest

from cni_backend.net import firewall, iptables, tags
from cni_backend.net.iptables import FORWARD_CHAIN, MASQ_CHAIN
from tests.conftest import run, unique

pytestmark = pytest.mark.netns

BRIDGE = "rbscale0"
WRAPPER = """#!/bin/sh
t=$(mktemp)
{body}
rc=$?
echo "{name} $(wc -l < "$t")" >> {log}
rm -f "$t"
exit $rc
"""
SAVE = '"{real}" "$@" > "$t"; rc=$?; cat "$t"; (exit $rc)'
RESTORE = 'cat > "$t"; "{real}" "$@" < "$t"'


@pytest.fixture
def counted(tmp_path, monkeypatch):
    """The lines each iptables-save or iptables (a listing) printed and each
    iptables-restore read, as [(tool, lines)], since the last call of the
    returned function."""
    log = tmp_path / "calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("iptables-save", SAVE), ("iptables", SAVE), ("iptables-restore", RESTORE)):
        real = shutil.which(name)
        path = bin_dir / name
        path.write_text(WRAPPER.format(body=body.format(real=real), name=name, log=log))
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    def calls() -> list:
        text = log.read_text() if log.exists() else ""
        log.write_text("")
        return [(line.split()[0], int(line.split()[1])) for line in text.splitlines()]
    return calls


def attach(network: str, n: int) -> tags.Tag:
    tag = tags.of(tags.BRIDGE, network, f"c{n}", "eth0")
    address = f"10.132.{n // 250}.{n % 250 + 2}/22"
    firewall.add_rules(tag, firewall.bridge_rules(tag, BRIDGE, [address], masquerade=True))
    return tag


def ours() -> list:
    return [line for line in run("iptables-save").stdout.splitlines()
            if line.startswith(("-A", ":")) and ("RANCHER-CNI" in line or "rcni" in line or "RCNI-" in line)]


@pytest.fixture
def network():
    name = unique("scale")
    made = []
    yield name, made
    for tag in reversed(made):
        firewall.remove_rules(tag, (4,))
    assert ours() == []


def test_a_del_does_not_list_the_table_and_the_last_one_removes_everything(network, counted):
    name, made = network
    made += [attach(name, n) for n in range(3)]
    with_all = ours()
    counted()
    firewall.remove_rules(made.pop(1), (4,))
    assert [tool for tool, _ in counted()] == ["iptables-restore"]  # one restore, no iptables-save
    gone = str(tags.of(tags.BRIDGE, name, "c1", "eth0"))
    chains = {f":{iptables.attachment_chain(gone, parent)} " for parent in (FORWARD_CHAIN, MASQ_CHAIN)}
    assert ours() == [line for line in with_all if gone not in line and not line.startswith(tuple(chains))]
    assert len(with_all) - len(ours()) == 2 + 2 + 4  # its 2 chains, their jumps, its 4 rules
    # the others' rules, the chains and the bridge's isolation stay
    assert any("rcnibr-" + BRIDGE in line for line in ours())
    assert any(str(made[0]) in line for line in ours()) and any(str(made[1]) in line for line in ours())


def test_add_and_del_touch_as_many_lines_at_200_attachments_as_at_2(network, counted):
    name, made = network
    made += [attach(name, n) for n in range(2)]

    def cycle(n: int) -> tuple:
        counted()
        tag = attach(name, n)
        added = sorted(counted())  # the listings and the restore run side by side, in any order
        firewall.remove_rules(tag, (4,))
        return added, sorted(counted())

    few = cycle(900)
    made += [attach(name, n) for n in range(2, 200)]
    many = cycle(901)
    assert few == many, (few, many)  # the same tools, each reading or printing as many lines
    assert not any(tool == "iptables-save" for tool, _ in few[1] + many[1])


def test_the_last_del_removes_its_chains_and_the_shared_rules_in_one_restore(network, counted):
    """Every restore that deletes makes nftables wait for an RCU grace period
    at commit: the last attachment's DEL lists the table once and restores
    once, its own chains with the bridge's isolation and our jumps."""
    name, made = network
    tag = attach(name, 0)
    assert any("rcnibr-" + BRIDGE in line for line in ours())
    counted()
    firewall.remove_rules(tag, (4,))
    assert [tool for tool, _ in counted()] == ["iptables-save", "iptables-restore"]
    assert ours() == []


@pytest.mark.parametrize("table,jump", [("filter", iptables.CHAINS["filter"][FORWARD_CHAIN][0]),
                                        ("nat", iptables.CHAINS["nat"][MASQ_CHAIN][0])])
def test_an_add_puts_back_a_jump_someone_deleted_with_its_rules_once(network, table, jump):
    """The fast path appends and checks the jumps side by side: when a check
    fails (an admin's `iptables -D`, a firewall reload), the listing's plan
    puts the jump back and replaces what the append made, not doubles it."""
    name, made = network
    made += [attach(name, n) for n in range(2)]
    run("iptables", "-t", table, "-D", *jump.split())
    tag = attach(name, 2)
    made.append(tag)
    rules = run("iptables-save", "-t", table).stdout.splitlines()
    assert f"-A {jump}" in rules, f"the jump was not put back: {rules}"
    mine = [line for line in rules if line.startswith("-A") and str(tag) in line]
    assert mine and len(mine) == len(set(mine)), f"the new attachment's rules, each once: {mine}"


def test_an_add_puts_our_jump_back_above_a_foreign_one_inserted_before_it(network):
    """The reference firewall inserts its CNI-FORWARD first in FORWARD, where it
    would accept before our isolation decides. The fast path's listing of
    FORWARD sees it above our jump (as `iptables -C` would not), so the
    ADD's plan moves ours back first."""
    name, made = network
    made.append(attach(name, 0))
    ours_first = f"-A {iptables.CHAINS['filter'][FORWARD_CHAIN][0]}"
    run("iptables", "-N", "CNI-FORWARD")
    try:
        run("iptables", "-I", "FORWARD", "1", "-j", "CNI-FORWARD")
        made.append(attach(name, 1))
        forward = [line for line in run("iptables", "-S", "FORWARD").stdout.splitlines() if line.startswith("-A ")]
        assert forward[:2] == [ours_first, "-A FORWARD -j CNI-FORWARD"], forward
    finally:
        run("iptables", "-D", "FORWARD", "-j", "CNI-FORWARD", check=False)
        run("iptables", "-X", "CNI-FORWARD")


def test_the_listings_are_skipped_until_someone_else_commits(network, counted):
    """An ADD lists the built-in chains once; later ones, after only our own
    appends and removals, restore alone. Any other commit (here a chain made
    by hand, which touches none of our rules) moves the nftables generation
    past ours, and the next ADD lists again."""
    name, made = network
    made += [attach(name, n) for n in range(2)]   # the first makes the chains; the second lists
    counted()
    made.append(attach(name, 2))
    assert [tool for tool, _ in counted()] == ["iptables-restore"]
    firewall.remove_rules(made.pop(), (4,))
    made.append(attach(name, 3))
    assert [tool for tool, _ in counted()] == ["iptables-restore", "iptables-restore"]
    run("iptables", "-N", "SOMEONE-ELSE")
    try:
        counted()
        made.append(attach(name, 4))
        assert sorted(tool for tool, _ in counted()) == ["iptables"] * 3 + ["iptables-restore"]
        made.append(attach(name, 5))
        assert [tool for tool, _ in counted()] == ["iptables-restore"]
    finally:
        run("iptables", "-X", "SOMEONE-ELSE")


def test_our_own_nft_commits_keep_the_listings_skipped(network, counted):
    """An attachment's macspoofchk chain (our bridge-family nftables table) is
    one nft commit of ours, touching nothing the listings look for: the ADD
    after it still restores alone, and so does the one after its removal."""
    name, made = network
    made += [attach(name, n) for n in range(2)]
    spoof = tags.of(tags.SPOOF, name, "c1", "eth0")
    firewall.add_mac_filter(spoof, "vethscale1", "02:42:0a:84:00:03", ["10.132.0.3/22"])
    try:
        counted()
        made.append(attach(name, 2))
        assert [tool for tool, _ in counted()] == ["iptables-restore"]
    finally:
        firewall.remove_mac_filter(spoof)
    made.append(attach(name, 3))
    assert [tool for tool, _ in counted()] == ["iptables-restore"]
    assert run("nft", "list", "table", "bridge", firewall.NFT_TABLE, check=False).returncode != 0
