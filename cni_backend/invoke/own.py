"""Running our own plug-ins from a process that has them loaded already.

The Docker side (the shim's gunicorn workers) runs CNI as a runtime does,
through `invoke.api.CNI`: same config per plug-in, same env, same cache, same
results. What an exec of one of our executables would do (start an
interpreter, hand the call to the CNI daemon, whose worker runs it) is done
here, in the calling process, which has pyroute2 and the plug-ins imported:
`skel.dispatch`, as the daemon's worker runs it, on a thread of its own
(`dispatch_on_a_thread`, which the daemon's workers use too).

In the caller, not in a fork of it: a fresh fork pays for every page it and
its parent write afterwards (copy on write, ~1,200 pages for a bridge ADD):
~11 ms of that ADD's ~27, where it takes ~16 on a thread. What the fork
gave, the thread keeps:
- setns(2) moves only the calling thread: the plug-in's thread enters
  namespaces, and whatever namespace it is left in ends with it; the caller's
  own thread never moves;
- an exception that escapes the plug-in (a bug: `skel.dispatch` answers every
  error as CNI error JSON) is the plug-in failure, exit code 70 and its
  traceback, as a crashed child's, never an exception in the caller;
- the timeout holds: a call still running after it is answered as a timeout,
  and `on_stuck` is told, so that the caller retires (the shim's worker exits
  after its answer, releasing whatever the thread holds, and gunicorn starts
  another), since a thread cannot be killed.
The plug-ins keep no state between calls in the process (no module caches of
the host's state; each call opens its own netlink sockets, store and locks,
`tests/netns/test_in_process.py` counts fds, threads and namespaces over many
calls), and a Docker worker makes one call at a time.

rancher-ipsec still runs in a forked child (`FORKED`): it starts and stops
charon daemons, which must not become children of the caller. The child
dies with its caller (PR_SET_PDEATHSIG), as the daemon's worker dies with a
caller that went away.

Only an executable that would run this very code takes the short cut: a
wrapper `install.write_executables` wrote for one of `plugins.PLUGINS` that
puts this package's directory on its path. Anything else (a third-party
plug-in, the reference plug-ins, our executables from another installation)
is executed as before (`execute.run_process`).
"""

import ast
import ctypes
import gc
import json
import os
import select
import signal
import subprocess
import threading
import time
import traceback

from .execute import PLUGIN_TIMEOUT_S, run_process

PR_SET_PDEATHSIG = 1
# Plug-ins run in a forked child even here: they start processes that must
# not be the caller's children (rancher-ipsec's charon daemons).
FORKED = frozenset({"rancher-ipsec"})
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_WRAPPER_CALL = "from cni_backend.front import main; sys.exit(main({plugin!r}))"
# the gunicorn worker's handlers: a child takes the defaults back
_RESET = ("SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGCHLD", "SIGTTIN",
          "SIGTTOU", "SIGPIPE", "SIGIO", "SIGALRM")


# Told (with the plug-in's name) when a call outlives its timeout: the process
# holds a thread it cannot stop. The shim's workers retire (cnm_shim/server.py).
_on_stuck = None


def set_on_stuck(hook) -> None:
    global _on_stuck
    _on_stuck = hook


def warm() -> None:
    """Import every plug-in of ours and build pyroute2's message parsers,
    which it builds on first use (~10 ms of a call's first netlink request),
    and load libnftables (~1 ms), in the process that runs the plug-ins:
    once, not in its first call; and from then on keep each IPAM store file
    its calls use open between them (ipam/store.py, keep_files_open), and an
    iptables-restore running for their rules (net/kept_restore.py). Then freeze
    what is loaded, so the collections leave those objects (and the pages a
    fork shares with this process) alone."""
    from ..ipam import store
    from ..net import kept_restore, libnft, netlink
    store.keep_files_open()
    kept_restore.enable()
    libnft.available()
    from ..plugins import PLUGINS, load
    for name in PLUGINS:
        load(name)
    with netlink.socket_in() as ipr:
        ipr.link("get", index=1)
        ipr.get_addr(index=1)
        ipr.get_routes(oif=1)
    gc.collect()
    gc.freeze()


def own_plugin(path: str) -> str | None:
    """The plug-in name when `path` is our wrapper running this package, else None."""
    from ..plugins import PLUGINS
    name = os.path.basename(path)
    if name not in PLUGINS:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(4096)
    except (OSError, UnicodeDecodeError):
        return None
    lines = text.strip().splitlines()
    if len(lines) != 3 or lines[2] != _WRAPPER_CALL.format(plugin=name) or not lines[1].startswith("import sys; "):
        return None
    prefix = "import sys; sys.path[:0] = "
    try:
        paths = ast.literal_eval(lines[1][len(prefix):]) if lines[1].startswith(prefix) else []
    except (ValueError, SyntaxError):
        return None
    same = any(isinstance(p, str) and os.path.realpath(p) == os.path.realpath(_PACKAGE_PARENT) for p in paths)
    return name if same else None


