"""`cnm-shim compare` against the engine layer's dockerd and shim: both models
measured, phases traced, the topology equal where the models should agree,
the chart written, and nothing left behind (the docker fixture's guards)."""

import json
import os
import subprocess
import sys

import pytest

from tests.engine.test_docker_conflist import host_local, reference_bridge, write_conflist  # noqa: F401 (fixture)

pytestmark = pytest.mark.engine

pytest.importorskip("matplotlib")

# Where Docker (CNM) and a CNI runtime legitimately differ, found by this tool and
# explained in docs/cnm-vs-cni.md: Docker disables IPv6 in its sandboxes and adds
# its default route without a protocol; a bare namespace has its loopback down.
EXPECTED_TO_DIFFER = ("ctr.lo.", "ctr.eth0.addresses", "ctr.routes-4", "ctr.routes-6")


def test_compare_reports_both_models_side_by_side(docker, tmp_path):
    shim = docker.shim
    out = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, "-m", "cnm_shim.cli", "compare", "--backend", "bridge", "-n", "2", "--iperf-seconds", "1",
         "--docker-host", f"unix://{docker.dockerd.socket}", "--cni-socket", shim.cni_socket,
         "--cni-path", str(shim.bin), "--cni-conf-dir", str(shim.export_dir), "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads((out / "report.json").read_text())

    assert set(figures["latency"]) == {"cnm", "ctr", "netns"}
    for model in ("cnm", "ctr", "netns"):
        for op in ("attach", "detach"):
            phases = figures["latency"][model][op]
            assert phases["total"]["p50"] > 0
            assert phases["plug-in"]["p50"] > 0 and phases["netlink"]["p50"] > 0, (model, op, phases)
    assert figures["latency"]["cnm"]["attach"]["docker->shim"]["p50"] > 0
    assert figures["calls"]["cnm"]["Docker -> plug-in: NetworkDriver.Join"] == 1
    assert figures["calls"]["netns"]["CNI executions (caller side)"] > 0
    assert figures["calls"]["ctr"]["plug-in runs (our plug-ins)"] > 0

    topology = figures["topology"]["per_model"]
    for key in ("ctr.eth0.mtu", "ctr.eth0.kind", "host.port.master", "host.port.mtu", "host.port.hairpin",
                "host.bridge.addresses", "host.firewall.added"):
        values = [json.dumps(topology[m].get(key)) for m in ("cnm", "ctr", "netns")]
        assert len(set(values)) == 1, (key, values)
    assert topology["cnm"]["host.firewall.added"], "no firewall rule seen for a container"
    unexpected = [key for key, _ in figures["topology"]["differences"] if not key.startswith(EXPECTED_TO_DIFFER)]
    assert unexpected == [], figures["topology"]["differences"]

    assert all(d["ping"]["loss_pct"] == 0 for d in figures["dataplane"]), figures["dataplane"]
    assert {d["pair"] for d in figures["dataplane"]} >= {"cnm -> ctr", "cnm -> netns"}
    report = (out / "report.md").read_text()
    assert "CNM: dockerd -> shim -> CNI" in report and "CNI: ctr run --cni" in report
    assert figures["command"] in report and figures["environment"]["kernel"] in report
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not os.access("/usr/lib/cni/bridge", os.X_OK), reason="containernetworking-plugins missing")
def test_compare_runs_on_a_conflist_we_did_not_write(docker, reference_bridge, tmp_path):
    """The reference bridge with host-local (one store for all three models),
    driven through Docker's rancher-conflist, `ctr run --cni` and bare
    namespaces: the models agree on what the conflist's plug-ins make."""
    write_conflist(docker, "rcmpref", [{"type": "bridge", "bridge": reference_bridge, "isGateway": True,
                                        "isDefaultGateway": True, "ipMasq": True, "ipam": host_local("10.250.7.0/24", tmp_path / "ipam")},
                                       {"type": "firewall", "backend": "iptables"}])  # Docker's FORWARD policy is DROP
    out = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, "-m", "cnm_shim.cli", "compare", "--backend", "conflist", "--conflist", "rcmpref",
         "-n", "2", "--iperf-seconds", "1", "--docker-host", f"unix://{docker.dockerd.socket}",
         "--cni-socket", docker.shim.cni_socket, "--cni-path", str(docker.shim.bin),
         "--cni-conf-dir", str(docker.shim.export_dir), "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads((out / "report.json").read_text())
    assert figures["network"]["subnet"] == "10.250.7.0/24"
    for model in ("cnm", "ctr", "netns"):
        assert figures["latency"][model]["attach"]["total"]["p50"] > 0
        assert all(ip.startswith("10.250.7.") for ip in figures["addresses"][model]), figures["addresses"]
    every = [ip for ips in figures["addresses"].values() for ip in ips]
    assert len(set(every)) == len(every), "one IPAM store: no address given twice"
    assert figures["calls"]["cnm"]["Docker -> plug-in: NetworkDriver.CreateEndpoint"] == 1
    topology = figures["topology"]["per_model"]
    for key in ("ctr.eth0.mtu", "ctr.eth0.kind", "host.port.master"):
        values = [json.dumps(topology[m].get(key)) for m in ("cnm", "ctr", "netns")]
        assert len(set(values)) == 1, (key, values)
    assert (topology["cnm"]["ctr.eth0.kind"], topology["cnm"]["host.port.master"]) == ("veth", reference_bridge)
    unexpected = [key for key, _ in figures["topology"]["differences"] if not key.startswith(EXPECTED_TO_DIFFER)]
    assert unexpected == [], figures["topology"]["differences"]
    assert all(d["ping"]["loss_pct"] == 0 for d in figures["dataplane"]), figures["dataplane"]
    assert "CNM vs CNI on the `conflist` backend" in (out / "report.md").read_text()
