"""nft commands given to libnftables in process (cni_backend/net/libnft.py)
answer as the nft command does: the same output, JSON or text, the same
error text and exit status; the forms it does not take, and a fake `nft`
on PATH, are left to the command. Run in a private network namespace
(tests/private_netns.py)."""

import subprocess

import pytest

from cni_backend.errors import CNIError, FIREWALL_FAILURE
from cni_backend.net import libnft, tools
from tests import private_netns

pytestmark = pytest.mark.skipif(not libnft.available(), reason="libnftables or the system's nft is not installed")

SCRIPT = """table bridge rcnit_libnft {
  map ports { type ifname : verdict; }
  chain prerouting { type filter hook prerouting priority -300; iifname vmap @ports; }
  chain c1 { ether saddr != 02:42:0a:16:00:05 drop; ip saddr 10.22.0.5 accept; }
}
add element bridge rcnit_libnft ports { "veth1" : jump c1 }
"""
COMMANDS = [["list", "table", "bridge", "rcnit_libnft"], ["-j", "list", "table", "bridge", "rcnit_libnft"],
            ["list", "map", "bridge", "rcnit_libnft", "ports"], ["list", "chain", "bridge", "rcnit_libnft", "nope"],
            ["list", "table", "bridge", "absent"]]


def _both_ways():
    done = subprocess.run(["nft", "-f", "-"], input=SCRIPT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    found = []
    for args in COMMANDS:
        executed = subprocess.run(["nft", *args], capture_output=True, text=True)
        found.append(((executed.returncode, executed.stdout, executed.stderr), libnft.run(args)))
    # a script through the library, read back by the command
    assert libnft.run(["-f", "-"], "add chain bridge rcnit_libnft c2\ndelete element bridge rcnit_libnft ports "
                                   '{ "veth1" }\n')[0] == 0
    after = subprocess.run(["nft", "list", "table", "bridge", "rcnit_libnft"], capture_output=True, text=True).stdout
    failed = libnft.run(["-f", "-"], "add rule bridge rcnit_libnft nochain accept\n")
    # through tools: an error of the library is the firewall error the command's would be
    try:
        tools.run(["nft", "list", "table", "bridge", "absent"])
    except CNIError as exc:
        raised = (exc.code, exc.msg, exc.details)
    return found, after, failed, raised, tools.outputs_side_by_side(
        [["nft", "list", "map", "bridge", "rcnit_libnft", "ports"], ["true"], ["nft", "list", "table", "inet", "x"]],
        "listings")


def test_the_library_answers_as_the_command_does():
    found, after, failed, raised, side_by_side = private_netns.run(_both_ways)
    for args, (executed, in_process) in zip(COMMANDS, found):
        assert in_process == executed, args
    assert [code for (code, _, _), _ in found] == [0, 0, 0, 1, 1]
    assert '"nftables"' in found[1][1][1] and "jump c1" in found[0][1][1]
    assert "chain c2" in after and "veth1" not in after
    assert failed[0] == 1 and "No such file or directory" in failed[2]
    assert raised[:2] == (FIREWALL_FAILURE, "nft failed") and "No such file or directory" in raised[2]
    # the map listed after the script above took its element out
    assert "map ports" in side_by_side[0] and "veth1" not in side_by_side[0] and side_by_side[1:] == ["", None]


@pytest.mark.parametrize("args,stdin", [
    (["-a", "list", "ruleset"], None),      # an option it does not take
    (["-f", "/etc/nftables.conf"], None),   # a file: the command reads it
    (["-f", "-"], None),                    # no input given
    (["list", "ruleset"], "text"),          # input for a command line
    ([], None),
])
def test_forms_it_does_not_take_are_left_to_the_command(args, stdin):
    assert libnft.command(args, stdin) is None
    assert libnft.run(args, stdin) is None


def test_a_command_line_is_joined_as_nfts_main_joins_it():
    assert libnft.command(["-j", "list", "table", "bridge", "t"], None) == (libnft.OUTPUT_JSON, "list table bridge t\n")
    assert libnft.command(["-f", "-"], "add table t\n") == (0, "add table t\n")


def test_a_fake_nft_on_path_is_what_runs(tmp_path, monkeypatch):
    fake = tmp_path / "nft"
    fake.write_text("#!/bin/sh\necho fake \"$*\"\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert not libnft.available() and libnft.run(["list", "ruleset"]) is None
    assert tools.run(["nft", "list", "ruleset"]) == "fake list ruleset\n"
