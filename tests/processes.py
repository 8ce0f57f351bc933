"""Processes the tests start, found from /proc: a process tree, and which
processes a test left running."""

import os


def process_tree(root: int) -> list:
    """`root` and all its descendants, read from /proc."""
    children = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


# Processes a fixture wider than one test owns (an engine, the test plug-in,
# etcd members) may start or restart during a test; they and their children
# are that fixture's to stop, not a test's leak.
LONG_LIVED: set = set()


def long_lived(pid: int) -> int:
    LONG_LIVED.add(pid)
    return pid


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def started_processes(before: set) -> list:
    """This run's processes (descendants of pytest) that were not there
    before, still running, and not owned by a wider fixture: "pid cmdline"."""
    owned = {p for root in LONG_LIVED if _running(root) for p in process_tree(root)}
    found = []
    for pid in process_tree(os.getpid())[1:]:
        if pid in before or pid in owned or not _running(pid):
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        found.append(f"{pid} {cmdline[:120]}")
    return found


def _stat_fields(pid: int) -> list | None:
    """/proc/PID/stat after the command name: [state, ppid, ...], or None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def identities(pids) -> dict:
    """pid -> start time: tells a process from a later one given the same pid."""
    found = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            found[pid] = fields[19]
    return found


def still_running(identities_before: dict) -> list:
    """Those of the processes (`identities`) that exist and are not zombies."""
    left = []
    for pid, start in identities_before.items():
        fields = _stat_fields(pid)
        if fields and fields[19] == start and fields[0] != "Z":
            left.append(pid)
    return left
