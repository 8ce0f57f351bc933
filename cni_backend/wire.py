"""The thick plug-in's wire format between the executables and the daemon.

The executable side must start fast, so this module imports only C-level
modules (`_socket`, `struct`): no `socket`, no `json` (together ~12 ms).
A request is the plug-in name, the environment and stdin, length-prefixed,
with the sandbox's netns fd alongside (SCM_RIGHTS) so the daemon can enter it
even when the path means nothing in the daemon's own mount namespace.
A reply is one status byte, then the exit code, stdout and stderr.

The handshake: the request names the caller's `VERSION` beside the plug-in, and
the daemon's worker answers with one status byte before it does any work:
`ACCEPTED` (the call is served: the reply follows), `OLD_VERSION` (the daemon
runs other code than the executable's: it declines, and the executable does
the work itself) or `OTHER_NETNS` (the caller is not in the daemon's network
namespace, whose links the call would change: declined too). A daemon from
before the handshake reads the versioned name as an unknown plug-in and
answers without doing anything; its reply does not start with a status byte,
so it counts as declined. A call whose daemon went away before `ACCEPTED` was
never started, so the executable may do it itself.
"""

import _socket
import os
import struct

from . import paths

DEFAULT_SOCKET = paths.DAEMON_SOCKET
SOCKET_ENV = "RANCHER_CNI_SOCKET"
# Zero set-up (front.py): the first call on a host where no daemon listens on
# DEFAULT_SOCKET starts one, detached, under AUTOSTART_LOCK, which the started
# daemon holds for as long as it runs: one at a time. Off with the
# environment variable set to 0/off/false/no (a runtime passes its own
# environment to the plug-ins), or for the whole host with the file.
AUTOSTART_ENV = "RANCHER_CNI_AUTOSTART"
AUTOSTART_OFF_FILE = "/etc/rancher-cni/no-autostart"
AUTOSTART_LOCK = f"{paths.RUN_DIR}/cni.sock.lock"
AUTOSTART_LOG = f"{paths.RUN_DIR}/daemon.log"

PROTOCOL = 2


def _installed_version() -> str:
    """The code on disk, as this process loaded it: the wire protocol, and the
    identity of this very file (a reinstall or upgrade writes it anew)."""
    try:
        st = os.stat(__file__)
        return f"{PROTOCOL}:{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}"
    except OSError:
        return f"{PROTOCOL}:unknown"


VERSION = _installed_version()
ACCEPTED, OLD_VERSION, OTHER_NETNS = b"A", b"V", b"N"
MAX_MESSAGE = 64 << 20
_REQUEST = struct.Struct("!III")   # lengths: plug-in name, environment block, stdin
_REPLY = struct.Struct("!iII")     # exit code, lengths: stdout, stderr
_FD = struct.Struct("i")


def connect(path: str):
    """A connected socket, or None when no daemon listens at `path` (no file,
    a stale file nobody listens on, or anything else that is not a socket).
    PermissionError is raised: the caller is not root."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except PermissionError:
        sock.close()
        raise
    except OSError:
        sock.close()
        return None
    return sock


_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_credentials(sock) -> tuple | None:
    """(pid, uid, gid) of the process that listen()ed (or connect()ed) at the
    other end, as the kernel recorded it; None when unknown."""
    try:
        return _PEERCRED.unpack(sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _PEERCRED.size))
    except OSError:
        return None


def _encode_env(env: dict) -> bytes:
    return b"\0".join(f"{k}={v}".encode("utf-8", "surrogateescape") for k, v in env.items())


def _decode_env(block: bytes) -> dict:
    env = {}
    for item in filter(None, block.split(b"\0")):
        key, _, value = item.decode("utf-8", "surrogateescape").partition("=")
        env[key] = value
    return env


def _read_exactly(sock, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(1 << 20, size - len(data)))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def send_request(sock, plugin: str, env: dict, stdin: bytes, netns_fd=None, version: str = VERSION) -> None:
    name, block = f"{plugin}\0{version}".encode(), _encode_env(env)
    data = _REQUEST.pack(len(name), len(block), len(stdin)) + name + block + stdin
    ancillary = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _FD.pack(netns_fd))] if netns_fd is not None else []
    sent = sock.sendmsg([data], ancillary)
    if sent < len(data):
        sock.sendall(data[sent:])


def receive_request(sock):
    """(plugin, env, stdin, netns fd or None, the caller's version or "" from
    a caller before the handshake); None when the peer sent nothing whole.
    The fd is the caller's to close; when there is no request to give it
    with (nothing whole, an error), it is closed here: the daemon's workers
    serve many calls."""
    header, ancillary, _, _ = sock.recvmsg(_REQUEST.size, _socket.CMSG_SPACE(_FD.size))
    fd = None
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS and len(payload) >= _FD.size:
            fd = _FD.unpack_from(payload)[0]
    request = None
    try:
        request = _rest_of_request(sock, header, fd)
        return request
    finally:
        if request is None and fd is not None:
            os.close(fd)


def _rest_of_request(sock, header: bytes, fd):
    if len(header) < _REQUEST.size:
        rest = _read_exactly(sock, _REQUEST.size - len(header))
        if rest is None:
            return None
        header += rest
    lengths = _REQUEST.unpack(header)
    if sum(lengths) > MAX_MESSAGE:
        raise ValueError("request too large")
    body = _read_exactly(sock, sum(lengths))
    if body is None:
        return None
    name_len, env_len, _ = lengths
    plugin, _, version = body[:name_len].decode("utf-8", "replace").partition("\0")
    env = _decode_env(body[name_len:name_len + env_len])
    return plugin, env, body[name_len + env_len:], fd, version


def reply_bytes(code: int, out: bytes, err: bytes) -> bytes:
    return _REPLY.pack(code, len(out), len(err)) + out + err


def send_reply(sock, code: int, stdout: str, stderr: str) -> None:
    sock.sendall(reply_bytes(code, stdout.encode("utf-8", "surrogateescape"), stderr.encode("utf-8", "surrogateescape")))


def receive_status(sock) -> bytes:
    """The worker's status byte (ACCEPTED, OLD_VERSION, OTHER_NETNS, or
    anything else from a daemon before the handshake); b"" when the daemon
    went away first, having done nothing."""
    try:
        return sock.recv(1)
    except ConnectionResetError:
        return b""


def receive_reply(sock):
    """(stdout, code, stderr), or None when the daemon went away first."""
    header = _read_exactly(sock, _REPLY.size)
    if header is None:
        return None
    code, out_len, err_len = _REPLY.unpack(header)
    body = _read_exactly(sock, out_len + err_len)
    if body is None:
        return None
    return body[:out_len].decode("utf-8", "replace"), code, body[out_len:].decode("utf-8", "replace")
