"""A private containerd for tests, and `ctr run --cni` containers on it.

ctr reads its CNI config only from /etc/cni/net.d and its plug-ins from
/opt/cni/bin (and Debian's /usr/lib/cni): to leave the machine's own
directories alone, ctr runs in a private mount namespace where /etc, /opt and
/var/lib are overlays whose upper layers live in the test's temp dir.
ctr runs CNI DEL only when a foreground `ctr run` sees its task exit, so
containers run in the foreground and are stopped with SIGKILL.
"""

import os
import shutil
import subprocess
import tempfile
import time

from cnm_shim.compare.models import (ctr_run_argv, overlay_dirs, remove_namespace_cgroups,
                                     start_private_containerd, unmount_below)
from tests.images import write_busybox_image

NAMESPACE = "rcnitest"
IMAGE = "localhost/rcnit-busybox:latest"


class Containerd:
    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="rcnit-ctrd.")  # short: unix socket paths are limited
        self.had_run_dir = os.path.exists("/run/containerd")
        self.process, self.socket = start_private_containerd(self.root)
        deadline = time.monotonic() + 30
        while self.ctr("version", check=False).returncode != 0:
            assert self.process.poll() is None and time.monotonic() < deadline, "containerd did not start"
            time.sleep(0.05)
        image = os.path.join(self.root, "busybox.tar")
        write_busybox_image(image, IMAGE)
        self.ctr("image", "import", image)
        self.overlays = overlay_dirs(self.root)
        self.running = {}

    @property
    def cni_conf_dir(self) -> str:
        path = os.path.join(self.overlays["/etc"], "upper", "cni", "net.d")
        os.makedirs(path, exist_ok=True)
        return path

    @property
    def cni_bin_dir(self) -> str:
        path = os.path.join(self.overlays["/opt"], "upper", "cni", "bin")
        os.makedirs(path, exist_ok=True)
        return path

    def ctr(self, *argv, check=True):
        return subprocess.run(["ctr", "-a", self.socket, "-n", NAMESPACE, *argv],
                              capture_output=True, text=True, check=check)

    def run_cni(self, name: str, *command, env=None) -> int:
        """Start a container with `ctr run --cni`; its pid once CNI ADD is done."""
        argv = ctr_run_argv(self.overlays, self.socket, NAMESPACE, self.root, IMAGE, name, *command)
        log = open(os.path.join(self.root, f"{name}.out"), "w")
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env=env)
        self.running[name] = process
        deadline = time.monotonic() + 60
        while True:  # RUNNING means CNI ADD has finished (ctr adds between create and start)
            rows = [line.split() for line in self.ctr("task", "ls").stdout.splitlines()[1:]]
            pid = next((int(r[1]) for r in rows if r[0] == name and r[2] == "RUNNING"), None)
            if pid:
                return pid
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(open(os.path.join(self.root, f"{name}.out")).read())
            time.sleep(0.05)

    def stop(self, name: str) -> int:
        """SIGKILL the task (sleep as PID 1 ignores SIGTERM); ctr then runs CNI DEL."""
        self.ctr("task", "kill", "-s", "SIGKILL", name, check=False)
        return self.running.pop(name).wait(timeout=60)

    def close(self):
        for name in list(self.running):
            self.stop(name)
        for cid in self.ctr("container", "ls", "-q", check=False).stdout.split():
            self.ctr("task", "delete", "-f", cid, check=False)
            self.ctr("container", "delete", cid, check=False)
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        unmount_below(self.root)
        shutil.rmtree(self.root, ignore_errors=True)
        remove_namespace_cgroups(NAMESPACE)
        if not self.had_run_dir:  # the shim socket dir is hard-wired in containerd 1.6
            for leftover in ("/run/containerd/s", "/run/containerd"):
                try:
                    os.rmdir(leftover)
                except OSError:
                    pass
