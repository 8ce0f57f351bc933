"""rancher-vxlan across three Docker hosts (the multi-host rig), with etcd."""

import concurrent.futures
import json
import os
import subprocess
import sys
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


def run_container(host, net, name, *options):
    done = host.docker("run", "-d", "--name", name, *options, "--network", net, host.dockerd.image, "sleep", "600")
    assert done.returncode == 0, done.stderr
    return address_of(host, name, net)


def address_of(host, name, net) -> str:
    return json.loads(host.docker("inspect", name).stdout)[0]["NetworkSettings"]["Networks"][net]["IPAddress"]


def wait_running(host, name, timeout: float) -> None:
    wait_until(lambda: json.loads(host.docker("inspect", name).stdout)[0]["State"]["Running"], timeout,
               f"{name} did not come back")


def remove(rig, net, containers) -> None:
    """The containers [(host, name)], then the network on every host."""
    for host, name in containers:
        host.docker("rm", "-f", name)
    for host in rig.hosts:
        host.docker("network", "rm", net)


def can_ping(host, container, address, timeout=15) -> bool:
    deadline = time.monotonic() + timeout  # the agents program the others' entries within a second or so
    while time.monotonic() < deadline:
        if host.docker("exec", container, "ping", "-c", "1", "-W", "1", address).returncode == 0:
            return True
    return False


def test_containers_on_three_hosts_reach_each_other(rig):
    net = create_network(rig)
    names = [unique("c") for _ in rig.hosts]
    addresses = [run_container(host, net, name) for host, name in zip(rig.hosts, names, strict=True)]
    assert len(set(addresses)) == 3
    for i, host in enumerate(rig.hosts):
        for j, address in enumerate(addresses):
            if i != j:
                assert can_ping(host, names[i], address), f"host {i + 1} -> host {j + 1}"
    remove(rig, net, zip(rig.hosts, names, strict=True))


def test_thirty_containers_started_at_once_on_three_hosts_get_distinct_addresses(rig):
    net = create_network(rig)
    jobs = [(host, unique("p")) for host in rig.hosts for _ in range(10)]
    with concurrent.futures.ThreadPoolExecutor(30) as pool:
        addresses = list(pool.map(lambda job: run_container(job[0], net, job[1]), jobs))
    assert len(set(addresses)) == 30
    remove(rig, net, jobs)


def vtep_fdb(host) -> str:
    return subprocess.run([*host.enter, "bridge", "fdb", "show", "dev", "vtep1042"],
                          capture_output=True, text=True).stdout


def wait_until(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


def test_a_dead_host_disappears_and_comes_back(rig):
    net = create_network(rig)
    a, b, c = rig.hosts
    names = {host: unique("r") for host in rig.hosts}
    for host, name in names.items():
        run_container(host, net, name, "--restart", "always")
    assert can_ping(a, names[a], address_of(c, names[c], net))
    c.kill_plugin()
    c.dockerd.kill()
    for survivor in (a, b):  # the agents' lease TTL is 3 s
        wait_until(lambda s=survivor: c.address not in vtep_fdb(s), 15, "host C's entries outlived its lease")
    c.start_plugin()
    c.dockerd.start()
    wait_running(c, names[c], 30)
    assert can_ping(a, names[a], address_of(c, names[c], net)), "host C rejoined"
    remove(rig, net, names.items())


def test_a_host_whose_plugin_starts_after_dockerd_gets_its_containers_back(rig):
    """The start order packaging/systemd/rancher-cnm.service prevents (the plug-in
    Before=docker.service), on one host of three after a crash: dockerd comes
    up first and fails its restart-policy container ("plugin not found"); the
    plug-in, once up, starts it, and it reaches the other hosts again."""
    net = create_network(rig)
    a, _, c = rig.hosts
    names = {host: unique("o") for host in (a, c)}
    for host, name in names.items():
        run_container(host, net, name, "--restart", "always")
    c.kill_plugin()
    c.dockerd.kill()
    c.dockerd.start()  # the wrong order: no plug-in yet
    time.sleep(3)
    c.start_plugin()
    wait_running(c, names[c], 60)
    assert can_ping(a, names[a], address_of(c, names[c], net)), "host C's container reaches host A again"
    remove(rig, net, names.items())


def test_a_cni_runtime_on_one_host_reaches_docker_on_another(rig):
    net = create_network(rig)
    a, b = rig.hosts[0], rig.hosts[1]
    name = unique("d")
    address_b = run_container(b, net, name)
    # on host A: the network's conflist, as `-o cni.export=true` would write it, driven by our invoke CLI
    state = json.loads(subprocess.run([*a.enter, sys.executable, "-m", "cnm_shim.cli", "status", "--json",
                                       "--state-dir", f"{a.root}/state"], capture_output=True, text=True).stdout)
    conf = next(n["conflist"] for n in state["networks"] if n["backend"] == "vxlan")
    conflist = os.path.join(a.root, "cni.conflist")
    with open(conflist, "w") as f:
        json.dump(conf, f)
    workload = f"rcnitwl{rig.tag}"
    subprocess.run([*a.enter, "ip", "netns", "add", workload], check=True)
    try:
        cli = [*a.enter, sys.executable, "-m", "cnm_shim.cli", "cni"]
        paths = ["--cni-path", f"{a.root}/bin", "--cache-dir", f"{a.root}/cache"]
        added = subprocess.run(cli + ["add", conflist, workload] + paths, capture_output=True, text=True)
        assert added.returncode == 0, added.stderr
        pinged = lambda: subprocess.run([*a.enter, "ip", "netns", "exec", workload, "ping", "-c", "1", "-W", "1",
                                         address_b], capture_output=True).returncode == 0  # noqa: E731
        wait_until(pinged, 15, "the CNI workload on host A never reached Docker's container on host B")
        subprocess.run(cli + ["del", conflist, workload] + paths, check=True, capture_output=True)
    finally:
        subprocess.run([*a.enter, "ip", "netns", "del", workload])
    remove(rig, net, [(b, name)])


def test_with_one_of_three_etcd_members_down_everything_keeps_working(rig):
    net = create_network(rig)
    a, b = rig.hosts[0], rig.hosts[1]
    first, second = unique("e"), unique("e")
    address_b = run_container(b, net, first)
    run_container(a, net, second)
    assert can_ping(a, second, address_b)
    rig.etcd.stop(rig.etcd.names[0])
    try:
        assert can_ping(a, second, address_b), "existing connectivity"
        third = unique("e")
        address_new = run_container(b, net, third)  # a new address, allocated through the other members
        assert address_new not in (address_b,)
        assert can_ping(a, second, address_new)
        b.docker("rm", "-f", third)
    finally:
        rig.etcd.start(rig.etcd.names[0])
        rig.etcd.wait_healthy(rig.etcd.names[0])
    remove(rig, net, [(b, first), (a, second)])