def _child(plugin: str, env: dict, stdin: bytes, out_fd: int, parent: int) -> None:
    code = 0
    try:
        for name in _RESET:
            signal.signal(getattr(signal, name), signal.SIG_DFL)
        try:
            signal.set_wakeup_fd(-1)
        except ValueError:
            pass
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the caller died before the prctl
            os._exit(1)
        from .. import skel
        from ..plugins import load
        stdout, exit_code, stderr = skel.dispatch(load(plugin), env, stdin)
        data = json.dumps([exit_code, stdout, stderr]).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(out_fd, view):]
        os.close(out_fd)  # the caller's EOF now, not after this process's teardown
    except BaseException:  # noqa: BLE001 - the child never returns into the caller's code
        try:
            os.write(2, traceback.format_exc().encode(errors="replace"))
        except OSError:
            pass
        code = 70
    finally:
        os._exit(code)


def run_forked(plugin: str, env: dict, stdin: bytes, timeout: float = PLUGIN_TIMEOUT_S) -> tuple:
    """(exit code, stdout, stderr) of `plugin` run in a forked child, as run_process gives them."""
    read_fd, write_fd = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(plugin, env, stdin, write_fd, parent)
    os.close(write_fd)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pid = 0
                raise subprocess.TimeoutExpired([plugin], timeout)
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except BaseException:
        if pid:  # a signal's exception mid-read: the child ends its call, as a caller of an executable waits
            os.waitpid(pid, 0)
        raise
    finally:
        os.close(read_fd)
    try:
        exit_code, stdout, stderr = json.loads(b"".join(chunks))
    except (ValueError, TypeError):
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            what = f"was killed by signal {os.WTERMSIG(status)}"
        else:
            what = f"ended with exit code {os.waitstatus_to_exitcode(status)} and no answer"
        return 1, b"", f"the forked {plugin} {what}".encode()
    _reap_later(pid)
    return exit_code, stdout.encode(), stderr.encode()


def _reap_later(pid: int) -> None:
    """Reap a child that answered. Its exit (unmapping a copy of the
    worker's memory, closing its sockets) takes a few milliseconds the
    caller need not wait for: a thread waits for it instead."""
    if os.waitpid(pid, os.WNOHANG)[0] == 0:
        threading.Thread(target=os.waitpid, args=(pid, 0), name=f"reap-{pid}", daemon=True).start()


def dispatch_on_a_thread(plugin: str, env: dict, stdin: bytes, netns_fd=None, timeout: float | None = None) -> tuple:
    """`skel.dispatch` of `plugin` on a thread of its own: (stdout, exit code,
    stderr) as it gives them, or None when it is still running after `timeout`
    seconds (None: no limit; signal handlers still run meanwhile). An
    exception that escapes it is answered as a crashed child's: exit code 70."""
    answer = []

    def call():
        try:
            from .. import skel
            from ..plugins import load
            answer.append(skel.dispatch(load(plugin), env, stdin, netns_fd))
        except BaseException:  # noqa: BLE001 - a bug in the plug-in, answered as a crashed child's
            answer.append(("", 70, traceback.format_exc()))

    thread = threading.Thread(target=call, name=f"cni-{plugin}", daemon=True)
    thread.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    while thread.is_alive():
        left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
        if left <= 0:
            return None
        thread.join(left)
    return answer[0]


def run_in_thread(plugin: str, env: dict, stdin: bytes, timeout: float = PLUGIN_TIMEOUT_S) -> tuple:
    """(exit code, stdout, stderr) of `plugin` run on a thread of the calling
    process, as run_process gives them; see the module's docstring."""
    answer = dispatch_on_a_thread(plugin, env, stdin, timeout=timeout)
    if answer is None:
        if _on_stuck is not None:
            _on_stuck(plugin)
        raise subprocess.TimeoutExpired([plugin], timeout)
    stdout, exit_code, stderr = answer
    return exit_code, stdout.encode(), stderr.encode()


def runner(path: str, env: dict, stdin: bytes) -> tuple:
    """A runner for `invoke.api.CNI`: ours in this process (or forked, for
    `FORKED`), anything else executed. Traced as `cni.exec` by the caller,
    like an execution."""
    plugin = own_plugin(path)
    if plugin is None:
        return run_process(path, env, stdin)
    if plugin in FORKED:
        return run_forked(plugin, env, stdin)
    return run_in_thread(plugin, env, stdin)
