"""etcd members for tests (Debian's etcd-server), on loopback ports, data in a
temp dir; a cluster of one or three; members can be stopped and started."""

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EtcdCluster:
    def __init__(self, members: int = 1):
        if shutil.which("etcd") is None:
            raise RuntimeError("etcd is not installed (Debian package etcd-server)")
        self.root = tempfile.mkdtemp(prefix="rcnit-etcd.")
        self.names = [f"m{i}" for i in range(members)]
        self.client_ports = {n: _free_port() for n in self.names}
        self.peer_ports = {n: _free_port() for n in self.names}
        self.processes = {}
        for name in self.names:
            self.start(name)
        for name in self.names:
            self.wait_healthy(name)

    @property
    def endpoints(self) -> list:
        return [f"http://127.0.0.1:{self.client_ports[n]}" for n in self.names]

    def start(self, name: str) -> None:
        initial = ",".join(f"{n}=http://127.0.0.1:{self.peer_ports[n]}" for n in self.names)
        argv = ["etcd", "--name", name, "--data-dir", os.path.join(self.root, name),
                "--listen-client-urls", f"http://127.0.0.1:{self.client_ports[name]}",
                "--advertise-client-urls", f"http://127.0.0.1:{self.client_ports[name]}",
                "--listen-peer-urls", f"http://127.0.0.1:{self.peer_ports[name]}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_ports[name]}",
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--log-level", "error", "--logger", "zap"]
        self.processes[name] = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                                stderr=open(os.path.join(self.root, f"{name}.log"), "a"))

    def wait_healthy(self, name: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.client_ports[name]}/health", timeout=1) as r:
                    if b'"true"' in r.read():
                        return
            except OSError:
                pass
            assert self.processes[name].poll() is None, open(os.path.join(self.root, f"{name}.log")).read()[-2000:]
            assert time.monotonic() < deadline, f"etcd member {name} did not become healthy"
            time.sleep(0.1)

    def stop(self, name: str) -> None:
        process = self.processes.pop(name)
        process.terminate()
        process.wait(timeout=20)

    def close(self) -> None:
        for name in list(self.processes):
            self.stop(name)
        shutil.rmtree(self.root, ignore_errors=True)
