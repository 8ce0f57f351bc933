"""Zero set-up (issue 18, item 2): the CNI executables, called as a runtime
calls them on a host where nobody started `cnm-shim cni-server`, start the
daemon themselves, detached and exactly once, and a daemon that cannot serve
a call (killed, a stale socket file, another version, a socket that is not
root's) never fails or hangs one: the call does the work itself, and a new
daemon takes over.

The calls use the default socket (/run/rancher-cni/cni.sock, as a runtime's
calls do), so these tests run only in the sandbox, where /run/rancher-cni is
a private tmpfs. This process is made a child subreaper while they run: the
detached daemon, whose parent exits at once, is re-parented to pytest rather
than to init, so that the leak guard sees one that a test left running.
"""

import ctypes
import fcntl
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from cni_backend import install, trace, wire
from tests.conftest import ipam_rows, is_locked, run, unique
from tests.isolation import in_private_namespaces
from tests.processes import process_tree

pytestmark = pytest.mark.netns

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
# spelled out, not taken from cni_backend: what the tests hold the code to
SOCKET = "/run/rancher-cni/cni.sock"
LOCK, LOG = "/run/rancher-cni/cni.sock.lock", "/run/rancher-cni/daemon.log"


def peer_credentials(sock) -> tuple:
    """(pid, uid, gid) of the process listening at the other end."""
    return struct.unpack("3i", sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))


def _subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def daemons() -> list:
    """Auto-started daemons (not their workers) among this run's processes."""
    found = []
    for pid in process_tree(os.getpid())[1:]:
        if "autostart_main" in _cmdline(pid) and _alive(pid):
            parent = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
            if "autostart_main" not in _cmdline(parent):
                found.append(pid)
    return found


def listener_pid() -> int | None:
    """The pid that listens on the default socket (SO_PEERCRED), or None."""
    sock = wire.connect(SOCKET)
    if sock is None:
        return None
    try:
        return peer_credentials(sock)[0]
    finally:
        sock.close()


