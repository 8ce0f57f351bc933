"""Run a function in a forked child inside a private network and mount
namespace, so whatever the code under test does to links, addresses, routes,
firewall rules or mounts happens there and vanishes with the child. The
machine's own namespaces are never touched.

As root the child unshares directly; otherwise it first makes a user
namespace (as `unshare -rn` does). Failures come back to the parent as text,
so pytest reports them (the child's own output goes to the captured fds).
"""

import ctypes
import os
import pickle
import subprocess
import traceback

import pytest

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
MS_REC, MS_PRIVATE = 0x4000, 0x40000
_libc = ctypes.CDLL(None, use_errno=True)


def _unshare() -> None:
    if os.geteuid() != 0:
        uid, gid = os.getuid(), os.getgid()
        if _libc.unshare(CLONE_NEWUSER) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER)")
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"0 {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"0 {gid} 1")
    if _libc.unshare(CLONE_NEWNS | CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS|CLONE_NEWNET)")
    if _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "making / private")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def available() -> str | None:
    """None when private namespaces can be made here, else the reason."""
    def probe():
        return True
    try:
        run(probe)
    except _Unavailable as exc:
        return str(exc)
    return None


class _Unavailable(Exception):
    pass


def run(fn, *args, **kwargs):
    """fn(*args, **kwargs) in a private netns + mount ns; its return value (picklable)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read_end)
        try:
            try:
                _unshare()
            except OSError as exc:
                outcome = ("unavailable", f"private network namespaces are not available: {exc}")
            else:
                outcome = ("ok", fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
            outcome = ("error", "".join(traceback.format_exception(exc)))
        try:
            data = pickle.dumps(outcome)
        except Exception as exc:  # noqa: BLE001
            data = pickle.dumps(("error", f"unpicklable result: {exc}"))
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(data)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        pytest.fail(f"the private-namespace child died (wait status {status})", pytrace=False)
    kind, value = pickle.loads(data)
    if kind == "unavailable":
        raise _Unavailable(value)
    if kind == "error":
        lines = [line if len(line) <= 600 else line[:600] + f"... ({len(line)} characters)" for line in value.splitlines()]
        pytest.fail("in the private network namespace:\n" + "\n".join(lines), pytrace=False)
    return value


def links() -> list:
    """Link names in the current namespace."""
    out = subprocess.run(["ip", "-o", "link", "show"], check=True, capture_output=True, text=True).stdout
    return sorted(line.split(": ")[1].split("@")[0] for line in out.splitlines())
