"""Docker-in-Docker nodes: privileged containers of a private outer engine,
each running its own dockerd (image made by packaging/build-node.sh from
Debian's packages), that install the managed plug-in from a registry.

    cluster = DindCluster(2, bundle, workdir)
    cluster.node(0)("network", "create", ...)   # docker CLI inside node 0
    cluster.close()

Wiring: every node's eth0 is on "underlay" (10.251.0.0/24, node i at .11+i),
where the outer bridge's address .1 serves the registry; eth1 is on "upstream"
(192.168.91.0/24, node i at .11+i, the outer bridge .1 is the router), the
business network a rancher-flat network takes as its parent. The outer engine
pushes the plug-in (it holds no copy of its own), each node installs it with
--insecure-registry for that address, pointed at an etcd on the underlay
(global IPAM, and a VXLAN registry agent for VNI 4243 run by the plug-in). The nodes' dockerds put their cgroups
under the outer engine's, so its close() removes them.
"""

import os
import subprocess
import time

from tests.engine.dockerd import Dockerd
from tests.engine.managed import PACKAGING, Registry, free_port

NODE_IMAGE = "rcnit-dind-node:latest"
UNDERLAY, UPSTREAM = "10.251.0", "192.168.91"
PLUGIN = "rancher-cni:latest"
ETCD = f"http://{UNDERLAY}.5:2379"  # a container of the outer engine
AGENT_VNI = 4243  # the plug-ins run a VXLAN registry agent for it


def privileges() -> list:
    """`--privileged`, unless this machine's bounding set lacks a capability
    (this VM has no CAP_SYS_RESOURCE, and runc then refuses a privileged
    container): then the same with that capability dropped, the kernel
    interfaces unmasked and every device allowed; the node's entry point
    makes /sys and the cgroup mounts writable."""
    with open("/proc/self/status") as f:
        bounding = int(next(line for line in f if line.startswith("CapBnd:")).split()[1], 16)
    last_cap = int(open("/proc/sys/kernel/cap_last_cap").read())
    missing = [number for number in range(last_cap + 1) if not bounding >> number & 1]
    if not missing:
        return ["--privileged"]
    names = {24: "SYS_RESOURCE", 16: "SYS_MODULE", 17: "SYS_RAWIO", 22: "SYS_BOOT", 25: "SYS_TIME"}
    assert all(number in names for number in missing), f"capabilities {missing} missing: name them here"
    return ["--cap-add", "ALL", *[arg for number in missing for arg in ("--cap-drop", names[number])],
            "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
            "--security-opt", "systempaths=unconfined", "--device-cgroup-rule", "a *:* rwm"]


class Node:
    def __init__(self, outer: Dockerd, name: str):
        self.outer, self.name = outer, name
        self.image = outer.image
        self.made = {"containers": [], "networks": []}

    def __call__(self, *args, check=True, stdin=None):
        """`docker ARGS` run inside the node."""
        argv = ["exec", *(("-i",) if stdin is not None else ()), self.name, "docker", *args]
        done = subprocess.run([*self._outer_cli(), *argv], input=stdin, capture_output=True,
                              text=stdin is None or isinstance(stdin, str), timeout=300)
        if check:
            assert done.returncode == 0, f"{self.name}: docker {' '.join(args)}: {done.stderr}"
        return done

    def run(self, *argv, stdin=None, check=True) -> subprocess.CompletedProcess:
        """ARGV run in the node itself (its namespaces, the plug-in's host)."""
        done = subprocess.run([*self._outer_cli(), "exec", *(("-i",) if stdin is not None else ()), self.name, *argv],
                              input=stdin, capture_output=True, text=True, timeout=120)
        if check:
            assert done.returncode == 0, f"{self.name}: {' '.join(argv)}: {done.stderr}"
        return done

    def pid(self) -> int:
        """The node's process as this machine sees it (for nsenter)."""
        return int(self.outer.cli("inspect", "-f", "{{.State.Pid}}", self.name).stdout)

    def _outer_cli(self) -> list:
        return ["env", f"DOCKER_CONFIG={self.outer.root}/cli", "/usr/bin/docker", "-H", f"unix://{self.outer.socket}"]

    @property
    def dockerd(self):  # tests/engine/helpers.py reads docker.dockerd.image
        return self


