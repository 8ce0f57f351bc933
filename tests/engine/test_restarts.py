"""State on disk: the shim and dockerd restart, running containers keep
working, new ones join, old ones are cleaned up."""

import json
import os
import signal
import time

import pytest

from tests.processes import identities, process_tree, still_running
from tests.engine.helpers import address, can_ping, container, network, post_unix

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


# Every call Docker may re-send after a connection error, which then arrives
# without a body (PROTOCOLS.md section 1), and what it must answer.
RESENT_CALLS = {
    "NetworkDriver.EndpointOperInfo": {"Value": {}},
    "NetworkDriver.Leave": {},
    "NetworkDriver.DeleteEndpoint": {},
    "NetworkDriver.DeleteNetwork": {},
    "NetworkDriver.RevokeExternalConnectivity": {},
    "NetworkDriver.ProgramExternalConnectivity": {},
    "NetworkDriver.FreeNetwork": {},
    "IpamDriver.ReleasePool": {},
    "IpamDriver.ReleaseAddress": {},
}


@pytest.mark.parametrize("killed", ["process group", "master"])
def test_a_plugin_restart_never_fails_a_container_start(docker, killed):
    """The reported failure: after kill -9 and a restart, `docker run` failed
    with "EndpointOperInfo: NetworkID None is missing", the call re-sent
    without its body after "connection reset by peer". Killing only the
    master must not leave workers holding the old socket either."""
    net = network(docker, "--subnet", "10.143.0.0/24")
    a = container(docker, net)
    container(docker, net, "-p", "18143:80")
    published = [ep for ep in docker.shim.endpoints() if ep.get("port_mappings")]
    assert len(published) == 1, "Docker published the port through ProgramExternalConnectivity"
    assert [ep for ep in docker.shim.endpoints() if ep.get("ports_at_join")] == [], \
        "no endpoint waits for its ports: an empty ProgramExternalConnectivity may succeed"
    old = identities(process_tree(docker.shim.process.pid))
    if killed == "master":
        os.kill(docker.shim.process.pid, signal.SIGKILL)
        docker.shim.process.wait()
    else:
        docker.shim.kill9(remove_sockets=False)  # the socket files stay, as after a real crash
    docker.shim.start()
    deadline = time.monotonic() + 30  # the killed master's children get SIGTERM from the kernel
    while still_running(old) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert still_running(old) == [], "processes of the killed plug-in are still running"
    for call, answer in RESENT_CALLS.items():
        assert post_unix(docker.shim.socket, call) == (200, answer), call
    for _ in range(10):
        assert can_ping(docker, container(docker, net), address(docker, a, net))
