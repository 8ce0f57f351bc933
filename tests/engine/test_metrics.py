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


def cni_calls(found: dict, command: str, result: str) -> dict:
    """plug-in type -> count of the CNI executions with this command and result."""
    return {dict(labels)["plugin"]: value for (name, labels), value in found.items()
            if name == "cnm_cni_calls_total" and ("command", command) in labels and ("result", result) in labels}


def cni_observed(found: dict, command: str) -> dict:
    return {dict(labels)["plugin"]: value for (name, labels), value in found.items()
            if name == "cnm_cni_call_seconds_count" and ("command", command) in labels}


def delta(after: dict, before: dict) -> dict:
    return {key: value - before.get(key, 0.0) for key, value in after.items() if value - before.get(key, 0.0)}


def plain(text: str, name: str) -> float:
    """A sample without labels."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in\n{text}")


def observed(found: dict, verb: str) -> float:
    return found.get(("cnm_docker_call_seconds_count", frozenset({("verb", verb), ("backend", "bridge")})), 0.0)


def gauge(found: dict, name: str, **labels) -> float:
    return found[(name, frozenset(labels.items()))]


def ours_in_iptables() -> int:
    """The rules the engine fixture counts as ours when it checks for leftovers."""
    return sum(1 for r in run("iptables-save").stdout.splitlines()
               if r.startswith("-A ") and ("rcni" in r or "RANCHER-CNI" in r))


def ours_in_nft() -> int:
    """Rules of our anti-spoofing table, read from nft's text listing with
    handles: a rule's line ends in its handle, a block's opening line in `{`
    before it (no flat network here, so no rancher_flat_* table)."""
    listing = run("nft", "-a", "list", "table", "bridge", "rancher_cni", check=False)
    if listing.returncode != 0:
        return 0  # no table: nothing of ours
    return sum(1 for line in listing.stdout.splitlines()
               if re.search(r"# handle \d+$", line) and not re.search(r"\{ # handle \d+$", line))


def workers(shim) -> list:
    """The gunicorn workers: the pids that left a multiprocess file, children
    of serve, but for the CNI daemon."""
    folder = shim.root / "run" / metrics.DIR_NAME
    pids = {int(m.group(1)) for m in (re.search(r"_(\d+)\.db$", n) for n in os.listdir(folder)) if m}
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                daemon = b"cni-server" in f.read()  # serve's CNI daemon records its workers too
        except (OSError, ValueError):
            continue
        if ppid == shim.process.pid and not daemon:
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
    # macspoofchk: each container gets its anti-spoofing chain in our nftables table
    net = network(docker, "--subnet", "10.141.0.0/24", "-o", "macspoofchk=true")
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
    assert gauge(running, "cnm_firewall_rules", family="nft") == ours_in_nft() >= \
        gauge(before, "cnm_firewall_rules", family="nft") + count  # a chain of rules for each container
    # one ADD of each plug-in of the network's list per container, none failed
    adds = delta(cni_calls(running, "ADD", "ok"), cni_calls(before, "ADD", "ok"))
    assert "rancher-bridge" in adds and set(adds.values()) == {count}, adds
    assert delta(cni_observed(running, "ADD"), cni_observed(before, "ADD")) == adds
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
    assert gauge(after, "cnm_firewall_rules", family="nft") == ours_in_nft() == \
        gauge(before, "cnm_firewall_rules", family="nft")
    # one DEL of each plug-in per container removed, the ADDs unchanged, no CNI error at all
    assert delta(cni_calls(after, "DEL", "ok"), cni_calls(before, "DEL", "ok")) == adds
    assert delta(cni_observed(after, "DEL"), cni_observed(before, "DEL")) == adds
    assert delta(cni_calls(after, "ADD", "ok"), cni_calls(before, "ADD", "ok")) == adds
    assert not any(cni_calls(after, command, "error") != cni_calls(before, command, "error")
                   for command in ("ADD", "DEL", "CHECK"))
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


def test_the_cni_daemons_workers_are_exported(docker):
    """The CNI daemon `serve` runs for CNI runtimes: its limit, its busy
    workers, and the calls it took, here one call of our executable as a
    runtime makes it."""
    shim = docker.shim
    sock = str(shim.root / "run" / metrics.SOCKET_NAME)
    text = metrics.scrape(sock)
    assert plain(text, "cnm_cni_daemon_workers_limit") == 16
    assert plain(text, "cnm_cni_daemon_workers_busy") == 0
    taken = plain(text, "cnm_cni_daemon_calls_total")
    env = dict(os.environ, CNI_COMMAND="VERSION", RANCHER_CNI_SOCKET=shim.cni_socket)
    done = run(str(shim.bin / "rancher-bridge"), input='{"cniVersion": "1.0.0"}', env=env)
    assert "supportedVersions" in done.stdout
    text = metrics.scrape(sock)
    assert plain(text, "cnm_cni_daemon_calls_total") == taken + 1
    deadline = time.monotonic() + 30
    while plain(text, "cnm_cni_daemon_workers_busy") != 0:  # its worker ends once it answered
        assert time.monotonic() < deadline, text
        time.sleep(0.1)
        text = metrics.scrape(sock)