def wait_for(what: str, check, timeout: float = 60):
    """Not a timing assertion: how long to wait for a daemon to start or end."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.05)
    return value


def lock_is_held() -> bool:
    return is_locked(LOCK)


def stop(pid: int, sig=15) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    reap(pid)


def reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)  # ours as the subreaper
    except ChildProcessError:
        pass


class World:
    def __init__(self, root):
        self.root, self.bin, self.state = root, root / "bin", root / "state"
        install.write_executables(str(self.bin))
        self.bridge = unique("br")
        self.config = {"cniVersion": "1.1.0", "name": unique("net"), "type": "rancher-bridge", "bridge": self.bridge,
                       "isGateway": True,
                       "ipam": {"type": "rancher-ipam", "ranges": [[{"subnet": "10.124.0.0/24"}]],
                                "dataDir": str(self.state)}}
        # as a runtime calls: its own environment, no socket named, auto-start not switched off
        self.env = {k: v for k, v in os.environ.items() if k not in ("RANCHER_CNI_SOCKET", "RANCHER_CNI_AUTOSTART")}
        self.env["CNI_PATH"] = str(self.bin)

    def start(self, command: str, netns: str, container_id: str, **extra) -> subprocess.Popen:
        env = dict(self.env, CNI_COMMAND=command, CNI_CONTAINERID=container_id, CNI_IFNAME="eth0",
                   CNI_NETNS=f"/var/run/netns/{netns}", **extra)
        process = subprocess.Popen([str(self.bin / "rancher-bridge")], env=env, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        process.stdin.write(json.dumps(self.config).encode())
        process.stdin.close()
        process.stdin = None  # written and closed: communicate() only reads
        return process

    def call(self, command: str, netns: str, container_id: str, **extra) -> tuple:
        """(exit code, stdout, the executable's pid)."""
        process = self.start(command, netns, container_id, **extra)
        try:
            out, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the {command} call hung (60 s)")
        finally:
            process.kill()
            process.wait()
        return process.returncode, out.decode(), process.pid

    def served_by(self, command: str, netns: str, container_id: str) -> str:
        """Run one call with tracing on (the control file, which both the
        executable and a daemon's worker read): "daemon" when a process other
        than the executable did the plug-in's work, "itself" otherwise."""
        trace_file = self.root / f"trace-{container_id}-{command}.jsonl"
        with open(trace.DEFAULT_CONTROL, "w") as f:
            f.write(str(trace_file))
        try:
            code, out, pid = self.call(command, netns, container_id)
        finally:
            os.unlink(trace.DEFAULT_CONTROL)
        assert code == 0, out
        spans = [s for s in trace.spans(str(trace_file)) if s["span"] == "plugin" and s["command"] == command]
        assert len(spans) == 1, spans
        return "itself" if spans[0]["pid"] == pid else "daemon"


@pytest.fixture
def world(tmp_path, leak_guard, make_netns):
    if os.geteuid() != 0 or not in_private_namespaces():
        pytest.skip("uses the default CNI daemon socket: only in the sandbox (tests/sandbox.sh), as root")
    assert wire.connect(SOCKET) is None, f"a CNI daemon already listens on {SOCKET}"
    os.chmod(tmp_path, 0o755)
    _subreaper(True)
    w = World(tmp_path)
    w.make_netns = make_netns
    try:
        yield w
    finally:
        for pid in daemons():
            stop(pid)
        for pid in process_tree(os.getpid())[1:]:
            reap(pid)
        _subreaper(False)
        for path in (SOCKET, LOCK, LOG, trace.DEFAULT_CONTROL):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        run("ip", "link", "del", w.bridge, check=False)
        assert ipam_rows(w.state, "ip") == [], "IPAM entries left behind"


def test_twenty_parallel_first_calls_start_exactly_one_daemon_and_all_succeed(world):
    namespaces = [world.make_netns() for _ in range(20)]
    results = {}

    def add(n):
        results[n] = world.call("ADD", namespaces[n], f"c{n}")

    threads = [threading.Thread(target=add, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for n, (code, out, _) in results.items():
        assert code == 0, f"call {n}: {out}"
        assert json.loads(out)["ips"], out
    pid = wait_for("a daemon listening on the default socket", listener_pid)
    time.sleep(1)  # any second daemon (there must be none) would be starting now
    assert daemons() == [pid], f"auto-started daemons: {[(p, _cmdline(p)[:80]) for p in daemons()]}"
    assert lock_is_held(), "the daemon does not hold the start lock"
    log = open(LOG).read()
    assert log.count("started by the first CNI call") == 1, log
    # and it serves the next calls
    assert world.served_by("DEL", namespaces[0], "c0") == "daemon"
    for n in range(1, 20):
        code, out, _ = world.call("DEL", namespaces[n], f"c{n}")
        assert code == 0, out
    assert daemons() == [pid]


def test_a_killed_daemon_and_its_stale_socket_never_fail_a_call_and_a_new_daemon_takes_over(world):
    a, b, c = world.make_netns(), world.make_netns(), world.make_netns()
    assert world.call("ADD", a, "ca")[0] == 0
    first = wait_for("the first daemon", listener_pid)
    os.kill(first, 9)
    wait_for("the killed daemon to end", lambda: not _alive(first))
    reap(first)
    assert os.path.exists(SOCKET), "no stale socket file left to test with"
    code, out, _ = world.call("ADD", b, "cb")  # the socket file is there, nobody listens
    assert code == 0, out
    second = wait_for("a new daemon", listener_pid)
    assert second != first and daemons() == [second]
    assert world.served_by("ADD", c, "cc") == "daemon"
    for netns, cid in ((a, "ca"), (b, "cb"), (c, "cc")):
        code, out, _ = world.call("DEL", netns, cid)
        assert code == 0, out


def test_a_daemon_of_another_version_is_not_used_and_is_replaced(world):
    """As after an upgrade: the daemon the old executables started still runs
    the old code. Here that daemon is the real daemon code with another
    version string, started as the executables start it (the lock taken)."""
    a, b = world.make_netns(), world.make_netns()
    lock_fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    code = ("import sys; from cni_backend import wire; wire.VERSION = '1:an-older-install'; "
            "from cni_backend.server import autostart_main; autostart_main(int(sys.argv[1]))")
    old = subprocess.Popen([sys.executable, "-c", code, str(lock_fd)], pass_fds=(lock_fd,), start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=open(world.root / "old.log", "w"))
    os.close(lock_fd)
    try:
        assert wait_for("the older daemon", listener_pid) == old.pid
        assert world.served_by("ADD", a, "ca") == "itself", "the call was served by a daemon of another version"
        old.wait(timeout=60)  # it retires for the newer executable
        code, out, _ = world.call("ADD", b, "cb")  # ... which finds no daemon: starts the current one
        assert code == 0, out
        new = wait_for("the current version's daemon", listener_pid)
        assert new != old.pid and daemons() == [new]
        assert world.served_by("DEL", a, "ca") == "daemon"
        assert world.call("DEL", b, "cb")[0] == 0
    finally:
        old.kill()
        old.wait()


def test_a_socket_that_is_not_roots_gets_nothing_and_the_call_does_not_hang(world):
    """Someone other than root listening where the daemon's socket is: the
    call must not hand it the call (env, stdin, the netns fd), nor wait on it."""
    netns = world.make_netns()
    os.makedirs(os.path.dirname(SOCKET), exist_ok=True)
    # beside the socket (a rename stays on one file system), where nobody can reach it
    spot = tempfile.mkdtemp(prefix="rcnit-impostor.", dir=os.path.dirname(SOCKET))
    os.chmod(spot, 0o777)
    got = os.path.join(spot, "got")
    impostor = subprocess.Popen(
        [sys.executable, "-c",
         "import socket, sys; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1] + '/s'); s.listen(8); "
         "open(sys.argv[1] + '/ready', 'w').close()\n"
         "while True:\n c, _ = s.accept(); open(sys.argv[1] + '/got', 'ab').write(c.recv(65536) or b'-')",
         spot], user=65534, cwd="/")
    try:
        wait_for("the impostor", lambda: os.path.exists(os.path.join(spot, "ready")))
        os.rename(os.path.join(spot, "s"), SOCKET)
        probe = wire.connect(SOCKET)
        assert peer_credentials(probe)[1] == 65534
        probe.close()
        wait_for("the impostor to take our probe", lambda: os.path.exists(got))
        os.unlink(got)
        code, out, _ = world.call("ADD", netns, "c1")
        assert code == 0, out
        assert world.call("DEL", netns, "c1")[0] == 0
        time.sleep(0.5)  # what the impostor got, it has written by now
        received = open(got, "rb").read() if os.path.exists(got) else b""
        assert received.strip(b"-") == b"", f"the call was sent to the impostor: {received[:80]}"
        assert daemons() == [], "a daemon started over a socket someone else listens on"
    finally:
        impostor.kill()
        impostor.wait()
        shutil.rmtree(spot, ignore_errors=True)


def test_switched_off_no_daemon_starts(world):
    netns = world.make_netns()
    code, out, _ = world.call("ADD", netns, "c1", RANCHER_CNI_AUTOSTART="0")
    assert code == 0, out
    time.sleep(1)
    assert daemons() == [] and listener_pid() is None and not lock_is_held()
    assert world.call("DEL", netns, "c1", RANCHER_CNI_AUTOSTART="0")[0] == 0
