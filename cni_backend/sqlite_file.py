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
container, the shim's later saves of one endpoint) runs `synced(db, False)`
(~0.5 ms less a commit, more while dockerd syncs its own files; four such
commits are on a `docker run`'s path). A power loss may roll it back, and takes the
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
import os
import sqlite3
import threading

from . import locks


def open_db(path: str, timeout: float) -> sqlite3.Connection:
    """A connection in autocommit mode to `path` (set up by `connect` before),
    every commit synced to disk; usable by one thread at a time, any of them
    (IdleConnections hands a kept one to the next thread that needs it)."""
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA synchronous=FULL")
    except BaseException:
        db.close()
        raise
    return db


@contextlib.contextmanager
def synced(db: sqlite3.Connection, wanted: bool):
    """Unless `wanted`, the commits made inside leave the log to be synced by
    the next checkpoint or synced commit (synchronous=NORMAL); FULL again
    after. A connection that cannot be set back is closed, never left syncing less."""
    if wanted:
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


class IdleConnections:
    """Connections to the file at `path` kept between transactions, for
    whichever thread of the process needs one next (a plug-in call runs on a
    thread of its own, invoke/own.py): taken by `connection()`, given back
    after, one more opened by `opener()` when none is idle. Opening one (the
    PRAGMAs, the schema check) costs more than the one-row transaction it
    serves; and while a connection stays open, the last one's close does not
    checkpoint the log into the file and delete it (two syncs and a
    truncate). An idle connection holds no read transaction: it blocks no
    writer and no checkpoint. None crosses a fork (a gunicorn worker, a
    forked CNI call), none is used once another file has taken the path
    (removed, restored), and one whose transaction failed is closed."""

    def __init__(self, path: str, opener):
        self.path, self.opener = path, opener
        self.lock = threading.Lock()
        self.owner, self.idle = None, []  # (pid, the file's identity) the idle ones are of

    def _owner(self):
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return os.getpid(), st.st_dev, st.st_ino

    @contextlib.contextmanager
    def connection(self):
        owner = self._owner()
        with self.lock:
            if owner != self.owner:  # a forked child (the parent's are the parent's), or another file
                if self.owner is not None and self.owner[0] == os.getpid():
                    for db in self.idle:
                        with contextlib.suppress(sqlite3.Error):
                            db.close()
                self.idle, self.owner = [], owner
            db = self.idle.pop() if self.idle else None
        if db is None:
            db = self.opener()
            if owner is None:  # the file was missing: the one this connection made
                owner = self._owner()
                with self.lock:
                    self.owner = self.owner or owner
        try:
            yield db
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # whatever failed mid-way: not given back
                db.close()
            raise
        with self.lock:
            if owner is not None and owner == self.owner:
                self.idle.append(db)
                return
        db.close()

    def close_idle(self) -> None:
        """Close this process's idle connections; the next call opens one."""
        with self.lock:
            idle, self.idle = self.idle, []
            if self.owner is None or self.owner[0] != os.getpid():
                return
        for db in idle:
            with contextlib.suppress(sqlite3.Error):
                db.close()
