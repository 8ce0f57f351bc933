"""Opening the project's SQLite files (the IPAM store, the shim's state) so
that any number of processes may open a new file at the same moment, and so
that a commit survives a power loss.

Every connection runs `PRAGMA synchronous=FULL` (the setting is per
connection, so every connection must): in WAL mode, NORMAL syncs the log only
at checkpoints, and a power loss can roll back the last commits. Docker never
replays an allocation (RequiresRequestReplay is false) and never re-sends a
network, so a rolled-back commit would be an address or a network that Docker
holds and we have forgotten. FULL syncs the log at every commit.

A commit that only records one attachment (the CNI side's address for one
container, the shim's later saves of one endpoint) runs `unsynced` (~0.5 ms
less a commit, more while dockerd syncs its own files; four such commits are
on a `docker run`'s path). A power loss may roll it back, and takes the
attachment itself with it: its links, rules and namespace. What asks to undo
it after the restart (Docker's cleanup of the endpoint, the runtime's DEL)
then finds nothing, which succeeds. The shim's first record of an endpoint is
synced, before anything is allocated for it, so that Docker's cleanup finds
the endpoint and its DEL releases an allocation that outlived the power loss.
The log is sequential: the next synced commit makes the unsynced ones before
it durable too. Everything else stays synced: what Docker holds across a
restart (networks, pools, the IpamDriver's reservations) and every removal
or release, which nobody would ask for again."""

import contextlib
import sqlite3

from . import locks


def open_db(path: str, timeout: float) -> sqlite3.Connection:
    """A connection in autocommit mode to `path` (set up by `connect` before),
    every commit synced to disk."""
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    try:
        db.execute("PRAGMA synchronous=FULL")
    except BaseException:
        db.close()
        raise
    return db


@contextlib.contextmanager
def unsynced(db: sqlite3.Connection, wanted: bool = True):
    """The commits made inside leave the log to be synced by the next
    checkpoint or synced commit (synchronous=NORMAL); FULL again after. A
    connection that cannot be set back is closed, never left syncing less."""
    if not wanted:
        yield db
        return
    db.execute("PRAGMA synchronous=NORMAL")
    try:
        yield db
    finally:
        try:
            db.execute("PRAGMA synchronous=FULL")
        except BaseException:
            db.close()
            raise


def connect(path: str, schema: str, timeout: float) -> sqlite3.Connection:
    """A connection in autocommit mode to `path`, in WAL mode with `schema`
    applied, every commit synced to disk."""
    db = open_db(path, timeout)
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
