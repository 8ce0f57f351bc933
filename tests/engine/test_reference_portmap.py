"""`-o portmap=reference` on a rancher-bridge network: Docker's `-p` published
through the reference `portmap` plug-in (Debian's containernetworking-plugins
in /usr/lib/cni) chained in the network's own list, not through
rancher-portmap. Host ports as Docker allocates them (a fixed port, a range,
Docker's conflict message), the port answering from another namespace (a
router behind a veth standing in for the LAN) and from the host's 127.0.0.1,
rancher-portmap's route_localnet guard around the plug-in, the rules gone at
stop and back at start, nothing of them left after rm and network rm; the
combinations it cannot serve refused at `docker network create`. Traffic only
to the test's own containers and router namespace."""

import json
import os
import time

import pytest

from cni_backend.net import iptables
from tests.conftest import ns_exec, run
from tests.engine.helpers import address, can_ping, container, network
from tests.engine.test_conflist_portmap import dnat_through_portmap, portmap_base_chains, portmap_rules  # noqa: F401
from tests.engine.test_doctor import doctor
from tests.engine.test_docker_vxlan import other_host  # noqa: F401
from tests.engine.test_published_ports import WEB, published, run_fails, settings
from tests.netns.test_edge_attacks import loopback_service  # noqa: F401
from tests.rigs import router_with_uplink, wait_for_http

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(not os.access("/usr/lib/cni/portmap", os.X_OK), reason="containernetworking-plugins missing"),
]
ROUTER, HOST = "10.164.0.1", "10.164.0.2"


def from_router(router: str, port: int, timeout: float = 10) -> str:
    """The page at HOST:port fetched from the router's namespace, once it answers."""
    deadline = time.monotonic() + timeout
    while True:
        done = ns_exec(router, "curl", "-s", "--max-time", "3", f"http://{HOST}:{port}/", check=False)
        if done.returncode == 0:
            return done.stdout
        assert time.monotonic() < deadline, f"{HOST}:{port} never answered the router: {done.stderr}"
        time.sleep(0.2)


