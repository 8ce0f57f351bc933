"""`cnm-shim serve` as a process: it stops cleanly on SIGTERM and SIGINT (no
process and no socket of its own left), it leaves alone what it did not
start, and it refuses to take over sockets another server still answers on.

Each test runs its own serve on a plug-in dir of its own (the engine
fixture's serve keeps /run/docker/plugins); no dockerd is needed to watch a
process stop, so none is started here.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.processes import identities, process_tree, still_running
from tests.engine.conftest import Shim
from tests.engine.helpers import post_unix

pytestmark = pytest.mark.engine

ACTIVATED = (200, {"Implements": ["NetworkDriver", "IpamDriver"]})


@pytest.fixture
def serves(tmp_path):
    """Makes Shims on one private plug-in dir; kills whatever of theirs is left."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    made = []

    def make(name="a", **kw):
        root = tmp_path / name
        root.mkdir()
        shim = Shim(root, plugin_dir=str(tmp_path / "plugins"), **kw)
        made.append((shim, identities(process_tree(shim.process.pid))))
        return shim

    yield make
    for shim, processes in made:
        for pid in still_running(processes):
            os.kill(pid, signal.SIGKILL)
        shim.stop()


def wait_for_tree(root_pid, count: int, marker: str, timeout=30) -> list:
    """Until `root_pid` has `count` processes under it (itself included), one
    with `marker` in its command line; their pids."""
    deadline = time.monotonic() + timeout
    while True:
        tree = process_tree(root_pid)
        lines = []
        for pid in tree:
            try:
                lines.append(open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace"))
            except OSError:
                continue
        if len(tree) >= count and any(marker in line for line in lines):
            return tree
        assert time.monotonic() < deadline, f"under {root_pid}: {lines}"
        time.sleep(0.1)


@pytest.fixture
def engine_that_never_answers(tmp_path):
    """A stand-in for a hung dockerd: a socket that takes connections and never
    answers, so serve's restart-stranded child is still running when we stop."""
    path = str(tmp_path / "hung-docker.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    yield f"unix://{path}"
    listener.close()


@pytest.mark.parametrize("sig,to_group", [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGINT, True)],
                         ids=["SIGTERM", "SIGINT", "Ctrl-C: SIGINT to the foreground process group"])
def test_serve_stops_on_a_signal_leaving_no_process_and_no_socket(serves, engine_that_never_answers, sig, to_group):
    shim = serves(docker_host=engine_that_never_answers)
    # the master, 3 workers, the CNI daemon, the ipsec agent, the restart-stranded pass
    processes = identities(wait_for_tree(shim.process.pid, 7, "restart-stranded"))
    assert any("ipsec-agent" in open(f"/proc/{pid}/cmdline").read() for pid in processes), processes
    assert all(os.path.exists(path) for path in shim.sockets())
    assert post_unix(shim.socket, "Plugin.Activate") == ACTIVATED

    if to_group:
        os.killpg(shim.process.pid, sig)  # the Shim runs serve in a session, its group, of its own
    else:
        shim.process.send_signal(sig)
    assert shim.process.wait(timeout=120) == 0, shim.log()

    deadline = time.monotonic() + 10  # init reaps what was reparented to it (TESTING.md: ~1-2 s)
    while still_running(processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert still_running(processes) == [], shim.log()
    assert [path for path in shim.sockets() if os.path.exists(path)] == []
    assert os.listdir(shim.plugin_dir) == []


def test_serve_leaves_a_cni_daemon_it_did_not_start_running(serves, tmp_path):
    """A CNI daemon already listening is used, not owned: it runs on, with its
    socket, after serve stops."""
    cni_socket = str(tmp_path / "theirs.sock")
    theirs = subprocess.Popen([sys.executable, "-m", "cnm_shim.cli", "cni-server", "--socket", cni_socket],
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(cni_socket):
            assert theirs.poll() is None and time.monotonic() < deadline, "their CNI daemon did not start"
            time.sleep(0.05)
        shim = serves(cni_socket=cni_socket)
        assert theirs.pid not in process_tree(shim.process.pid)
        shim.process.send_signal(signal.SIGTERM)
        assert shim.process.wait(timeout=120) == 0, shim.log()
        assert theirs.poll() is None, "their CNI daemon was stopped"
        assert os.path.exists(cni_socket), "their CNI daemon's socket was removed"
        assert os.listdir(shim.plugin_dir) == []
    finally:
        theirs.terminate()
        theirs.wait(timeout=30)


def test_a_second_serve_refuses_while_the_first_answers_and_takes_over_a_stale_socket(serves):
    first = serves("first")
    argv = [sys.executable, "-m", "cnm_shim.cli", "serve", "--plugin-dir", first.plugin_dir,
            "--state-dir", str(first.root / "second-state"), "--run-dir", str(first.root / "second-run"),
            "--ipam-data-dir", str(first.root / "second-ipam"), "--cni-socket", str(first.root / "second-cni.sock"),
            "--docker-host", ""]
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert f"a server already answers on {first.socket}" in refused.stderr, refused.stderr
    assert post_unix(first.socket, "Plugin.Activate") == ACTIVATED, "the first one still answers"
    assert not os.path.exists(first.root / "second-cni.sock"), "the refused one started nothing"

    first.kill9(remove_sockets=False)  # what a crash leaves: socket files nobody answers on
    assert os.path.exists(first.socket)
    second = serves("second")
    assert post_unix(second.socket, "Plugin.Activate") == ACTIVATED
    assert f"{first.socket}: nobody answers on it" in (second.root / "shim.log").read_text()


def test_a_stop_answers_every_call_already_made_including_queued_ones(serves):
    """Calls in progress and calls still in the listen queue when SIGTERM comes
    are all answered: closing a queue unserved resets those connections, and
    Docker re-sends such a call with an empty body. Five requests are held
    half-written (3 workers: at least two of them wait in the queue), one
    complete request queues behind them; then SIGTERM; then the halves are
    finished."""
    shim = serves()
    request = (b"POST /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\nContent-Length: 0\r\n"
               b"Connection: close\r\n\r\n")
    half = len(request) // 2
    held = []
    for _ in range(5):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(60)
        conn.connect(shim.socket)
        conn.sendall(request[:half])
        held.append(conn)
    queued = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    queued.settimeout(60)
    queued.connect(shim.socket)
    queued.sendall(request)
    held.append(queued)
    try:
        shim.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30  # the master removes the socket files first
        while os.path.exists(shim.socket):
            assert time.monotonic() < deadline, "the socket file stayed"
            time.sleep(0.05)
        for conn in held[:-1]:
            conn.sendall(request[half:])
        answers = []
        for conn in held:
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
            answers.append(reply.split(b"\r\n", 1)[0])
        assert answers == [b"HTTP/1.1 200 OK"] * 6
    finally:
        for conn in held:
            conn.close()
    assert shim.process.wait(timeout=120) == 0, shim.log()


def test_a_20_mb_body_is_refused_on_the_real_socket_with_err_and_the_server_goes_on(serves):
    """The body cap (app.py MAX_BODY_BYTES) through gunicorn: 413 with `Err`,
    answered before the body is read (the sender may see its pipe closed)."""
    shim = serves()
    body = b'{"NetworkID": "' + b"a" * (20 << 20) + b'"}'
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(60)
        conn.connect(shim.socket)
        try:
            conn.sendall(f"POST /NetworkDriver.CreateNetwork HTTP/1.1\r\nHost: plugin\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed without reading the rest: what the cap is for
        reply = b""
        with contextlib.suppress(ConnectionResetError):  # the reply is read first, then the reset
            while chunk := conn.recv(65536):
                reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head and int(head.split()[1]) == 413, reply[:500]
    assert "larger than the plug-in accepts" in json.loads(payload)["Err"]
    assert post_unix(shim.socket, "Plugin.Activate") == ACTIVATED
