"""The driver sockets in the plug-in directory: claimed at start, given back at stop.

Docker finds a legacy plug-in by its socket file and retries a call whose
connection fails, but it re-sends the call with an empty body once the first
attempt wrote it (see ../shared/PROTOCOLS.md section 1). So the plug-in never
takes over a socket somebody still answers on (that would strand the other
server's queued connections; the workers of a server killed a moment ago
get a few seconds to go first), binds and listens before any worker is ready
(Docker's connections wait in the listen queue instead of failing), and at
stop removes only the socket files that are still its own.
"""

import contextlib
import dataclasses
import fcntl
import logging
import os
import socket
import stat
import time

log = logging.getLogger("cnm-shim")

BACKLOG = 2048  # gunicorn's default (the kernel caps it at net.core.somaxconn): a burst of calls waits, not fails
PROBE_TIMEOUT = 2.0  # a listener whose queue is full makes connect() wait: that is someone alive too
# a server whose master was killed (-9) leaves workers that still answer on
# its socket until the kernel's SIGTERM (their parent-death signal) ends them;
# a restart right after waits for them this long before calling the socket
# another server's
DYING_SERVER_GRACE = 10.0


class SocketInUse(SystemExit):
    """Another server answers on one of our sockets: refuse to start (exit status 1)."""


@dataclasses.dataclass
class Claimed:
    """A listening socket of ours and the inode its file had when we bound it."""
    path: str
    listener: socket.socket
    inode: int

    def hand_over(self) -> str:
        """The listener as a gunicorn bind address; gunicorn owns the descriptor from now on."""
        return f"fd://{self.listener.detach()}"

    def release(self) -> None:
        """Stop listening and remove the file, unless another server has
        replaced it since (a different inode is someone else's socket)."""
        with contextlib.suppress(OSError):
            self.listener.close()
        remove_if_same(self.path, self.inode)


def remove_if_same(path: str, inode: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        if os.lstat(path).st_ino == inode:
            os.unlink(path)


def answers(path: str) -> bool:
    """Whether a server listens on the Unix socket `path`. A file nobody
    listens on (left by a killed server) refuses the connection: it is stale."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT)
    try:
        probe.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        return False
    except (TimeoutError, BlockingIOError):
        return True  # a full listen queue: busy, not dead
    finally:
        probe.close()
    return True


@contextlib.contextmanager
def _directory_lock(directory: str):
    """Two servers starting at once must not both find a socket stale and
    both bind it: the check and the bind happen under an flock on the directory."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _bind(path: str) -> Claimed:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o117)  # 0660, root's: whoever may talk to the plug-in may run netlink through it
    try:
        listener.bind(path)
    finally:
        os.umask(old_umask)
    listener.listen(BACKLOG)
    return Claimed(path, listener, os.lstat(path).st_ino)


def claim(directory: str, names) -> list:
    """Listening sockets for `names` in `directory`. Refuses (SocketInUse)
    when any of them answers; removes a stale one first."""
    os.makedirs(directory, mode=0o755, exist_ok=True)
    claimed = []
    with _directory_lock(directory):
        try:
            for name in names:
                path = os.path.join(directory, name)
                _take_over_if_stale(path)
                claimed.append(_bind(path))
        except BaseException:
            for sock in claimed:
                sock.release()
            raise
    return claimed


def _take_over_if_stale(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketInUse(f"cnm-shim serve: {path} exists and is not a socket; not touching it")
    deadline = time.monotonic() + DYING_SERVER_GRACE
    while answers(path):
        if time.monotonic() < deadline:
            time.sleep(0.1)
            continue
        raise SocketInUse(f"cnm-shim serve: a server already answers on {path} (another cnm-shim serve?); "
                          "stop it first, or give this one another --plugin-dir")
    log.warning("%s: nobody answers on it (left by a killed server): taking it over", path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)

