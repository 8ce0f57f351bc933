"""`iptables-restore -w --noflush` kept running: one per IP family in each
of our long-lived processes, fed one script after another.

Each run of the command costs ~2 ms before it reads its first line (the
process, its libraries, xtables' set-up). A process kept running reads
the next script from its stdin and commits each table at its COMMIT, as a
run of the command does: ~0.3 ms for an attachment's two tables.

iptables-restore prints nothing when a commit is done; the kernel says so.
At each commit nf_tables sends an NFT_MSG_NEWGEN message to the group
NFNLGRP_NFTABLES naming the committing process (nft_generation.notified),
once the commit took effect. A call joins the group, writes its script and
waits for one message from its process per table. If the process exits
instead, the script failed (what it printed says where: its line numbers
are made the script's own), as a run of the command would have, the tables
before the failing one committed; the next call starts another process.
One killed (by a signal, no message) before it committed any of the script
leaves nothing half done: a new one runs the whole script. The kernel
sends a commit's message before the commit's system call returns, so once
the process is gone the socket holds every commit it made.

A command that deleted anything waits when it exits: closing its netlink
socket makes nf_tables finish the deletions' clean-up (an RCU grace
period, ~10-25 ms here), which releases what the deleted rules held: a
set they matched cannot be destroyed before (ipset: "in use by a kernel
component"). A kept process does not exit; after a script that deleted
anything (a deletion among the notifications heard meanwhile), closing a
netfilter socket of our own waits for the same clean-up, so the answer
comes when it would have come from the command.

Served here, and only then (`run` answers None: the command runs as before):
- after `enable()`, in a long-lived process (invoke/own.warm: the shim's
  workers, the CNI daemon); a short-lived one would keep nothing; and
  for the network namespace it was enabled in (its host's);
- when the tool is the system's iptables-nft (a test's fake tool on PATH
  must be what runs; iptables-legacy sends no notification, and would hold
  the xtables lock as long as it runs);
- when the kernel names our children by the pids we know them by (not in
  a PID namespace of our own: NFTA_GEN_PROC_PID is the initial namespace's);
- for a script whose every table commits something: each has a line that
  adds, inserts, replaces or deletes a rule, or makes or deletes a chain.
  A table of declarations and flushes only may change nothing, and an
  empty commit sends no message.
"""

import contextlib
import errno
import functools
import os
import re
import select
import shutil
import socket
import subprocess
import threading
import time

from . import netns, nft_generation

TOOLS = ("iptables-restore", "ip6tables-restore")
SYSTEM_DIRS = ("/usr/sbin", "/sbin")
ARGS = ["-w", "--noflush"]
TIMEOUT_S = 120.0     # an answer later than this: the process is ended, and the call failed
_COMMITTING = re.compile(r"-[AIRDXN] ")
_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, _NETLINK_DROP_MEMBERSHIP = 270, 1, 2
_SO_RCVBUFFORCE = 33  # (Python's socket module names none of these)

_UNDONE = object()  # restore's answer when the process ended, by a signal, before committing any of it
_home = None  # the network namespace `enable` was called in (netns.current_name)
_lock = threading.Lock()
_kept = {}    # tool -> _Kept


def _forget_in_child() -> None:
    """A fork keeps none: the processes are its parent's (which may hold the lock)."""
    global _lock, _kept
    _lock, _kept = threading.Lock(), {}


os.register_at_fork(after_in_child=_forget_in_child)


def enable() -> None:
    """Serve restores from kept processes in this process from now on, in the
    calling thread's network namespace: one whose rules are written from
    another thread's (a call entered) runs the command, so that no kept
    process holds on to a namespace its owner has deleted."""
    global _home
    _home = netns.current_name()


def run(argv: list, stdin: str | None) -> tuple | None:
    """(exit code, stdout, stderr) as the command `argv` with input `stdin`
    would give them, or None when it has to be run instead (see the
    module's docstring)."""
    commits = _taken(argv, stdin)
    if not commits:
        return None
    kept = _kept_for(argv[0])
    with kept.lock:
        for _ in range(2):  # once more with a new process if one was killed before it committed any of it
            try:
                kept.ready()
            except OSError:  # no process or no socket, and nothing of the script read: the command runs it
                kept.end()
                return None
            answer = kept.restore(stdin, commits)
            if answer is not _UNDONE:
                return answer
    return 1, "", f"{argv[0]}: killed twice before it committed the script"


def serves(argv: list, stdin: str | None) -> bool:
    """Whether `run` would answer the command (tools.outputs_side_by_side)."""
    return _taken(argv, stdin) > 0


def _taken(argv: list, stdin: str | None) -> int:
    """The commits of the script when `run` answers the command, else 0."""
    if argv[1:] != ARGS or argv[0] not in TOOLS or not available(argv[0]):
        return 0
    return _commits(stdin)


def available(tool: str) -> bool:
    """Whether `tool`'s scripts (those `run` takes) go to a kept process,
    in the calling thread."""
    return _home is not None and _usable(tool) and netns.current_name() == _home


def _commits(script: str | None) -> int:
    """The number of commits `script` makes, or 0 when one of its tables
    might commit nothing or it does not end with a COMMIT."""
    if not script:
        return 0
    tables, committing, inside = 0, False, False
    for line in script.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            if inside:
                return 0
            inside, committing = True, False
        elif line == "COMMIT":
            if not inside or not committing:
                return 0
            inside, tables = False, tables + 1
        elif not inside:
            return 0
        elif _COMMITTING.match(line + " "):
            committing = True
    return 0 if inside else tables


def _usable(tool: str) -> bool:
    return _usable_on(tool, os.environ.get("PATH"))


