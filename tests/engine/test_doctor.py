"""`cnm-shim doctor` against a running plug-in: healthy is exit 0; drift made
behind Docker's back (a host veth deleted, one of our iptables rules or jumps
removed, an IPAM allocation no endpoint owns) is reported with exit 1, and
--repair fixes what is ours to fix. The `docker` fixture's guards then check
that nothing is left, as after any other test."""

import json
import shlex
import subprocess
import sys

import pytest

from cni_backend.ipam.store import Allocation, open_store
from tests.conftest import run
from tests.engine.helpers import address, can_ping, container, network

pytestmark = pytest.mark.engine


def doctor(docker, *args):
    """(exit code, the JSON report) of `cnm-shim doctor` on the test's shim."""
    shim = docker.shim
    argv = [sys.executable, "-m", "cnm_shim.cli", "doctor", "--json", "--state-dir", str(shim.state_dir),
            "--run-dir", str(shim.root / "run"), "--ipam-data-dir", str(shim.ipam_dir),
            "--cni-path", f"{shim.bin}:/usr/lib/cni", "--runtime-cache-dir", str(shim.root / "no-runtime"), *args]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode in (0, 1), f"doctor could not check: {done.stdout} {done.stderr}"
    return done.returncode, json.loads(done.stdout)


def shim_state(docker) -> dict:
    done = subprocess.run([sys.executable, "-m", "cnm_shim.cli", "status", "--json",
                           "--state-dir", str(docker.shim.state_dir)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def endpoint_of(docker, name, net) -> dict:
    """The shim's endpoint record of container `name` (found by its address)."""
    ip = address(docker, name, net)
    return next(ep for ep in shim_state(docker)["endpoints"] if ep["address"].split("/")[0] == ip)


def host_veth(ep: dict) -> str:
    return next(i["name"] for i in ep["result"]["interfaces"] if i["name"].startswith("veth") and not i.get("sandbox"))


def rules_with(text: str) -> list:
    return [line for line in run("iptables-save").stdout.splitlines() if text in line]


def test_a_healthy_network_is_exit_0(docker):
    net = network(docker, "--subnet", "10.161.0.0/24")
    container(docker, net)
    container(docker, net)
    code, report = doctor(docker)
    assert (code, report["findings"]) == (0, []), report
    assert doctor(docker, "--repair") == (0, report), "--repair on a healthy host changes nothing"


def test_a_host_veth_deleted_behind_dockers_back_is_reported(docker):
    net = network(docker, "--subnet", "10.162.0.0/24")
    a, b = container(docker, net), container(docker, net)
    ep = endpoint_of(docker, a, net)
    run("ip", "link", "del", host_veth(ep))
    code, report = doctor(docker)
    assert code == 1, report
    [finding] = report["findings"]
    assert finding["kind"] == "endpoint" and finding["subject"].startswith(ep["endpoint_id"][:12])
    assert "CHECK" in finding["problem"], finding
    code, report = doctor(docker, "--repair")
    assert code == 1 and not report["findings"][0]["repaired"], "the container's inside is not the doctor's to fix"
    assert can_ping(docker, b, address(docker, b, net))


def test_a_removed_iptables_rule_is_reported_and_repair_restores_it(docker):
    net = network(docker, "--subnet", "10.163.0.0/24")
    a, b = container(docker, net), container(docker, net)
    ip_a = address(docker, a, net)
    [accept] = [r for r in rules_with(f"-s {ip_a}/32") if r.endswith("-j ACCEPT")]
    run("iptables", *shlex.split("-D" + accept[2:]))
    code, report = doctor(docker)
    assert code == 1, report
    [finding] = report["findings"]
    assert finding["kind"] == "endpoint" and "firewall rule" in finding["problem"], finding
    code, report = doctor(docker, "--repair")
    assert code == 0 and report["findings"][0]["repaired"], report
    assert accept in rules_with(f"-s {ip_a}/32")
    assert doctor(docker) == (0, {"status": "healthy", "exit": 0, "findings": [], "errors": []})
    assert can_ping(docker, a, address(docker, b, net))


def test_a_removed_forward_jump_is_reported_and_repair_puts_it_back(docker):
    net = network(docker, "--subnet", "10.164.0.0/24")
    container(docker, net)
    [jump] = [r for r in rules_with("-A FORWARD ") if r.endswith("-j RANCHER-CNI-FORWARD")]
    run("iptables", *shlex.split("-D" + jump[2:]))
    code, report = doctor(docker)
    assert code == 1, report
    [finding] = report["findings"]  # network-level: the attachments' own rules are all there
    assert finding["kind"] == "firewall" and "RANCHER-CNI-FORWARD" in finding["problem"], finding
    code, report = doctor(docker, "--repair")
    assert code == 0, report
    assert rules_with("-j RANCHER-CNI-FORWARD") == [jump]
    assert doctor(docker)[0] == 0


def test_an_orphan_ipam_allocation_is_reported_and_released_by_repair(docker):
    net = network(docker, "--subnet", "10.165.0.0/24")
    a = container(docker, net)
    store = open_store(str(docker.shim.ipam_dir))
    [held] = store.run(lambda txn: txn.all())
    orphan = Allocation(held.pool, "10.165.0.200", held.network, "rcnitorphan", "eth0")
    store.run(lambda txn: txn.add(orphan))
    code, report = doctor(docker)
    assert code == 1, report
    [finding] = report["findings"]
    assert finding["kind"] == "ipam" and finding["subject"].startswith("10.165.0.200"), finding
    code, report = doctor(docker, "--repair")
    assert code == 0 and report["findings"][0]["repaired"], report
    assert store.run(lambda txn: txn.all()) == [held], "only the orphan is released"
    assert address(docker, a, net) == held.ip
    assert doctor(docker)[0] == 0


def test_a_deleted_bridge_is_reported_and_repair_rebuilds_it(docker):
    net = network(docker, "--subnet", "10.166.0.0/24")
    a, b = container(docker, net), container(docker, net)
    bridge = "rb-" + json.loads(docker("network", "inspect", net).stdout)[0]["Id"][:12]
    run("ip", "link", "del", bridge)  # the containers' host veths survive, masterless
    code, report = doctor(docker)
    assert code == 1 and any(f["kind"] == "network" and bridge in f["problem"] + f["subject"]
                             for f in report["findings"]), report
    code, report = doctor(docker, "--repair")
    assert code == 0, report
    assert run("ip", "link", "show", bridge).returncode == 0
    assert can_ping(docker, a, address(docker, b, net)), "the ports are back on the rebuilt bridge"
    assert doctor(docker)[0] == 0


def test_a_stale_staging_namespace_is_reported_and_removed(docker):
    from cni_backend import staging
    path = docker.shim.root / "run" / "staging" / ("f" * 24)
    staging.create(str(path))  # what a worker killed between create and remove leaves
    code, report = doctor(docker)
    assert code == 1 and [f["kind"] for f in report["findings"]] == ["staging"], report
    code, report = doctor(docker, "--repair")
    assert code == 0 and not path.exists(), report
