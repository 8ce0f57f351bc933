"""The CNI executables' entry point: standard library only, so it starts fast.

It hands the call (env, stdin and the sandbox's netns fd) to the running
`cnm-shim cni-server` daemon, which has pyroute2 and the plug-ins loaded
already, and prints its answer. When no daemon runs it does the work itself:
same code, same result, just slower to start.
"""

import os
import sys

from . import wire

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


def _ask_daemon(plugin: str, env: dict, stdin: bytes):
    """(stdout, code, stderr) from the daemon, or None when none is listening."""
    path = env.get(wire.SOCKET_ENV) or wire.DEFAULT_SOCKET
    try:
        sock = wire.connect(path)
    except PermissionError as exc:
        if env.get("CNI_COMMAND") == "VERSION":
            return None  # answered in-process: it touches nothing
        return _refused(path, exc)
    if sock is None:
        return None
    netns_fd = None
    try:
        if env.get("CNI_NETNS"):
            try:
                netns_fd = os.open(env["CNI_NETNS"], os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pass  # the daemon reports a missing netns as the plug-in would
        try:
            wire.send_request(sock, plugin, env, stdin, netns_fd)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon answered (a refusal) without reading: its reply is still there to read
        reply = wire.receive_reply(sock)
    finally:
        if netns_fd is not None:
            os.close(netns_fd)
        sock.close()
    return reply or (_DAEMON_GONE, 11, "")


def _in_process(plugin: str, env: dict, stdin: bytes):
    if sys.flags.no_site:
        import site
        site.main()  # the fast wrappers start without site; pyroute2 lives there
    from . import skel
    from .plugins import load
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
