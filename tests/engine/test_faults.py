"""Faults under load: the plug-in killed with SIGKILL while 20 `docker run`s
are in flight, and dockerd restarted with live-restore. Whatever started works;
once everything is removed nothing is left (the `docker` fixture checks state,
IPAM, firewall rules, staging namespaces; leak_guard links and namespaces)."""

import json
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import unique
from tests.engine.dockerd import Dockerd
from tests.engine.helpers import address, can_ping, container, network
from tests.engine.test_restarts import wait_running

pytestmark = pytest.mark.engine
PARALLEL = 20


def running(docker, name) -> bool:
    done = docker("inspect", name, check=False)
    return done.returncode == 0 and json.loads(done.stdout)[0]["State"]["Running"]


@pytest.mark.parametrize("ipam", ["default", "rancher-bridge"])
def test_plugin_killed_during_20_parallel_runs(docker, ipam):
    net = network(docker, "--subnet", "10.150.0.0/24", "--ipam-driver", ipam)
    names = [unique("c") for _ in range(PARALLEL)]
    docker.made["containers"].extend(names)
    started = threading.Event()

    def run(name):
        started.set()
        return docker("run", "-d", "--name", name, "--network", net, docker.dockerd.image, "sleep", "600",
                      check=False)

    with ThreadPoolExecutor(PARALLEL) as pool:
        runs = [pool.submit(run, name) for name in names]
        started.wait()
        deadline = time.monotonic() + 10  # kill once some endpoints exist: mid-way through the burst
        while sum(kind == "endpoint" for kind, _ in docker.shim.state_entries()) < 3:
            assert time.monotonic() < deadline, docker.shim.log()
            time.sleep(0.02)
        docker.shim.kill9()
        time.sleep(1)
        docker.shim.start()  # within Docker's ~15 s of retries for a missing plug-in socket
        outcomes = [future.result() for future in runs]
    alive = [name for name in names if running(docker, name)]
    failed = [done.stderr.strip() for done in outcomes if done.returncode]
    assert alive, f"no container started: {failed[:3]}"
    probe = container(docker, net)
    unreachable = [name for name in alive if not can_ping(docker, probe, address(docker, name, net))]
    assert unreachable == [], f"{len(alive)} started ({len(failed)} failed: {failed[:2]})"


def test_live_restore_keeps_containers_connected(docker):
    """A second engine with live-restore, served by the same plug-in."""
    with Dockerd(daemon_config={"live-restore": True}) as engine:
        def cli(*args, check=True):
            done = engine.cli(*args)
            assert done.returncode == 0 or not check, f"docker {' '.join(args)}: {done.stderr}"
            return done
        cli.made, cli.dockerd = {"containers": [], "networks": []}, engine
        try:
            net = network(cli, "--subnet", "10.151.0.0/24")
            a, b = container(cli, net), container(cli, net)
            target = address(cli, b, net)
            pid = json.loads(cli("inspect", a).stdout)[0]["State"]["Pid"]
            engine.stop()  # live-restore: containers go on running without dockerd
            alone = subprocess.run(["nsenter", "-t", str(pid), "-n", "ping", "-c", "1", "-W", "2", target],
                                   capture_output=True, text=True)
            assert alone.returncode == 0, "connectivity while dockerd is down"
            engine.start()
            wait_running(cli, a)
            wait_running(cli, b)
            assert can_ping(cli, a, target), "connectivity kept across the daemon restart"
            c = container(cli, net)
            assert can_ping(cli, c, target), "the network still takes new containers"
        finally:
            for name in cli.made["containers"]:
                engine.cli("rm", "-f", name)
            for name in cli.made["networks"]:
                engine.cli("network", "rm", name)


def unit_file(name: str) -> dict:
    """KEY -> [values] of a systemd unit in packaging/systemd (all sections)."""
    values = {}
    path = os.path.join(os.path.dirname(__file__), "..", "..", "packaging", "systemd", name)
    for line in open(path):
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.strip().split("=", 1)
            values.setdefault(key, []).append(value)
    return values


@pytest.mark.parametrize("order", ["as the unit orders it", "plug-in 3 s after dockerd"])
def test_restart_policy_containers_come_back_whatever_starts_first(docker, order):
    unit = unit_file("rancher-cnm.service")
    assert "docker.service" in unit["Before"][0].split() and "docker.service" in unit["WantedBy"][0].split()
    gate = unit["ExecStartPost"][0].removeprefix("/bin/sh -c ").strip("'")
    net = network(docker, "--subnet", "10.152.0.0/24")
    a, b = container(docker, net, "--restart", "always"), container(docker, net, "--restart", "always")
    stopped = container(docker, net, "--restart", "unless-stopped")
    docker("stop", stopped)  # by its user: stays stopped, whoever starts first
    docker.dockerd.stop()  # the machine shuts down: docker.service first, then the plug-in
    docker.shim.stop()
    if order == "as the unit orders it":
        docker.shim.start()
        # the unit's start-up gate, for real: it returns once the driver's socket exists
        assert subprocess.run(["sh", "-c", gate], timeout=60).returncode == 0
        docker.dockerd.start()
    else:  # no ordering: Docker retries a missing plug-in socket for ~15 s
        docker.dockerd.start()
        time.sleep(3)
        docker.shim.start()
    wait_running(docker, a, timeout=60)
    wait_running(docker, b, timeout=60)
    assert can_ping(docker, a, address(docker, b, net))
    assert not running(docker, stopped)
