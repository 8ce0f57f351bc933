"""Writing a file so that a crash or a power loss leaves the old content or
the new, never a part, an empty file, or a rename the disk forgot.

    temp file in the same directory  (a rename never crosses filesystems)
    write, fchmod, fsync             (the data is on disk before it has the name)
    rename over the target           (atomic for every reader)
    fsync the directory              (the rename itself is on disk)

Every file the CNI side and the shim write goes through `write_atomic`:
libcni cache entries, exported conflists, the CNI executables, the kernel
feature cache, flat and VXLAN records. The temp file is named
`.<name>.<random>.tmp`: hidden, and never with an extension a reader of the
directory looks for (.conflist, .conf, .json). A writer killed between the
temp file's creation and the rename leaves it; a process's first write in
the directory removes such leftovers (of that shape only: another tool's
are not ours) once they are older than any write could take
(STALE_AFTER_S), so a write in progress elsewhere keeps its own,
and so does every later write of the process once that long has passed
since: not each write, whose listing of the directory would grow with it
(~0.5 ms an ADD with 1,000 entries in the CNI cache).

A record of one attachment (its libcni cache entry, its VXLAN record) is
written with `durable=False`: the same temp file and rename, without the two
syncs (~1 ms on the Join's path, more while dockerd syncs its own files).
A kill still leaves one whole version; a power loss may leave the old one, or
an empty file where there was none, which every reader takes for no record.
That loses nothing: a power loss takes the attachment itself with it (its
links, its rules, its namespace), and its DEL works without the record.
libcni writes its cache entries without a sync too (a plain os.WriteFile).
"""

import contextlib
import os
import re
import tempfile
import time

STALE_AFTER_S = 600


def write_atomic(path: str, data, mode: int = 0o600, durable: bool = True) -> None:
    """Replace `path` with `data` (bytes, or str written as UTF-8), permissions
    `mode`; on disk when this returns unless not `durable` (see above)."""
    if isinstance(data, str):
        data = data.encode()
    directory = os.path.dirname(os.path.abspath(path))
    _remove_leftovers(directory)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_directory(directory)


_swept = {}  # directory -> when this process last removed its leftovers
_OUR_TEMP_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # .<name>.<mkstemp's 8 characters>.tmp


def _remove_leftovers(directory: str) -> None:
    """Temp files left in `directory` by killed writers, at most once per
    STALE_AFTER_S in a process (see the module's docstring)."""
    now = time.time()
    if now - _swept.get(directory, 0.0) < STALE_AFTER_S:
        return
    _swept[directory] = now
    cutoff = now - STALE_AFTER_S
    for entry in os.listdir(directory):
        if _OUR_TEMP_FILE.match(entry):
            leftover = os.path.join(directory, entry)
            with contextlib.suppress(OSError):
                if os.lstat(leftover).st_mtime < cutoff:
                    os.unlink(leftover)


def fsync_directory(directory: str) -> None:
    """Make the directory's entries (a rename, a new or removed name) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
