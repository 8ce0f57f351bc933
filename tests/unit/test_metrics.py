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


CNI_CALLS = """
import json, os, sys
from cni_backend import runtime
from cni_backend.errors import CNIError
from cnm_shim import metrics
runtime.set_observer(metrics.CALLS.observe_cni)
cni = runtime.CNI([sys.argv[1]], cache_dir=sys.argv[2])
good = {"cniVersion": "1.0.0", "name": "good", "plugins": [{"type": "okplug"}, {"type": "okplug"}]}
bad = {"cniVersion": "1.0.0", "name": "bad", "plugins": [{"type": "failplug"}]}
for n in range(int(sys.argv[3])):
    att = runtime.Attachment(f"c{n}", "/proc/self/ns/net")
    cni.add(good, json.dumps(good).encode(), att)
    cni.delete(good, json.dumps(good).encode(), runtime.Attachment(f"c{n}", "/proc/self/ns/net"))
    try:
        cni.add(bad, json.dumps(bad).encode(), runtime.Attachment(f"b{n}", "/proc/self/ns/net"))
    except CNIError:
        pass
"""
OKPLUG = """#!/bin/sh
cat >/dev/null
[ "$CNI_COMMAND" = ADD ] && echo '{"cniVersion": "1.0.0", "interfaces": [], "ips": []}'
exit 0
"""
FAILPLUG = """#!/bin/sh
cat >/dev/null
echo '{"cniVersion": "1.0.0", "code": 11, "msg": "no"}'
exit 1
"""


def test_every_cni_execution_is_counted_in_the_calling_process_by_command_plugin_and_result(tmp_path):
    """Plug-ins really executed: each execution counted once, with its
    result, summed over two calling processes (two workers)."""
    bin_dir, folder = tmp_path / "bin", tmp_path / "metrics"
    bin_dir.mkdir()
    folder.mkdir()
    for name, text in (("okplug", OKPLUG), ("failplug", FAILPLUG)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, **{metrics.ENV: str(folder)})
    for n in (2, 3):
        subprocess.run([sys.executable, "-c", CNI_CALLS, str(bin_dir), str(tmp_path / "cache"), str(n)], env=env,
                       check=True, timeout=120)
    text = metrics.exposition(str(folder), str(tmp_path / "state")).decode()
    assert _sample(text, "cnm_cni_calls_total", command="ADD", plugin="okplug", result="ok") == 10  # 2 a list
    assert _sample(text, "cnm_cni_calls_total", command="DEL", plugin="okplug", result="ok") == 10
    assert _sample(text, "cnm_cni_calls_total", command="ADD", plugin="failplug", result="error") == 5
    assert 'cnm_cni_calls_total{command="ADD",plugin="failplug",result="ok"}' not in text
    assert _sample(text, "cnm_cni_call_seconds_count", command="ADD", plugin="okplug") == 10
    assert _sample(text, "cnm_cni_call_seconds_bucket", command="DEL", plugin="okplug", le="+Inf") == 10
    assert sorted(os.listdir(folder)) == sorted(set(os.listdir(folder))) and len(os.listdir(folder)) == 4, \
        "one counter and one histogram file per calling process, none per call"


def test_the_cni_side_stays_free_of_the_metrics_library():
    """The executables' front and the runtime door never import prometheus_client:
    the shim hands them an observer instead."""
    done = subprocess.run([sys.executable, "-c", "import sys, cni_backend.front, cni_backend.runtime, "
                           "cni_backend.server; print('prometheus_client' in sys.modules)"],
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "False"


def test_owned_nft_rules_are_the_rules_of_our_tables_only():
    listing = {"nftables": [
        {"metainfo": {"json_schema_version": 1}},
        {"table": {"family": "bridge", "name": "rancher_cni"}},
        {"rule": {"family": "bridge", "table": "rancher_cni", "chain": "rcni1"}},
        {"rule": {"family": "bridge", "table": "rancher_cni", "chain": "rcni2"}},
        {"rule": {"family": "netdev", "table": "rancher_flat_ab12", "chain": "uplink"}},
        {"rule": {"family": "ip", "table": "rancher_flat_ab12", "chain": "x"}},  # another family: not ours
        {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD"}},
        {"rule": {"family": "bridge", "table": "rancher_cni_not", "chain": "x"}}]}
    assert metrics.owned_nft_rules(listing) == 3
    assert metrics.owned_nft_rules({}) == 0


@pytest.mark.parametrize("text", ["0.0.0.0:9614", "[::]:9614"])
def test_a_wildcard_listen_address_is_refused(text):
    with pytest.raises(SystemExit, match="name the address to listen on"):
        metrics.parse_listen(text)


def test_serve_takes_the_listen_address_from_the_plugins_setting(monkeypatch):
    from cnm_shim import cli
    monkeypatch.setenv(metrics.LISTEN_ENV, "127.0.0.1:9615")
    assert cli.build_parser().parse_args(["serve"]).metrics_listen == "127.0.0.1:9615"
    monkeypatch.setenv(metrics.LISTEN_ENV, "")
    assert cli.build_parser().parse_args(["serve"]).metrics_listen is None


def test_the_managed_plugin_declares_the_listen_setting_empty_by_default():
    import json
    import pathlib
    manifest = json.loads((pathlib.Path(__file__).resolve().parents[2] / "plugin.json").read_text())
    setting = [e for e in manifest["env"] if e["name"] == metrics.LISTEN_ENV]
    assert setting and setting[0]["value"] == "" and setting[0]["settable"] == ["value"]
    assert manifest["network"]["type"] == "host", "a listener on the host's loopback is the host's to scrape"
