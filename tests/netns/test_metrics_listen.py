"""The metrics exporter listens on TCP only when asked (--metrics-listen), in
the sandbox's own network namespace: its loopback is the test's."""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from cnm_shim import metrics

pytestmark = pytest.mark.netns


def _exporter(tmp_path, *extra):
    folder = tmp_path / "metrics"
    folder.mkdir(exist_ok=True)
    sock = tmp_path / "metrics.sock"
    proc = subprocess.Popen([sys.executable, "-m", "cnm_shim.cli", "metrics-exporter", "--socket", str(sock),
                             "--dir", str(folder), "--state-dir", str(tmp_path / "state"), *extra],
                            env=dict(os.environ, **{metrics.ENV: str(folder)}))
    deadline = time.monotonic() + 30
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    return proc, str(sock)


def _tcp_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_tcp_only_with_metrics_listen(tmp_path):
    proc, sock = _exporter(tmp_path)
    try:
        assert "cnm_endpoints" in metrics.scrape(sock)
        assert not _tcp_open(9614), "no TCP listener unless asked"
    finally:
        proc.terminate()
        proc.wait(30)
    proc, sock = _exporter(tmp_path, "--listen", "127.0.0.1:9614")
    try:
        deadline = time.monotonic() + 30
        while not _tcp_open(9614):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        with urllib.request.urlopen("http://127.0.0.1:9614/metrics", timeout=10) as answer:
            assert answer.status == 200 and "text/plain" in answer.headers["Content-Type"]
            assert "cnm_endpoints" in answer.read().decode()
    finally:
        proc.terminate()
        proc.wait(30)
