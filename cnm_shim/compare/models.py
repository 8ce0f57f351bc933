"""The three ways `compare` puts a container on one network, each with a timed
attach and detach:

  cnm     Docker: container start (CreateEndpoint, Join, ... -> shim -> CNI ADD)
          and stop with SIGKILL (Leave, DeleteEndpoint -> CNI DEL)
  ctr     containerd's `ctr run --cni` (Go libcni execs our plug-ins); attach
          ends when the container prints, so after CNI ADD; detach is SIGKILL
          until ctr has run CNI DEL and exited
  netns   our runtime-side caller (cni_backend.invoke, as `cnm-shim cni`)
          into a bare network namespace
"""

import dataclasses
import io
import os
import secrets
import shutil
import subprocess
import tarfile
import tempfile
import time

from cni_backend import files, install
from cni_backend.invoke import api
from cni_backend.invoke.execute import find_plugin

PREFIX = "rcmp"  # every container, namespace and link compare makes starts with it
APPLETS = ("sh", "sleep", "echo", "ip", "ping", "cat")
CTR_NAMESPACE = "rcmp"
MODELS = {"cnm": "CNM: dockerd -> shim -> CNI", "ctr": "CNI: ctr run --cni", "netns": "CNI: invoke -> bare netns"}


def run(*argv, check=True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kw)


def token() -> str:
    return secrets.token_hex(3)


@dataclasses.dataclass
class Attached:
    model: str
    name: str
    netns: str        # a path that opens the container's network namespace
    handle: object = None


