"""The metrics of cnm_shim/metrics.py: labels, pool arithmetic, the listen
address, and the multiprocess sum over several processes (as gunicorn's
workers record their calls), served and scraped over a Unix socket."""

import os
import subprocess
import sys
import time

import pytest

from cnm_shim import metrics


def test_a_verb_label_is_one_of_dockers_verbs_or_other():
    assert metrics.verb_of("/NetworkDriver.Join") == "NetworkDriver.Join"
    assert metrics.verb_of("/IpamDriver.RequestAddress") == "IpamDriver.RequestAddress"
    assert metrics.verb_of("/../../etc/passwd") == "other" and metrics.verb_of("/x" * 50) == "other"


def test_pool_use_counts_the_range_the_endpoints_and_the_gateway():
    conflist = {"plugins": [{"type": "rancher-bridge", "ipam": {"type": "rancher-ipam", "ranges": [
        [{"subnet": "10.22.0.0/24", "gateway": "10.22.0.1"}],
        [{"subnet": "10.23.0.0/16", "rangeStart": "10.23.1.0", "rangeEnd": "10.23.1.255", "gateway": "10.23.0.1"}],
        [{"subnet": "fd00:22::/120"}]]}}, {"type": "rancher-portmap"}]}
    found = metrics.pool_use(conflist, ["10.22.0.2/24", "10.22.0.3/24", "10.23.1.7/16", "10.23.9.9/16",
                                        "fd00:22::5/120", ""])
    assert found == [("10.22.0.0/24", 254, 3), ("10.23.0.0/16", 256, 1), ("fd00:22::/120", 256, 1)]
    assert metrics.pool_use({"plugins": [{"type": "x"}]}, ["10.0.0.1/24"]) == []


@pytest.mark.parametrize("text, expected", [("127.0.0.1:9614", ("127.0.0.1", 9614)), ("[::1]:9614", ("::1", 9614))])
def test_a_listen_address_is_an_ip_and_a_port(text, expected):
    assert metrics.parse_listen(text) == expected


@pytest.mark.parametrize("text", ["9614", "localhost:9614", "127.0.0.1:0", "127.0.0.1:70000", "127.0.0.1:x", ""])
def test_a_bad_listen_address_is_refused_with_what_is_valid(text):
    with pytest.raises(SystemExit, match="an IP address and a port, e.g. 127.0.0.1:9614"):
        metrics.parse_listen(text)


RECORD = """
import os, sys
from cnm_shim import metrics
for i in range(int(sys.argv[1])):
    metrics.CALLS.observe("NetworkDriver.Join", "bridge", i % 3 != 0, 0.02)
metrics.CALLS.observe("IpamDriver.RequestAddress", "vxlan", True, 2.0)
"""


