"""The thick plug-in's wire format, standard library only: a length-prefixed
JSON message each way over a Unix stream socket, with the sandbox's netns fd
passed alongside the request (SCM_RIGHTS) so the daemon can use it even when
the path means nothing in its own mount namespace."""

import json
import socket
import struct

DEFAULT_SOCKET = "/run/rancher-cni/cni.sock"
SOCKET_ENV = "RANCHER_CNI_SOCKET"
_HEADER = struct.Struct("!I")
MAX_MESSAGE = 64 << 20


def send(sock: socket.socket, message: dict, fds=()) -> None:
    body = json.dumps(message).encode()
    data = _HEADER.pack(len(body)) + body
    if fds:
        sent = socket.send_fds(sock, [data], list(fds))
        data = data[sent:]
    sock.sendall(data)


def receive(sock: socket.socket, with_fds: bool = False):
    """(message, fds); (None, []) when the peer closed before a whole message."""
    fds = []
    if with_fds:
        first, fds, _, _ = socket.recv_fds(sock, 65536, 4)
    else:
        first = sock.recv(65536)
    buffer = bytearray(first)
    while len(buffer) < _HEADER.size:
        chunk = sock.recv(65536)
        if not chunk:
            return None, fds
        buffer += chunk
    (length,) = _HEADER.unpack_from(buffer)
    if length > MAX_MESSAGE:
        raise ValueError(f"message of {length} bytes is too large")
    while len(buffer) < _HEADER.size + length:
        chunk = sock.recv(min(1 << 20, _HEADER.size + length - len(buffer)))
        if not chunk:
            return None, fds
        buffer += chunk
    return json.loads(bytes(buffer[_HEADER.size:_HEADER.size + length])), fds
