"""The firewall's lock is per network namespace: the rules are the
namespace's, so a change in one namespace does not wait for another's, and
every process in one namespace takes the same lock."""

import os
import subprocess
import sys
import time

import pytest

from cni_backend import locks
from cni_backend.net import iptables
from tests.conftest import ns_exec, run, unique

pytestmark = pytest.mark.netns

_PATH = "from cni_backend.net import iptables; print(iptables.lock_path())"

# one ADD of a container's rules through the firewall module, in the namespace it runs in
_ADD = """
import sys, time
from cni_backend.net import firewall, tags
tag = tags.of(tags.BRIDGE, "locknet", "c1", "eth0")
t0 = time.monotonic()
firewall.add_rules(tag, firewall.bridge_rules(tag, "rblock0", ["10.133.0.2/24"], masquerade=True))
firewall.remove_rules(tag)
print(round(time.monotonic() - t0, 3))
"""


@pytest.fixture
def two_hosts():
    names = [unique("lk"), unique("lk")]
    for name in names:
        run("ip", "netns", "add", name)
    yield names
    for name in names:
        run("ip", "netns", "del", name, check=False)


def test_each_namespace_has_its_own_lock_whoever_asks(two_hosts):
    first, second = (ns_exec(name, sys.executable, "-c", _PATH).stdout.strip() for name in two_hosts)
    assert first != second
    assert all(p.startswith(f"{iptables._RECORDS}/") and p.endswith(".lock") for p in (first, second))
    # a namespace's path is its own for as long as it lives, also for a process in a PID namespace of its own
    assert ns_exec(two_hosts[0], sys.executable, "-c", _PATH).stdout.strip() == first
    inside = ns_exec(two_hosts[0], "unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", _PATH)
    assert inside.stdout.strip() == first


def test_a_change_in_one_namespace_does_not_wait_for_another_namespaces_lock(two_hosts):
    busy, free = two_hosts
    busy_lock, free_lock = (ns_exec(name, sys.executable, "-c", _PATH).stdout.strip() for name in two_hosts)
    with locks.held(busy_lock):
        done = ns_exec(free, sys.executable, "-c", _ADD, check=False)
        assert done.returncode == 0, done.stderr
    # ...and one in the busy namespace does wait for it
    with locks.held(busy_lock):
        waiting = subprocess.Popen(["ip", "netns", "exec", busy, sys.executable, "-c", _ADD],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert waiting.poll() is None, "a change went ahead while its namespace's lock was held"
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 0, err
    assert float(out) >= 1.0
    assert "RCNI-" not in ns_exec(busy, "iptables-save").stdout
    for path in (busy_lock, free_lock):
        os.unlink(path)  # the namespaces go with the fixture, their lock files here
