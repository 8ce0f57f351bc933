"""The CNI executables' entry point: standard library only, so it starts fast.

It hands the call (env, stdin and the sandbox's netns fd) to the running
`cnm-shim cni-server` daemon, which has pyroute2 and the plug-ins loaded
already, and prints its answer. When no daemon runs it does the work itself:
same code, same result, just slower to start.
"""

import os
import socket
import sys

from . import wire


def _ask_daemon(plugin: str, env: dict, stdin: bytes):
    """(stdout, code, stderr) from the daemon, or None when none is listening."""
    path = env.get(wire.SOCKET_ENV) or wire.DEFAULT_SOCKET
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    fds = []
    try:
        if env.get("CNI_NETNS"):
            try:
                fds.append(os.open(env["CNI_NETNS"], os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                pass  # the daemon reports a missing netns as the plug-in would
        request = {"plugin": plugin, "env": env, "stdin": stdin.decode("utf-8", "surrogateescape")}
        wire.send(sock, request, fds)
        reply, _ = wire.receive(sock)
    finally:
        for fd in fds:
            os.close(fd)
        sock.close()
    if reply is None:
        error = ('{"cniVersion": "1.1.0", "code": 11, "msg": "the rancher-cni daemon '
                 'ended before answering; try again"}')
        return error, 11, ""
    return reply["stdout"], reply["code"], reply["stderr"]


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
