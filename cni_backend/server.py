"""The thick plug-in daemon: a pre-loaded parent that forks one worker per call.

Importing pyroute2 costs ~150 ms; paying it once here makes each CNI call cost
a fork. A worker is a single-threaded process like the executable would be, so
it may setns(2) freely, and a worker that dies takes only its own call with it.

Bounds: at most `max_workers` workers run at once (further connections wait
in the listen backlog until one ends), and a worker gives its caller
`timeout` seconds to send the request and to take the reply, so callers that
connect and say nothing cannot keep root workers (each some tens of MB) alive.
Only root (or the daemon's own uid) may call: the socket is mode 0600, and the
parent checks the peer's uid (SO_PEERCRED) as well and answers anyone else with
the CNI error JSON, without forking. A worker never takes `RANCHER_TRACE` from
the call's environment: it would append, as root, to any file a caller names
(tracing the daemon is the control file's job, see trace.py).

Before any work a worker answers the handshake (wire.py): a caller whose
executable is another version, or that is in another network namespace than
the daemon, is declined and does the work itself. A daemon the executables
started themselves (`autostart_main`, zero set-up) also retires when a newer
executable calls (a new daemon takes over on the next call), and when its
socket file was removed or replaced (by `cnm-shim serve`'s daemon, say): it
never unlinks a socket file that is not its own.
"""

import errno
import fcntl
import json
import logging
import os
import select
import selectors
import signal
import socket
import struct

from . import logfmt, skel, trace, wire
from .invoke import own
from .errors import CNIError, IO_FAILURE
from .plugins import PLUGINS, load

log = logging.getLogger("rancher-cni")

# 16 workers: far more CNI calls than a host makes at once (a runtime starting
# pods in parallel), and a bounded cost (each worker is a fork of a ~35 MB
# parent). A call beyond it waits for a worker to end; it is not refused.
MAX_WORKERS = 16
# A caller sends its whole request right after connecting (front.py); 10 s is
# far more than that takes, even for the largest stdin.
RECEIVE_TIMEOUT_S = 10.0
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _preload() -> None:
    own.warm()  # the workers are its forks


_autostarted = False  # set by autostart_main: this daemon retires for a newer executable


def _netns_identity(pid) -> tuple | None:
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _declined(conn: socket.socket, version: str) -> bytes | None:
    """The handshake's refusal for this caller, or None when it is served here."""
    if version != wire.VERSION:
        log.warning("declined a call from an executable of another version (%s; this daemon is %s)%s",
                    version or "before the handshake", wire.VERSION,
                    ": retiring, a new daemon takes over" if _autostarted else "")
        if _autostarted:
            os.kill(os.getppid(), signal.SIGUSR1)
        return wire.OLD_VERSION
    creds = wire.peer_credentials(conn)
    theirs = _netns_identity(creds[0]) if creds else None
    if theirs is not None and theirs != _netns_identity("self"):
        # its "host" is another namespace than ours. An auto-started daemon
        # whose first caller ran in some other namespace (`ip netns exec`)
        # retires for a caller in init's: the next call starts one there
        if _autostarted and theirs == _netns_identity(1):
            log.warning("declined a call from init's network namespace: retiring, a new daemon takes over there")
            os.kill(os.getppid(), signal.SIGUSR1)
        return wire.OTHER_NETNS
    return None


def _serve_one(conn: socket.socket, timeout: float = RECEIVE_TIMEOUT_S) -> None:
    """Runs in the forked worker."""
    conn.settimeout(timeout)
    try:
        request = wire.receive_request(conn)
    except TimeoutError:
        log.warning("a caller sent no whole request within %g s: connection closed", timeout)
        return
    if request is None:
        return
    plugin, env, stdin, netns_fd, version = request
    # the caller's request ID (the shim's, through our executable), else one
    # made here: on this worker's lines and the plug-in's (skel.dispatch)
    env[logfmt.REQUEST_ENV] = logfmt.bind(env.get(logfmt.REQUEST_ENV))
    _die_with_caller(conn)
    refusal = _declined(conn, version)
    if refusal is not None:
        signal.signal(signal.SIGIO, signal.SIG_IGN)  # nothing to stop: the caller may close once answered
        conn.sendall(refusal)
        return
    conn.sendall(wire.ACCEPTED)
    env.pop(trace.ENV, None)  # the caller's choice of file would be appended to as root
    if plugin not in PLUGINS:
        wire.send_reply(conn, 1, "", f"unknown plug-in {plugin!r}\n")
        return
    stdout, code, stderr = run_plugin(plugin, env, stdin, netns_fd)  # it logs the call's line
    signal.signal(signal.SIGIO, signal.SIG_IGN)  # the work is done: a caller closing once answered is no hang-up
    try:
        wire.send_reply(conn, code, stdout, stderr)
    except TimeoutError:
        log.warning("a caller took no reply within %g s: connection closed", timeout)


