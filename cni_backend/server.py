"""The thick plug-in daemon: a pre-loaded parent that forks one worker per call.

Importing pyroute2 costs ~150 ms; paying it once here makes each CNI call cost
a fork. A worker is a single-threaded process like the executable would be, so
it may setns(2) freely, and a worker that dies takes only its own call with it.
"""

import errno
import logging
import os
import selectors
import signal
import socket

from . import skel, wire
from .plugins import PLUGINS, load

log = logging.getLogger("rancher-cni")


def _preload() -> None:
    for name in PLUGINS:
        load(name)
    from .net import netlink  # noqa: F401  (pyroute2 itself)


def _serve_one(conn: socket.socket) -> None:
    """Runs in the forked worker."""
    request = wire.receive_request(conn)
    if request is None:
        return
    plugin, env, stdin, netns_fd = request
    if plugin not in PLUGINS:
        wire.send_reply(conn, 1, "", f"unknown plug-in {plugin!r}\n")
        return
    stdout, code, stderr = skel.dispatch(load(plugin), env, stdin, netns_fd)
    log.info("%s %s %s/%s -> %s", plugin, env.get("CNI_COMMAND"), env.get("CNI_CONTAINERID", "")[:12],
             env.get("CNI_IFNAME", ""), code)
    wire.send_reply(conn, code, stdout, stderr)


def _fork_worker(conn: socket.socket, listener: socket.socket) -> None:
    pid = os.fork()
    if pid:
        conn.close()
        return
    code = 0
    try:
        listener.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)  # the parent's
        _serve_one(conn)
    except BaseException:  # noqa: BLE001 - a worker must never return into the accept loop
        log.exception("worker failed")
        code = 1
    finally:
        os._exit(code)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


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


def serve(path: str = wire.DEFAULT_SOCKET, ready=None) -> None:
    """Serve until SIGTERM/SIGINT; removes the socket on the way out."""
    _preload()
    listener = bind(path)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    # a signal wakes the select below at once (it would otherwise sleep on):
    # a stopping daemon must not look alive to a `cnm-shim serve` starting anew
    wakeup_read, wakeup_write = os.pipe()
    os.set_blocking(wakeup_write, False)
    signal.set_wakeup_fd(wakeup_write)
    log.info("rancher-cni daemon listening on %s", path)
    if ready:
        ready()
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wakeup_read, selectors.EVENT_READ)
    try:
        while not stopping:
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
                _fork_worker(conn, listener)
            _reap()
    finally:
        signal.set_wakeup_fd(-1)
        os.close(wakeup_read)
        os.close(wakeup_write)
        selector.close()
        listener.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        _reap()
