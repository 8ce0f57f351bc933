"""The one tool runner (cni_backend/net/tools.py) and the flat network's
ebtables calls through it, against fake tools on a private PATH: a missing or
failing tool is a firewall error (105), never code 100 or an empty listing."""

import os

import pytest

from cni_backend import flatnet
from cni_backend.errors import FIREWALL_FAILURE, CNIError
from cni_backend.net import tools


def fake_tool(bin_dir, name, script):
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)


@pytest.fixture
def bin_dir(tmp_path, monkeypatch):
    """A PATH holding only the fake tools a test writes (and sh for them)."""
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", str(directory))
    return directory


def flat_with_metadata():
    metadata = flatnet.Metadata(ip="169.254.169.250", link_ip="192.168.50.2", bridge="docker0")
    return flatnet.FlatNetwork(bridge="rcnitflat0", parent="eth9", vlan=0, mtu=None,
                               subnets=("192.168.50.0/24",), metadata=metadata, state_dir="/nonexistent")


def test_run_returns_stdout(bin_dir):
    fake_tool(bin_dir, "ebtables", 'echo "listed $*"')
    assert tools.run(["ebtables", "-L"]) == "listed -L\n"


def test_a_missing_tool_is_a_firewall_error_naming_its_package(bin_dir):
    for check in (True, False):
        with pytest.raises(CNIError) as raised:
            tools.run(["ebtables", "-L"], check=check)
        assert raised.value.code == FIREWALL_FAILURE
        assert "ebtables not found" in raised.value.msg
        assert "ebtables package" in raised.value.details


def test_a_failing_tool_raises_with_its_stderr_or_answers_none_unchecked(bin_dir):
    fake_tool(bin_dir, "iptables", 'echo "no chain" >&2; exit 1')
    with pytest.raises(CNIError) as raised:
        tools.run(["iptables", "-S"])
    assert (raised.value.code, raised.value.details) == (FIREWALL_FAILURE, "no chain")
    assert tools.run(["iptables", "-S"], check=False) is None


def test_side_by_side_outputs_feed_the_first_its_input(bin_dir):
    # fails unless it reads the script (shell builtins only: PATH has nothing else)
    fake_tool(bin_dir, "iptables-restore", 'while read -r line; do [ "$line" = COMMIT ] && exit 0; done; exit 1')
    fake_tool(bin_dir, "iptables", 'echo "$1"; [ "$1" = ok ]')
    assert tools.outputs_side_by_side([["iptables-restore"], ["iptables", "ok"], ["iptables", "no"]],
                                      "restore + listings", stdin="*filter\nCOMMIT\n") == ["", "ok\n", None]
    assert tools.outputs_side_by_side([["iptables-restore"]], "restore", stdin="*filter\n") == [None]
    with pytest.raises(CNIError) as raised:
        tools.outputs_side_by_side([["iptables-restore"], ["ip6tables", "ok"]], "restore + listings", stdin="COMMIT\n")
    assert raised.value.code == FIREWALL_FAILURE


def test_a_probe_never_raises(bin_dir):
    fake_tool(bin_dir, "nft", "exit 1")
    fake_tool(bin_dir, "slow", "exec /bin/sleep 5")
    assert not tools.succeeds(["nft", "-f", "-"], "add table x\n")
    assert not tools.succeeds(["ebtables", "-L"])  # missing
    assert not tools.succeeds(["slow"], timeout=0.2)
    fake_tool(bin_dir, "nft", "/bin/cat >/dev/null")
    assert tools.succeeds(["nft", "-f", "-"], "add table x\n")


def test_flat_without_ebtables_fails_with_the_firewall_code(bin_dir):
    fake_tool(bin_dir, "ebtables-save", "exit 0")
    with pytest.raises(CNIError) as raised:
        flatnet._ensure_ebtables(flat_with_metadata(), "eth9")
    assert raised.value.code == FIREWALL_FAILURE
    assert "ebtables not found" in raised.value.msg


