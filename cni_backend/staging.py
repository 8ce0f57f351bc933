"""Attaching an interface for a sandbox that does not exist yet.

Docker (up to 27) asks the driver at Join for an interface in the *host*
namespace, which it moves into the container's sandbox itself. A CNI plug-in
only knows how to put an interface into a namespace. So CNI ADD runs into a
short-lived staging namespace, and the interface is then moved out to the host
under a unique temporary name. Addresses do not survive the move (Docker sets
them again); the MAC and MTU do.

Everything here enters namespaces with setns(2): call it from a single-threaded
process only (the shim's sync workers are).
"""

import ctypes
import os
import threading

from .errors import CNIError, NETLINK_FAILURE
from .net import netlink, netns

CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise CNIError(NETLINK_FAILURE, f"{what}: {os.strerror(err)}", f"errno {err}")


def _single_threaded() -> None:
    if threading.active_count() != 1:
        raise RuntimeError("staging namespaces need a single-threaded process")


def create(path: str) -> None:
    """A new, empty network namespace bind-mounted at `path`."""
    _single_threaded()
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    with open(path, "w"):
        pass
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.unshare(CLONE_NEWNET), "creating a staging namespace")
        try:
            _check(_libc.mount(b"/proc/thread-self/ns/net", path.encode(), None, MS_BIND, None),
                   f"bind-mounting the staging namespace on {path}")
        finally:
            netns._setns(home)
    except BaseException:
        remove(path)
        raise
    finally:
        os.close(home)


def remove(path: str) -> None:
    """Unmount and delete the staging namespace (its interfaces go with it)."""
    _libc.umount2(path.encode(), MNT_DETACH)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_all(directory: str) -> list:
    """Remove every staging namespace under `directory`: at start-up they are
    all stale (a worker killed between create and remove), and each holds the
    container side of a veth whose host side would otherwise stay."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        remove(os.path.join(directory, name))
    return names


def move_back(path: str, host_name: str, ifname: str, addresses: list) -> bool:
    """The reverse of move_to_host, for a DEL: `host_name` (the interface
    Docker moved back to the host after Leave) into the staging namespace as
    `ifname`, with the `addresses` the ADD gave it, so a plug-in that tears
    down by what it finds in the container (the reference bridge's masquerade
    rules, by the interface's addresses) finds it as the ADD left it. False
    when the host has no such interface (the sandbox took it with it)."""
    _single_threaded()
    with netlink.socket_in() as host:
        if netlink.link(host, host_name) is None:
            return False
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            netlink.move_link(host, host_name, ifname, target)
        finally:
            os.close(target)
    with netlink.socket_in(path) as staging:
        index = netlink.link(staging, ifname)["index"]
        for cidr in addresses:
            netlink.add_address(staging, index, cidr)
    return True


def move_to_host(path: str, ifname: str, host_name: str) -> dict:
    """Move `ifname` out of the staging namespace into ours, renamed `host_name`."""
    _single_threaded()
    host_ns = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with netlink.socket_in(path) as staging:
            netlink.move_link(staging, ifname, host_name, host_ns)
    finally:
        os.close(host_ns)
    with netlink.socket_in() as host:
        return netlink.describe(netlink.link(host, host_name))