def run_plugin(plugin: str, env: dict, stdin: bytes, netns_fd=None) -> tuple:
    """One CNI call of our own plug-in, in this process: (stdout, exit code,
    stderr), exactly what the executable would print and return. The daemon's
    workers call it; so may any process that has the plug-ins loaded (it
    enters namespaces with setns(2): single-threaded processes only)."""
    return skel.dispatch(load(plugin), env, stdin, netns_fd)


def _die_with_caller(conn: socket.socket) -> None:
    """End this worker as soon as its caller's end of the connection closes.

    A runtime that gives up on a call kills the plug-in, then calls DEL. The
    executable dies with it; the worker serving it must too, or it would go on
    with an ADD after the DEL and leave what it made behind. The kernel sends
    SIGIO on the socket's state changes (O_ASYNC); the handler ends the worker
    only on a hang-up, which is how a killed caller looks (our callers never
    shut down their half while waiting for the reply)."""
    def exit_on_hangup(_signum=None, _frame=None):
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLHUP)
        if any(events & select.POLLHUP for _, events in poller.poll(0)):
            log.warning("the caller went away mid-call: worker ended, as a killed plug-in would be")
            os._exit(1)

    signal.signal(signal.SIGIO, exit_on_hangup)
    fcntl.fcntl(conn.fileno(), fcntl.F_SETOWN, os.getpid())
    fcntl.fcntl(conn.fileno(), fcntl.F_SETFL, fcntl.fcntl(conn.fileno(), fcntl.F_GETFL) | os.O_ASYNC)
    exit_on_hangup()  # a caller gone before O_ASYNC was set sent no signal


def _peer_uid(conn: socket.socket) -> int | None:
    try:
        return _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))[1]
    except OSError:
        return None


def _permitted(conn: socket.socket) -> bool:
    """Root, or the uid the daemon runs as; anyone else gets the CNI error JSON
    (sent without blocking: the parent must never wait on a caller)."""
    uid = _peer_uid(conn)
    if uid in (0, os.geteuid()):
        return True
    error = CNIError(IO_FAILURE, f"permission denied: the rancher-cni daemon serves only root (caller uid {uid})",
                     "CNI plug-ins are run by the container runtime as root")
    out = json.dumps(error.to_json("1.1.0")).encode()
    try:
        conn.send(wire.ACCEPTED + wire.reply_bytes(1, out, b""), socket.MSG_DONTWAIT)
    except OSError:
        pass
    log.warning("refused a call from uid %s", uid)
    return False


def _fork_worker(conn: socket.socket, listener: socket.socket, timeout: float = RECEIVE_TIMEOUT_S,
                 keep_out=()) -> int:
    pid = os.fork()
    if pid:
        conn.close()
        return pid
    code = 0
    try:
        listener.close()
        for fd in keep_out:  # the start lock is the daemon's, not its workers'
            os.close(fd)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)  # the parent's
        _serve_one(conn, timeout)
    except BaseException:  # noqa: BLE001 - a worker must never return into the accept loop
        log.exception("worker failed")
        code = 1
    finally:
        os._exit(code)


def _reap(workers: set) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            workers.clear()
            return
        if pid == 0:
            return
        workers.discard(pid)


def bind(path: str) -> socket.socket:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket is root's only: it runs netlink for callers
    try:
        listener.bind(path)
    finally:
        os.umask(old_umask)
    listener.listen(128)
    return listener