def test_flat_reads_a_failing_ebtables_save_as_an_error_not_as_nothing_installed(bin_dir, tmp_path):
    calls = tmp_path / "ebtables.calls"
    fake_tool(bin_dir, "ebtables-save", 'echo "table busy" >&2; exit 1')
    fake_tool(bin_dir, "ebtables", f'echo "$*" >> {calls}')
    with pytest.raises(CNIError) as raised:
        flatnet._ensure_ebtables(flat_with_metadata(), "eth9")
    assert (raised.value.code, raised.value.details) == (FIREWALL_FAILURE, "table busy")
    assert not os.path.exists(calls)  # no rule or jump re-added


def test_flat_rebuilds_nothing_when_ebtables_save_lists_every_rule(bin_dir, tmp_path):
    flat = flat_with_metadata()
    listing = ["*filter"] + [f"-A {chain} {rule}" for table, chain, rule in flatnet._ebtables_rules(flat, "eth9")
                             if table == "filter"]
    listing += ["*nat"] + [f"-A {chain} {rule}" for table, chain, rule in flatnet._ebtables_rules(flat, "eth9")
                           if table == "nat"]
    calls = tmp_path / "ebtables.calls"
    fake_tool(bin_dir, "ebtables-save", "/bin/cat <<'END'\n" + "\n".join(listing) + "\nEND")
    fake_tool(bin_dir, "ebtables", f'echo "$*" >> {calls}')
    flatnet._ensure_ebtables(flat, "eth9")
    assert not os.path.exists(calls)



def test_listings_side_by_side_give_each_output_or_none_in_order(bin_dir):
    fake_tool(bin_dir, "ebtables-save", 'echo "*filter"')
    fake_tool(bin_dir, "nft", 'echo "listed $*"; [ "$1" = list ]')
    assert tools.outputs_side_by_side([["nft", "list", "a"], ["ebtables-save"], ["nft", "-j", "x"]], "probe") == \
        ["listed list a\n", "*filter\n", None]


def test_a_missing_tool_among_listings_side_by_side_is_a_firewall_error(bin_dir):
    fake_tool(bin_dir, "nft", "true")
    with pytest.raises(CNIError) as caught:
        tools.outputs_side_by_side([["nft", "list"], ["ebtables-save"]], "probe")
    assert caught.value.code == FIREWALL_FAILURE and "ebtables-save not found" in caught.value.msg


def test_flat_rebuilds_ebtables_again_when_a_command_meets_another_commit(bin_dir, tmp_path):
    """ebtables-nft fails a command whose commit meets another's ("RULE_DELETE
    failed"): the rebuild starts over, and a failure that stays is raised."""
    calls, failed_once = tmp_path / "ebtables.calls", tmp_path / "failed-once"
    fake_tool(bin_dir, "ebtables-save", "exit 0")
    fake_tool(bin_dir, "ebtables", f'''echo "$*" >> {calls}
case "$*" in *"-A RFLAT-"*"-IN -j DROP"*)
  [ -e {failed_once} ] || {{ : > {failed_once}; echo "RULE_DELETE failed (No such file or directory)" >&2; exit 4; }};;
esac
case "$*" in *" -D "*|*" -F "*) exit 1;; esac''')
    flatnet._ensure_ebtables(flat_with_metadata(), "eth9")
    lines = calls.read_text().splitlines()
    rules = flatnet._ebtables_rules(flat_with_metadata(), "eth9")
    appended = [line for line in lines if " -A " in line]
    assert len(appended) == len(rules) + 3, "the rebuild ran again from the start after the failed append"
    assert sum(" -N RFLAT-" in line for line in lines) == 4, "its chains made once per attempt"

    fake_tool(bin_dir, "ebtables", 'case "$*" in *" -A "*) echo "RULE_DELETE failed" >&2; exit 4;; *" -D "*|*" -F "*) exit 1;; esac')
    with pytest.raises(CNIError) as raised:
        flatnet._ensure_ebtables(flat_with_metadata(), "eth9")
    assert raised.value.code == FIREWALL_FAILURE and "RULE_DELETE failed" in raised.value.details
