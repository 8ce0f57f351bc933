"""Our plug-ins and our runtime-side caller, against third-party ones:
containerd's `ctr run --cni` drives rancher-bridge, and `cnm-shim cni` drives
the reference bridge + host-local plug-ins."""

import json
import os
import subprocess
import sys

import pytest

from cni_backend import install
from tests.conftest import ping, run, unique
from tests.interop.containerd import Containerd

pytestmark = pytest.mark.interop


def cli(env, *argv):
    """`cnm-shim cni ...` as a user runs it."""
    done = subprocess.run([sys.executable, "-m", "cnm_shim.cli", "cni", *argv,
                           "--conf-dir", str(env.conf_dir), "--cache-dir", str(env.cache),
                           "--cni-path", str(env.bin)], capture_output=True, text=True, env=env.env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.strip() else None


def as_conflist(config: dict, version="1.0.0") -> dict:
    plugin = {k: v for k, v in config.items() if k not in ("cniVersion", "name")}
    return {"cniVersion": version, "name": config["name"], "plugins": [plugin]}


def eth0_address(netns_path: str) -> str:
    out = run("nsenter", f"--net={netns_path}", "ip", "-4", "-o", "addr", "show", "eth0").stdout
    return out.split()[3].split("/")[0]


REFERENCE_FIREWALL_CHAINS = ("CNI-FORWARD", "CNI-ADMIN")


def filter_chains() -> set:
    return {line[1:].split()[0] for line in run("iptables-save", "-t", "filter").stdout.splitlines()
            if line.startswith(":")}


@pytest.fixture
def reference_firewall_chains():
    """The reference firewall plug-in leaves its chains after the last DEL;
    the ones it made here are removed again."""
    before = filter_chains()
    yield
    made = filter_chains() - before
    for chain in REFERENCE_FIREWALL_CHAINS:
        if chain in made:
            run("iptables", "-w", "-D", "FORWARD", "-m", "comment", "--comment", "CNI firewall plugin rules",
                "-j", chain, check=False)
            run("iptables", "-w", "-F", chain)
            run("iptables", "-w", "-X", chain)


def test_invoke_cli_drives_the_reference_bridge_and_host_local(cni_daemon_env, make_netns, docker_host_firewall,
                                                               reference_firewall_chains):
    """On a host firewalled as Docker leaves it (FORWARD DROP, bridged frames
    through iptables) the reference bridge needs the reference firewall plug-in
    chained after it, as on any Docker host: a three-plug-in chain."""
    if not os.path.exists("/usr/lib/cni/bridge"):
        pytest.skip("Debian's containernetworking-plugins is not installed")
    env = cni_daemon_env
    bridge = unique("br")
    env.bridges.append(bridge)
    name = unique("ref")
    host_local = env.root / "host-local"
    conf = {"cniVersion": "1.0.0", "name": name, "plugins": [
        {"type": "bridge", "bridge": bridge, "isGateway": True,
         "ipam": {"type": "host-local", "subnet": "10.125.0.0/24", "dataDir": str(host_local)}},
        {"type": "firewall", "backend": "iptables"}]}
    (env.conf_dir / f"10-{name}.conflist").write_text(json.dumps(conf))
    a, b = make_netns(), make_netns()
    ra = cli(env, "add", name, a)
    rb = cli(env, "add", name, b)
    assert ping(a, rb["ips"][0]["address"].split("/")[0])
    cli(env, "check", name, a)
    assert len(os.listdir(host_local / name)) >= 3  # two addresses + host-local's cursor file
    for netns in (a, b):
        cli(env, "del", name, netns)
        cli(env, "del", name, netns)  # a second DEL is fine too
    leftover = [f for f in os.listdir(host_local / name) if not f.startswith(("last_reserved", "lock"))]
    assert leftover == [] and ra["ips"] != rb["ips"]
    assert os.listdir(env.cache / "results") == []
    forward = run("iptables-save", "-t", "filter").stdout
    assert not [line for line in forward.splitlines() if line.startswith("-A CNI-") and "10.125.0." in line]


@pytest.fixture
def containerd():
    if subprocess.run(["which", "containerd"], capture_output=True).returncode:
        pytest.skip("containerd is not installed")
    ctrd = Containerd()
    yield ctrd
    ctrd.close()


def test_ctr_run_cni_container_and_an_invoke_namespace_share_one_network(cni_daemon_env, make_netns, containerd):
    env = cni_daemon_env
    config = env.bridge_config(subnet="10.126.0.0/24")
    conflist = json.dumps(as_conflist(config))
    (env.conf_dir / f"10-{config['name']}.conflist").write_text(conflist)
    with open(os.path.join(containerd.cni_conf_dir, "10-rancher.conflist"), "w") as f:
        f.write(conflist)
    install.write_executables(containerd.cni_bin_dir)

    pid = containerd.run_cni("c1", "sleep", "300", env=env.env)
    container_ip = eth0_address(f"/proc/{pid}/ns/net")
    netns = make_netns()
    result = cli(env, "add", config["name"], netns, "--container-id", "ns1")
    netns_ip = result["ips"][0]["address"].split("/")[0]
    assert container_ip != netns_ip
    assert {a[1] for a in env.allocations()} == {"rcnitest-c1", "ns1"}  # one pool for both runtimes

    from_container = containerd.ctr("task", "exec", "--exec-id", "ping1", "--fifo-dir", f"{containerd.root}/fifo",
                                    "c1", "ping", "-c", "1", "-W", "2", netns_ip, check=False)
    assert from_container.returncode == 0, from_container.stdout + from_container.stderr
    assert ping(netns, container_ip)

    containerd.stop("c1")  # ctr runs CNI DEL through our executable
    assert [a[1] for a in env.allocations()] == ["ns1"]
    cli(env, "del", config["name"], netns, "--container-id", "ns1")
