"""A CNI executable killed with SIGKILL in the middle of ADD, at several
points: the runtime's DEL afterwards (what the spec asks of it) leaves nothing
behind, and the next ADD is not blocked by anything the dead process held."""

import json
import subprocess
import time

import pytest

from tests.conftest import ns_exec, run

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
