"""etcd members for tests (Debian's etcd-server), on loopback ports, data in a
temp dir; a cluster of one or three; members can be stopped and started."""

import os
import shutil
import socket
import subprocess
import tempfile
import time

from tests.processes import long_lived


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EtcdCluster:
    def __init__(self, members: int = 1, netns: str | None = None, address: str = "127.0.0.1", tls: dict | None = None):
        """`tls` ({"ca", "cert", "key"} paths): clients must use https and a
        certificate signed by that CA."""
        self.netns, self.address, self.tls = netns, address, tls
        self.scheme = "https" if tls else "http"
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
        return [f"{self.scheme}://{self.address}:{self.client_ports[n]}" for n in self.names]

    def start(self, name: str) -> None:
        at = self.address
        initial = ",".join(f"{n}=http://{at}:{self.peer_ports[n]}" for n in self.names)
        argv = ["etcd", "--name", name, "--data-dir", os.path.join(self.root, name),
                "--listen-client-urls", f"{self.scheme}://{at}:{self.client_ports[name]}",
                "--advertise-client-urls", f"{self.scheme}://{at}:{self.client_ports[name]}",
                "--listen-peer-urls", f"http://{at}:{self.peer_ports[name]}",
                "--initial-advertise-peer-urls", f"http://{at}:{self.peer_ports[name]}",
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--log-level", "error", "--logger", "zap"]
        if self.tls:
            argv += ["--cert-file", self.tls["cert"], "--key-file", self.tls["key"],
                     "--trusted-ca-file", self.tls["ca"], "--client-cert-auth"]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        self.processes[name] = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                                stderr=open(os.path.join(self.root, f"{name}.log"), "a"))
        long_lived(self.processes[name].pid)  # members restart within tests; the cluster stops them

    def wait_healthy(self, name: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        url = f"{self.scheme}://{self.address}:{self.client_ports[name]}/health"
        if self.tls:
            context = (f"import ssl; c = ssl.create_default_context(cafile={self.tls['ca']!r}); "
                       f"c.load_cert_chain({self.tls['cert']!r}, {self.tls['key']!r})")
        else:
            context = "c = None"
        probe = ["python3", "-c", f"import urllib.request; {context}; "
                 f"print(urllib.request.urlopen({url!r}, timeout=1, context=c).read())"]
        if self.netns:
            probe = ["ip", "netns", "exec", self.netns, *probe]
        while True:
            if b'true' in subprocess.run(probe, capture_output=True).stdout:
                return
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
