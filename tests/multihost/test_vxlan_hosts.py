"""rancher-vxlan across three Docker hosts (the multi-host rig), with etcd."""

import concurrent.futures
import json
import time

import pytest

from tests.conftest import unique
from tests.multihost.rig import Rig

pytestmark = pytest.mark.multihost


@pytest.fixture(scope="module")
def rig():
    rig = Rig(3)
    yield rig
    rig.close()


def create_network(rig):
    name = unique("vx")
    for host in rig.hosts:
        done = host.docker("network", "create", "-d", "rancher-vxlan", "--subnet", "10.42.0.0/16",
                           "--ipam-driver", "rancher-vxlan", "-o", "vtep_dev=ul", name)
        assert done.returncode == 0, done.stderr
    return name


def run_container(host, net, name):
    done = host.docker("run", "-d", "--name", name, "--network", net, host.dockerd.image, "sleep", "600")
    assert done.returncode == 0, done.stderr
    return json.loads(host.docker("inspect", name).stdout)[0]["NetworkSettings"]["Networks"][net]["IPAddress"]


def can_ping(host, container, address, timeout=15) -> bool:
    deadline = time.monotonic() + timeout  # the agents program the others' entries within a second or so
    while time.monotonic() < deadline:
        if host.docker("exec", container, "ping", "-c", "1", "-W", "1", address).returncode == 0:
            return True
    return False


def test_containers_on_three_hosts_reach_each_other(rig):
    net = create_network(rig)
    names = [unique("c") for _ in rig.hosts]
    addresses = [run_container(host, net, name) for host, name in zip(rig.hosts, names)]
    assert len(set(addresses)) == 3
    for i, host in enumerate(rig.hosts):
        for j, address in enumerate(addresses):
            if i != j:
                assert can_ping(host, names[i], address), f"host {i + 1} -> host {j + 1}"
    for host, name in zip(rig.hosts, names):
        host.docker("rm", "-f", name)
    for host in rig.hosts:
        host.docker("network", "rm", net)


def test_thirty_containers_started_at_once_on_three_hosts_get_distinct_addresses(rig):
    net = create_network(rig)
    jobs = [(host, unique("p")) for host in rig.hosts for _ in range(10)]
    with concurrent.futures.ThreadPoolExecutor(30) as pool:
        addresses = list(pool.map(lambda job: run_container(job[0], net, job[1]), jobs))
    assert len(set(addresses)) == 30
    for host, name in jobs:
        host.docker("rm", "-f", name)
    for host in rig.hosts:
        host.docker("network", "rm", net)