@functools.lru_cache(maxsize=16)
def _usable_on(tool: str, path: str | None) -> bool:
    """The system's iptables-nft is what runs, and the kernel names our
    children by the pids we know them by."""
    found = shutil.which(tool, path=path)
    if found is None or os.path.dirname(found) not in SYSTEM_DIRS:
        return False
    try:
        version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "(nf_tables)" in version and nft_generation.asker_as_the_kernel_names_it() == threading.get_native_id()


def _kept_for(tool: str) -> "_Kept":
    with _lock:
        if tool not in _kept:
            _kept[tool] = _Kept(tool)
        return _kept[tool]


class _Kept:
    """One kept process and the socket its commits are heard on, made in
    the namespace of the thread that first needs them."""

    def __init__(self, tool: str):
        self.tool, self.lock = tool, threading.Lock()
        self.process = self.listener = None
        self.deleted = False  # the script being answered deleted something (_heard)
        self.lines = 0  # lines the process has read: its error messages count from its first

    def ready(self) -> None:
        """A running process, and the socket in the group: before a script is written."""
        if self.process is None or self.process.poll() is not None:
            self.end()
            self._start()
        self.listener.setsockopt(_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, nft_generation.NFNLGRP_NFTABLES)
        self._drain()

    def restore(self, script: str, commits: int):
        """After `ready`: the script's answer, once its `commits` are heard or
        the process ended; _UNDONE when it ended by a signal (or had ended)
        with none of them made: a new process may run the whole script."""
        text = script if script.endswith("\n") else script + "\n"
        self.deleted = False
        first_line = self.lines + 1
        self.lines += text.count("\n")
        try:
            try:
                self.process.stdin.write(text.encode())
                self.process.stdin.flush()
            except OSError:  # it ended after `ready`
                return self._ended(0, first_line, b"")
            return self._acknowledged(commits, first_line)
        finally:
            if self.listener is not None:
                with contextlib.suppress(OSError):
                    self.listener.setsockopt(_SOL_NETLINK, _NETLINK_DROP_MEMBERSHIP,
                                             nft_generation.NFNLGRP_NFTABLES)

    def _start(self) -> None:
        listener = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                 nft_generation.NETLINK_NETFILTER)
        try:
            listener.bind((0, 0))
            with contextlib.suppress(OSError):  # a larger buffer where root may have it
                listener.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 1 << 22)
            listener.setblocking(False)
            # the namespace of this thread; stdout unused; stderr read at its end
            self.process = subprocess.Popen([self.tool, *ARGS], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE)
        except BaseException:
            listener.close()
            raise
        self.listener, self.lines = listener, 0
        os.set_blocking(self.process.stderr.fileno(), False)

    def _drain(self) -> None:
        """Drop what the socket holds from before: other commits', earlier processes'."""
        while True:
            try:
                self.listener.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise

    def _acknowledged(self, commits: int, first_line: int):
        deadline, heard, said = time.monotonic() + TIMEOUT_S, 0, b""
        stderr = self.process.stderr.fileno()
        poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        poller.register(stderr, select.POLLIN)
        while heard < commits:
            left = deadline - time.monotonic()
            if left <= 0:
                return self._failed(first_line, f"{self.tool}: no answer in {TIMEOUT_S:.0f} s")
            readable = {fd for fd, _ in poller.poll(left * 1000)}
            if self.listener.fileno() in readable:
                try:
                    heard += self._heard()
                except OSError as exc:  # ENOBUFS: messages were lost, ours may be among them
                    return self._failed(first_line, f"{self.tool}: commits not heard ({os.strerror(exc.errno)})")
            if stderr in readable:
                chunk = _read_some(stderr)
                if chunk == b"" and heard < commits:
                    return self._ended(heard, first_line, said)
                said += chunk or b""
        self._cleaned_up()
        return 0, "", said.decode(errors="replace")

    def _heard(self) -> int:
        """The commits of the process among the messages the socket holds;
        `deleted` set when any of them tells of a deletion."""
        heard = 0
        while True:
            try:
                commits, deleted = nft_generation.notified(self.listener.recv(1 << 20), self.process.pid)
            except (BlockingIOError, InterruptedError):
                return heard
            heard, self.deleted = heard + commits, self.deleted or deleted

    def _cleaned_up(self) -> None:
        """After a deletion: once nf_tables has finished its clean-up, as a
        command's exit waits for it (see the module's docstring)."""
        if self.deleted:
            with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                               nft_generation.NETLINK_NETFILTER) as bound:
                bound.bind((0, 0))  # its release (bound: it has a port id) is what waits

    def _ended(self, heard: int, first_line: int, said: bytes):
        """The answer once the process ended with `heard` commits of the
        script heard. The kernel sends a commit's message before the commit's
        call returns, so what the socket holds now is all it committed."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        said += _read_some(self.process.stderr.fileno()) or b""
        with contextlib.suppress(OSError):
            heard += self._heard()
        if not heard and (self.process.returncode or 0) < 0:  # killed before committing any of it
            self.end()
            return _UNDONE
        self._cleaned_up()  # of the tables it committed before failing
        return self._failed(first_line, said.decode(errors="replace"))  # the script failed

    def _failed(self, first_line: int, message: str) -> tuple:
        """The answer of a script that failed; the process is ended."""
        self.end()

        def own_line(match):
            return f"line {int(match.group(1)) - first_line + 1}"
        return 1, "", re.sub(r"line (\d+)", own_line, message)

    def end(self) -> None:
        """End the process (its stdin closed, it exits) and the socket."""
        if self.process is not None:
            process, self.process = self.process, None
            with contextlib.suppress(OSError):
                process.stdin.close()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stderr.close()
        if self.listener is not None:
            self.listener.close()
            self.listener = None


def _read_some(fd: int) -> bytes | None:
    """What `fd` holds now; b"" at its end, None when nothing is there yet."""
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return None
