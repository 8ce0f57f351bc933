"""Docker-in-Docker nodes install the managed plug-in from a local registry
and their containers reach each other across nodes, over rancher-vxlan and
over a rancher-flat network sharing one upstream, and over rancher-ipsec
(each node's charon inside the plug-in)."""

import secrets
import subprocess
import sys
import time

import pytest

from tests import packets
from tests.conftest import host_state
from tests.engine.helpers import address, can_ping, container, network
from tests.engine.managed import build_bundle
from tests.multihost.dind import AGENT_VNI, PLUGIN, UPSTREAM, DindCluster

pytestmark = pytest.mark.multihost
NODES = 2


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    before = host_state()
    work = tmp_path_factory.mktemp("dind")
    cluster = DindCluster(NODES, build_bundle(work / "bundle"), work)
    yield cluster
    cluster.close()
    after = host_state()
    assert {k: sorted(set(after[k]) - set(before[k])) for k in after if set(after[k]) - set(before[k])} == {}


def test_vxlan_connects_containers_on_different_nodes(cluster):
    for index, node in enumerate(cluster.nodes):
        peers = ",".join(cluster.underlay_ip(other) for other in range(NODES) if other != index)
        network(node, "--subnet", "10.61.0.0/24", "--ip-range", f"10.61.0.{64 + 32 * index}/27",
                "-o", "backend=vxlan", "-o", f"peers={peers}", "-o", "vtep_dev=eth0", name="vx", driver=PLUGIN)
    first, second = cluster.node(0), cluster.node(1)
    a, b = container(first, "vx"), container(second, "vx")
    assert can_ping(first, a, address(second, b, "vx"))
    assert "mtu 1450" in first("exec", a, "ip", "link", "show", "eth0").stdout, "underlay MTU less 50"


def test_vxlan_with_etcd_global_addresses_and_the_plugins_registry_agent(cluster):
    """No peers, no ranges: the addresses come from one pool in etcd, and the
    plug-ins' agents tell each node where the other's containers are."""
    for node in cluster.nodes:
        network(node, "--subnet", "10.62.0.0/24", "--ipam-driver", PLUGIN, "-o", "backend=vxlan",
                "-o", f"vni={AGENT_VNI}", "-o", "vtep_dev=eth0", name="vxe", driver=PLUGIN)
    first, second = cluster.node(0), cluster.node(1)
    a, b = container(first, "vxe"), container(second, "vxe")
    target = address(second, b, "vxe")
    assert address(first, a, "vxe") != target, "one pool across nodes"
    deadline = time.monotonic() + 15  # the agents poll etcd about every second
    while not can_ping(first, a, target):
        assert time.monotonic() < deadline, "the registry never connected the nodes"


def test_flat_networks_on_two_nodes_share_the_upstream(cluster):
    for index, node in enumerate(cluster.nodes):
        network(node, "--subnet", f"{UPSTREAM}.0/24", "--gateway", f"{UPSTREAM}.1",
                "--ip-range", f"{UPSTREAM}.{64 + 32 * index}/27", "-o", "backend=flat", "-o", "parent=eth1",
                name="flat", driver=PLUGIN)
    first, second = cluster.node(0), cluster.node(1)
    a, b = container(first, "flat"), container(second, "flat")
    assert can_ping(first, a, address(second, b, "flat")), "across nodes, no NAT, no port mapping"
    assert can_ping(second, b, f"{UPSTREAM}.1"), "the upstream router answers"


# -- rancher-ipsec through the managed plug-in ---------------------------------

IPSEC_SUBNET = "10.63.0.0/16"
# the key file as the plug-in reads it: under its ipam-state mount (the node's
# /var/lib/rancher-cni, the same path inside the plug-in), the same on both nodes
IPSEC_KEY = "/var/lib/rancher-cni/ipsec.psk"


def ipsec_args(index: int, *gateway) -> list:
    peer = DindCluster.underlay_ip(1 - index)
    return ["--ipam-driver", PLUGIN, "--subnet", IPSEC_SUBNET, "--ip-range", f"10.63.{index + 1}.0/24", *gateway,
            "-o", "backend=ipsec", "-o", f"peers={peer}", "-o", f"ipsec.psk_file={IPSEC_KEY}"]


