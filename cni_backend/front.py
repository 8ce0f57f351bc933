"""The CNI executables' entry point: standard library only, so it starts fast.

It hands the call (env, stdin and the sandbox's netns fd) to the running
`cnm-shim cni-server` daemon, which has pyroute2 and the plug-ins loaded
already, and prints its answer. When no daemon serves the call it does the
work itself: same code, same result, just slower to start.

Zero set-up: when nothing listens on the default socket (and the caller's
environment names no other one), the call starts the daemon, detached (its
own session, /dev/null in, its own log out, not a child anyone waits for),
under a lock the daemon then holds for as long as it runs, so that parallel
first calls start exactly one; the call that started it, and any call while
it starts, does its own work. The daemon is only ever a shortcut: a dead one,
a stale socket file, a socket whose listener is neither root nor us, a daemon
of another version or in another network namespace, or one that does not
accept the call within ACCEPT_TIMEOUT_S, and the call does the work itself.
Off: RANCHER_CNI_AUTOSTART=0 in the runtime's environment, or the file
/etc/rancher-cni/no-autostart for the whole host (wire.py).
"""

import os
import sys

from . import paths, wire

_DAEMON_GONE = ('{"cniVersion": "1.1.0", "code": 11, "msg": "the rancher-cni daemon ended '
                'before answering; try again", "details": ""}')


def _refused(path: str, exc: OSError) -> tuple:
    """The spec's error JSON for a caller the daemon's socket does not admit
    (it is root's: the plug-ins change the host's network)."""
    import json  # only on this path: the executables start without it
    msg = (f"permission denied on the rancher-cni daemon's socket {path}: CNI plug-ins must be run "
           "as root, as container runtimes do")
    error = {"cniVersion": "1.1.0", "code": 5, "msg": msg, "details": str(exc)}
    return json.dumps(error), 1, ""


# How long a call waits for the daemon to take it (a worker's first byte, sent
# before any work): a daemon at its worker cap queues calls, but one that is
# stopped or wedged must not hang the call, which then does the work itself.
ACCEPT_TIMEOUT_S = 5.0
_OFF = ("0", "off", "false", "no")
_DAEMON_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def autostart_enabled(env: dict) -> bool:
    """Only for the default socket (a caller naming another socket manages the
    daemon there itself), only as root, and unless switched off. The switches
    can only turn it off, so a caller's environment cannot use them to make
    root do anything it would not do anyway."""
    if env.get(wire.SOCKET_ENV) or os.geteuid() != 0:
        return False
    if env.get(wire.AUTOSTART_ENV, "").strip().lower() in _OFF:
        return False
    return not os.path.lexists(wire.AUTOSTART_OFF_FILE)


