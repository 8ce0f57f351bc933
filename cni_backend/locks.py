"""The one host-wide lock of cni_backend: an exclusive flock on a file, held
for a `with` block. Processes (executables, daemon workers, the shim) that
change one shared thing — the firewall, a flat or VXLAN network's host side, a
new SQLite file — take the lock named after it. The kernel drops an flock when
its holder dies, so a crashed call never leaves a host locked.

A lock named after one network goes with the network: the holder that removes
the network calls `discard()` as its last step, which unlinks the file while
the flock is still held and then lets go. Another process may have opened the
old file and be waiting on it; when it gets the flock it finds the path gone
or naming a new file (an inode check after every lock), closes, and locks the
file now at the path. So at any time at most one process holds the flock on
the file the path names, and no lock file outlives its network."""

import contextlib
import fcntl
import os
import time


class Held:
    """The lock a `with held(...)` block holds."""

    def __init__(self, path: str, fd: int):
        self.path = path
        self._fd = fd

    def discard(self) -> None:
        """Remove the lock file and release the lock. Protection ends here:
        make it the block's last step."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # under the flock: an opener that locks after us sees the inode gone
        self.release()

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor releases the flock


def _is_the_file_at(fd: int, path: str) -> bool:
    mine = os.fstat(fd)
    try:
        there = os.stat(path)
    except FileNotFoundError:
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def _flock(fd: int, path: str, deadline: float | None, timeout: float | None) -> None:
    if deadline is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} stayed locked for {timeout} s") from None
            time.sleep(0.005)


@contextlib.contextmanager
def held(path: str, timeout: float | None = None, mode: int = 0o644):
    """Hold an exclusive flock on `path` (made, with its folder, if missing);
    yields a `Held`. Waits for as long as it takes, or with `timeout` raises
    TimeoutError after that many seconds."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
        try:
            _flock(fd, path, deadline, timeout)
            if _is_the_file_at(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # its holder discarded it while we waited: lock the file at the path now
    lock = Held(path, fd)
    try:
        yield lock
    finally:
        lock.release()