def what_ipsec_leaves(node) -> dict:
    """What of the ipsec backend is on the node: links, table 220, the guard's
    rules, charon, network records."""
    return {"links": [line for line in node.run("ip", "-o", "link", "show").stdout.splitlines()
                      if "ipsec0" in line or ": ri-" in line],
            "table 220": node.run("ip", "route", "show", "table", "220", check=False).stdout.split(),  # or none
            "guard": [line for line in node.run("iptables", "-S", "INPUT").stdout.splitlines() if "4500" in line],
            # a live charon; an exited one its parent has not reaped yet holds nothing
            "charon": [line for line in node.run("ps", "-e", "-o", "pid=,ppid=,stat=,comm=").stdout.splitlines()
                       if line.split()[3:] == ["charon"] and not line.split()[2].startswith("Z")],
            "records": node.run("sh", "-c", "ls /var/lib/rancher-cni/ipsec/networks 2>/dev/null; true").stdout.split()}


def test_ipsec_through_the_managed_plugin_connects_containers_on_different_nodes(cluster):
    """-o backend=ipsec on the plug-in (alias serving bridge): its charon in
    each node, the key file under the ipam-state mount; the containers reach
    each other through the tunnel, and removal leaves nothing."""
    key = secrets.token_hex(24)
    for node in cluster.nodes:
        node.run("sh", "-c", f"umask 077; cat > {IPSEC_KEY}", stdin=key)
    first, second = cluster.node(0), cluster.node(1)
    # the plug-in's IPAM serves bridge by default and put the gateway at the
    # subnet's first address: refused, with the --gateway to give
    done = first("network", "create", "-d", PLUGIN, *ipsec_args(0), "ips", check=False)
    assert done.returncode != 0 and "give --gateway 10.63.1.1" in done.stderr, done.stderr
    assert what_ipsec_leaves(first) == {"links": [], "table 220": [], "guard": [], "charon": [], "records": []}
    for index, node in enumerate(cluster.nodes):
        network(node, *ipsec_args(index, "--gateway", f"10.63.{index + 1}.1"), name="ips", driver=PLUGIN)
    a, b = container(first, "ips"), container(second, "ips")
    target = address(second, b, "ips")
    assert target.startswith("10.63.2."), "the second node's block"
    deadline = time.monotonic() + 60  # the first IKE exchange, then the CHILD_SA
    while not can_ping(first, a, target):
        assert time.monotonic() < deadline, "the tunnel never carried the ping: " + first.run(
            "sh", "-c", "cat /var/lib/rancher-cni/ipsec/charon/charon.log | tail -30", check=False).stdout
    assert can_ping(second, b, address(first, a, "ips")), "and back"
    routes = first.run("ip", "route", "show", "table", "220").stdout
    assert "10.63.2.0/24" in routes and "ipsec0" in routes, f"the plug-in's charon routes the other block: {routes}"
    assert "mtu 1400" in first("exec", a, "ip", "link", "show", "eth0").stdout, "kernel-libipsec's ipsec0 takes 1400"

    marker = b"\xa5" * 32  # busybox ping fills its payload with one byte (-p)
    capture = subprocess.Popen(["nsenter", "-t", str(second.pid()), "-n", sys.executable, "-c", packets._CAPTURE,
                                "eth0", "4"], stdout=subprocess.PIPE, text=True)
    assert capture.stdout.readline().strip() == "ready"
    first("exec", a, "ping", "-c", "3", "-i", "0.3", "-s", "200", "-p", "a5", target)
    out, _ = capture.communicate(timeout=20)
    nodes = {bytes(map(int, DindCluster.underlay_ip(i).split("."))) for i in range(NODES)}
    between = [f for f in (bytes.fromhex(line) for line in out.split())
               if f[12:14] == b"\x08\x00" and {f[26:30], f[30:34]} == nodes]
    assert len(between) >= 6, "the pings and their answers crossed between the nodes"
    for frame in between:
        ports = {int.from_bytes(frame[34:36], "big"), int.from_bytes(frame[36:38], "big")}
        assert frame[23] == 17 and ports <= {500, 4500}, f"only IKE and ESP in UDP: {frame[:40].hex()}"
    assert not packets.carrying(between, marker), "no payload in plain text"
    assert not [f for f in between if bytes(map(int, target.split("."))) in f[14:]], "no container address outside"
    assert key not in first("network", "inspect", "ips").stdout, "the key file's path, never the key"

    # charon lives in the plug-in's container: restarting the plug-in (as an
    # upgrade does) takes it away; the plug-in's ipsec agent starts it again
    # with the network's tunnels, and the running containers use them
    first("plugin", "disable", "-f", PLUGIN)
    assert what_ipsec_leaves(first)["charon"] == [], "charon went with the plug-in"
    first("plugin", "enable", PLUGIN)
    deadline = time.monotonic() + 60
    while not can_ping(first, a, target):
        assert time.monotonic() < deadline, "the tunnel never came back after the plug-in restarted"
    assert len(what_ipsec_leaves(first)["charon"]) == 1, "one charon again"
    # kill -9 of the other node's charon: the agent there brings it back
    killed = what_ipsec_leaves(second)["charon"]
    assert len(killed) == 1, killed
    second.run("kill", "-9", killed[0].split()[0])
    deadline = time.monotonic() + 60
    while not can_ping(second, b, address(first, a, "ips")):
        assert time.monotonic() < deadline, "the tunnel never came back after charon was killed"
    assert [line.split()[0] for line in what_ipsec_leaves(second)["charon"]] not in ([], [killed[0].split()[0]])

    for node in cluster.nodes:
        node("rm", "-f", *node.made["containers"])
        node.made["containers"].clear()
        node("network", "rm", "ips")
        node.made["networks"].remove("ips")
    for node in cluster.nodes:
        assert what_ipsec_leaves(node) == {"links": [], "table 220": [], "guard": [], "charon": [], "records": []}, \
            node.run("ps", "-e", "-o", "pid,ppid,stat,comm,args").stdout