def route_localnet(bridge: str) -> str:
    with open(f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet") as f:
        return f.read().strip()


def localnet_guards(bridge: str) -> list:
    """The guards on `bridge`, each attachment's read from its own chain as if
    in RANCHER-CNI-LOCALNET (iptables.logical)."""
    raw = iptables.logical(iptables.parse_saved(run("iptables-save", "-t", "raw").stdout))[0].get("raw", (set(), []))
    return [r for r in raw[1] if r.startswith("-A RANCHER-CNI-LOCALNET") and f"-i {bridge} " in r]


def test_published_ports_go_through_the_reference_portmap_with_dockers_semantics_and_leave_nothing(
        docker, make_netns, portmap_base_chains):  # noqa: F811
    router, _ = router_with_uplink(make_netns, f"{ROUTER}/24", f"{HOST}/24")
    net = network(docker, "--subnet", "10.163.0.0/24", "-o", "portmap=reference")
    bridge = "rb-" + json.loads(docker("network", "inspect", net).stdout)[0]["Id"][:12]
    conf = json.loads(docker("network", "inspect", net).stdout)[0]
    assert conf["Options"]["portmap"] == "reference"
    hostname = lambda name: settings(docker, name, net)["Config"]["Hostname"]  # noqa: E731

    web = container(docker, net, "-p", "18210:80", command=WEB)
    assert from_router(router, 18210).strip() == hostname(web), "reached from another namespace"
    assert wait_for_http("http://127.0.0.1:18210/").strip() == hostname(web), "and from the host's 127.0.0.1"
    assert dnat_through_portmap(address(docker, web, net)) == [18210], "the reference portmap's CNI-DN-* chain"
    assert "--dport 18210 " not in "".join(r for r in run("iptables-save", "-t", "nat").stdout.splitlines()
                                           if "RANCHER-CNI-HOSTPORT" in r), "not rancher-portmap"
    assert len(localnet_guards(bridge)) == 1 and route_localnet(bridge) == "1", "route_localnet only behind the guard"

    err = run_fails(docker, net, "-p", "18210:80")
    assert "Bind for 0.0.0.0:18210 failed: port is already allocated" in err, err
    ranged = container(docker, net, "-p", "18210-18212:80", command=WEB)
    assert [p["HostPort"] for p in published(docker, ranged, net)] == [18211], "one free port of the range"
    assert dnat_through_portmap(address(docker, ranged, net)) == [18211]
    assert from_router(router, 18211).strip() == hostname(ranged)

    ephemeral = container(docker, net, "-p", "80", command=WEB)  # HostPort 0
    port = published(docker, ephemeral, net)[0]["HostPort"]
    low, high = (int(v) for v in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    assert low <= port <= high and dnat_through_portmap(address(docker, ephemeral, net)) == [port]
    assert from_router(router, port).strip() == hostname(ephemeral)
    err = run_fails(docker, net, "-p", "[::1]:18213:80")  # portmap would skip it without a word
    assert "cannot publish ::1:18213 to port 80/tcp: the container has IPv4 addresses" in err, err
    docker("rm", "-f", ephemeral)
    docker.made["containers"].remove(ephemeral)

    other = container(docker, network(docker, "--subnet", "10.165.0.0/24"))
    assert not can_ping(docker, other, address(docker, web, net)), "the isolation between our networks stays"

    code, report = doctor(docker)
    assert code == 0, report  # the chain's CHECK, portmap's with the cached mappings (its IPv6 CHECK bug aside)
    web_chain = next(r.split()[1] for r in run("iptables-save", "-t", "nat").stdout.splitlines()
                     if r.startswith("-A CNI-DN-") and "--dport 18210 " in r)
    run("iptables", "-w", "-t", "nat", "-F", web_chain)  # the DNAT gone behind Docker's back
    code, report = doctor(docker)
    assert code == 1 and "portmap: could not check ipv4 dnat" in json.dumps(report), report
    code, report = doctor(docker, "--repair")  # the plug-in's ADD again, with the cached mappings
    assert code == 0 and report["findings"][0]["repaired"], report
    assert dnat_through_portmap(address(docker, web, net)) == [18210] and doctor(docker)[0] == 0
    assert from_router(router, 18210).strip() == hostname(web)

    docker("stop", "-t", "1", web)  # RevokeExternalConnectivity, DeleteEndpoint: its rules and guard go
    assert not [r for r in portmap_rules() if "--dport 18210 " in r] and dnat_through_portmap(
        address(docker, ranged, net)) == [18211]
    assert len(localnet_guards(bridge)) == 1 and route_localnet(bridge) == "1", "the other container's guard stays"
    assert ns_exec(router, "curl", "-s", "--max-time", "2", f"http://{HOST}:18210/", check=False).returncode != 0
    docker("start", web)  # a new endpoint, published again
    assert from_router(router, 18210).strip() == hostname(web)
    assert dnat_through_portmap(address(docker, web, net)) == [18210]
    assert doctor(docker)[0] == 0

    for name in (web, ranged):
        docker("rm", "-f", name)
        docker.made["containers"].remove(name)
    assert portmap_rules() == [], "no CNI-DN-* chain, no CNI-HOSTPORT-DNAT jump left"
    assert localnet_guards(bridge) == [] and route_localnet(bridge) == "0", "route_localnet off with the last guard"
    docker("network", "rm", net)
    docker.made["networks"].remove(net)
    assert portmap_rules() == [] and localnet_guards(bridge) == []


def test_the_route_localnet_the_reference_portmap_sets_does_not_open_the_hosts_loopback_to_the_containers(
        docker, loopback_service, portmap_base_chains):  # noqa: F811
    """The reference portmap turns route_localnet on on the bridge (so the
    host's 127.0.0.1 reaches the published port) and has no guard of its own:
    a container routing 127.0.0.1 to its gateway would reach the services
    bound to the host's loopback (CVE-2020-8558). rancher-portmap's guard,
    put in place by the shim first, drops that in raw PREROUTING."""
    net = network(docker, "--subnet", "10.167.0.0/24", "-o", "portmap=reference")
    bridge = "rb-" + json.loads(docker("network", "inspect", net).stdout)[0]["Id"][:12]
    web = container(docker, net, "-p", "18220:80", command=WEB)
    assert wait_for_http("http://127.0.0.1:18220/").strip() == settings(docker, web, net)["Config"]["Hostname"]
    assert route_localnet(bridge) == "1"
    attacker = container(docker, net, "--cap-add", "NET_ADMIN", "--sysctl", "net.ipv4.conf.all.route_localnet=1",
                         "--sysctl", "net.ipv4.conf.eth0.route_localnet=1")
    # 127.0.0.1 routed to the gateway: the container's loopback address goes (a packet from an address of
    # its own would be dropped as martian), and it takes packets from 127.0.0.1 on eth0 (route_localnet)
    asked = docker("exec", attacker, "sh", "-c", "ip addr flush dev lo && ip route add 127.0.0.1/32 via 10.167.0.1 "
                   f"dev eth0 && echo -e 'GET / HTTP/1.0\\r\\n' | nc -w 3 127.0.0.1 {loopback_service}",
                   check=False)
    assert "loopback-only" not in asked.stdout, "a container reached a service bound to the host's 127.0.0.1"
    assert asked.returncode != 0, asked.stderr
    counters = run("iptables", "-w", "-t", "raw", "-L", "RANCHER-CNI-LOCALNET", "-v", "-x", "-n").stdout
    assert any(int(line.split()[0]) > 0 for line in counters.splitlines()[2:]), counters


def test_on_rancher_vxlan_the_port_answers_another_hosts_workload_and_the_underlay_cannot_reach_the_loopback(
        docker, other_host, loopback_service, portmap_base_chains):  # noqa: F811
    """rancher-vxlan with -o portmap=reference: the workload of the other
    host (a namespace behind the kernel's own VXLAN) reaches the published
    port at this host's gateway address over the VTEP; routing 127.0.0.1 to
    that gateway over the VTEP it does not reach the host's loopback
    services (the guard covers the bridge the VTEP is a port of); rm leaves
    no rule and route_localnet off."""
    gateway = "10.43.0.1"
    net = network(docker, "--subnet", "10.43.0.0/16", "--gateway", gateway, "--ip-range", "10.43.1.0/24",
                  "-o", "portmap=reference",
                  "-o", f"vtep_dev={other_host['underlay']}", "-o", "peers=10.98.0.2", driver="rancher-vxlan")
    bridge = "rv-" + json.loads(docker("network", "inspect", net).stdout)[0]["Id"][:12]
    web = container(docker, net, "-p", "18230:80", command=WEB)
    workload = other_host["workload"]
    deadline = time.monotonic() + 10
    while (done := ns_exec(workload, "curl", "-s", "--max-time", "3", f"http://{gateway}:18230/",
                           check=False)).returncode != 0:
        assert time.monotonic() < deadline, done.stderr
        time.sleep(0.2)
    assert done.stdout.strip() == settings(docker, web, net)["Config"]["Hostname"], "through the reference portmap"
    assert dnat_through_portmap(address(docker, web, net)) == [18230]
    assert route_localnet(bridge) == "1" and len(localnet_guards(bridge)) == 1

    for argv in (("ip", "route", "add", "127.0.0.1/32", "via", gateway, "dev", "eth0"),
                 ("sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1"),
                 ("sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1")):
        ns_exec(workload, *argv)
    asked = ns_exec(workload, "curl", "-s", "--max-time", "3", f"http://127.0.0.1:{loopback_service}/", check=False)
    assert "loopback-only" not in asked.stdout and asked.returncode != 0, "the underlay reached the host's loopback"
    counters = run("iptables", "-w", "-t", "raw", "-L", "RANCHER-CNI-LOCALNET", "-v", "-x", "-n").stdout
    assert any(int(line.split()[0]) > 0 for line in counters.splitlines()[2:]), counters

    docker("rm", "-f", web)
    docker.made["containers"].remove(web)
    assert portmap_rules() == [] and localnet_guards(bridge) == [] and route_localnet(bridge) == "0"
    docker("network", "rm", net)
    docker.made["networks"].remove(net)
    assert portmap_rules() == []


@pytest.mark.parametrize("args, message", [
    (("-o", "portmap=reference", "--internal"), "option portmap=reference cannot go with --internal"),
    (("-o", "portmap=reference", "-o", "cni.export=true"), "option portmap=reference cannot go with cni.export=true"),
    (("-o", "portmap=kube"), "option portmap='kube' is not one of: rancher, reference"),
], ids=["internal", "cni.export", "bad value"])
def test_portmap_reference_where_it_cannot_publish_fails_network_create_and_makes_nothing(docker, args, message):
    before = run("ip", "-o", "link", "show", "type", "bridge").stdout
    done = docker("network", "create", "-d", "rancher-bridge", "--subnet", "10.166.0.0/24", *args, "rcnitrefpm", check=False)
    assert done.returncode != 0 and message in done.stderr, done.stderr
    assert run("ip", "-o", "link", "show", "type", "bridge").stdout == before, "no bridge made"
    assert docker("network", "ls", "-q", "--filter", "name=rcnitrefpm").stdout.strip() == ""
