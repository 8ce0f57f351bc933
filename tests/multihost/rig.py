"""Several Docker hosts on one machine: each host is a network namespace plus
a private mount namespace (its own /run/docker/plugins, /run/rancher-cni and
/run/docker/netns) holding its own dockerd, containerd, cnm-shim and
vxlan-agent. The hosts share an underlay switch in a namespace of its own,
where etcd runs. Nothing touches the machine's own interfaces.
"""

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from cni_backend import install
from tests.conftest import ns_exec, run
from tests.engine.dockerd import Dockerd
from tests.engine.helpers import wait_for_teardowns
from tests.etcd_cluster import EtcdCluster
from tests.processes import long_lived

UNDERLAY_NET = "10.96.0"
PER_HOST_DIRS = ("/run/docker/plugins", "/run/rancher-cni", "/run/docker/netns")


class Host:
    def __init__(self, index: int, underlay_ns: str, etcd_endpoints: list, tag: str):
        self.index = index
        self.netns = f"rcnith{index}{tag}"
        self.address = f"{UNDERLAY_NET}.{index}"
        self.root = tempfile.mkdtemp(prefix=f"rcnith{index}.")
        self.processes = []
        run("ip", "netns", "add", self.netns)
        ns_exec(self.netns, "ip", "link", "set", "lo", "up")
        run("ip", "link", "add", f"rcnitul{index}{tag}", "netns", self.netns, "type", "veth",
            "peer", "name", f"h{index}", "netns", underlay_ns)
        ns_exec(self.netns, "ip", "link", "set", f"rcnitul{index}{tag}", "name", "ul")
        ns_exec(self.netns, "ip", "addr", "add", f"{self.address}/24", "dev", "ul")
        ns_exec(self.netns, "ip", "link", "set", "ul", "up")
        ns_exec(underlay_ns, "ip", "link", "set", f"h{index}", "master", "sw", "up")
        self.enter = self._mount_namespace()
        install.write_executables(os.path.join(self.root, "bin"))
        self.etcd_endpoints = etcd_endpoints
        self.start_plugin()
        self.dockerd = Dockerd(root=os.path.join(self.root, "docker"), enter=self.enter)
        self.dockerd.after_cli = lambda: wait_for_teardowns(os.path.join(self.root, "state"))

    def _mount_namespace(self) -> list:
        """A process that holds the host's mounts; others join it with nsenter."""
        binds = []
        for path in PER_HOST_DIRS:
            private = os.path.join(self.root, path.strip("/").replace("/", "-"))
            os.makedirs(private)
            binds.append(f"mount --bind {private} {path}")
        script = " && ".join(binds) + " && echo ready && exec sleep infinity"
        holder = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{self.netns}", "unshare", "-m",
                                   "--propagation", "private", "sh", "-c", script],
                                  stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert holder.stdout.readline().strip() == "ready"
        long_lived(holder.pid)
        self.processes.append(holder)
        return ["nsenter", "-t", str(holder.pid), "-m", "-n"]

    def start_plugin(self) -> None:
        r, etcd = self.root, ",".join(self.etcd_endpoints)
        log = open(os.path.join(r, "plugin.log"), "a")
        self.shim = subprocess.Popen(
            [*self.enter, sys.executable, "-m", "cnm_shim.cli", "serve", "--state-dir", f"{r}/state",
             "--run-dir", f"{r}/run", "--ipam-data-dir", f"{r}/ipam", "--cni-conf-dir", f"{r}/net.d",
             "--cni-path", f"{r}/bin:/usr/lib/cni", "--etcd-endpoints", etcd, "--insecure-etcd", "--workers", "2",
             "--docker-host", f"unix://{r}/docker/docker.sock"],  # the host's dockerd (Dockerd(root=r/docker))
            stdout=log, stderr=log, start_new_session=True)
        self.agent = subprocess.Popen(
            [*self.enter, sys.executable, "-m", "cnm_shim.cli", "vxlan-agent", "--etcd-endpoints", etcd, "--insecure-etcd",
             "--vni", "1042", "--vtep-dev", "ul", "--state-dir", f"{r}/ipam", "--ttl", "3", "--interval", "0.5"],
            stdout=log, stderr=log, start_new_session=True)
        long_lived(self.shim.pid), long_lived(self.agent.pid)  # restarted by tests, stopped by the rig
        for _ in range(200):
            if os.path.exists(os.path.join(self.root, "run-docker-plugins", "rancher-vxlan.sock")):
                return
            assert self.shim.poll() is None, open(os.path.join(r, "plugin.log")).read()[-2000:]
            subprocess.run(["sleep", "0.05"])
        raise AssertionError("the plug-in did not start")

    def kill_plugin(self) -> None:
        for process in (self.shim, self.agent):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for name in os.listdir(os.path.join(self.root, "run-docker-plugins")):
            os.unlink(os.path.join(self.root, "run-docker-plugins", name))

    def stop_charon(self) -> None:
        """The host's charon (rancher-ipsec), if a network the test did not
        remove left it running: not a child of the plug-in once that is gone,
        so nothing else stops it, and it would hold the host's namespace."""
        try:
            with open(os.path.join(self.root, "ipam", "ipsec", "charon", "charon.owner")) as f:
                pid = int(f.read())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if not f.read().split(b"\0")[0].endswith(b"charon"):
                    return
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            return
        for _ in range(100):  # reaped by whoever its parent is now
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        return
            except OSError:
                return
            time.sleep(0.05)

    def docker(self, *args):
        return self.dockerd.cli(*args)

    def close(self) -> None:
        self.dockerd.close()
        for process in (self.shim, self.agent):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=20)
        self.stop_charon()
        for process in self.processes:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        run("ip", "netns", "del", self.netns, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


class Rig:
    """`Rig(3)` starts three hosts; `close()` removes every trace."""

    def __init__(self, hosts: int = 3):
        self.tag = secrets.token_hex(2)
        self.underlay = f"rcnitund{self.tag}"
        self.created_dirs = [p for p in PER_HOST_DIRS if not os.path.exists(p)]
        for path in self.created_dirs:
            os.makedirs(path)
        self.hosts, self.etcd = [], None
        try:
            run("ip", "netns", "add", self.underlay)
            for argv in (("ip", "link", "set", "lo", "up"), ("ip", "link", "add", "sw", "type", "bridge"),
                         ("ip", "addr", "add", f"{UNDERLAY_NET}.254/24", "dev", "sw"), ("ip", "link", "set", "sw", "up")):
                ns_exec(self.underlay, *argv)
            self.etcd = EtcdCluster(members=3, netns=self.underlay, address=f"{UNDERLAY_NET}.254")
            for index in range(1, hosts + 1):
                self.hosts.append(Host(index, self.underlay, self.etcd.endpoints, self.tag))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for host in self.hosts:
            host.close()
        if self.etcd:
            self.etcd.close()
        run("ip", "netns", "del", self.underlay, check=False)
        for path in reversed(self.created_dirs):
            try:
                os.rmdir(path)
            except OSError:
                pass


def main() -> int:
    """`python -m tests.multihost.rig [N]`: start N hosts, print how to reach
    them, and remove every trace on Ctrl-C or SIGTERM."""
    hosts = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    rig = Rig(hosts)
    try:
        print(f"etcd: {','.join(rig.etcd.endpoints)} (in namespace {rig.underlay})")
        for host in rig.hosts:
            print(f"host {host.index}: DOCKER_HOST=unix://{host.dockerd.socket} /usr/bin/docker ...   "
                  f"shell: {' '.join(host.enter)} bash")
        print("Ctrl-C removes everything.", flush=True)
        while not stopping:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        rig.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
