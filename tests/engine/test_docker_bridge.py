"""Docker drives our bridge backend through the remote driver protocol: a real
dockerd, real containers, read back with docker inspect and the kernel."""

import json

import pytest

from tests.conftest import run, unique
from tests.engine.helpers import address, can_ping, container, network, wait_for_teardowns
from tests.rigs import http_get, wait_for_http

pytestmark = pytest.mark.engine


def test_two_containers_ping_by_ip_and_by_name(docker):
    net = network(docker, "--subnet", "10.131.0.0/24")
    inspect = json.loads(docker("network", "inspect", net).stdout)[0]
    assert inspect["Driver"] == "rancher-bridge" and inspect["IPAM"]["Config"][0]["Subnet"] == "10.131.0.0/24"
    a, b = container(docker, net), container(docker, net)
    ip_b = address(docker, b, net)
    assert ip_b.startswith("10.131.0.")
    assert can_ping(docker, a, ip_b)
    assert can_ping(docker, a, b), "Docker's embedded DNS resolves the other container"
    mac = json.loads(docker("inspect", b).stdout)[0]["NetworkSettings"]["Networks"][net]["MacAddress"]
    assert mac in docker("exec", b, "ip", "link", "show", "eth0").stdout


def test_bad_option_fails_network_create_with_our_message(docker):
    done = docker("network", "create", "-d", "rancher-bridge", "--subnet", "10.132.0.0/24",
                  "-o", "mtuu=1400", unique("n"), check=False)
    assert done.returncode != 0
    assert "unknown option 'mtuu'" in done.stderr and "valid options:" in done.stderr and "mtu" in done.stderr
    done = docker("network", "create", "-d", "rancher-bridge", "--subnet", "10.132.0.0/24",
                  "-o", "mtu=huge", unique("n"), check=False)
    assert done.returncode != 0 and "mtu='huge' must be an integer" in done.stderr


def test_an_ipam_error_reaches_the_user_as_text(docker):
    """moby reads only `Err` from a failed call; with IPAM's `Error` alone the
    user got 'IpamDriver.RequestPool: {"Error":"pool ...'."""
    done = docker("network", "create", "-d", "rancher-bridge", "--ipam-driver", "rancher-bridge",
                  "--subnet", "10.139.0.0/32", unique("n"), check=False)
    assert done.returncode != 0
    assert "IpamDriver.RequestPool: pool 10.139.0.0/32: " in done.stderr and "too small" in done.stderr, done.stderr
    assert '"Error"' not in done.stderr, done.stderr


@pytest.mark.parametrize("subnet,fragment", [("0.0.0.0/0", "it is the default route"),
                                              ("127.0.0.0/8", "it overlaps loopback"),
                                              ("224.0.0.0/4", "it overlaps multicast")])
@pytest.mark.parametrize("ipam", [["--ipam-driver", "rancher-bridge"], []])
def test_a_pool_no_network_may_have_is_refused_with_a_message_the_user_sees(docker, subnet, fragment, ipam):
    done = docker("network", "create", "-d", "rancher-bridge", *ipam, "--subnet", subnet, unique("n"), check=False)
    assert done.returncode != 0
    assert f"subnet {subnet} is refused: {fragment}" in done.stderr, done.stderr
    assert "10.22.0.0/16" in done.stderr, "what is valid is named"
    assert docker.shim.allocations() == []


def test_static_ip_connect_disconnect_and_two_networks(docker):
    first = network(docker, "--subnet", "10.133.0.0/24")
    second = network(docker, "--subnet", "10.134.0.0/24")
    a = container(docker, first, "--ip", "10.133.0.50")
    assert address(docker, a, first) == "10.133.0.50"
    b = container(docker, second)
    assert not can_ping(docker, a, address(docker, b, second))
    docker("network", "connect", second, a)
    assert can_ping(docker, a, address(docker, b, second))
    assert "10.133.0.50" in docker("exec", a, "ip", "addr").stdout
    docker("network", "disconnect", second, a)
    assert second not in json.loads(docker("inspect", a).stdout)[0]["NetworkSettings"]["Networks"]
    assert "10.134.0." not in docker("exec", a, "ip", "addr").stdout


def test_our_ipam_driver(docker):
    net = network(docker, "--ipam-driver", "rancher-bridge", "--subnet", "10.135.0.0/24", "--ip-range", "10.135.0.128/25")
    a, b = container(docker, net), container(docker, net)
    ip_a, ip_b = address(docker, a, net), address(docker, b, net)
    assert ip_a != ip_b and all(int(ip.rsplit(".", 1)[1]) >= 128 for ip in (ip_a, ip_b))
    assert can_ping(docker, a, ip_b)
    held = {ip for owner, _, ip in docker.shim.allocations() if owner == "@docker"}
    assert {ip_a, ip_b, "10.135.0.1"} <= held
    auto = network(docker, "--ipam-driver", "rancher-bridge")
    c = container(docker, auto)
    assert address(docker, c, auto)


def test_ipv6_subnet(docker):
    net = network(docker, "--ipv6", "--subnet", "10.136.0.0/24", "--subnet", "fd00:136::/64")
    a, b = container(docker, net), container(docker, net)
    info = json.loads(docker("inspect", b).stdout)[0]["NetworkSettings"]["Networks"][net]
    assert info["GlobalIPv6Address"].startswith("fd00:136::")
    assert docker("exec", a, "ping6", "-c", "1", "-W", "3", info["GlobalIPv6Address"], check=False).returncode == 0


def test_nothing_is_left_after_everything_is_removed(docker):
    net = network(docker, "--subnet", "10.137.0.0/24")
    names = [container(docker, net) for _ in range(3)]
    bridge = json.loads(docker("network", "inspect", net).stdout)[0]["Id"][:12]
    assert run("ip", "link", "show", f"rb-{bridge}", check=False).returncode == 0
    for name in names:
        docker("rm", "-f", name)
    docker.made["containers"].clear()
    wait_for_teardowns(docker.shim.state_dir)
    rules = run("iptables-save").stdout
    # the containers' rules went; the network's shared ones (our chains, its
    # bridge's isolation pair) stay while it exists, for its next container
    assert "RCNI-" not in rules and f"rcnibr-rb-{bridge}" in rules
    docker("network", "rm", net)
    docker.made["networks"].clear()
    assert run("ip", "link", "show", f"rb-{bridge}", check=False).returncode != 0
    rules = run("iptables-save").stdout
    assert "rcni" not in rules and "RANCHER-CNI" not in rules


def test_published_port_is_reachable_from_the_host_and_another_container(docker):
    net = network(docker, "--subnet", "10.138.0.0/24")
    web = container(docker, net, "-p", "18080:80",
                    command=("sh", "-c", "mkdir -p /www && echo hello-from-web > /www/index.html && httpd -f -p 80 -h /www"))
    client = container(docker, net)
    assert wait_for_http("http://127.0.0.1:18080/") == "hello-from-web\n"
    gateway = json.loads(docker("inspect", client).stdout)[0]["NetworkSettings"]["Networks"][net]["Gateway"]
    fetched = docker("exec", client, "wget", "-q", "-O", "-", f"http://{gateway}:18080/", check=False)
    assert fetched.stdout == "hello-from-web\n", fetched.stderr
    docker("rm", "-f", web)
    docker.made["containers"].remove(web)
    with pytest.raises(OSError):
        http_get("http://127.0.0.1:18080/")
