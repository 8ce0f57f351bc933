"""`docker network create --internal` on our drivers, with a real dockerd:
the containers reach each other and nothing outside their subnet (a
namespace this test makes, routed through the host), and no rule
masquerades them. Bridges and names that are not the network's own are
refused in docker's own output."""

import json

import pytest

from tests.conftest import run, unique, write_sysctls
from tests.engine.helpers import address, can_ping, container, network

pytestmark = pytest.mark.engine

OUTSIDE_HOST, OUTSIDE = "10.192.0.1", "10.192.0.2"


@pytest.fixture
def outside():
    """A namespace beyond the host, its default route back through the host."""
    netns, host_end = unique("ns"), unique("o")
    run("ip", "netns", "add", netns)
    run("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", netns)
    run("ip", "addr", "add", f"{OUTSIDE_HOST}/24", "dev", host_end)
    run("ip", "link", "set", host_end, "up")
    for argv in (("ip", "addr", "add", f"{OUTSIDE}/24", "dev", "eth0"), ("ip", "link", "set", "eth0", "up"),
                 ("ip", "route", "add", "default", "via", OUTSIDE_HOST)):
        run("ip", "netns", "exec", netns, *argv)
    write_sysctls({"/proc/sys/net/ipv4/ip_forward": "1"})
    yield netns
    run("ip", "link", "del", host_end, check=False)
    run("ip", "netns", "del", netns, check=False)


def test_internal_network_reaches_its_peer_and_not_outside(docker, outside):
    net = network(docker, "--internal", "--subnet", "10.191.0.0/24", "--gateway", "10.191.0.1")
    assert json.loads(docker("network", "inspect", net).stdout)[0]["Internal"] is True
    a = container(docker, net, "--cap-add", "NET_ADMIN")
    b = container(docker, net)
    assert can_ping(docker, a, address(docker, b, net)), "the peer on the same network"
    # the container makes its own way out (it may have one already: Docker
    # installs a default route when the driver names a gateway); the host
    # still drops what it sends
    docker("exec", a, "ip", "route", "add", "10.192.0.0/24", "via", "10.191.0.1")
    assert not can_ping(docker, a, OUTSIDE), "a packet left the internal network"
    nat = run("iptables-save", "-t", "nat").stdout
    assert not [line for line in nat.splitlines() if "10.191.0." in line and "MASQUERADE" in line], nat
    assert "default" not in docker("exec", b, "ip", "route").stdout, "no way out is offered"


def test_the_same_network_without_internal_reaches_outside(docker, outside):
    """The control: the route and the outside namespace work."""
    net = network(docker, "--subnet", "10.191.0.0/24", "--gateway", "10.191.0.1")
    a = container(docker, net, "--cap-add", "NET_ADMIN")
    docker("exec", a, "ip", "route", "add", "10.192.0.0/24", "via", "10.191.0.1")
    assert can_ping(docker, a, OUTSIDE)


def test_internal_flat_and_a_foreign_bridge_are_refused_in_dockers_output(docker):
    done = docker("network", "create", "-d", "rancher-bridge", "--internal", "--subnet", "10.190.0.0/24",
                  "-o", "backend=flat", "-o", "parent=lo", unique("n"), check=False)
    assert done.returncode != 0 and "--internal (com.docker.network.internal) is not supported" in done.stderr
    bridge = unique("br")
    run("ip", "link", "add", bridge, "type", "bridge")
    try:
        done = docker("network", "create", "-d", "rancher-bridge", "--subnet", "10.190.0.0/24",
                      "-o", f"bridge={bridge}", unique("n"), check=False)
        assert done.returncode != 0 and "add -o bridge.shared=true" in done.stderr, done.stderr
        net = network(docker, "--subnet", "10.190.0.0/24", "-o", f"bridge={bridge}", "-o", "bridge.shared=true")
        docker("network", "rm", net)
        docker.made["networks"].remove(net)
        assert run("ip", "link", "show", bridge, check=False).returncode == 0
    finally:
        run("ip", "link", "del", bridge, check=False)