def _file_identity(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _tell(watch, busy: int, limit: int, started: int) -> None:
    try:
        watch(busy, limit, started)
    except Exception:  # noqa: BLE001 - counting never stops the daemon
        log.exception("the workers' watcher failed")


def serve(path: str = wire.DEFAULT_SOCKET, ready=None, max_workers: int = MAX_WORKERS,
          timeout: float = RECEIVE_TIMEOUT_S, lock_fd: int | None = None, watch=None) -> None:
    """Serve until SIGTERM/SIGINT; removes the socket on the way out (if it is
    still ours). With `lock_fd` (an auto-started daemon's start lock), also
    until the socket file is removed or replaced, or a newer executable calls
    (SIGUSR1 from the worker that declined it). `watch(busy, limit, started)`,
    if given, is called in this process when the count of busy workers
    changes (`started`: 1 when a worker was just forked for a call, else 0);
    `cnm-shim serve`'s daemon exports it (cnm_shim/metrics.py)."""
    if max_workers < 1 or not timeout > 0:
        raise ValueError(f"max_workers must be at least 1 and timeout above 0, got {max_workers} and {timeout}")
    _preload()
    listener = bind(path)
    ours = _file_identity(path)
    stopping = []
    workers: set = set()
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    if lock_fd is not None:
        signal.signal(signal.SIGUSR1, lambda *_: stopping.append("a newer executable called"))
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a worker's end wakes the select (a free slot)
    # a signal wakes the select below at once (it would otherwise sleep on):
    # a stopping daemon must not look alive to a `cnm-shim serve` starting anew
    wakeup_read, wakeup_write = os.pipe()
    os.set_blocking(wakeup_write, False)
    signal.set_wakeup_fd(wakeup_write)
    log.info("rancher-cni daemon listening on %s", path)
    if ready:
        ready()
    if watch is not None:
        _tell(watch, 0, max_workers, 0)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wakeup_read, selectors.EVENT_READ)
    accepting = True
    try:
        while not stopping:
            if lock_fd is not None and _file_identity(path) != ours:
                log.warning("the socket file %s was removed or replaced: this auto-started daemon ends", path)
                break
            before = len(workers)
            _reap(workers)
            if watch is not None and len(workers) != before:
                _tell(watch, len(workers), max_workers, 0)
            if accepting != (len(workers) < max_workers):  # at the cap, callers wait in the backlog
                accepting = not accepting
                if accepting:
                    selector.register(listener, selectors.EVENT_READ)
                else:
                    selector.unregister(listener)
            for key, _ in selector.select(timeout=1.0):
                if key.fileobj == wakeup_read:
                    os.read(wakeup_read, 512)
                    continue
                try:
                    conn, _ = listener.accept()
                except OSError as exc:
                    if exc.errno in (errno.EINTR, errno.EAGAIN):
                        continue
                    raise
                if not _permitted(conn):
                    conn.close()
                    continue
                if watch is not None:  # before the fork: counted before the caller can have its answer
                    _tell(watch, len(workers) + 1, max_workers, 1)
                workers.add(_fork_worker(conn, listener, timeout, () if lock_fd is None else (lock_fd,)))
    finally:
        signal.set_wakeup_fd(-1)
        os.close(wakeup_read)
        os.close(wakeup_write)
        selector.close()
        if _file_identity(path) == ours:  # never another daemon's socket, bound over ours since
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        listener.close()
        _reap(workers)
    if stopping and stopping[-1] != 1:
        log.warning("auto-started daemon retiring: %s", stopping[-1])


def autostart_main(lock_fd: int, priority: int | None = None) -> None:
    """The daemon the first call on a host starts (front.py), detached, with
    the start lock already taken (`lock_fd`): it keeps the lock while it
    runs, so no second one starts, and the kernel drops it when it ends,
    however it ends. Logs (warnings up) to its own file: its stderr.
    `priority`: the niceness to serve at, once its socket is bound."""
    global _autostarted
    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours already (inherited); fails loudly if not
    os.set_inheritable(lock_fd, False)
    _autostarted = True
    logfmt.setup(logging.WARNING)  # its environment is clean: text, our format
    log.warning("started by the first CNI call (zero set-up), version %s, on %s", wire.VERSION, wire.DEFAULT_SOCKET)

    def ready():
        if priority is not None:  # started at a lower priority (front.py); serving at the caller's
            try:
                os.setpriority(os.PRIO_PROCESS, 0, priority)
            except OSError:
                pass
    serve(wire.DEFAULT_SOCKET, ready=ready, lock_fd=lock_fd)