def start_daemon() -> int | None:
    """Start the daemon detached unless one runs or is starting (the lock is
    held): the daemon's pid, or None when it was not started here. Never
    waits: parallel first calls find the lock taken and go on."""
    import fcntl  # only on this path
    try:
        os.makedirs(paths.RUN_DIR, mode=0o755, exist_ok=True)
        lock_fd = os.open(wire.AUTOSTART_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return None  # a daemon runs or is starting: it holds the lock
        # our check found no daemon, and none holds the lock: one that ended
        # (killed, retired) left at most a stale file, which the new one replaces
        read_end, write_end = os.pipe()
        middle = os.fork()
        if middle == 0:
            _detach_and_exec(lock_fd, write_end)  # never returns
        os.close(write_end)
        os.waitpid(middle, 0)
        pid = os.read(read_end, 32)
        os.close(read_end)
        return int(pid) if pid else None
    finally:
        os.close(lock_fd)  # the daemon keeps its own descriptor, and with it the lock


def _detach_and_exec(lock_fd: int, report_fd: int) -> None:
    """In the forked child: a new session, a grandchild that the runtime is
    not the parent of and whose stdout is not the runtime's pipe, exec'd
    into the daemon with a clean environment (nothing of the caller's)."""
    try:
        os.setsid()
        daemon = os.fork()
        if daemon:
            os.write(report_fd, str(daemon).encode())
            os._exit(0)
        os.close(report_fd)
        os.chdir("/")
        os.umask(0o022)
        null = os.open("/dev/null", os.O_RDWR)
        log = os.open(wire.AUTOSTART_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        keep = os.dup2(lock_fd, 3) if lock_fd != 3 else 3
        os.set_inheritable(keep, True)
        os.closerange(4, os.sysconf("SC_OPEN_MAX") if os.sysconf("SC_OPEN_MAX") > 0 else 1024)
        # it starts (imports, ~0.5 s of CPU) at a lower priority than the call
        # that started it, which does its own work meanwhile; ready, it goes back
        priority = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, min(19, priority + 10))
        code = ("import sys; sys.path[:0] = %r; from cni_backend.server import autostart_main; "
                "autostart_main(int(sys.argv[1]), int(sys.argv[2]))" % ([p for p in sys.path if p],))
        os.execve(sys.executable, [sys.executable, "-I", "-c", code, str(keep), str(priority)],
                  {"PATH": _DAEMON_PATH, "LANG": "C.UTF-8"})
    finally:
        os._exit(127)


def _ask_daemon(plugin: str, env: dict, stdin: bytes):
    """(stdout, code, stderr) from the daemon, or None when none serves the call."""
    path = env.get(wire.SOCKET_ENV) or wire.DEFAULT_SOCKET
    try:
        sock = wire.connect(path)
    except PermissionError as exc:
        if env.get("CNI_COMMAND") == "VERSION":
            return None  # answered in-process: it touches nothing
        return _refused(path, exc)
    if sock is None:
        if autostart_enabled(env):
            start_daemon()
        return None
    netns_fd = None
    try:
        creds = wire.peer_credentials(sock)
        if creds is None or creds[1] not in (0, os.geteuid()):
            return None  # whoever listens there is not the root daemon: not told anything
        if env.get("CNI_NETNS"):
            try:
                netns_fd = os.open(env["CNI_NETNS"], os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pass  # the daemon reports a missing netns as the plug-in would
        sock.settimeout(ACCEPT_TIMEOUT_S)
        try:
            try:
                wire.send_request(sock, plugin, env, stdin, netns_fd)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the daemon answered (a refusal) without reading: its reply is still there to read
            status = wire.receive_status(sock)
        except TimeoutError:
            return None  # not taken: the worker that reads it later finds us gone and ends
        if status != wire.ACCEPTED:
            return None  # gone before taking it, another version, another namespace: nothing was done
        sock.settimeout(None)
        try:
            reply = wire.receive_reply(sock)
        except ConnectionResetError:
            reply = None
    finally:
        if netns_fd is not None:
            os.close(netns_fd)
        sock.close()
    return reply or (_DAEMON_GONE, 11, "")


def _in_process(plugin: str, env: dict, stdin: bytes):
    if sys.flags.no_site:
        import site
        site.main()  # the fast wrappers start without site; pyroute2 lives there
    import logging
    from . import logfmt, skel
    from .plugins import load
    if not logging.getLogger().handlers:  # the plug-in's warnings to the runtime's stderr, in our format
        logfmt.setup(logging.WARNING)
    return skel.dispatch(load(plugin), env, stdin)


def main(plugin: str) -> int:
    env = dict(os.environ)
    stdin = sys.stdin.buffer.read()
    answer = _ask_daemon(plugin, env, stdin) or _in_process(plugin, env, stdin)
    stdout, code, stderr = answer
    if stderr:
        sys.stderr.write(stderr)
    if stdout:
        sys.stdout.write(stdout + "\n")
    sys.stdout.flush()
    return code


def bridge_main() -> int:
    return main("rancher-bridge")


def ipam_main() -> int:
    return main("rancher-ipam")


def portmap_main() -> int:
    return main("rancher-portmap")


def flat_main() -> int:
    return main("rancher-flat")


def vxlan_main() -> int:
    return main("rancher-vxlan")


def ipsec_main() -> int:
    return main("rancher-ipsec")
