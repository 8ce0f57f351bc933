"""The Prometheus metrics of `cnm-shim serve` (cnm_shim/metrics.py) against a
real dockerd: scraped over the Unix socket while containers start and stop,
the counters and histograms must match the calls Docker made, summed over the
shim's several gunicorn workers, including workers that died in between."""

import concurrent.futures
import json
import os
import re
import signal
import time

import pytest

from cnm_shim import metrics
from tests.conftest import run, unique
from tests.engine.helpers import container, network
from tests.engine.test_docker_vxlan import other_host  # noqa: F401 (a fixture)

pytestmark = pytest.mark.engine

VERBS = ("NetworkDriver.CreateEndpoint", "NetworkDriver.Join", "NetworkDriver.Leave", "NetworkDriver.DeleteEndpoint",
         "NetworkDriver.CreateNetwork")


def samples(text: str) -> dict:
    """(name, frozenset of labels) -> value, for our metrics."""
    found = {}
    for line in text.splitlines():
        match = re.match(r"(cnm_\w+)\{(.*)\} (\S+)$", line)
        if match:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            found[(match.group(1), labels)] = float(match.group(3))
    return found


def calls(found: dict, verb: str, result: str) -> float:
    return found.get(("cnm_docker_calls_total", frozenset({("verb", verb), ("backend", "bridge"),
                                                           ("result", result)})), 0.0)


def observed(found: dict, verb: str) -> float:
    return found.get(("cnm_docker_call_seconds_count", frozenset({("verb", verb), ("backend", "bridge")})), 0.0)


def gauge(found: dict, name: str, **labels) -> float:
    return found[(name, frozenset(labels.items()))]


def ours_in_iptables() -> int:
    """The rules the engine fixture counts as ours when it checks for leftovers."""
    return sum(1 for r in run("iptables-save").stdout.splitlines()
               if r.startswith("-A ") and ("rcni" in r or "RANCHER-CNI" in r))


def workers(shim) -> list:
    """The gunicorn workers: the pids that left a multiprocess file, children of serve."""
    folder = shim.root / "run" / metrics.DIR_NAME
    pids = {int(m.group(1)) for m in (re.search(r"_(\d+)\.db$", n) for n in os.listdir(folder)) if m}
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        if ppid == shim.process.pid:
            alive.append(pid)
    return alive


def test_metrics_match_the_calls_across_workers_while_containers_start_and_stop(docker):
    shim = docker.shim
    sock = str(shim.root / "run" / metrics.SOCKET_NAME)
    deadline = time.monotonic() + 30
    while not os.path.exists(sock):
        assert time.monotonic() < deadline, shim.log()
        time.sleep(0.1)
    assert (os.stat(sock).st_mode & 0o777) == 0o660
    before = samples(metrics.scrape(sock))

    bad = docker("network", "create", "-d", "rancher-bridge", "--subnet", "10.141.0.0/24", "-o", "mtuu=1",
                 unique("n"), check=False)
    assert bad.returncode != 0
    net = network(docker, "--subnet", "10.141.0.0/24")
    net_id = json.loads(docker("network", "inspect", net).stdout)[0]["Id"]
    count = 6
    scrapes = []
    with concurrent.futures.ThreadPoolExecutor(count) as pool:  # several at once: several workers answer
        started = [pool.submit(container, docker, net) for _ in range(count)]
        while not all(f.done() for f in started):
            scrapes.append(samples(metrics.scrape(sock)))  # scraping while Docker calls
            time.sleep(0.1)
        names = [f.result() for f in started]
    running = samples(metrics.scrape(sock))
    assert calls(running, "NetworkDriver.Join", "ok") - calls(before, "NetworkDriver.Join", "ok") == count
    assert gauge(running, "cnm_endpoints", network=net_id[:12], driver="rancher-bridge") == count
    size = gauge(running, "cnm_ipam_pool_addresses", network=net_id[:12], pool="10.141.0.0/24", kind="size")
    used = gauge(running, "cnm_ipam_pool_addresses", network=net_id[:12], pool="10.141.0.0/24", kind="used")
    free = gauge(running, "cnm_ipam_pool_addresses", network=net_id[:12], pool="10.141.0.0/24", kind="free")
    assert size == 254 and used == count + 1 and free == size - used  # the containers and the gateway
    assert gauge(running, "cnm_firewall_rules", family="ipv4") == ours_in_iptables() > \
        gauge(before, "cnm_firewall_rules", family="ipv4")
    joins = [calls(s, "NetworkDriver.Join", "ok") for s in [before, *scrapes, running]]
    assert joins == sorted(joins), "a counter never goes back"

    # every worker that recorded so far dies; gunicorn starts new ones, and
    # the dead workers' counts must still be in the sum
    dead = workers(shim)
    assert dead, "no worker recorded a call"
    for pid in dead:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while set(workers(shim)) & set(dead) or not docker("network", "ls").returncode == 0:
        assert time.monotonic() < deadline
        time.sleep(0.2)

    for name in names:
        docker("rm", "-f", name)
    docker.made["containers"].clear()
    after = samples(metrics.scrape(sock))
    newcomers = set(workers(shim)) - set(dead)
    assert newcomers, "the stops were answered by workers started after the kill"
    for verb in ("NetworkDriver.CreateEndpoint", "NetworkDriver.Join", "NetworkDriver.Leave",
                 "NetworkDriver.DeleteEndpoint"):
        assert calls(after, verb, "ok") - calls(before, verb, "ok") == count, verb
        assert observed(after, verb) - observed(before, verb) == count, verb
        assert calls(after, verb, "error") == calls(before, verb, "error"), verb
    assert calls(after, "NetworkDriver.CreateNetwork", "error") - calls(before, "NetworkDriver.CreateNetwork",
                                                                        "error") == 1
    assert calls(after, "NetworkDriver.CreateNetwork", "ok") - calls(before, "NetworkDriver.CreateNetwork", "ok") == 1
    assert gauge(after, "cnm_endpoints", network=net_id[:12], driver="rancher-bridge") == 0
    assert gauge(after, "cnm_firewall_rules", family="ipv4") == ours_in_iptables() < \
        gauge(running, "cnm_firewall_rules", family="ipv4")
    bucket = [v for (n, labels), v in after.items() if n == "cnm_docker_call_seconds_bucket"
              and ("verb", "NetworkDriver.Join") in labels and ("le", "+Inf") in labels]
    assert bucket and bucket[0] == observed(after, "NetworkDriver.Join")


