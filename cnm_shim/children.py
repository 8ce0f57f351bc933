"""The processes `cnm-shim serve` starts besides gunicorn's workers — the CNI
daemon, the vxlan agents, the ipsec agent, the restart-stranded pass — and how
they end.

Each child gets SIGTERM from the kernel if the master dies (PR_SET_PDEATHSIG),
so a master killed with SIGKILL strands none of them; a clean stop sends
SIGTERM itself, after the workers are done (they are the CNI daemon's
clients), waits, then SIGKILLs what is left. Each child has a process group
of its own: Ctrl-C in a terminal signals the whole foreground group, and
would stop the CNI daemon under calls still in progress. A CNI daemon found
already running is not ours and is never started, signalled or unlinked here.
"""

import contextlib
import ctypes
import dataclasses
import logging
import os
import signal
import subprocess
import time

from .listeners import remove_if_same

log = logging.getLogger("cnm-shim")

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Have the kernel send `sig` to this process when its parent exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")


@dataclasses.dataclass
class Child:
    process: subprocess.Popen
    socket: str | None = None  # a socket file the child makes and removes as it exits
    socket_inode: int | None = None

    def remember_socket(self) -> None:
        """Note the inode of the child's socket, so that after a SIGKILL we
        remove that file and never a later server's."""
        with contextlib.suppress(FileNotFoundError):
            self.socket_inode = os.lstat(self.socket).st_ino

    def remove_socket(self) -> None:
        if self.socket and self.socket_inode is not None:
            remove_if_same(self.socket, self.socket_inode)


class Children:
    def __init__(self):
        self.children = []

    def start(self, argv, socket: str | None = None) -> Child:
        """Start `argv` from the master's single thread (where preexec_fn is safe)."""
        child = Child(subprocess.Popen(argv, preexec_fn=die_with_parent, process_group=0), socket)
        self.children.append(child)
        return child

    def stop(self, grace: float) -> None:
        """SIGTERM every child still running, SIGKILL those still there after
        `grace` seconds; then remove the sockets they left."""
        for child in self.children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in self.children:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s: killing it", " ".join(child.process.args[2:5]), grace)
                child.process.kill()
                child.process.wait()
            child.remove_socket()
        self.children = []