def eth0_ipv4(netns: str) -> str:
    out = run("nsenter", f"--net={netns}", "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout.split()
    return out[3].split("/")[0] if len(out) > 3 else ""


def busybox_rootfs() -> bytes:
    """A rootfs tarball: Debian's static busybox and a few applets."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        def entry(name, data=None, kind=tarfile.REGTYPE, mode=0o755, target=""):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.linkname = kind, mode, target
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        for folder in ("bin", "proc", "sys", "dev", "tmp", "etc"):
            entry(folder, kind=tarfile.DIRTYPE)
        with open("/bin/busybox", "rb") as f:
            entry("bin/busybox", f.read())
        for applet in APPLETS:
            entry(f"bin/{applet}", kind=tarfile.SYMTYPE, target="busybox", mode=0o777)
    return buffer.getvalue()


class DockerModel:
    key = "cnm"

    def __init__(self, client, network: str, image: str):
        self.client, self.network, self.image = client, network, image

    def attach(self, index: int):
        container = self.client.containers.create(self.image, ["sleep", "3600"], name=f"{PREFIX}-cnm-{index}-{token()}",
                                                  network=self.network, labels={"rancher.compare": "1"})
        start = time.perf_counter()
        try:
            container.start()
        except Exception:
            container.remove(force=True)
            raise
        elapsed = time.perf_counter() - start
        container.reload()
        return Attached(self.key, container.name, f"/proc/{container.attrs['State']['Pid']}/ns/net", container), elapsed

    def detach(self, attached: Attached) -> float:
        start = time.perf_counter()
        attached.handle.stop(timeout=0)
        elapsed = time.perf_counter() - start
        attached.handle.remove(force=True)
        return elapsed

    def cleanup(self) -> None:
        for container in self.client.containers.list(all=True, filters={"label": "rancher.compare"}):
            container.remove(force=True)


def remove_namespace_cgroups(namespace: str) -> None:
    """runc puts a ctr container in the cgroup /NAMESPACE/ID of every hierarchy
    and removes only ID: take away the namespace's cgroups once they are empty."""
    for top in [os.path.join("/sys/fs/cgroup", h, namespace) for h in os.listdir("/sys/fs/cgroup")] \
            + [os.path.join("/sys/fs/cgroup", namespace)]:
        for directory, _, _ in sorted(os.walk(top), key=lambda entry: len(entry[0]), reverse=True):
            try:
                os.rmdir(directory)
            except OSError:  # not empty (still in use), or gone
                pass


def start_private_containerd(root: str) -> tuple:
    """(process, socket) of a containerd whose every path is under `root`
    (its "opt" dir too; no CRI)."""
    socket = os.path.join(root, "containerd.sock")
    with open(os.path.join(root, "config.toml"), "w") as f:
        f.write(f'version = 2\nroot = "{root}/root"\nstate = "{root}/state"\n'
                'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                f'[grpc]\n  address = "{socket}"\n'
                f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{root}/opt"\n')
    process = subprocess.Popen(["containerd", "-c", f"{root}/config.toml", "--log-level", "warn"],
                               stdout=subprocess.DEVNULL, stderr=open(f"{root}/log", "w"))
    return process, socket


def overlay_dirs(root: str) -> dict:
    """Lower dir -> overlay dir (upper/ and work/) for /etc, /opt and /var/lib:
    ctr reads CNI config and plug-ins only from the machine's own paths."""
    overlays = {}
    for lower, name in (("/etc", "etc"), ("/opt", "opt"), ("/var/lib", "var")):
        overlays[lower] = os.path.join(root, "ov", name)
        os.makedirs(overlays[lower] + "/upper")
        os.makedirs(overlays[lower] + "/work")
    return overlays


def ctr_run_argv(overlays: dict, socket: str, namespace: str, root: str, image: str, name: str, *command) -> list:
    """`ctr run --rm --cni` in a private mount namespace with `overlays` mounted."""
    mounts = " && ".join(f"mount -t overlay overlay -o lowerdir={lower},upperdir={d}/upper,workdir={d}/work {lower}"
                         for lower, d in overlays.items())
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", mounts + ' && exec "$@"', "sh",
            "ctr", "-a", socket, "-n", namespace, "run", "--rm", "--cni",
            "--runc-root", f"{root}/runc", "--fifo-dir", f"{root}/fifo", image, name, *command]


def unmount_below(root: str) -> None:
    """Lazily unmount everything mounted under `root` (deepest first)."""
    with open("/proc/self/mounts") as f:
        mounts = [line.split()[1] for line in f]
    for mount in reversed(mounts):
        if mount.startswith(root + "/"):
            run("umount", "-l", mount, check=False)


class Containerd:
    """A containerd to run `ctr run --cni` against: the one at `socket`, or a
    private one under a temp dir. ctr reads /etc/cni/net.d and /opt/cni/bin
    only, so each `ctr run` gets a private mount namespace where /etc, /opt and
    /var/lib are overlays with upper layers in our temp dir."""

    def __init__(self, socket: str | None, image_archive: bytes, image: str):
        self.root = tempfile.mkdtemp(prefix="rcmp-ctrd.")  # short: unix socket paths are limited
        self.image = image
        self.process = None
        self.had_run_dir = os.path.exists("/run/containerd")
        if socket is None:
            self.process, socket = start_private_containerd(self.root)
        self.socket = socket
        deadline = time.monotonic() + 30
        while self.ctr("version", check=False).returncode != 0:
            if (self.process and self.process.poll() is not None) or time.monotonic() > deadline:
                raise RuntimeError(f"containerd at {socket} does not answer")
            time.sleep(0.05)
        archive = os.path.join(self.root, "image.tar")
        with open(archive, "wb") as f:
            f.write(image_archive)
        self.ctr("image", "import", archive)
        os.remove(archive)
        self.overlays = overlay_dirs(self.root)
        self.conf_dir = os.path.join(self.overlays["/etc"], "upper", "cni", "net.d")
        self.bin_dir = os.path.join(self.overlays["/opt"], "upper", "cni", "bin")
        os.makedirs(self.conf_dir)
        install.write_executables(self.bin_dir)

    def link_plugins(self, types, plugin_dirs) -> None:
        """The plug-ins of a conflist that are not ours (the reference ones)
        linked into ctr's private /opt/cni/bin, found as the shim finds them."""
        for kind in types:
            target = os.path.join(self.bin_dir, kind)
            if not os.path.exists(target):
                os.symlink(find_plugin(kind, plugin_dirs), target)

    def version(self) -> str:
        out = self.ctr("version", check=False).stdout
        server = out.split("Server:", 1)[-1]
        return next((line.split(":", 1)[1].strip() for line in server.splitlines() if "Version" in line), "?")

    def ctr(self, *argv, check=True):
        return run("ctr", "-a", self.socket, "-n", CTR_NAMESPACE, *argv, check=check)

    def run_argv(self, name: str, *command) -> list:
        return ctr_run_argv(self.overlays, self.socket, CTR_NAMESPACE, self.root, self.image, name, *command)

    def close(self) -> None:
        for cid in self.ctr("container", "ls", "-q", check=False).stdout.split():
            if cid.startswith(PREFIX):
                self.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
                self.ctr("task", "delete", "-f", cid, check=False)
                self.ctr("container", "delete", cid, check=False)
        self.ctr("image", "rm", self.image, check=False)
        if self.process:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        else:
            self.ctr("namespaces", "rm", CTR_NAMESPACE, check=False)
        remove_namespace_cgroups(CTR_NAMESPACE)
        unmount_below(self.root)
        shutil.rmtree(self.root, ignore_errors=True)
        if not self.had_run_dir:  # the shim socket dir is hard-wired in containerd 1.6
            for leftover in ("/run/containerd/s", "/run/containerd"):
                try:
                    os.rmdir(leftover)
                except OSError:
                    pass


class CtrModel:
    key = "ctr"

    def __init__(self, containerd: Containerd, filename: str, raw: bytes, env: dict):
        """`raw`: the conflist, written first (`filename` 00-...) in ctr's
        private /etc/cni/net.d, where ctr takes the first."""
        self.containerd, self.env = containerd, env
        files.write_atomic(os.path.join(containerd.conf_dir, filename), raw, 0o644)
        self.running = {}

    def attach(self, index: int):
        name = f"{PREFIX}-ctr-{index}-{token()}"
        argv = self.containerd.run_argv(name, "sh", "-c", "echo up; exec sleep 3600")
        start = time.perf_counter()
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   env=self.env)
        self.running[name] = process
        first = process.stdout.readline()  # printed by the container: ctr ran CNI ADD before starting it
        elapsed = time.perf_counter() - start
        if first.strip() != b"up":
            self.detach(Attached(self.key, name, "", process))
            raise RuntimeError(f"ctr run --cni failed: {first.decode(errors='replace')}"
                               f"{process.stdout.read().decode(errors='replace')}")
        rows = [line.split() for line in self.containerd.ctr("task", "ls").stdout.splitlines()[1:]]
        pid = next(int(r[1]) for r in rows if r[0] == name)
        return Attached(self.key, name, f"/proc/{pid}/ns/net", process), elapsed

    def detach(self, attached: Attached) -> float:
        start = time.perf_counter()
        self.containerd.ctr("task", "kill", "-s", "SIGKILL", attached.name, check=False)
        attached.handle.wait(timeout=60)  # ctr runs CNI DEL once it sees the task exit
        elapsed = time.perf_counter() - start
        attached.handle.stdout.close()
        self.running.pop(attached.name, None)
        return elapsed

    def cleanup(self) -> None:
        for name, process in list(self.running.items()):
            self.detach(Attached(self.key, name, "", process))


class NetnsModel:
    key = "netns"

    def __init__(self, cni: api.CNI, conf: dict, raw: bytes):
        self.cni, self.conf, self.raw = cni, conf, raw
        self.made = []

    def attach(self, index: int):
        name = f"{PREFIX}ns{index}{token()}"
        run("ip", "netns", "add", name)
        self.made.append(name)
        attachment = api.Attachment(name, f"/var/run/netns/{name}", "eth0")
        start = time.perf_counter()
        self.cni.add(self.conf, self.raw, attachment)
        elapsed = time.perf_counter() - start
        return Attached(self.key, name, attachment.netns, attachment), elapsed

    def detach(self, attached: Attached) -> float:
        start = time.perf_counter()
        self.cni.delete(self.conf, self.raw, attached.handle)
        elapsed = time.perf_counter() - start
        run("ip", "netns", "del", attached.name, check=False)
        self.made.remove(attached.name)
        return elapsed

    def cleanup(self) -> None:
        for name in list(self.made):
            try:
                self.cni.delete(self.conf, self.raw, api.Attachment(name, f"/var/run/netns/{name}", "eth0"))
            finally:
                run("ip", "netns", "del", name, check=False)
                self.made.remove(name)
