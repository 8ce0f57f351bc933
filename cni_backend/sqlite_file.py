"""Opening the project's SQLite files (the IPAM store, the shim's state) so
that any number of processes may open a new file at the same moment."""

import contextlib
import sqlite3

from . import locks


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


@contextlib.contextmanager
def _setup_lock(path: str, timeout: float):
    """An flock on PATH.lock, waited for up to `timeout` seconds."""
    try:
        with locks.held(path + ".lock", timeout, mode=0o600):
            yield
    except TimeoutError as exc:
        raise sqlite3.OperationalError(str(exc)) from None
