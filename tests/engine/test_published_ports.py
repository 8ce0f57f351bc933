"""Published ports as Docker means them (issue 15, item 3), through a real
dockerd: a host-port range gives ONE port of it, -p PORT / -P an ephemeral
port, a port another container holds or a host process has bound is refused
in `docker run`'s own output. Traffic only to the test's own containers, on
the sandbox's loopback."""

import json
import socket

import pytest

from tests.conftest import run, unique
from tests.engine.helpers import container, network, post_unix
from tests.rigs import http_get, wait_for_http

pytestmark = pytest.mark.engine
WEB = ("sh", "-c", "mkdir -p /www && hostname > /www/index.html && httpd -f -p 80 -h /www")


def settings(docker, name, net) -> dict:
    return json.loads(docker("inspect", name).stdout)[0]


def published(docker, name, net) -> list:
    """The host ports our driver answers for the container's endpoint in
    EndpointOperInfo (asked as Docker asks it), as com.docker.network.portmap."""
    info = settings(docker, name, net)["NetworkSettings"]["Networks"][net]
    status, answer = post_unix(docker.shim.socket, "NetworkDriver.EndpointOperInfo", json.dumps(
        {"NetworkID": info["NetworkID"], "EndpointID": info["EndpointID"]}).encode())
    assert status == 200, answer
    return answer["Value"].get("com.docker.network.portmap", [])


def dnat_ports(address: str) -> list:
    """The host ports the kernel DNATs to `address` (iptables-save, nat table)."""
    rules = run("iptables-save", "-t", "nat").stdout.splitlines()
    return sorted(int(r.split("--dport ")[1].split()[0]) for r in rules
                  if f"--to-destination {address}:" in r and "--dport " in r)


def run_fails(docker, net, *args) -> str:
    name = unique("c")
    docker.made["containers"].append(name)
    done = docker("run", "-d", "--name", name, "--network", net, *args, docker.dockerd.image, "sleep", "600",
                  check=False)
    assert done.returncode != 0, f"docker run {' '.join(args)} succeeded"
    return done.stderr


def test_a_host_port_range_publishes_one_port_and_a_held_port_is_refused_with_dockers_message(docker):
    net = network(docker, "--subnet", "10.151.0.0/24")
    first = container(docker, net, "-p", "18000-18003:80", command=WEB)
    ip = settings(docker, first, net)["NetworkSettings"]["Networks"][net]["IPAddress"]
    assert dnat_ports(ip) == [18000], "one port of the range, not 18000->80, 18001->81, ..."
    assert published(docker, first, net) == [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 18000,
                                             "HostPortEnd": 18000}]
    # Docker cannot show a remote driver's ports: it reads com.docker.network.portmap from
    # EndpointOperInfo as Go []types.PortBinding, which a JSON answer never decodes to (moby
    # daemon/network.go, getEndpointPortMapInfo). If this fails, Docker learned to: update
    # docs/user-guide.md ("Published ports") and check the port shown here instead.
    assert docker("port", first).stdout == "" and settings(docker, first, net)["NetworkSettings"]["Ports"] == {}
    assert wait_for_http("http://127.0.0.1:18000/").strip() == settings(docker, first, net)["Config"]["Hostname"]

    err = run_fails(docker, net, "-p", "18000-18000:80")
    assert "Bind for 0.0.0.0:18000 failed: port is already allocated" in err, err

    second = container(docker, net, "-p", "18000-18003:80", command=WEB)
    assert [p["HostPort"] for p in published(docker, second, net)] == [18001], "the next free port of the range"
    assert wait_for_http("http://127.0.0.1:18001/").strip() == settings(docker, second, net)["Config"]["Hostname"]

    docker("rm", "-f", first)
    docker.made["containers"].remove(first)
    with pytest.raises(OSError):
        http_get("http://127.0.0.1:18000/")
    third = container(docker, net, "-p", "18000:80", command=WEB)  # released with the container
    assert wait_for_http("http://127.0.0.1:18000/").strip() == settings(docker, third, net)["Config"]["Hostname"]


@pytest.mark.parametrize("flag", [("-p", "80"), ("-P", "--expose", "80")], ids=["-p 80", "-P"])
def test_host_port_zero_publishes_an_ephemeral_port_that_answers(docker, flag):
    net = network(docker, "--subnet", "10.152.0.0/24")
    web = container(docker, net, *flag, command=WEB)
    ports = published(docker, web, net)
    assert len(ports) == 1 and ports[0]["Port"] == 80, ports
    low, high = (int(v) for v in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    assert low <= ports[0]["HostPort"] <= high
    ip = settings(docker, web, net)["NetworkSettings"]["Networks"][net]["IPAddress"]
    assert dnat_ports(ip) == [ports[0]["HostPort"]]
    assert wait_for_http(f"http://127.0.0.1:{ports[0]['HostPort']}/").strip() == \
        settings(docker, web, net)["Config"]["Hostname"]


def test_a_port_a_host_process_listens_on_is_refused_not_taken_over(docker):
    """-p 22:80 DNATed new SSH connections to the container: a port a host
    process has bound (here a listener the test opens in the sandbox) is
    refused, and the listener still gets its connections."""
    net = network(docker, "--subnet", "10.153.0.0/24")
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        port = listener.getsockname()[1]
        err = run_fails(docker, net, "-p", f"{port}:80")
        assert f"Bind for 0.0.0.0:{port} failed: port is already in use by a process on the host" in err, err
        assert f"--dport {port} " not in run("iptables-save", "-t", "nat").stdout
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            accepted, _ = listener.accept()
            accepted.close()


def test_a_held_port_stays_held_across_a_plug_in_kill_and_restart(docker):
    """Docker re-sends nothing after a plug-in restart: the allocation is on disk."""
    net = network(docker, "--subnet", "10.154.0.0/24")
    first = container(docker, net, "-p", "18010-18011:80", command=WEB)
    docker.shim.kill9()
    docker.shim.start()
    err = run_fails(docker, net, "-p", "18010:80")
    assert "Bind for 0.0.0.0:18010 failed: port is already allocated" in err, err
    assert wait_for_http("http://127.0.0.1:18010/").strip() == settings(docker, first, net)["Config"]["Hostname"]
