"""Opening the project's SQLite files (the IPAM store, the shim's state) so
that any number of processes may open a new file at the same moment."""

import fcntl
import os
import sqlite3
import time


def connect(path: str, schema: str, timeout: float) -> sqlite3.Connection:
    """A connection in autocommit mode to `path`, in WAL mode with `schema` applied."""
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    try:
        with _setup_lock(path, timeout):
            # Switching a new file to WAL takes an exclusive lock SQLite does
            # not wait for (no busy handler), so processes opening a new file
            # together failed with "database is locked". Under the lock one
            # at a time runs this; once the file is in WAL and has its tables
            # both statements change nothing and take no write lock.
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(schema)
    except BaseException:
        db.close()
        raise
    return db


class _setup_lock:
    """An flock on PATH.lock, waited for up to `timeout` seconds."""

    def __init__(self, path: str, timeout: float):
        self.path, self.timeout = path + ".lock", timeout

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise sqlite3.OperationalError(f"{self.path} stayed locked for {self.timeout} s") from None
                time.sleep(0.005)

    def __exit__(self, *exc):
        os.close(self.fd)  # closing the only descriptor releases the flock
