"""The managed plug-in in a private engine: build the bundle once, install it,
used as the `docker` callable of the engine layer (tests/engine/helpers.py
works with it).

    bundle = build_bundle(tmp)                   # packaging/build-plugin.sh
    plugin = ManagedPlugin(Dockerd(), tmp / "a")  # create + settings + enable
    plugin("network", "create", "-d", plugin.driver, ...)  # the docker CLI
    plugin.close()                               # containers, networks, plug-in, engine
"""

import os
import pathlib
import socket
import subprocess
import sys
import time

from tests.conftest import ipam_rows
from tests.engine.helpers import wait_for_teardowns

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGING = os.path.join(ROOT, "packaging")
NAME = "rancher-cni"


def build_bundle(out) -> str:
    """config.json + rootfs in `out` (the Debian base is cached across runs)."""
    pip = os.path.join(os.path.dirname(sys.executable), "pip")
    done = subprocess.run([os.path.join(PACKAGING, "build-plugin.sh"), str(out), pip], capture_output=True, text=True)
    assert done.returncode == 0, f"build-plugin.sh: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return str(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """Debian's docker-registry on localhost:PORT (Docker trusts it without TLS)
    or on `address` (an address of a test bridge, for engines in containers)."""

    def __init__(self, root, address: str | None = None):
        self.root = str(root)
        self.address = address or f"localhost:{free_port()}"
        done = subprocess.run([os.path.join(PACKAGING, "registry.sh"), self.address],
                              env=dict(os.environ, REGISTRY_ROOT=self.root), capture_output=True, text=True)
        assert done.returncode == 0, f"registry.sh: {done.stderr}"

    def close(self):
        with open(os.path.join(self.root, "registry.pid")) as f:
            pid = int(f.read())
        os.kill(pid, 15)
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


class ManagedPlugin:
    """One engine with the plug-in enabled as `name`, its state in `state`."""

    def __init__(self, dockerd, state, name: str = NAME):
        self.dockerd, self.state, self.name = dockerd, state, name
        self.driver = f"{name}:latest"
        self.made = {"containers": [], "networks": []}
        for sub in ("ipam", "cnm", "net.d"):
            os.makedirs(os.path.join(state, sub), exist_ok=True)
        # the plug-in's state dir is the driver-state mount: wait for its teardowns after each docker call
        dockerd.after_cli = lambda: wait_for_teardowns(os.path.join(state, "cnm"))

    def settings(self, backend: str | None = None) -> list:
        """`docker plugin set/install` arguments: every mount source is the test's."""
        values = [f"docker-netns.source={self.dockerd.root}/exec/netns", f"ipam-state.source={self.state}/ipam",
                  f"driver-state.source={self.state}/cnm", f"cni-conf.source={self.state}/net.d",
                  "cni-bin.source=/usr/lib/cni", "CNM_SHIM_LOG_LEVEL=DEBUG"]
        return values + ([f"RANCHER_BACKEND={backend}"] if backend else [])

    def create(self, bundle: str, backend: str | None = None) -> None:
        """What `make plugin` does, against this engine."""
        env = dict(os.environ, DOCKER=f"/usr/bin/docker -H unix://{self.dockerd.socket}",
                   DOCKER_CONFIG=os.path.join(self.dockerd.root, "cli"))
        done = subprocess.run([os.path.join(PACKAGING, "plugin.sh"), "install", self.name, bundle,
                               *self.settings(backend)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"plugin.sh: {done.stderr}"

    def install(self, reference: str, backend: str) -> None:
        """`docker plugin install` from a registry, privileges granted up front."""
        os.makedirs(f"{self.dockerd.root}/exec/netns", exist_ok=True)
        self("plugin", "install", "--grant-all-permissions", "--alias", self.name, reference,
                    *self.settings(backend))

    def __call__(self, *args, check=True):
        """`docker ARGS` against this engine (so helpers.container(plugin, ...) works)."""
        done = self.dockerd.cli(*args, timeout=300)
        if check:
            assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr}"
        return done

    def allocations(self) -> list:
        return ipam_rows(pathlib.Path(self.state) / "ipam", "network, container_id, ip")

    def clean(self) -> None:
        """Remove what a test made; the plug-in stays."""
        for name in self.made["containers"]:
            self.dockerd.cli("rm", "-f", name)
        for name in self.made["networks"]:
            self.dockerd.cli("network", "rm", name)
        self.made = {"containers": [], "networks": []}

    def close(self) -> None:
        try:
            self.clean()
            self.dockerd.cli("plugin", "disable", self.name)
            self.dockerd.cli("plugin", "rm", self.name)
        finally:
            self.dockerd.close()
