"""The one host-wide lock of cni_backend: an exclusive flock on a file, held
for a `with` block. Processes (executables, daemon workers, the shim) that
change one shared thing — the firewall, a flat or VXLAN network's host side, a
new SQLite file — take the lock named after it. The kernel drops an flock when
its holder dies, so a crashed call never leaves a host locked."""

import contextlib
import fcntl
import os
import time


@contextlib.contextmanager
def held(path: str, timeout: float | None = None, mode: int = 0o644):
    """Hold an exclusive flock on `path` (made, with its folder, if missing).
    Waits for as long as it takes, or with `timeout` raises TimeoutError
    after that many seconds."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        if timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{path} stayed locked for {timeout} s") from None
                    time.sleep(0.005)
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the flock
