"""State on disk: the shim and dockerd restart, running containers keep
working, new ones join, old ones are cleaned up."""

import json
import time

import pytest

from tests.engine.helpers import address, can_ping, container, network

pytestmark = pytest.mark.engine


def wait_running(docker, name, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        state = json.loads(docker("inspect", name).stdout)[0]["State"]
        if state["Running"] and not state["Restarting"]:
            return
        assert time.monotonic() < deadline, f"{name} did not come back: {state}"
        time.sleep(0.2)


def test_shim_kill9_and_restart_loses_nothing(docker):
    net = network(docker, "--subnet", "10.141.0.0/24")
    a, b = container(docker, net), container(docker, net)
    docker.shim.kill9()
    assert can_ping(docker, a, address(docker, b, net)), "the data plane does not need the shim"
    docker.shim.start()
    c = container(docker, net)
    assert can_ping(docker, a, address(docker, c, net)), "a new container joins after the restart"
    docker("rm", "-f", b)
    docker.made["containers"].remove(b)
    assert len([e for e in docker.shim.state_entries() if e[0] == "endpoint"]) == 2


@pytest.mark.parametrize("how,ipam", [("restart", "default"), ("kill", "default"), ("kill", "rancher-bridge")])
def test_containers_with_a_restart_policy_come_back_after_dockerd_restarts(docker, how, ipam):
    net = network(docker, "--subnet", "10.142.0.0/24", "--ipam-driver", ipam)
    a = container(docker, net, "--restart", "always")
    b = container(docker, net, "--restart", "always")
    if how == "kill":
        docker.dockerd.kill()
        docker.dockerd.start()
    else:
        docker.dockerd.restart()
    wait_running(docker, a)
    wait_running(docker, b)
    assert can_ping(docker, a, address(docker, b, net))
    endpoints = [e for e in docker.shim.state_entries() if e[0] == "endpoint"]
    assert len(endpoints) == 2, "endpoints of the stopped incarnations were deleted"
