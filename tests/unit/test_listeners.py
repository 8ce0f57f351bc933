"""Claiming the driver sockets: a server that still answers keeps its socket;
one whose last listener goes within the grace period (the workers of a
master killed a moment ago) is taken over."""

import os
import socket
import threading

import pytest

from cnm_shim import listeners


def listening(path: str, seconds: float | None):
    """A listener on `path`, closed after `seconds` (its file left, as a
    killed server leaves it); None: until the test closes it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(16)
    if seconds is not None:
        threading.Timer(seconds, sock.close).start()
    return sock


def test_a_socket_whose_dying_server_stops_answering_within_the_grace_is_taken_over(tmp_path):
    path = str(tmp_path / "rancher-bridge.sock")
    listening(path, 1.0)
    claimed = listeners.claim(str(tmp_path), ["rancher-bridge.sock"])
    try:
        assert listeners.answers(path) and os.lstat(path).st_ino == claimed[0].inode
    finally:
        for sock in claimed:
            sock.release()


def test_a_server_that_keeps_answering_keeps_its_socket(tmp_path, monkeypatch):
    monkeypatch.setattr(listeners, "DYING_SERVER_GRACE", 0.5)
    path = str(tmp_path / "rancher-bridge.sock")
    theirs = listening(path, None)
    inode = os.lstat(path).st_ino
    try:
        with pytest.raises(listeners.SocketInUse, match="a server already answers on"):
            listeners.claim(str(tmp_path), ["rancher-bridge.sock"])
        assert os.lstat(path).st_ino == inode, "their socket file is untouched"
    finally:
        theirs.close()
