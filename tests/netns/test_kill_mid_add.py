"""A CNI executable killed with SIGKILL in the middle of ADD, at several
points: the runtime's DEL afterwards (what the spec asks of it) leaves nothing
behind, and the next ADD is not blocked by anything the dead process held."""

import json
import os
import subprocess
import time

import pytest

from cni_backend import wire
from tests.conftest import ns_exec, run
from tests.processes import process_tree

pytestmark = pytest.mark.netns


def links_in(netns) -> list:
    return sorted(link["ifname"] for link in json.loads(ns_exec(netns, "ip", "-j", "link", "show").stdout))


def tagged_rules() -> list:
    return [line for tool in ("iptables-save", "ip6tables-save") for line in run(tool).stdout.splitlines()
            if "rcni-" in line and "rcni-isolation" not in line]


@pytest.mark.parametrize("delay", [0.0, 0.03, 0.08, 0.15, 0.3, 0.6])
def test_kill9_mid_add_then_del_leaves_nothing(cni_env, make_netns, delay):
    config = cni_env.bridge_config()
    netns = make_netns()
    env = dict(cni_env.env, CNI_COMMAND="ADD", CNI_CONTAINERID="killed", CNI_IFNAME="eth0",
               CNI_NETNS=f"/var/run/netns/{netns}")
    process = subprocess.Popen([str(cni_env.bin / "rancher-bridge")], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    process.stdin.write(json.dumps(config).encode())
    process.stdin.close()
    time.sleep(delay)
    process.kill()
    process.wait()
    code, answer = cni_env.exec("DEL", config, netns=netns, container_id="killed")
    assert code == 0, answer
    assert links_in(netns) == ["lo"] and cni_env.allocations() == [] and tagged_rules() == []
    code, answer = cni_env.exec("ADD", config, netns=netns, container_id="next")
    assert code == 0, answer
    assert cni_env.exec("DEL", config, netns=netns, container_id="next")[0] == 0
    assert links_in(netns) == ["lo"] and cni_env.allocations() == [] and tagged_rules() == []


def test_a_daemon_worker_whose_caller_went_away_does_not_finish_the_add(cni_daemon_env, make_netns):
    """The runtime's side of a timeout: it kills the plug-in, then calls DEL.
    Through the daemon, the call is served by a worker: if that worker went on
    after its caller died, it would finish the ADD after the DEL and leave the
    interface, address and rules behind. Here the caller sends a whole ADD and
    hangs up at once; the worker must end without finishing it."""
    env, netns = cni_daemon_env, make_netns()
    config = env.bridge_config()
    call = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "gone", "CNI_IFNAME": "eth0",
            "CNI_NETNS": f"/var/run/netns/{netns}", "CNI_PATH": str(env.bin)}
    workers_before = set(process_tree(env.daemon.pid)) - {env.daemon.pid}
    netns_fd = os.open(call["CNI_NETNS"], os.O_RDONLY)
    try:
        caller = wire.connect(str(env.socket))
        wire.send_request(caller, "rancher-bridge", call, json.dumps(config).encode(), netns_fd)
        caller.close()
    finally:
        os.close(netns_fd)
    deadline = time.monotonic() + 60  # not a timing assertion: how long to wait for the worker to end
    while set(process_tree(env.daemon.pid)) - {env.daemon.pid} - workers_before:
        assert time.monotonic() < deadline, "the worker of a caller that went away is still running"
        time.sleep(0.05)
    assert links_in(netns) == ["lo"], "the worker finished the ADD of a caller that had gone away"
    assert env.exec("DEL", config, netns=netns, container_id="gone")[0] == 0
    assert links_in(netns) == ["lo"] and env.allocations() == [] and tagged_rules() == []
