"""A private Docker engine (Debian's docker.io, 20.10) for the engine test layer.

`Dockerd()` makes a short temp dir R under /tmp (unix socket paths must stay
under 108 bytes), starts a containerd of its own and a dockerd on R/docker.sock,
loads a busybox image built without a registry, and `close()` puts the machine
back exactly as it found it: processes, mounts, cgroups, links, iptables rules,
FORWARD policy, sysctls and the few files dockerd writes outside R.

    d = Dockerd()
    d.cli("run", "--rm", "--network", "none", d.image, "echo", "hi")
    d.client.networks.create(...)      # docker SDK, API version negotiated
    d.restart(); d.kill(); d.start()   # containers and networks survive
    d.close()

Gotchas found on Debian 12 (dockerd 20.10.24, containerd 1.6.20, cgroup v1):
- Without --containerd, dockerd 20.10 uses the machine's containerd whenever
  /run/containerd/containerd.sock exists (namespace "moby", shared with any other
  dockerd on it) and only otherwise starts one under exec-root. So we always run
  our own containerd (socket, root, state and its "opt" dir inside R; the
  default opt dir would be /opt/containerd).
- Paths dockerd/containerd use no matter what flags say: /run/docker/plugins
  (legacy plug-in discovery, shared by every dockerd), /run/containerd/s/<sha256>
  (shim sockets; a shim removes its own unless it is killed), /etc/docker/key.json
  (moved into R by "deprecated-key-path" in daemon.json), /etc/docker/daemon.json
  (ignored thanks to --config-file R/daemon.json), and the cgroup "docker" in
  every hierarchy (replaced by a per-instance --cgroup-parent we remove).
- docker load in 20.10 rejects an OCI image layout ("blobs/json: no such
  file"); it needs the docker-archive format (manifest.json + layer.tar), which
  `_docker_archive` makes from the OCI tarball of tests.images.
- Docker sets FORWARD to DROP only when it finds ip_forward=0; this machine has
  it at 1, so by default we set DROP ourselves to test under Docker's usual policy.
- iptables: close() takes back every change made since a snapshot taken
  before start (added rules and chains, changed policies) with one
  `iptables-restore --noflush` script per family. Docker's rules carry no mark
  (the hairpin MASQUERADE of a published port, the rules of a bridge named with
  com.docker.network.bridge.name never say "docker"), so nothing narrower is
  exact; unlike a blind restore of the snapshot, rules others deleted meanwhile
  stay deleted. The flip side: rules something else adds to the root namespace
  while an engine runs go too, so don't edit iptables concurrently (serial
  pytest is fine; the FORWARD DROP would bother a concurrent run anyway).
- A shim or docker-proxy that exits is reparented to this VM's init, which reaps
  it only after ~1-2 s: close() waits for those zombies, else `pgrep containerd`
  right after close() still lists "[containerd-shim] <defunct>".
- Busybox as PID 1 ignores SIGTERM, so a daemon stop with running containers
  waited their 10 s stop timeout: --init (tini as PID 1) makes restarts quick.
- dockerd bind-mounts its data-root on itself; a killed daemon leaves that and
  the containers' overlay and nsfs mounts behind: close() unmounts under R.
- A container on a remote-driver network whose Join returns no gateway is
  also attached to "docker_gwbridge", a bridge network Docker makes on demand
  (172.17.0.0/16 here, as there is no docker0), with its NAT rules. close()
  removes Docker's bridge networks through the API (and any docker0,
  docker_gwbridge, br-* link left by a stopped or killed daemon).
- Docker retries a call to a legacy plug-in whose socket is gone for ~15 s
  (1+2+4+8 s): close the engine before stopping the plug-in, or each container
  on its networks adds 15-30 s to close().
- The SDK client is replaced on every start: take `d.client` again after a
  restart instead of keeping the old object.
- Timings here: containerd+dockerd start ~0.5 s, image build+load ~0.3 s,
  `run --rm echo` ~0.3-0.4 s, restart ~0.5 s (12 s with a running busybox
  without --init), kill+start ~0.5 s, close ~1.5 s (half of it waiting for
  init to reap the shims). Installing docker.io, if missing, is apt's time.
"""

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import warnings
from functools import partial