def test_the_drift_the_last_doctor_run_found_is_exported(docker):
    from tests.engine.test_doctor import doctor, endpoint_of, host_veth
    sock = str(docker.shim.root / "run" / metrics.SOCKET_NAME)
    net = network(docker, "--subnet", "10.142.0.0/24")
    a = container(docker, net)
    assert doctor(docker)[0] == 0
    found = samples(metrics.scrape(sock))
    assert gauge(found, "cnm_doctor_status", status="healthy") == 1
    assert gauge(found, "cnm_doctor_drift", kind="endpoint") == 0
    run("ip", "link", "del", host_veth(endpoint_of(docker, a, net)))
    assert doctor(docker)[0] == 1
    found = samples(metrics.scrape(sock))
    assert gauge(found, "cnm_doctor_status", status="drift") == 1
    assert gauge(found, "cnm_doctor_status", status="healthy") == 0
    assert gauge(found, "cnm_doctor_drift", kind="endpoint") == 1


def test_vxlan_peers_are_exported_and_the_networks_lock_goes_with_it(docker, other_host):
    from cni_backend import vxlannet
    from tests.engine.test_doctor import doctor
    sock = str(docker.shim.root / "run" / metrics.SOCKET_NAME)
    net = network(docker, "--subnet", "10.43.0.0/16", "--ip-range", "10.43.1.0/24",
                  "-o", f"vtep_dev={other_host['underlay']}", "-o", "peers=10.98.0.2", driver="rancher-vxlan")
    net_id = json.loads(docker("network", "inspect", net).stdout)[0]["Id"][:12]
    found = samples(metrics.scrape(sock))
    assert gauge(found, "cnm_vxlan_vtep_up", network=net_id) == 1
    assert gauge(found, "cnm_vxlan_flood_peers", network=net_id) == 1
    run("ip", "link", "del", "vtep1042")  # behind Docker's back
    assert gauge(samples(metrics.scrape(sock)), "cnm_vxlan_vtep_up", network=net_id) == 0
    assert doctor(docker, "--repair")[0] == 0
    assert gauge(samples(metrics.scrape(sock)), "cnm_vxlan_vtep_up", network=net_id) == 1

    lock = os.path.join(vxlannet.LOCK_DIR, "vxlan-1042.lock")
    assert os.path.exists(lock)
    docker("network", "rm", net)
    docker.made["networks"].remove(net)
    assert not os.path.exists(lock), "the network's lock file goes with the network"
