"""`-p` on a conflist network (rancher-conflist) whose list chains the
reference `portmap` plug-in with the portMappings capability: Docker's
published ports, host ports allocated as on our backends (a fixed port, a
range, HostPort 0, conflicts in Docker's words), reach the container through
that portmap, and its rules (CNI-HOSTPORT-DNAT jumps, CNI-DN-* chains) go with
the container even after the conflist file is gone. Traffic only to the
test's own containers, from the sandbox's loopback (and for macvlan through
a macvlan of the test's own on the test's own parent)."""

import json
import os

import pytest

from tests.conftest import run, unique
from tests.engine.helpers import address, container, network
from tests.engine.test_docker_conflist import host_local, reference_bridge, router, write_conflist  # noqa: F401
from tests.engine.test_doctor import doctor
from tests.engine.test_published_ports import WEB, published, run_fails, settings
from tests.rigs import wait_for_http

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(not os.access("/usr/lib/cni/portmap", os.X_OK), reason="containernetworking-plugins missing"),
]
PORTMAP = {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}
TOP_CHAINS = ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-MASQ")


@pytest.fixture
def portmap_base_chains():
    """The reference portmap never removes its base chains (CNI-HOSTPORT-DNAT,
    -SETMARK, -MASQ, shared by every attachment of every runtime on the host,
    as the firewall plug-in's CNI-FORWARD): the test does, once it has checked
    that nothing of its own containers is left in them."""
    yield
    for rule in run("iptables-save", "-t", "nat").stdout.splitlines():
        if rule.startswith("-A ") and any(f"-j {chain}" in rule for chain in TOP_CHAINS):
            run("iptables", "-w", "-t", "nat", "-D", *rule.split()[1:], check=False)
    for chain in TOP_CHAINS:
        run("iptables", "-w", "-t", "nat", "-F", chain, check=False)
        run("iptables", "-w", "-t", "nat", "-X", chain, check=False)


@pytest.fixture
def macvlan_host(router):
    """The host's own macvlan on the macvlan parent (bridge mode): a parent
    never reaches its macvlans, a sibling does, so the host reaches the
    containers (and their published ports) through it."""
    run("ip", "link", "add", "rcnitmvh", "link", "rcnitmvp", "type", "macvlan", "mode", "bridge")
    run("ip", "addr", "add", "10.153.0.5/24", "dev", "rcnitmvh")
    run("ip", "link", "set", "rcnitmvh", "up")
    yield router
    run("ip", "link", "del", "rcnitmvh", check=False)


def portmap_rules() -> list:
    """Every line of the reference portmap's in the nat table but its base
    chains' own (their declarations, their jumps from the built-in chains and
    the generic mark / masquerade rules no attachment owns)."""
    generic = ("--set-xmark 0x2000/0x2000", "--mark 0x2000/0x2000 -j MASQUERADE")
    found = []
    for line in run("iptables-save", "-t", "nat").stdout.splitlines():
        if line.startswith(":CNI-DN-") or ("CNI-DN-" in line) or (
                line.startswith("-A CNI-HOSTPORT-") and not any(g in line for g in generic)):
            found.append(line)
    return found


def dnat_through_portmap(ip: str) -> list:
    """Host ports DNATed to `ip` by a CNI-DN-* chain (the reference portmap's)."""
    return sorted(int(r.split("--dport ")[1].split()[0]) for r in run("iptables-save", "-t", "nat").stdout.splitlines()
                  if r.startswith("-A CNI-DN-") and f"--to-destination {ip}:" in r and "--dport " in r)


def make_network(docker, kind: str, tmp_path, bridge: str) -> tuple:
    cni_name = unique(kind)
    if kind == "br":
        main = [{"type": "bridge", "bridge": bridge, "isGateway": True, "isDefaultGateway": True, "ipMasq": True,
                 "ipam": host_local("10.157.0.0/24", tmp_path)}, {"type": "firewall", "backend": "iptables"}]
        args = ["--subnet", "10.157.0.0/24"]
    elif kind == "ptp":
        main = [{"type": "ptp", "ipMasq": True,
                 "ipam": dict(host_local("10.158.0.0/24", tmp_path), routes=[{"dst": "0.0.0.0/0"}])}]
        args = ["--subnet", "10.158.0.0/24"]
    else:
        main = [{"type": "macvlan", "master": "rcnitmvp", "mode": "bridge",
                 "ipam": {"type": "static", "routes": [{"dst": "0.0.0.0/0", "gw": "10.153.0.1"}]}}]
        args = ["--subnet", "10.153.0.0/24", "--gateway", "10.153.0.1", "--aux-address", "host=10.153.0.5"]
    path = write_conflist(docker, cni_name, main + [PORTMAP])
    net = network(docker, *args, "-o", f"cni.conflist={cni_name}", driver="rancher-conflist")
    return net, path