class DindCluster:
    def __init__(self, count: int, bundle: str, workdir):
        self.workdir = str(workdir)
        self.registry_address = f"{UNDERLAY}.1:{free_port()}"
        self.reference = f"{self.registry_address}/rancher-cni:latest"
        self.registry = None
        self.outer = Dockerd(daemon_config={"insecure-registries": [self.registry_address]})
        self.nodes = []
        try:
            self._build_image()
            for name, prefix in (("underlay", UNDERLAY), ("upstream", UPSTREAM)):
                self._outer("network", "create", "--subnet", f"{prefix}.0/24", "--gateway", f"{prefix}.1", name)
            self.registry = Registry(os.path.join(self.workdir, "registry"), address=self.registry_address)
            self._start_etcd()
            for argv in (("plugin", "create", self.reference, bundle), ("plugin", "push", self.reference),
                         ("plugin", "rm", self.reference)):
                self._outer(*argv)
            for index in range(count):
                self.nodes.append(self._start_node(index))
            for node in self.nodes:
                self._prepare(node)
        except BaseException:
            self.close()
            raise

    def node(self, index: int) -> Node:
        return self.nodes[index]

    @staticmethod
    def underlay_ip(index: int) -> str:
        return f"{UNDERLAY}.{11 + index}"

    @staticmethod
    def upstream_ip(index: int) -> str:
        return f"{UPSTREAM}.{11 + index}"

    def close(self) -> None:
        try:
            for node in self.nodes:
                for name in node.made["containers"]:
                    node("rm", "-f", name, check=False)
                for name in node.made["networks"]:
                    node("network", "rm", name, check=False)
        finally:
            try:
                self.outer.close()  # the nodes, their dockerds and everything inside go with them
            finally:
                if self.registry is not None:
                    self.registry.close()

    # -- building ------------------------------------------------------------

    def _outer(self, *args, timeout=600) -> subprocess.CompletedProcess:
        done = self.outer.cli(*args, timeout=timeout)
        assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr}"
        return done

    def _build_image(self) -> None:
        tarball = os.path.join(self.workdir, "node.tar")
        done = subprocess.run([os.path.join(PACKAGING, "build-node.sh"), tarball], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        self._outer("import", "-c", 'ENTRYPOINT ["/usr/local/bin/dind-node"]', tarball, NODE_IMAGE)
        os.unlink(tarball)

    def _start_node(self, index: int) -> Node:
        name = f"rcnit-node{index}-{os.path.basename(self.outer.root)[-6:]}"
        # the TUN device of the plug-in's ipsec backend (kernel-libipsec): a
        # node run with explicit capabilities instead of --privileged has no
        # /dev/net/tun otherwise, and the plug-in lists it (linux.devices)
        tun = ["--device", "/dev/net/tun"] if os.path.exists("/dev/net/tun") else []
        self._outer("run", "-d", *privileges(), *tun, "--name", name, "--hostname", f"node{index}",
                    "--network", "underlay", "--ip", self.underlay_ip(index), "-v", "/var/lib/docker",
                    NODE_IMAGE, "--insecure-registry", self.registry_address,
                    "--cgroup-parent", f"/{self.outer.cgroup_parent}/{name}")
        self._outer("network", "connect", "--ip", self.upstream_ip(index), "upstream", name)
        node = Node(self.outer, name)
        deadline = time.monotonic() + 60
        while node("version", check=False).returncode != 0:
            assert time.monotonic() < deadline, self._outer("logs", name).stderr[-3000:]
            time.sleep(0.3)
        return node

    def _prepare(self, node: Node) -> None:
        """The test image, and the plug-in from the registry, privileges granted."""
        image = subprocess.run([*node._outer_cli(), "save", self.outer.image], capture_output=True, check=True).stdout
        node("load", stdin=image)
        node("plugin", "install", "--grant-all-permissions", "--alias", "rancher-cni", self.reference,
             f"RANCHER_ETCD_ENDPOINTS={ETCD}", f"RANCHER_VXLAN_AGENT_VNIS={AGENT_VNI}", "RANCHER_VTEP_DEV=eth0",
             "RANCHER_INSECURE_ETCD=1")  # the test etcd is plain http

    def _start_etcd(self) -> None:
        """One etcd member on the underlay, Debian's binary in a node-image
        container: global IPAM and the VXLAN registry for the plug-ins."""
        address = ETCD.removeprefix("http://").split(":")[0]
        self._outer("run", "-d", "--name", f"rcnit-etcd-{os.path.basename(self.outer.root)[-6:]}",
                    "--network", "underlay", "--ip", address, "-v", "/usr/bin/etcd:/usr/bin/etcd:ro",
                    "--entrypoint", "/usr/bin/etcd", NODE_IMAGE, "--name", "e1", "--data-dir", "/tmp/etcd",
                    "--listen-client-urls", ETCD, "--advertise-client-urls", ETCD,
                    "--listen-peer-urls", "http://127.0.0.1:2380",
                    "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                    "--initial-cluster", "e1=http://127.0.0.1:2380")
