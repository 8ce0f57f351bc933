"""Docker-in-Docker nodes install the managed plug-in from a local registry
and their containers reach each other across nodes, over rancher-vxlan and
over a rancher-flat network sharing one upstream."""

import time

import pytest

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
