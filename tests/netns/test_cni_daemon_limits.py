"""The CNI daemon's bounds (issue 15, item 8): callers that connect and say
nothing cannot keep more than `--max-workers` root workers busy, nor keep any
beyond `--receive-timeout`, and a free worker exits after `--idle-timeout`; a caller that is not root gets the spec's error
JSON (from the executable when the socket's mode keeps it out, from the daemon
when the mode was loosened), never a traceback and never a served call; a
caller's `RANCHER_TRACE` does not make the root worker write where it says.

Each test starts its own daemon (`cnm-shim cni-server`) on a socket of its
own; the calls are rancher-ipam DELs on a temp dataDir, which touch no link.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from cni_backend import install
from tests.processes import process_tree

pytestmark = pytest.mark.netns

NOBODY = 65534
MAX_WORKERS, TIMEOUT_S, IDLE_S = 3, 2, 2


@pytest.fixture
def world(leak_guard):
    if os.geteuid() != 0:
        pytest.skip("needs root (the daemon serves root; the test calls as another uid)")
    # not under pytest's tmp dir (0700): a caller of another uid must reach the socket
    root = tempfile.mkdtemp(prefix="rcni-limits.")
    os.chmod(root, 0o755)
    install.write_executables(os.path.join(root, "bin"))
    daemons = []

    def start(*args, env=None):
        sock = os.path.join(root, f"cni{len(daemons)}.sock")
        log = open(os.path.join(root, f"daemon{len(daemons)}.log"), "w")
        daemon = subprocess.Popen([sys.executable, "-m", "cnm_shim.cli", "cni-server", "--socket", sock, *args],
                                  stdout=subprocess.DEVNULL, stderr=log, env=dict(os.environ, **(env or {})))
        daemons.append(daemon)
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            assert daemon.poll() is None, open(log.name).read()
            assert time.monotonic() < deadline, "the CNI daemon did not start"
            time.sleep(0.05)
        return daemon, sock

    def call(sock, command="DEL", user=None, extra_env=None):
        """A rancher-ipam call through the real executable: (exit code, stdout, stderr)."""
        config = {"cniVersion": "1.1.0", "name": "limits", "type": "rancher-ipam",
                  "ipam": {"type": "rancher-ipam", "ranges": [[{"subnet": "10.199.0.0/24"}]],
                           "dataDir": os.path.join(root, "ipam")}}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RANCHER_CNI_SOCKET": sock, "CNI_COMMAND": command,
               "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_PATH": os.path.join(root, "bin"),
               **(extra_env or {})}
        done = subprocess.run([os.path.join(root, "bin", "rancher-ipam")], input=json.dumps(config).encode(),
                              env=env, capture_output=True, timeout=60, user=user, cwd="/")
        return done.returncode, done.stdout.decode(), done.stderr.decode()

    start.call, start.root = call, root
    yield start
    for daemon in daemons:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    shutil.rmtree(root, ignore_errors=True)


def workers(daemon) -> int:
    return len(process_tree(daemon.pid)) - 1


def closed_by_peer(conn: socket.socket) -> bool:
    try:
        return conn.recv(1, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_idle_connections_keep_at_most_max_workers_and_are_closed_after_the_timeout(world):
    daemon, sock = world("--max-workers", str(MAX_WORKERS), "--receive-timeout", str(TIMEOUT_S),
                         "--idle-timeout", str(IDLE_S))
    idle = []
    try:
        for _ in range(4 * MAX_WORKERS):
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(sock)  # waits in the listen backlog once the workers are all busy
            idle.append(conn)
        most = 0
        deadline = time.monotonic() + 120
        # every connection is served in turn, each by a worker that gives up on it
        while not all(closed_by_peer(c) for c in idle):
            most = max(most, workers(daemon))
            assert most <= MAX_WORKERS, f"{most} workers for idle callers, the cap is {MAX_WORKERS}"
            assert time.monotonic() < deadline, \
                f"idle connections still open: {sum(not closed_by_peer(c) for c in idle)} of {len(idle)}"
            time.sleep(0.05)
        assert most == MAX_WORKERS, "the idle callers never held the workers the cap allows"
    finally:
        for conn in idle:
            conn.close()
    deadline = time.monotonic() + 60
    while workers(daemon):
        assert time.monotonic() < deadline, f"{workers(daemon)} workers left after every caller went"
        time.sleep(0.05)
    code, out, err = world.call(sock)  # and it still serves
    assert code == 0, (out, err)


def test_consecutive_calls_are_served_by_one_worker_kept_for_the_next(world):
    """A worker serves one call at a time and stays for the next one (its
    pages are the warm ones: a fresh fork's first call pays its copy-on-write),
    keeping nothing of the calls it served."""
    daemon, sock = world("--idle-timeout", "60")
    seen = set()
    for _ in range(5):
        code, out, err = world.call(sock)
        assert code == 0, (out, err)
        seen |= set(process_tree(daemon.pid)) - {daemon.pid}
    assert len(seen) == 1, f"five calls one after the other took {len(seen)} workers"
    worker = seen.pop()
    fds = len(os.listdir(f"/proc/{worker}/fd"))
    for _ in range(10):  # each with a namespace fd passed along (the executable opens CNI_NETNS)
        assert world.call(sock, extra_env={"CNI_NETNS": "/proc/self/ns/net"})[0] == 0
    assert set(process_tree(daemon.pid)) - {daemon.pid} == {worker}
    assert len(os.listdir(f"/proc/{worker}/fd")) == fds, "the worker keeps fds of the calls it served"


def test_a_caller_that_is_not_root_gets_the_cni_error_json_from_the_executable(world):
    _, sock = world()
    assert os.stat(sock).st_mode & 0o777 == 0o600
    code, out, err = world.call(sock, command="ADD", user=NOBODY)
    answer = json.loads(out)
    assert code != 0 and answer["code"] == 5 and "permission denied" in answer["msg"], (out, err)
    assert "Traceback" not in err and "Traceback" not in out


def test_a_caller_that_is_not_root_is_refused_by_the_daemon_when_the_socket_mode_lets_it_in(world):
    daemon, sock = world()
    os.chmod(sock, 0o666)  # a loosened mode (an operator's chmod): the daemon's own check still holds
    code, out, err = world.call(sock, command="DEL", user=NOBODY)
    answer = json.loads(out)
    assert code != 0 and answer["code"] == 5, (out, err)
    assert f"serves only root (caller uid {NOBODY})" in answer["msg"], answer
    assert "Traceback" not in err
    assert workers(daemon) == 0
    assert world.call(sock)[0] == 0, "root is still served"


def test_a_callers_rancher_trace_is_not_written_by_the_root_worker(world):
    # the daemon's own tracing (the control file, root's) still works
    control, wanted = os.path.join(world.root, "trace-control"), os.path.join(world.root, "daemon-trace.jsonl")
    with open(control, "w") as f:
        f.write(wanted)
    _, sock = world(env={"RANCHER_TRACE_CONTROL": control})
    target = os.path.join(world.root, "callers-choice")
    with open(os.path.join(world.root, "existing"), "w") as f:
        f.write("precious\n")
    for path in (target, os.path.join(world.root, "existing")):
        code, out, err = world.call(sock, extra_env={"RANCHER_TRACE": path})
        assert code == 0, (out, err)
    assert not os.path.exists(target), open(target).read()
    assert open(os.path.join(world.root, "existing")).read() == "precious\n"
    spans = [json.loads(line) for line in open(wanted)]
    assert any(s["span"] == "plugin" and s["command"] == "DEL" for s in spans), spans
