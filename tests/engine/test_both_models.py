"""One network, two models: Docker's containers (CNM) and containerd's
`ctr run --cni` containers (CNI) on the same bridge and the same pool."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from cni_backend import install
from tests.conftest import unique
from tests.engine.helpers import address, can_ping, container, network

pytestmark = pytest.mark.engine


def exported_conflist(docker, net) -> str:
    network_id = json.loads(docker("network", "inspect", net).stdout)[0]["Id"]
    state = json.loads(subprocess.run(
        [sys.executable, "-m", "cnm_shim.cli", "status", "--json", "--state-dir", str(docker.shim.state_dir)],
        capture_output=True, text=True, check=True).stdout)
    return next(n["exported"] for n in state["networks"] if n["id"] == network_id)


def ctr_container_on(docker, containerd, net, name: str = "c1") -> str:
    """A `ctr run --cni` container attached through the network's exported
    conflist (our executables, the shim's CNI daemon); its IPv4 address."""
    shutil.copy(exported_conflist(docker, net), os.path.join(containerd.cni_conf_dir, "00-rancher.conflist"))
    install.write_executables(containerd.cni_bin_dir)
    pid = containerd.run_cni(name, "sleep", "300", env=dict(os.environ, RANCHER_CNI_SOCKET=docker.shim.cni_socket))
    return subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-4", "-o", "addr", "show", "eth0"],
                          capture_output=True, text=True, check=True).stdout.split()[3].split("/")[0]


def test_a_docker_container_and_a_ctr_container_share_one_network(docker, containerd):
    net = network(docker, "--subnet", "10.143.0.0/24", "-o", "cni.export=true", "-o", f"cni.name={unique('cni')}")
    a = container(docker, net)
    ctr_ip = ctr_container_on(docker, containerd, net)
    docker_ip = address(docker, a, net)
    assert ctr_ip != docker_ip and ctr_ip.startswith("10.143.0.")
    assert can_ping(docker, a, ctr_ip)
    pinged = containerd.ctr("task", "exec", "--exec-id", "p1", "--fifo-dir", f"{containerd.root}/fifo",
                            "c1", "ping", "-c", "1", "-W", "2", docker_ip, check=False)
    assert pinged.returncode == 0, pinged.stdout + pinged.stderr
    containerd.stop("c1")
    assert [a for a in docker.shim.allocations() if a[1].startswith("rcnitest-")] == []


def test_an_address_held_by_a_cni_runtime_fails_docker_run_cleanly(docker, make_netns):
    net = network(docker, "--subnet", "10.144.0.0/24", "-o", "cni.export=true")
    exported = exported_conflist(docker, net)
    netns = make_netns()
    cli = [sys.executable, "-m", "cnm_shim.cli", "cni"]
    paths = ["--cni-path", str(docker.shim.bin), "--cache-dir", str(docker.shim.root / "cache")]
    env = dict(os.environ, RANCHER_CNI_SOCKET=docker.shim.cni_socket)
    subprocess.run(cli + ["add", exported, netns, "--args", "IP=10.144.0.5"] + paths, check=True, env=env,
                   capture_output=True)
    name = unique("c")
    docker.made["containers"].append(name)
    done = docker("run", "-d", "--name", name, "--network", net, "--ip", "10.144.0.5", docker.dockerd.image,
                  "sleep", "600", check=False)
    assert done.returncode != 0
    assert "10.144.0.5 is already in use" in done.stderr + docker("inspect", name, check=False).stdout
    subprocess.run(cli + ["del", exported, netns] + paths, check=True, env=env, capture_output=True)