import docker

from tests.isolation import require_sandbox
from tests.processes import long_lived

from tests.images import write_busybox_image

DOCKERD = "/usr/sbin/dockerd"
CONTAINERD = "/usr/bin/containerd"
CLI = "/usr/bin/docker"  # the 20.10 client; /usr/local/bin/docker (28.x) refuses some flags against 20.10
IMAGE = "rcnit-busybox:latest"
SYSCTLS = ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding", "net/ipv6/conf/default/forwarding",
           "net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables",
           "net/bridge/bridge-nf-call-arptables")
# directories dockerd and the shims create outside R whatever the flags; deepest first
SHARED_DIRS = ("/run/docker/plugins", "/run/docker", "/run/containerd/s", "/run/containerd")
DOCKER_LINK = re.compile(r"^(docker0|docker_gwbridge|br-[0-9a-f]{12})$")  # Docker's bridge names


def run(*argv, check=True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kw)


def ensure_installed() -> None:
    """docker.io brings dockerd, containerd, runc, tini and the 20.10 client; the
    image needs a static busybox."""
    missing = [] if os.path.exists(DOCKERD) and os.path.exists(CLI) else ["docker.io"]
    if run("dpkg", "-s", "busybox-static", check=False).returncode:  # Debian's plain busybox is dynamic
        missing.append("busybox-static")
    if missing:
        print(f"installing {' '.join(missing)} ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run("apt-get", "update", "-qq", env=env)
        run("apt-get", "install", "-y", "-qq", *missing, env=env)


class Dockerd:
    def __init__(self, root: str | None = None, forward_drop: bool = True, start_timeout: float = 60,
                 enter=(), daemon_config: dict | None = None):
        """`enter` prefixes every daemon command (e.g. nsenter into a "host"
        namespace of the multi-host rig); `daemon_config` adds daemon.json keys."""
        if not enter:  # a rig's host namespace is private already
            require_sandbox("the test engine (a dockerd sharing /run/docker/plugins)")
        self.daemon_config = daemon_config or {}
        ensure_installed()
        self.enter = list(enter)
        self.own_root = root is None
        self.root = root or tempfile.mkdtemp(prefix="rcnitd-", dir="/tmp")
        os.makedirs(self.root, exist_ok=True)
        self.socket = os.path.join(self.root, "docker.sock")
        self.containerd_socket = os.path.join(self.root, "containerd", "containerd.sock")
        self.image = IMAGE
        self.forward_drop = forward_drop
        self.start_timeout = start_timeout
        self.cgroup_parent = "rcnit-" + hashlib.sha256(self.root.encode()).hexdigest()[:8]
        self.client = None
        self.after_cli = None  # called after each `cli`: e.g. wait for the plug-in's work after its answers
        self.dockerd = self.containerd = None
        self.sessions = set()  # our daemons' session ids: their shims and docker-proxy keep them
        self.crashed = False  # kill() was called: close() lets a new dockerd clean up
        self.closed = False
        # the machine as it was, to put back on close()
        self.firewall = {tool: _save(tool) for tool in ("iptables", "ip6tables")}
        self.nft_tables = _nft_tables()
        self.sysctls = {name: _read(f"/proc/sys/{name}") for name in SYSCTLS if os.path.exists(f"/proc/sys/{name}")}
        self.shared_dirs = [path for path in SHARED_DIRS if not os.path.exists(path)]
        self.links = _links()
        try:
            self._write_configs()
            self.start()
            self._load_image()
        except BaseException:
            self.close()
            raise

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Start containerd (unless it still runs) and dockerd; wait for the API."""
        if self.containerd is None or self.containerd.poll() is not None:
            self.containerd = self._spawn("containerd", CONTAINERD, "--config", self._path("containerd.toml"))
            self._wait(lambda: os.path.exists(self.containerd_socket), self.containerd, "containerd")
        r = self.root
        self.dockerd = self._spawn(
            "dockerd", DOCKERD, "--data-root", f"{r}/data", "--exec-root", f"{r}/exec",
            "-H", f"unix://{self.socket}", "--pidfile", f"{r}/docker.pid", "--bridge", "none",
            "--log-level", "warn", "--containerd", self.containerd_socket, "--config-file", f"{r}/daemon.json",
            "--cgroup-parent", self.cgroup_parent, "--init")
        self.client = self._wait(self._connect, self.dockerd, "dockerd")
        self.crashed = False
        if self.forward_drop:  # what Docker does on a machine that had forwarding off
            run(*self.enter, "iptables", "-P", "FORWARD", "DROP")

    def stop(self, timeout: float = 30) -> None:
        """Stop dockerd like `systemctl stop docker`: it stops its running
        containers (no live-restore); containerd keeps running."""
        if self.client:
            self.client.close()
            self.client = None
        if self.dockerd and self.dockerd.poll() is None:
            self.dockerd.terminate()
            try:
                self.dockerd.wait(timeout)
            except subprocess.TimeoutExpired:
                self.dockerd.kill()
                self.dockerd.wait()

    def kill(self) -> None:
        """SIGKILL dockerd, as in a crash: containerd, shims and containers live on."""
        if self.client:
            self.client.close()
            self.client = None
        if self.dockerd and self.dockerd.poll() is None:
            self.dockerd.kill()
            self.dockerd.wait()
            self.crashed = True

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Remove every container, stop everything, put the machine back."""
        if self.closed:
            return
        self.closed = True
        try:
            self._remove_containers()
        finally:
            try:
                self.stop()
                self._stop_containerd()
                self._kill_leftovers()
                self._unmount()  # before removing files: never delete through a mount
                if self.own_root:
                    shutil.rmtree(self.root, ignore_errors=True)
                else:  # a root the caller gave is emptied, not removed
                    for name in os.listdir(self.root):
                        _remove(os.path.join(self.root, name))
            finally:
                self._restore_machine()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- using it ----------------------------------------------------------

    def cli(self, *args, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
        """`docker ARGS` with the 20.10 client against this daemon; text output."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["DOCKER_CONFIG"] = self._path("cli")  # not the user's ~/.docker (credential helpers, contexts)
        done = subprocess.run([CLI, "-H", f"unix://{self.socket}", *args], capture_output=True, text=True,
                              env=env, check=check, timeout=timeout)
        if self.after_cli is not None:
            self.after_cli()
        return done

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(_tail(self._path(f"{name}.log"), lines) for name in ("containerd", "dockerd"))

    # -- helpers -----------------------------------------------------------

    def _path(self, *parts) -> str:
        return os.path.join(self.root, *parts)

    def _write_configs(self) -> None:
        os.makedirs(self._path("containerd"), exist_ok=True)
        with open(self._path("daemon.json"), "w") as f:
            # instead of /etc/docker/daemon.json; and the trust key (a file option only) out of /etc/docker
            json.dump({"deprecated-key-path": self._path("key.json"), **self.daemon_config}, f)
        c = self._path("containerd")
        with open(self._path("containerd.toml"), "w") as f:
            f.write(f'version = 2\nroot = "{c}/root"\nstate = "{c}/state"\n'
                    'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                    f'[grpc]\n  address = "{self.containerd_socket}"\n'
                    '[debug]\n  level = "warn"\n'
                    f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{c}/opt"\n')

    def _spawn(self, name: str, *argv) -> subprocess.Popen:
        # a session of its own: Ctrl-C on the tests does not hit it, and its
        # shims and docker-proxy processes stay recognisable by session id
        with open(self._path(f"{name}.log"), "a") as log:
            process = subprocess.Popen([*self.enter, *argv], stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.sessions.add(process.pid)
        long_lived(process.pid)  # the engine's fixture stops it, also when a test restarted it
        return process

    def _wait(self, ready, process: subprocess.Popen, name: str):
        deadline = time.monotonic() + self.start_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.log_tail()}")
            result = ready()
            if result:
                return result
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer within {self.start_timeout} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def _connect(self):
        if not os.path.exists(self.socket):
            return None
        try:
            return docker.DockerClient(base_url=f"unix://{self.socket}", version="auto", timeout=120)
        except docker.errors.DockerException:
            return None

    def _load_image(self) -> None:
        if any(self.image in i.tags for i in self.client.images.list()):
            return  # a root that was used before
        oci = self._path("busybox-oci.tar")
        write_busybox_image(oci, self.image)
        self.client.images.load(_docker_archive(oci))
        os.remove(oci)

    def _remove_containers(self) -> None:
        if self.dockerd is None or (self.dockerd.poll() is not None and not self.crashed):
            return  # never started, or stopped: no container runs
        if self.dockerd.poll() is not None:
            try:  # a killed daemon: a new one cleans up what the old one left in containerd
                self.start()
            except RuntimeError as e:  # then _kill_leftovers does it the hard way
                warnings.warn(f"could not restart dockerd to clean up: {e}")
                return
        removals = [partial(c.remove, force=True) for c in self.client.containers.list(all=True)]
        # Docker's own bridge networks go too, so that Docker removes their links
        # and rules; other drivers' networks are the tests' (their plug-in may be gone)
        removals += [n.remove for n in self.client.networks.list(filters={"driver": "bridge"})
                     if n.name not in ("bridge", "host", "none")]
        for remove in removals:
            try:
                remove()
            except docker.errors.APIError as e:  # e.g. a remote driver's plug-in already gone
                warnings.warn(f"close(): {e}")

    def _stop_containerd(self) -> None:
        if self.containerd and self.containerd.poll() is None:
            self.containerd.terminate()
            try:
                self.containerd.wait(10)
            except subprocess.TimeoutExpired:
                self.containerd.kill()
                self.containerd.wait()

    def _kill_leftovers(self) -> None:
        """After a kill(): container processes (in our cgroups), then shims and
        docker-proxy (in our daemons' sessions). Then the empty cgroups and the
        shims' sockets."""
        cgroups = _cgroup_dirs(self.cgroup_parent)
        for directory in cgroups:
            for pid in _read(os.path.join(directory, "cgroup.procs")).split():
                _signal(int(pid), signal.SIGKILL)
        for pid in _session_members(self.sessions):
            _signal(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        for directory in sorted(cgroups, key=len, reverse=True):  # children first
            while os.path.isdir(directory):
                try:
                    os.rmdir(directory)
                except OSError:  # the killed processes leave the cgroup asynchronously
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        ids = set(_listdir(self._path("data", "containers")))
        ids |= set(_listdir(self._path("containerd", "state", "io.containerd.runtime.v2.task", "moby")))
        for container_id in ids:  # the formula of containerd's shim.SocketAddress
            digest = hashlib.sha256(f"{self.containerd_socket}/moby/{container_id}".encode()).hexdigest()
            _remove(f"/run/containerd/s/{digest}")
        deadline = time.monotonic() + 10
        while _session_members(self.sessions) and time.monotonic() < deadline:
            time.sleep(0.1)  # zombies, until init reaps them

    def _unmount(self) -> None:
        """dockerd's self bind mount of data-root, overlays, nsfs: deepest first."""
        for _ in range(5):
            mounts = _mounts_under(self.root)
            if not mounts:
                return
            for path in sorted(mounts, key=lambda p: p.count("/"), reverse=True):
                run("umount", "-l", path, check=False)
        raise RuntimeError(f"still mounted under {self.root}: {_mounts_under(self.root)}")

    def _restore_machine(self) -> None:
        for link in _links() - self.links:
            if DOCKER_LINK.match(link):
                run("ip", "link", "del", link, check=False)
        for name, value in self.sysctls.items():
            with open(f"/proc/sys/{name}", "w") as f:
                f.write(value)
        for path in self.shared_dirs:  # only those we made, and only if nobody else put something there
            try:
                os.rmdir(path)
            except OSError:
                pass
        for tool, before in self.firewall.items():  # last: the one step that may raise
            script = _firewall_undo(before, _save(tool))
            done = run(f"{tool}-restore", "--noflush", input=script, check=False) if script else None
            if done and done.returncode:
                raise RuntimeError(f"{tool}-restore failed: {done.stderr}\n{script}")
        for table in _nft_tables() - self.nft_tables:  # the ones iptables-nft made for Docker, now empty
            if re.fullmatch(r"ip6? (filter|nat|mangle|raw|security)", table):
                run("nft", "delete", "table", *table.split(), check=False)


# -- images ------------------------------------------------------------------

def _docker_archive(oci_path: str) -> bytes:
    """The OCI layout tarball of tests.images rewritten as `docker save` output,
    the only format `docker load` 20.10 takes."""
    with tarfile.open(oci_path) as oci:
        def blob(digest: str) -> bytes:
            return oci.extractfile("blobs/sha256/" + digest.split(":", 1)[1]).read()

        entry = json.loads(oci.extractfile("index.json").read())["manifests"][0]
        ref = entry["annotations"]["org.opencontainers.image.ref.name"]
        manifest = json.loads(blob(entry["digest"]))
        config = blob(manifest["config"]["digest"])
        layers = [gzip.decompress(blob(layer["digest"])) for layer in manifest["layers"]]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        def add(name: str, data: bytes) -> str:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
            return name

        config_name = add(hashlib.sha256(config).hexdigest() + ".json", config)
        layer_names = [add(hashlib.sha256(layer).hexdigest() + "/layer.tar", layer) for layer in layers]
        add("manifest.json", json.dumps([{"Config": config_name, "RepoTags": [ref], "Layers": layer_names}]).encode())
    return out.getvalue()


# -- the machine's state -------------------------------------------------------

def _save(tool: str) -> str:
    done = run(f"{tool}-save", check=False)
    return done.stdout if done.returncode == 0 else ""


def _parse_save(text: str) -> dict:
    """{table: (policies {chain: policy}, chains [names], rules [lines])}"""
    tables, current = {}, None
    for line in text.splitlines():
        if line.startswith("*"):
            current = tables[line[1:]] = ({}, [], [])
        elif line.startswith(":") and current is not None:
            name, policy = line[1:].split()[:2]
            current[1].append(name)
            if policy != "-":
                current[0][name] = policy
        elif line.startswith("-A ") and current is not None:
            current[2].append(line)
    return tables


def _firewall_undo(before: str, now: str) -> str:
    """An iptables-restore --noflush script taking back every change since
    `before`: added rules, added chains, changed policies. Docker's rules carry
    no mark (a hairpin MASQUERADE or a custom-named bridge's rules don't even
    say "docker"), so nothing narrower is exact."""
    old, script = _parse_save(before), []
    for table, (policies, chains, rules) in _parse_save(now).items():
        old_policies, old_chains, old_rules = old.get(table, ({}, [], []))
        new_chains = [c for c in chains if c not in old_chains and c not in policies]  # user-defined ones
        # a built-in chain of a table iptables-save did not list before had the default policy
        lines = [f":{c} {old_policies.get(c, 'ACCEPT')} [0:0]" for c in policies
                 if policies[c] != old_policies.get(c, "ACCEPT")]
        lines += ["-D" + rule[2:] for rule in rules if rule not in old_rules and rule.split()[1] not in new_chains]
        lines += [f"-F {c}" for c in new_chains] + [f"-X {c}" for c in new_chains]  # flush all before any -X
        if lines:
            script += [f"*{table}", *lines, "COMMIT"]
    return "\n".join(script) + "\n" if script else ""


def _nft_tables() -> set:
    """{"ip filter", ...}: on a machine (or namespace) that had none, the first
    iptables call makes them, and undoing Docker's rules leaves them there."""
    if not shutil.which("nft"):
        return set()
    return {line[len("table "):] for line in run("nft", "list", "tables", check=False).stdout.splitlines()}


def _links() -> set:
    return {line.split(": ")[1].split("@")[0] for line in run("ip", "-o", "link", "show").stdout.splitlines()}


def _cgroup_dirs(parent: str) -> list:
    """Our cgroup and its children in every hierarchy (v1 controllers, named, v2)."""
    tops = [os.path.join("/sys/fs/cgroup", parent)]
    tops += [os.path.join("/sys/fs/cgroup", h, parent) for h in _listdir("/sys/fs/cgroup")]
    return [dirpath for top in tops if os.path.isdir(top) for dirpath, _, _ in os.walk(top)]


def _session_members(sessions: set) -> list:
    pids = []
    for pid in _listdir("/proc"):
        if pid.isdigit():
            stat = _read(f"/proc/{pid}/stat")
            fields = stat.rsplit(")", 1)[-1].split()  # after "pid (comm)": state ppid pgrp session
            if len(fields) > 3 and int(fields[3]) in sessions:
                pids.append(int(pid))
    return pids


def _mounts_under(root: str) -> list:
    prefix = root.rstrip("/") + "/"
    points = [line.split()[1].encode().decode("unicode_escape") for line in _read("/proc/self/mounts").splitlines()]
    return [p for p in points if p == root or p.startswith(prefix)]


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:  # a process or cgroup that went away meanwhile
        return ""


def _listdir(path: str) -> list:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _tail(path: str, lines: int) -> str:
    return f"--- {path}\n" + "\n".join(_read(path).splitlines()[-lines:])


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# -- self-check: python -m tests.engine.dockerd ---------------------------------

if __name__ == "__main__":
    def timed(label, action):
        t0 = time.monotonic()
        result = action()
        print(f"{label:<28}{time.monotonic() - t0:6.2f} s")
        return result

    def echo_hi(d):
        done = d.cli("run", "--rm", "--network", "none", d.image, "echo", "hi")
        assert done.returncode == 0 and done.stdout == "hi\n", (done.returncode, done.stdout, done.stderr)

    def machine():  # what close() must give back (iptables-save minus its timestamp comments)
        rules = [line for tool in ("iptables", "ip6tables") for line in _save(tool).splitlines()
                 if not line.startswith("#")]
        return rules, _links(), _nft_tables(), _read("/proc/sys/net/ipv4/ip_forward")

    before = machine()
    d = timed("start + image load", Dockerd)
    try:
        assert ":FORWARD DROP" in _save("iptables")
        timed("run --rm echo hi", lambda: echo_hi(d))
        d.client.containers.run(d.image, "sleep 600", detach=True, name="rcnit-sleeper", network_mode="none")
        timed("restart (1 running)", d.restart)
        assert d.client.containers.get("rcnit-sleeper").status == "exited"
        timed("run --rm echo hi", lambda: echo_hi(d))
        d.client.containers.get("rcnit-sleeper").start()
        timed("kill -9", d.kill)
        timed("start after kill", d.start)
        timed("run --rm echo hi", lambda: echo_hi(d))
    finally:
        timed("close", d.close)
    assert not os.path.exists(d.root) and not _mounts_under(d.root)
    assert not _session_members(d.sessions) and not _cgroup_dirs(d.cgroup_parent)
    assert machine() == before, "close() did not give the machine back"
    print("ok")
