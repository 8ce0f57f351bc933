"""The leak guard's promise: a test that fails and leaves state behind is
reported, what it left is removed, and the next test starts on the machine
as it was. Shown by a pytest run of two tests: the first makes one of every
kind the guard watches and fails on purpose, the second checks the machine."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.netns

LEAKY_TESTS = '''
import json
import os
import subprocess
from tests.conftest import host_state, run

def test_fails_after_making_everything(leak_guard, tmp_path):
    run("ip", "netns", "add", "rcnitleakns")
    run("ip", "link", "add", "rcnitleak0", "type", "bridge")
    run("iptables", "-w", "-N", "RANCHER-CNI-LEAKTEST")
    run("iptables", "-w", "-A", "FORWARD", "-m", "comment", "--comment", "rcni-leaktest", "-j", "RANCHER-CNI-LEAKTEST")
    run("ebtables", "-N", "RFLAT-leak-IN", "-P", "DROP")
    run("ebtables", "-A", "FORWARD", "-i", "rcnitleak0", "-j", "RFLAT-leak-IN")
    run("nft", "add", "table", "netdev", "rancher_flat_leak")
    from pyroute2.ipset import IPSet
    with IPSet() as ipset:
        ipset.create("rcnitleakset", stype="hash:ip")
    run("iptables", "-w", "-A", "INPUT", "-m", "set", "--match-set", "rcnitleakset", "src",
        "-m", "comment", "--comment", "rcni-leakset", "-j", "ACCEPT")
    (tmp_path / "mnt").mkdir()
    run("mount", "-t", "tmpfs", "rcnitleakfs", str(tmp_path / "mnt"))
    sleeper = subprocess.Popen(["sleep", "3600"])
    (tmp_path.parent / "leaked.pid").write_text(str(sleeper.pid))
    assert False, "failing on purpose"

def test_the_next_test_starts_clean(leak_guard, tmp_path):
    pid = int((tmp_path.parent / "leaked.pid").read_text())
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    state = json.dumps(host_state())
    assert "test_fails_after_making_every" not in state, "the tmpfs is still mounted"
    for made in ("rcnitleakns", "rcnitleak0", "RANCHER-CNI-LEAKTEST", "rcni-leaktest", "RFLAT-leak", "rancher_flat_leak",
                 "rcnitleakset", "rcni-leakset"):
        assert made not in state
'''


def test_a_failing_test_leaves_nothing_for_the_next(tmp_path, leak_guard):
    test_dir = tmp_path / "leaky"
    test_dir.mkdir()
    (test_dir / "conftest.py").write_text("from tests.conftest import *  # noqa: F401,F403\n")
    (test_dir / "test_leaky.py").write_text(LEAKY_TESTS)
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--rootdir", str(test_dir),
                           str(test_dir)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = done.stdout
    assert "failing on purpose" in out
    assert "the test left state behind (removed now)" in out, out[-3000:]
    for kind in ("namespaces", "links", "firewall rules", "nft tables", "ipsets", "processes", "mounts"):
        assert f"'{kind}'" in out, f"the guard did not report {kind}: {out[-3000:]}"
    # the first fails twice (its body, then the guard at teardown); the second passes
    assert "1 failed, 1 passed, 1 error" in out.splitlines()[-1], out[-3000:]
