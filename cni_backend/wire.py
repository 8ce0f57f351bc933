"""The thick plug-in's wire format between the executables and the daemon.

The executable side must start fast, so this module imports only C-level
modules (`_socket`, `struct`): no `socket`, no `json` (together ~12 ms).
A request is the plug-in name, the environment and stdin, length-prefixed,
with the sandbox's netns fd alongside (SCM_RIGHTS) so the daemon can enter it
even when the path means nothing in the daemon's own mount namespace.
A reply is the exit code, stdout and stderr.
"""

import _socket
import struct

from . import paths

DEFAULT_SOCKET = paths.DAEMON_SOCKET
SOCKET_ENV = "RANCHER_CNI_SOCKET"
MAX_MESSAGE = 64 << 20
_REQUEST = struct.Struct("!III")   # lengths: plug-in name, environment block, stdin
_REPLY = struct.Struct("!iII")     # exit code, lengths: stdout, stderr
_FD = struct.Struct("i")


def connect(path: str):
    """A connected socket, or None when no daemon listens at `path`."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    return sock


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


def send_request(sock, plugin: str, env: dict, stdin: bytes, netns_fd=None) -> None:
    name, block = plugin.encode(), _encode_env(env)
    data = _REQUEST.pack(len(name), len(block), len(stdin)) + name + block + stdin
    ancillary = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _FD.pack(netns_fd))] if netns_fd is not None else []
    sent = sock.sendmsg([data], ancillary)
    if sent < len(data):
        sock.sendall(data[sent:])


def receive_request(sock):
    """(plugin, env, stdin, netns fd or None); None when the peer sent nothing whole."""
    header, ancillary, _, _ = sock.recvmsg(_REQUEST.size, _socket.CMSG_SPACE(_FD.size))
    fd = None
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS and len(payload) >= _FD.size:
            fd = _FD.unpack_from(payload)[0]
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
    plugin = body[:name_len].decode()
    env = _decode_env(body[name_len:name_len + env_len])
    return plugin, env, body[name_len + env_len:], fd


def reply_bytes(code: int, out: bytes, err: bytes) -> bytes:
    return _REPLY.pack(code, len(out), len(err)) + out + err


def send_reply(sock, code: int, stdout: str, stderr: str) -> None:
    sock.sendall(reply_bytes(code, stdout.encode("utf-8", "surrogateescape"), stderr.encode("utf-8", "surrogateescape")))


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
