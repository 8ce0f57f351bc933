"""`cnm-shim compare`'s reports (cnm_shim/compare/report.py) with and without
the chart library: matplotlib is in the `compare` extra only, so the install
`make run` makes has no chart, and the reports must still be written."""

import json
import sys

from cnm_shim.compare import report

FIGURES = {
    "backend": "bridge", "containers": 2, "started": "2026-11-30T18:00:00", "command": "cnm-shim compare -n 2",
    "network": {"docker_name": "rcmp", "subnet": "10.99.0.0/24"},
    "environment": {"kernel": "6.1.0-test"},
    "latency": {m: {op: {"total": report.stats([1.0, 2.0])} for op in ("attach", "detach")}
                for m in ("cnm", "ctr", "netns")},
    "calls": {"cnm": {"Docker -> plug-in: NetworkDriver.Join": 1}},
    "topology": {"per_model": {"cnm": {"ctr.eth0.mtu": 1500}}, "differences": []},
    "dataplane": [{"pair": "cnm -> ctr", "ping": {"rtt_avg_ms": 0.05, "loss_pct": 0}, "iperf3": {"gbit_s": 9.5}}],
}


def test_without_matplotlib_the_markdown_and_json_reports_are_written_and_say_why_no_chart(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError, as on a plain install
    written = report.write(FIGURES, str(tmp_path))
    assert sorted(written) == ["report.json", "report.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md"]
    assert json.loads((tmp_path / "report.json").read_text())["backend"] == "bridge"
    text = (tmp_path / "report.md").read_text()
    assert "chart.png)" not in text  # no link to a picture that is not there
    assert "matplotlib is not installed" in text and "rancher-cnm-cni[compare]" in text


def test_with_matplotlib_the_chart_is_drawn_and_linked(tmp_path):
    written = report.write(FIGURES, str(tmp_path))
    assert sorted(written) == ["chart.png", "report.json", "report.md"]
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![latency](chart.png)" in (tmp_path / "report.md").read_text()