def _sample(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in\n{text}")


def test_counts_of_several_processes_are_summed_and_served_on_a_unix_socket(tmp_path):
    folder = str(tmp_path / "metrics")
    os.makedirs(folder)
    # PATH holds no iptables-save: a unit test does not read the host's own rules
    env = dict(os.environ, PATH=os.path.dirname(sys.executable), **{metrics.ENV: folder})
    for n in (30, 60, 90):  # three "workers", one after another: each leaves its own file
        subprocess.run([sys.executable, "-c", RECORD, str(n)], env=env, check=True, timeout=60)
    sock = str(tmp_path / "metrics.sock")
    exporter = subprocess.Popen([sys.executable, "-m", "cnm_shim.cli", "metrics-exporter", "--socket", sock,
                                 "--dir", folder, "--state-dir", str(tmp_path / "state")], env=env)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            assert exporter.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert (os.stat(sock).st_mode & 0o777) == 0o660
        shown = subprocess.run([sys.executable, "-m", "cnm_shim.cli", "metrics", "--socket", sock],
                               capture_output=True, text=True, timeout=60)
    finally:
        exporter.terminate()
        exporter.wait(30)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    ok = sum(1 for n in (30, 60, 90) for i in range(n) if i % 3 != 0)
    assert _sample(text, "cnm_docker_calls_total", verb="NetworkDriver.Join", result="ok") == ok
    assert _sample(text, "cnm_docker_calls_total", verb="NetworkDriver.Join", result="error") == 180 - ok
    assert _sample(text, "cnm_docker_call_seconds_count", verb="NetworkDriver.Join") == 180
    assert _sample(text, "cnm_docker_call_seconds_bucket", verb="NetworkDriver.Join", le="0.025") == 180
    assert _sample(text, "cnm_docker_call_seconds_bucket", verb="IpamDriver.RequestAddress", le="1.0") == 0
    assert _sample(text, "cnm_docker_call_seconds_bucket", verb="IpamDriver.RequestAddress", le="2.5") == 3
    assert not os.path.exists(sock), "the exporter removes its socket as it stops"


def test_metrics_without_a_server_says_what_to_start(tmp_path):
    done = subprocess.run([sys.executable, "-m", "cnm_shim.cli", "metrics", "--socket", str(tmp_path / "none.sock")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "is cnm-shim serve running" in done.stderr and "Traceback" not in done.stderr


def test_the_last_doctor_run_is_exported(tmp_path):
    folder = tmp_path / "metrics"
    folder.mkdir()
    text = metrics.exposition(str(folder), str(tmp_path / "state")).decode()
    assert "cnm_doctor_last_run_timestamp_seconds" not in text, "nothing before the first run"
    metrics.record_doctor(str(tmp_path), "drift", ["endpoint", "endpoint", "firewall"])
    text = metrics.exposition(str(folder), str(tmp_path / "state")).decode()
    assert 0 < time.time() - _sample_plain(text, "cnm_doctor_last_run_timestamp_seconds") < 600
    assert _sample(text, "cnm_doctor_status", status="drift") == 1
    assert _sample(text, "cnm_doctor_status", status="healthy") == 0
    assert _sample(text, "cnm_doctor_drift", kind="endpoint") == 2
    assert _sample(text, "cnm_doctor_drift", kind="firewall") == 1
    assert _sample(text, "cnm_doctor_drift", kind="ipam") == 0
    (tmp_path / metrics.DOCTOR_RECORD).write_text("{not json")
    assert "cnm_doctor" not in metrics.exposition(str(folder), str(tmp_path / "state")).decode(), "a broken record: nothing"


def _sample_plain(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in\n{text}")


def test_owned_rules_are_our_chains_rules_and_our_jumps():
    save = "\n".join([
        "*filter", ":FORWARD DROP [0:0]", ":RANCHER-CNI-FORWARD - [0:0]", ":rcni-a1b2c3 - [0:0]",
        "-A FORWARD -m comment --comment rancher-cni -j RANCHER-CNI-FORWARD",
        "-A FORWARD -j DOCKER-USER",
        "-A RANCHER-CNI-FORWARD -o rb-1 -j ACCEPT",
        "-A rcni-a1b2c3 -s 10.0.0.2/32 -j ACCEPT",
        # an attachment's own chain and its jump (iptables.ATTACHMENT_PREFIX)
        "-A RANCHER-CNI-FORWARD -m comment --comment rcni-1-2-bridge -j RCNI-0123456789abcdef0123",
        "-A RCNI-0123456789abcdef0123 -s 10.0.0.3/32 -m comment --comment rcni-1-2-bridge -j ACCEPT",
        "-A DOCKER -d 172.17.0.2/32 -j ACCEPT", "COMMIT"])
    assert metrics.owned_rules(save) == 5
    assert metrics.owned_rules("") == 0


def test_peer_samples_from_a_vxlan_and_an_ipsec_data_path():
    vxlan = {"network": "a" * 64, "vtep": {"state": "up", "flood_peers": ["10.0.0.2", "10.0.0.3"]}}
    assert metrics.peer_samples(vxlan) == [("cnm_vxlan_vtep_up", ("a" * 12,), 1),
                                           ("cnm_vxlan_flood_peers", ("a" * 12,), 2)]
    assert metrics.peer_samples({"network": "b", "vtep": {"state": "up, not on rv-1", "flood_peers": []}})[0][2] == 0
    ipsec = {"network": "c" * 64, "ipsec": {"charon_pid": 42, "peers": {
        "10.0.0.9": {"ike_sa": "ESTABLISHED", "child_sa": "INSTALLED"},
        "10.0.0.8": {"ike_sa": "CONNECTING", "child_sa": None}}}}
    assert metrics.peer_samples(ipsec) == [("cnm_ipsec_charon_running", ("c" * 12,), 1),
                                           ("cnm_ipsec_peer_up", ("c" * 12, "10.0.0.8"), 0),
                                           ("cnm_ipsec_peer_up", ("c" * 12, "10.0.0.9"), 1)]
    assert metrics.peer_samples({"network": "d", "path": "unknown", "summary": "cannot tell"}) == []
