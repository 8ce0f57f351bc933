"""Engine-layer fixtures: a private dockerd (tests/engine/dockerd.py) and our
shim serving it from /run/docker/plugins, where dockerd looks for plug-ins."""

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from cni_backend import install
from cnm_shim.app import DRIVERS
from tests.conftest import host_state, ipam_rows, run
from tests.engine.dockerd import Dockerd
from tests.engine.helpers import post_unix, wait_for_teardowns
from tests.isolation import require_sandbox
from tests.processes import long_lived, process_tree
from tests.interop.containerd import Containerd

PLUGIN_DIR = "/run/docker/plugins"
DRIVER = "rancher-bridge"


class Shim:
    """`cnm-shim serve` with its state in a temp dir; can be killed and restarted."""

    def __init__(self, root, plugin_dir=PLUGIN_DIR, docker_host="", cni_socket=None, log_level="DEBUG"):
        require_sandbox("the test plug-in (cnm-shim serve on /run/docker/plugins)")
        self.root = root
        self.bin = root / "bin"
        install.write_executables(str(self.bin))
        self.plugin_dir = plugin_dir
        self.socket = os.path.join(plugin_dir, f"{DRIVER}.sock")
        self.cni_socket = cni_socket or str(root / "cni.sock")
        self.export_dir = root / "net.d"
        self.ipam_dir = root / "ipam"
        self.state_dir = root / "state"
        self.docker_host = docker_host  # the engine whose stranded containers serve() restarts; none until set
        self.log_level = log_level  # DEBUG for the tests' logs; a benchmark runs at the default, INFO
        self.process = None
        self.start()

    def start(self):
        argv = [sys.executable, "-m", "cnm_shim.cli", "serve", "--plugin-dir", self.plugin_dir,
                "--state-dir", str(self.state_dir), "--run-dir", str(self.root / "run"),
                "--ipam-data-dir", str(self.ipam_dir), "--cni-conf-dir", str(self.export_dir),
                "--cni-socket", self.cni_socket, "--cni-path", f"{self.bin}:/usr/lib/cni", "--workers", "3",
                "--docker-host", self.docker_host]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(self.root / "shim.log", "a"),
                                        start_new_session=True, env=dict(os.environ, CNM_SHIM_LOG_LEVEL=self.log_level))
        long_lived(self.process.pid)  # restarted by tests, stopped by its fixture
        deadline = time.monotonic() + 30
        while not (self._listener_is_ours() and self._answers() and os.path.exists(self.cni_socket)):
            assert self.process.poll() is None and time.monotonic() < deadline, self.log()
            time.sleep(0.05)

    def _listener_is_ours(self) -> bool:
        """The socket file is the one this process listens on, not a killed
        server's, which its dying workers may still answer on: the peer
        credentials of a Unix connection are those of the process that called
        listen() (serve claims its sockets itself, cnm_shim.listeners)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(5)
                probe.connect(self.socket)
                creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            return False
        return struct.unpack("3i", creds)[0] == self.process.pid

    def _answers(self) -> bool:
        """Served by a worker of this process, not just a socket file (a killed
        server's may still be there until the new one takes it over)."""
        try:
            return post_unix(self.socket, "Plugin.Activate", timeout=5)[0] == 200
        except OSError:
            return False

    def sockets(self) -> list:
        """Every socket file this shim made: one per driver, and the CNI daemon's."""
        return [os.path.join(self.plugin_dir, f"{name}.sock") for name in DRIVERS] + [self.cni_socket]

    def log(self) -> str:
        return (self.root / "shim.log").read_text()[-4000:]

    def kill9(self, remove_sockets=True):
        """What a crash looks like: every process of the shim gets SIGKILL (its
        group, and its children's groups). The socket files stay, as after a
        real crash, unless `remove_sockets`."""
        tree = process_tree(self.process.pid)
        os.killpg(self.process.pid, signal.SIGKILL)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()
        for path in self.sockets() if remove_sockets else ():
            if os.path.exists(path):
                os.unlink(path)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill9()
        for path in self.sockets():
            if os.path.exists(path):
                os.unlink(path)

    def settled(self) -> None:
        """Once no endpoint teardown runs (helpers.wait_for_teardowns)."""
        wait_for_teardowns(self.state_dir)

    def allocations(self):
        self.settled()
        return ipam_rows(self.ipam_dir, "network, container_id, ip")

    def endpoints(self) -> list:
        """The endpoint records in the shim's state, once no teardown runs."""
        self.settled()
        import json
        import sqlite3
        with sqlite3.connect(self.state_dir / "state.db") as db:
            return [json.loads(v) for (v,) in db.execute("SELECT value FROM objects WHERE kind = 'endpoint'")]

    def state_entries(self):
        self.settled()
        import sqlite3
        with sqlite3.connect(self.state_dir / "state.db") as db:
            return db.execute("SELECT kind, key FROM objects WHERE kind != 'pool'").fetchall()


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if os.path.exists(os.path.join(PLUGIN_DIR, f"{DRIVER}.sock")):
        pytest.fail(f"{PLUGIN_DIR}/{DRIVER}.sock exists: another {DRIVER} plug-in runs on this machine")
    before = host_state()
    root = tmp_path_factory.mktemp("engine")
    shim = Shim(root)
    dockerd = Dockerd()
    dockerd.after_cli = shim.settled  # what a `docker rm` tore down is gone when the test looks
    shim.docker_host = f"unix://{dockerd.socket}"
    yield dockerd, shim
    dockerd.close()
    shim.stop()
    after = host_state()
    leaked = {k: sorted(set(after[k]) - set(before[k])) for k in after if set(after[k]) - set(before[k])}
    assert not leaked, f"the engine tests left state behind: {leaked}"


@pytest.fixture
def docker(engine, leak_guard):
    """A docker CLI for one test; removes what the test made and checks nothing is left."""
    dockerd, shim = engine
    made = {"containers": [], "networks": []}

    def cli(*args, check=True):
        done = dockerd.cli(*args)
        if check:
            assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr}"
        return done

    cli.made = made
    cli.dockerd, cli.shim = dockerd, shim
    yield cli
    for name in made["containers"]:
        dockerd.cli("rm", "-f", name)
    for name in made["networks"]:
        dockerd.cli("network", "rm", name)
    assert shim.state_entries() == [], "shim state entries left behind"
    ours = [r for tool in ("iptables-save", "ip6tables-save") for r in run(tool).stdout.splitlines()
            if "rcni" in r or "RANCHER-CNI" in r]
    assert ours == [], "firewall rules left behind"
    assert shim.allocations() == [], "IPAM entries left behind"
    assert not os.listdir(shim.root / "run" / "staging") if (shim.root / "run" / "staging").exists() else True


@pytest.fixture
def containerd():
    """A private containerd, for `ctr run --cni` next to Docker's containers."""
    if shutil.which("containerd") is None:
        pytest.skip("containerd is not installed")
    ctrd = Containerd()
    yield ctrd
    ctrd.close()
