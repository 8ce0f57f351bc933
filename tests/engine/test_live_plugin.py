"""A plug-in serving the machine's Docker (what `make run` starts) is never
touched by the tests and benchmarks run next to it: they live in sandboxes
of their own (tests/sandbox.sh), with their own /run/docker/plugins, state,
CNI config and firewall. Here the "machine" is this test's sandbox: a
dockerd and `cnm-shim serve` with make run's defaults serving a container
with a published port; a benchmark harness and an engine test run beside
them, each in a sandbox, as make bench and make test start them."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from cni_backend import install
from cnm_shim.app import DRIVERS
from tests.conftest import ROOT, run
from tests.engine.dockerd import Dockerd
from tests.isolation import require_sandbox

pytestmark = pytest.mark.engine

PLUGIN_SOCKET = "/run/docker/plugins/rancher-bridge.sock"
DEFAULT_STATE = ("/var/lib/rancher-cnm", "/var/lib/rancher-cni", "/run/rancher-cnm")
CNI_DAEMON_SOCKET = "/run/rancher-cni/cni.sock"


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(self.path)


def activate(path: str) -> dict:
    conn = UnixHTTPConnection(path)
    conn.request("POST", "/Plugin.Activate", body=b"")
    return json.loads(conn.getresponse().read())


def in_a_sandbox(*argv, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(ROOT, "tests", "sandbox.sh"), *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def live_plugin(tmp_path, leak_guard):
    """`cnm-shim serve` as make run starts it (default sockets, state and CNI
    daemon socket); only the CNI executables come from a temp dir."""
    require_sandbox("this test")  # it uses the default paths, private only in here
    for path in (PLUGIN_SOCKET, CNI_DAEMON_SOCKET, "/var/lib/rancher-cnm/state.db"):
        assert not os.path.exists(path), f"{path} exists: the sandbox is not fresh"
    install.write_executables(str(tmp_path / "bin"))
    serve = subprocess.Popen([sys.executable, "-m", "cnm_shim.cli", "serve", "--cni-path", f"{tmp_path / 'bin'}"],
                             stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "w"), start_new_session=True)
    deadline = time.monotonic() + 30
    while not os.path.exists(PLUGIN_SOCKET):
        assert serve.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
        time.sleep(0.05)
    yield serve
    os.killpg(serve.pid, signal.SIGTERM)
    try:
        serve.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(serve.pid, signal.SIGKILL)
        serve.wait()
    for directory in DEFAULT_STATE:  # private tmpfs of this sandbox: emptied for the tests after us
        if os.path.isdir(directory):
            run("find", directory, "-mindepth", "1", "-delete", check=False)
    for path in (*(f"/run/docker/plugins/{d}.sock" for d in DRIVERS), CNI_DAEMON_SOCKET):
        if os.path.exists(path):
            os.unlink(path)


def test_benchmarks_and_engine_tests_beside_a_running_plugin_leave_it_alone(live_plugin, tmp_path):
    dockerd = Dockerd()
    try:
        assert dockerd.cli("network", "create", "-d", "rancher-bridge", "--subnet", "10.197.0.0/24",
                           "rcnitlive").returncode == 0
        started = dockerd.cli("run", "-d", "--name", "rcnitlive1", "--network", "rcnitlive", "-p", "18081:80",
                              dockerd.image, "sleep", "600")
        assert started.returncode == 0, started.stderr
        socket_before = os.stat(PLUGIN_SOCKET).st_ino

        bench = in_a_sandbox(sys.executable, "bench/flat_throughput.py", "--rounds", "1", "--seconds", "1")
        assert bench.returncode == 0, bench.stdout[-2000:] + bench.stderr[-3000:]
        engine_test = in_a_sandbox(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                   "tests/engine/test_docker_bridge.py::test_two_containers_ping_by_ip_and_by_name")
        assert engine_test.returncode == 0, engine_test.stdout[-3000:]

        # the same socket, still answering; the container still on the network
        assert os.stat(PLUGIN_SOCKET).st_ino == socket_before
        assert "NetworkDriver" in activate(PLUGIN_SOCKET)["Implements"]
        info = json.loads(dockerd.cli("inspect", "rcnitlive1").stdout)[0]
        assert info["State"]["Running"]
        address = info["NetworkSettings"]["Networks"]["rcnitlive"]["IPAddress"]
        assert run("ping", "-c", "1", "-W", "2", address, check=False).returncode == 0
        # and it still serves Docker: a new container joins and reaches the first
        again = dockerd.cli("run", "--rm", "--network", "rcnitlive", dockerd.image, "ping", "-c", "1", "-W", "2",
                            address)
        assert again.returncode == 0, again.stderr
    finally:
        dockerd.cli("rm", "-f", "rcnitlive1")
        dockerd.cli("network", "rm", "rcnitlive")
        dockerd.close()
