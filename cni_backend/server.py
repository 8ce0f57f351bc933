"""The thick plug-in daemon: a pre-loaded parent and a pool of workers it forks.

Importing pyroute2 costs ~150 ms; paying it once here makes each CNI call cost
a hand-over to a worker. A worker is a fork of the parent that serves one call
at a time, each on a thread of its own (`own.dispatch_on_a_thread`: the
plug-in may setns(2) freely, and whatever namespace that thread is left in
ends with it), and then waits for the next: a worker's first call pays for the
fork's copy-on-write (~1,200 pages for a bridge ADD, ~10 ms), its later ones
do not. A worker that dies takes only its own call with it; the parent forks
another when a call needs one. A worker retires after `IDLE_S` without a call,
after `CALLS_PER_WORKER` calls, and after a call of a plug-in that starts
processes of its own (`own.FORKED`: rancher-ipsec's charon daemons become
nobody's children, as when every call had a fresh worker).

Bounds: at most `max_workers` workers exist at once (further connections wait
in the listen backlog until one is free), and a worker gives its caller
`timeout` seconds to send the request and to take the reply, so callers that
connect and say nothing cannot keep root workers (each some tens of MB) busy.
Only root (or the daemon's own uid) may call: the socket is mode 0600, and the
parent checks the peer's uid (SO_PEERCRED) as well and answers anyone else with
the CNI error JSON, without a worker. A worker never takes `RANCHER_TRACE` from
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
import time

from . import logfmt, trace, wire
from .invoke import own
from .errors import CNIError, IO_FAILURE
from .plugins import PLUGINS

log = logging.getLogger("rancher-cni")

# 16 workers: far more CNI calls than a host makes at once (a runtime starting
# pods in parallel), and a bounded cost (each worker is a fork of a ~35 MB
# parent). A call beyond it waits for a worker to be free; it is not refused.
MAX_WORKERS = 16
# A worker without a call for this long exits: a host's calls come in bursts
# (pods started or stopped together), and an idle daemon keeps no worker.
IDLE_S = 60.0
# and after this many calls, so that whatever a call might leave behind in
# the process (it should leave nothing) is bounded
CALLS_PER_WORKER = 500
_IDLE, _CALL = b"i", b"c"  # worker -> parent: free again; parent -> worker: a call (its fd attached)
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


def _serve_one(conn: socket.socket, timeout: float = RECEIVE_TIMEOUT_S) -> str | None:
    """Runs in a worker: one call, answered. The plug-in it ran, if any."""
    conn.settimeout(timeout)
    try:
        request = wire.receive_request(conn)
    except TimeoutError:
        log.warning("a caller sent no whole request within %g s: connection closed", timeout)
        return None
    if request is None:
        return None
    plugin, env, stdin, netns_fd, version = request
    try:
        _serve_request(conn, timeout, plugin, env, stdin, netns_fd, version)
    finally:
        if netns_fd is not None:
            os.close(netns_fd)  # a worker serves many calls: none keeps the last one's namespace open
    return plugin


def _serve_request(conn: socket.socket, timeout: float, plugin: str, env: dict, stdin: bytes, netns_fd,
                   version: str) -> None:
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
    stdout, code, stderr = own.dispatch_on_a_thread(plugin, env, stdin, netns_fd)  # it logs the call's line
    signal.signal(signal.SIGIO, signal.SIG_IGN)  # the work is done: a caller closing once answered is no hang-up
    try:
        wire.send_reply(conn, code, stdout, stderr)
    except TimeoutError:
        log.warning("a caller took no reply within %g s: connection closed", timeout)


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


class _Worker:
    """The parent's view of one worker: its pid, its end of their socket
    pair, whether it serves a call, and since when it is free."""

    def __init__(self, pid: int, control: socket.socket):
        self.pid, self.control = pid, control
        self.busy, self.free_since = False, 0.0


def _fork_worker(listener: socket.socket, timeout: float = RECEIVE_TIMEOUT_S, keep_out=()) -> _Worker:
    parent_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid:
        worker_end.close()
        return _Worker(pid, parent_end)
    code = 0
    try:
        parent_end.close()
        listener.close()
        for thing in keep_out:  # the parent's (its start lock, the other workers' pairs), not this worker's
            thing.close() if hasattr(thing, "close") else os.close(thing)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a parent gone: EPIPE on the socket pair, then exit
        signal.set_wakeup_fd(-1)  # the parent's
        _work(worker_end, timeout)
    except BaseException:  # noqa: BLE001 - a worker must never return into the accept loop
        log.exception("worker failed")
        code = 1
    finally:
        os._exit(code)


def _work(control: socket.socket, timeout: float) -> None:
    """A worker's life: the calls the parent hands it, one at a time, until
    the parent closes the pair (it stops, or retires this worker idle), or it
    has served its share, or a call ran a plug-in that starts processes."""
    for served in range(1, CALLS_PER_WORKER + 1):
        try:
            message, fds, _, _ = socket.recv_fds(control, 1, 1)
        except OSError:
            return
        if message != _CALL or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            return
        with socket.socket(fileno=fds[0]) as conn:
            plugin = _serve_one(conn, timeout)
        signal.signal(signal.SIGIO, signal.SIG_IGN)  # that connection is closed: no hang-up to watch for
        if plugin in own.FORKED or served == CALLS_PER_WORKER:
            return  # without saying it is free: the parent hands it nothing more
        try:
            control.send(_IDLE)
        except OSError:
            return


def _hand_over(worker: _Worker, conn: socket.socket) -> bool:
    """Give `conn` to a free worker; False when it is gone (nothing was handed)."""
    try:
        socket.send_fds(worker.control, [_CALL], [conn.fileno()])
    except OSError:
        return False
    worker.busy = True
    return True


def _reap(pool: dict, selector) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        worker = pool.pop(pid, None)
        if worker is not None:
            _close(worker, selector)


def _close(worker: _Worker, selector) -> None:
    try:
        selector.unregister(worker.control)
    except (KeyError, ValueError):
        pass
    worker.control.close()


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
          timeout: float = RECEIVE_TIMEOUT_S, lock_fd: int | None = None, watch=None, idle: float = IDLE_S) -> None:
    """Serve until SIGTERM/SIGINT; removes the socket on the way out (if it is
    still ours). With `lock_fd` (an auto-started daemon's start lock), also
    until the socket file is removed or replaced, or a newer executable calls
    (SIGUSR1 from the worker that declined it). `watch(busy, limit, started)`,
    if given, is called in this process when the count of busy workers
    changes (`started`: 1 when a call was just taken, else 0); `cnm-shim
    serve`'s daemon exports it (cnm_shim/metrics.py). `idle`: seconds a free
    worker is kept for another call."""
    if max_workers < 1 or not timeout > 0 or not idle > 0:
        raise ValueError(f"max_workers must be at least 1, timeout and idle above 0, got {max_workers}, "
                         f"{timeout} and {idle}")
    _preload()
    listener = bind(path)
    ours = _file_identity(path)
    stopping = []
    pool: dict = {}  # pid -> _Worker
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

    def busy() -> int:
        return sum(w.busy for w in pool.values())

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
            before = busy()
            _reap(pool, selector)
            now = time.monotonic()
            for worker in [w for w in pool.values() if not w.busy and now - w.free_since > idle]:
                _close(worker, selector)  # it sees the pair closed and exits; reaped above, later
                del pool[worker.pid]
            if watch is not None and busy() != before:
                _tell(watch, busy(), max_workers, 0)
            can_take = len(pool) < max_workers or any(not w.busy for w in pool.values())
            if accepting != can_take:  # at the cap, callers wait in the backlog
                accepting = can_take
                if accepting:
                    selector.register(listener, selectors.EVENT_READ)
                else:
                    selector.unregister(listener)
            for key, _ in selector.select(timeout=1.0):
                if key.fileobj == wakeup_read:
                    os.read(wakeup_read, 512)
                elif isinstance(key.data, _Worker):
                    _heard_from(key.data, pool, selector, watch, busy, max_workers)
                elif accepting:
                    _take_call(listener, pool, selector, (wakeup_read, wakeup_write), watch, busy, max_workers,
                               timeout, lock_fd)
    finally:
        signal.set_wakeup_fd(-1)
        os.close(wakeup_read)
        os.close(wakeup_write)
        for worker in pool.values():  # a free worker exits at once, a busy one once it has answered
            _close(worker, selector)
        pool.clear()
        selector.close()
        if _file_identity(path) == ours:  # never another daemon's socket, bound over ours since
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        listener.close()
        _reap(pool, selector)
    if stopping and stopping[-1] != 1:
        log.warning("auto-started daemon retiring: %s", stopping[-1])


def _heard_from(worker: _Worker, pool: dict, selector, watch, busy, max_workers: int) -> None:
    """A worker is free again, or gone (the pair closed: it retired or died)."""
    try:
        message = worker.control.recv(16)
    except OSError:
        message = b""
    if message == _IDLE and worker.pid in pool:
        worker.busy, worker.free_since = False, time.monotonic()
    else:
        pool.pop(worker.pid, None)
        _close(worker, selector)
    if watch is not None:
        _tell(watch, busy(), max_workers, 0)


def _take_call(listener, pool: dict, selector, wakeup: tuple, watch, busy, max_workers: int, timeout: float,
               lock_fd) -> None:
    try:
        conn, _ = listener.accept()
    except OSError as exc:
        if exc.errno in (errno.EINTR, errno.EAGAIN):
            return
        raise
    with conn:
        if not _permitted(conn):
            return
        if watch is not None:  # before the hand-over: counted before the caller can have its answer
            _tell(watch, busy() + 1, max_workers, 1)
        # the free worker that served last (its pages are the warmest), else a new one
        for worker in sorted((w for w in pool.values() if not w.busy), key=lambda w: -w.free_since):
            if _hand_over(worker, conn):
                return
            pool.pop(worker.pid, None)
            _close(worker, selector)
        if len(pool) >= max_workers:
            return  # every worker died since the check: the caller sees the connection closed and does its own work
        # what the fork must not keep: the parent's fds, and this connection's copy (it gets its own below)
        parents = [w.control for w in pool.values()] + list(wakeup) + [selector, conn]
        parents += [] if lock_fd is None else [lock_fd]
        worker = _fork_worker(listener, timeout, parents)
        pool[worker.pid] = worker
        selector.register(worker.control, selectors.EVENT_READ, worker)
        if not _hand_over(worker, conn):
            pool.pop(worker.pid, None)
            _close(worker, selector)


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
