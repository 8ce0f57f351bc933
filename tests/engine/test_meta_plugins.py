"""The reference meta plug-ins chained after ours, driven by Docker: a
per-container rate limit through `bandwidth` (Debian's
containernetworking-plugins in /usr/lib/cni) on a rancher-bridge network."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import run
from tests.engine.helpers import address, container, network
from tests.engine.test_doctor import doctor

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(not os.access("/usr/lib/cni/bandwidth", os.X_OK), reason="containernetworking-plugins missing"),
    pytest.mark.skipif(shutil.which("iperf3") is None, reason="iperf3 missing"),
]

RATE = 20_000_000  # bits per second


def tbf_rates() -> list:
    """The rates (bits/s) of every tbf qdisc on the host's links."""
    return [q["options"]["rate"] * 8 for q in json.loads(run("tc", "-j", "qdisc", "show").stdout)
            if q.get("kind") == "tbf"]


def ifb_links() -> list:
    return [link["ifname"] for link in json.loads(run("ip", "-j", "link", "show", "type", "ifb").stdout)]


def throughput(sandbox: str, target: str, reverse: bool) -> float:
    """Mbit/s iperf3 measures from the host to the container (`reverse`: back)."""
    server = subprocess.Popen(["nsenter", f"--net={sandbox}", "iperf3", "-s", "-1", "-p", "5299"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        argv = ["iperf3", "-c", target, "-p", "5299", "-t", "5", "-O", "1", "-J"] + (["-R"] if reverse else [])
        report = json.loads(subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout)
        return report["end"]["sum_received"]["bits_per_second"] / 1e6
    finally:
        server.kill()
        server.wait()


def test_a_rate_limited_network_shapes_each_containers_traffic_both_ways_and_leaves_nothing(docker):
    net = network(docker, "--subnet", "10.146.0.0/24", "-o", "bandwidth.ingress_rate=20mbit",
                  "-o", "bandwidth.egress_rate=20mbit")
    before = ifb_links()
    a = container(docker, net)
    assert tbf_rates().count(RATE) == 2, "one token bucket on the host veth (to the container), one on its ifb (from it)"
    assert len(ifb_links()) == len(before) + 1
    sandbox = json.loads(docker("inspect", a).stdout)[0]["NetworkSettings"]["SandboxKey"]
    to_container, from_container = (throughput(sandbox, address(docker, a, net), reverse) for reverse in (False, True))
    print(f"iperf3 through bandwidth at 20 Mbit/s: to the container {to_container:.1f}, from it {from_container:.1f}")
    for measured in (to_container, from_container):
        assert 18.0 <= measured <= 22.0, f"{measured:.1f} Mbit/s is not within 10 % of the configured 20 Mbit/s"

    status = subprocess.run([sys.executable, "-m", "cnm_shim.cli", "status", "--state-dir",
                             str(docker.shim.state_dir)], capture_output=True, text=True, check=True).stdout
    assert "chain rancher-bridge -> bandwidth" in status, status
    code, report = doctor(docker)
    assert code == 0, report  # its CHECK runs the bandwidth plug-in's, which compares the qdiscs
    # behind Docker's back, the egress limit lowered to 5 Mbit/s
    run("tc", "qdisc", "replace", "dev", ifb_links()[-1], "root", "tbf", "rate", "5mbit", "burst", "32kb",
        "latency", "25ms")
    code, report = doctor(docker)
    assert code == 1 and [f["problem"] for f in report["findings"]] == ["CHECK: bandwidth: Rate doesn't match"], report

    docker("rm", "-f", a)
    assert tbf_rates().count(RATE) == 0 and ifb_links() == before, "the DEL took the qdiscs and the ifb with it"