@pytest.mark.parametrize("kind", ["br", "ptp", "mv"], ids=["bridge+host-local", "ptp+host-local", "macvlan+static"])
def test_published_ports_reach_the_container_through_the_conflists_portmap_and_leave_nothing(
        docker, kind, tmp_path, request, portmap_base_chains):
    bridge = request.getfixturevalue("reference_bridge") if kind == "br" else ""
    if kind == "mv":
        request.getfixturevalue("macvlan_host")
    net, path = make_network(docker, kind, tmp_path, bridge)
    hostname = lambda name: settings(docker, name, net)["Config"]["Hostname"]  # noqa: E731

    web = container(docker, net, "-p", "18120:80", command=WEB)
    assert wait_for_http("http://127.0.0.1:18120/").strip() == hostname(web)
    assert dnat_through_portmap(address(docker, web, net)) == [18120], "the conflist's portmap DNATs it"
    assert "RANCHER-CNI-HOSTPORT" not in run("iptables-save", "-t", "nat").stdout, "not rancher-portmap"
    entry = docker.shim.state_dir / "cni" / "results"
    cached = [json.loads(p.read_text()) for p in entry.iterdir()]
    assert [c["capabilityArgs"].get("portMappings") for c in cached] == [
        [{"hostPort": 18120, "containerPort": 80, "protocol": "tcp"}]], "the cache holds the mappings for DEL"

    err = run_fails(docker, net, "-p", "18120:80")
    assert "Bind for 0.0.0.0:18120 failed: port is already allocated" in err, err

    ranged = container(docker, net, "-p", "18120-18122:80", command=WEB)  # one free port of the range
    assert [p["HostPort"] for p in published(docker, ranged, net)] == [18121]
    assert dnat_through_portmap(address(docker, ranged, net)) == [18121]
    assert wait_for_http("http://127.0.0.1:18121/").strip() == hostname(ranged)

    ephemeral = container(docker, net, "-p", "80", command=WEB)  # HostPort 0
    port = published(docker, ephemeral, net)[0]["HostPort"]
    low, high = (int(v) for v in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    assert low <= port <= high and dnat_through_portmap(address(docker, ephemeral, net)) == [port]
    assert wait_for_http(f"http://127.0.0.1:{port}/").strip() == hostname(ephemeral)

    docker("stop", "-t", "1", web)  # RevokeExternalConnectivity, then DeleteEndpoint: the rules go
    assert not [r for r in portmap_rules() if "--dport 18120 " in r] and 18120 not in [
        p["hostPort"] for c in [json.loads(p.read_text()) for p in entry.iterdir()]
        for p in c["capabilityArgs"].get("portMappings", [])]
    docker("start", web)  # a new endpoint, published again
    assert wait_for_http("http://127.0.0.1:18120/").strip() == hostname(web)

    code, report = doctor(docker)
    assert code == 0, report  # the chain's CHECK, portmap's with the cached mappings
    web_chain = next(r.split()[1] for r in run("iptables-save", "-t", "nat").stdout.splitlines()
                     if r.startswith("-A CNI-DN-") and "--dport 18120 " in r)
    run("iptables", "-w", "-t", "nat", "-F", web_chain)  # the DNAT gone behind our back: portmap's CHECK says so
    code, report = doctor(docker)
    assert code == 1 and "portmap: could not check ipv4 dnat" in json.dumps(report), report

    os.unlink(path)  # the DELs run with the cached config, mappings included
    for name in (web, ranged, ephemeral):
        docker("rm", "-f", name)
        docker.made["containers"].remove(name)
    assert portmap_rules() == [], "no CNI-DN-* chain, no CNI-HOSTPORT-DNAT jump left"
    docker("network", "rm", net)
    docker.made["networks"].remove(net)
    assert portmap_rules() == []
    assert list(entry.iterdir()) == [], "no cached attachment left"
    again = container(docker, network(docker, "--subnet", "10.159.0.0/24"), "-p", "18120:80", command=WEB)
    assert wait_for_http("http://127.0.0.1:18120/").strip() == settings(docker, again, "")["Config"]["Hostname"], \
        "the host port was released with the container"


def test_a_conflist_without_portmap_that_rancher_portmap_cannot_serve_fails_docker_run_saying_what_to_add(
        docker, tmp_path):
    """No plug-in of the list declares portMappings: rancher-portmap publishes
    after it (the reference bridge: test_docker_conflist.py); where it cannot
    (a ptp veth, no bridge to guard), `docker run` says why and what to add to
    the conflist, and nothing is left."""
    cni_name = unique("ptp")
    write_conflist(docker, cni_name, [{"type": "ptp", "ipMasq": True,
                                       "ipam": dict(host_local("10.158.0.0/24", tmp_path), routes=[{"dst": "0.0.0.0/0"}])}])
    net = network(docker, "--subnet", "10.158.0.0/24", "-o", f"cni.conflist={cni_name}", driver="rancher-conflist")
    err = run_fails(docker, net, "-p", "18130:80")
    assert f"the conflist '{cni_name}' has no plug-in declaring the portMappings capability" in err, err
    assert '"capabilities": {"portMappings": true}' in err and "is a veth, not a bridge" in err, err
    assert "--dport 18130 " not in run("iptables-save", "-t", "nat").stdout
    assert [f for f in os.listdir(tmp_path / cni_name) if f.startswith("10.")] == [], "host-local released it"


def test_a_portmap_that_fails_at_publishing_fails_docker_run_with_its_message_and_leaves_nothing(
        docker, tmp_path, portmap_base_chains):
    """portmap runs with the mappings only at ProgramExternalConnectivity: its
    error (here an iptables match the kernel does not know) reaches `docker
    run`, what it made is deleted, and the host port is free again."""
    cni_name = unique("ptp")
    write_conflist(docker, cni_name, [{"type": "ptp", "ipMasq": True,
                                       "ipam": dict(host_local("10.158.0.0/24", tmp_path), routes=[{"dst": "0.0.0.0/0"}])},
                                      dict(PORTMAP, conditionsV4=["-m", "rcnitnosuchmatch"])])
    net = network(docker, "--subnet", "10.158.0.0/24", "-o", f"cni.conflist={cni_name}", driver="rancher-conflist")
    err = run_fails(docker, net, "-p", "18140:80")
    assert "rancher-conflist: publishing ports failed" in err and "portmap" in err and "rcnitnosuchmatch" in err, err
    assert portmap_rules() == [], "no CNI-DN-* chain, no CNI-HOSTPORT-DNAT jump left"
    assert [f for f in os.listdir(tmp_path / cni_name) if f.startswith("10.")] == [], "host-local released it"
    assert list((docker.shim.state_dir / "cni" / "results").iterdir()) == [], "no cached attachment left"
    again = container(docker, network(docker, "--subnet", "10.159.0.0/24"), "-p", "18140:80", command=WEB)
    assert wait_for_http("http://127.0.0.1:18140/").strip() == settings(docker, again, "")["Config"]["Hostname"], \
        "the host port was released"


def test_a_host_ip_of_a_family_the_container_lacks_is_refused_not_left_unpublished(docker, tmp_path):
    """portmap skips a mapping whose host address is IPv6 for an IPv4-only
    container without a word: `docker run` says so instead."""
    cni_name = unique("ptp")
    write_conflist(docker, cni_name, [{"type": "ptp", "ipMasq": True,
                                       "ipam": dict(host_local("10.158.0.0/24", tmp_path), routes=[{"dst": "0.0.0.0/0"}])},
                                      PORTMAP])
    net = network(docker, "--subnet", "10.158.0.0/24", "-o", f"cni.conflist={cni_name}", driver="rancher-conflist")
    err = run_fails(docker, net, "-p", "[::1]:18150:80")
    assert "cannot publish ::1:18150 to port 80/tcp: the container has IPv4 addresses" in err, err
    assert portmap_rules() == [] and [f for f in os.listdir(tmp_path / cni_name) if f.startswith("10.")] == []