def test_ipsec_through_the_managed_plugin_with_its_key_and_peers_from_etcd(cluster):
    """The nodes' plug-ins have etcd (RANCHER_ETCD_ENDPOINTS): -o backend=ipsec
    with no key file and no peers, on the alias serving bridge; one key made
    in etcd, the nodes find each other through the plug-ins' ipsec registry."""
    for index, node in enumerate(cluster.nodes):
        network(node, "--ipam-driver", PLUGIN, "--subnet", "10.64.0.0/16", "--ip-range", f"10.64.{index + 1}.0/24",
                "--gateway", f"10.64.{index + 1}.1", "-o", "backend=ipsec",
                "-o", f"underlay={DindCluster.underlay_ip(index)}", name="ipe", driver=PLUGIN)
    first, second = cluster.node(0), cluster.node(1)
    keys = [node.run("sh", "-c", "cat /var/lib/rancher-cni/ipsec/keys/*.psk").stdout for node in cluster.nodes]
    assert keys[0] == keys[1] and len(keys[0].strip()) == 44, "one key, from etcd, in each plug-in's state"
    a, b = container(first, "ipe"), container(second, "ipe")
    target = address(second, b, "ipe")
    deadline = time.monotonic() + 60  # the registries' leases, then IKE
    while not can_ping(first, a, target):
        assert time.monotonic() < deadline, "the plug-ins never found each other through etcd: " + first.run(
            "sh", "-c", "tail -20 /var/lib/rancher-cni/ipsec/charon/charon.log", check=False).stdout
    assert can_ping(second, b, address(first, a, "ipe")), "and back"
    assert keys[0].strip() not in first("network", "inspect", "ipe").stdout
    for node in cluster.nodes:
        node("rm", "-f", *node.made["containers"])
        node.made["containers"].clear()
        node("network", "rm", "ipe")
        node.made["networks"].remove("ipe")
    for node in cluster.nodes:
        assert what_ipsec_leaves(node) == {"links": [], "table 220": [], "guard": [], "charon": [], "records": []}, \
            node.run("ps", "-e", "-o", "pid,ppid,stat,comm,args").stdout
        assert node.run("sh", "-c", "ls /var/lib/rancher-cni/ipsec/keys/ 2>/dev/null; true").stdout == "", \
            "the key's copy goes with the node's last network using it"
