"""Entering network namespaces, with the standard library only.

`entered()` moves the calling thread with setns(2) (a network namespace is
per thread), and back: our CNI executables and the daemon's forked workers
are single-threaded; the shim runs each plug-in call on a thread of its own
(invoke/own.py), so whatever namespace it is left in ends with that thread.
"""

import contextlib
import ctypes
import errno
import os
import socket
import struct

CLONE_NEWNET = 0x40000000
_SO_NETNS_COOKIE = 71  # Linux 5.14: a number no other network namespace gets until reboot
_libc = None


class NetnsGone(Exception):
    """The namespace path does not exist (or is not a namespace any more)."""


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def current_name() -> str:
    """The calling thread's network namespace, by its cookie, which unlike
    its inode number is not given to a later namespace ("c<cookie>"; an
    older kernel's: "i<inode>")."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
            return "c%d" % struct.unpack("Q", probe.getsockopt(socket.SOL_SOCKET, _SO_NETNS_COOKIE, 8))[0]
    except OSError:  # an older kernel
        return "i%d" % os.stat("/proc/thread-self/ns/net").st_ino


def open_netns(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsGone(path) from None


@contextlib.contextmanager
def entered(path: str):
    """Run the body inside the namespace at `path`, then come back."""
    target = open_netns(path)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)  # this thread's, not the main one's
    try:
        try:
            _setns(target)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # a stale path that is not a netns
                raise NetnsGone(path) from None
            raise
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def write_sysctl(path: str, value: str) -> None:
    """Write /proc/sys/<path> (e.g. "net/ipv4/ip_forward") in the current namespace."""
    with open("/proc/sys/" + path, "w") as f:
        f.write(value)
