"""Where allocations live: an interface, and the embedded SQLite store.

Every change happens inside `run(fn)`: `fn(txn)` reads and writes through a
`Transaction` that commits all or nothing, so parallel plug-in processes never
hand out one address twice and a process killed mid-way leaves no half-made
allocation. SQLite runs `fn` once under its write lock; etcd (`etcd_store.py`)
runs it optimistically and again when another host changed the same pool.
"""

import abc
import contextlib
import dataclasses
import os
import sqlite3
import threading
import time

from .. import sqlite_file
from ..errors import CNIError, IO_FAILURE, TRY_AGAIN_LATER


# The `network` of addresses reserved through Docker's IpamDriver calls; CNI GC
# of a network never touches them, Docker's ReleaseAddress frees them.
DOCKER_OWNER = "@docker"


@dataclasses.dataclass(frozen=True)
class Allocation:
    pool: str          # the subnet, e.g. "10.22.0.0/16"
    ip: str
    network: str       # the CNI network name (or the Docker-side owner)
    container_id: str
    ifname: str


class Transaction(abc.ABC):
    @abc.abstractmethod
    def allocated(self, pool: str) -> dict:
        """ip -> Allocation for every address held in `pool`."""

    def holder(self, pool: str, ip: str) -> Allocation | None:
        """The allocation of one address, None when it is free. A store that
        can look up one row without reading the pool says so here."""
        return self.allocated(pool).get(ip)

    @abc.abstractmethod
    def held_by(self, network: str, container_id: str, ifname: str) -> list:
        ...

    @abc.abstractmethod
    def add(self, allocation: Allocation) -> None:
        ...

    @abc.abstractmethod
    def remove(self, allocation: Allocation) -> None:
        ...

    @abc.abstractmethod
    def all(self, network: str | None = None) -> list:
        ...

    @abc.abstractmethod
    def cursor(self, pool: str) -> str | None:
        """The address handed out last in `pool` (allocation resumes after it)."""

    @abc.abstractmethod
    def set_cursor(self, pool: str, ip: str) -> None:
        ...


class Store(abc.ABC):
    @abc.abstractmethod
    def run(self, fn, synced: bool = True):
        """fn(txn), atomically; returns what fn returns. Not `synced`: a
        commit that records only an attachment may wait for the next synced
        one to reach the disk (sqlite_file says which may)."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS allocations (
    pool TEXT NOT NULL, ip TEXT NOT NULL, network TEXT NOT NULL,
    container_id TEXT NOT NULL, ifname TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (pool, ip));
CREATE INDEX IF NOT EXISTS allocations_by_owner
    ON allocations (network, container_id, ifname);
CREATE TABLE IF NOT EXISTS cursors (pool TEXT PRIMARY KEY, ip TEXT NOT NULL);
"""
_COLUMNS = "pool, ip, network, container_id, ifname"
BUSY_TIMEOUT_S = 30


class _SQLiteTransaction(Transaction):
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def _rows(self, where: str, params) -> list:
        sql = f"SELECT {_COLUMNS} FROM allocations {where} ORDER BY pool, ip"
        return [Allocation(*row) for row in self.db.execute(sql, params)]

    def allocated(self, pool):
        return {a.ip: a for a in self._rows("WHERE pool = ?", (pool,))}

    def holder(self, pool, ip):
        found = self._rows("WHERE pool = ? AND ip = ?", (pool, ip))
        return found[0] if found else None

    def held_by(self, network, container_id, ifname):
        return self._rows("WHERE network = ? AND container_id = ? AND ifname = ?",
                          (network, container_id, ifname))

    def add(self, allocation):
        self.db.execute(f"INSERT INTO allocations ({_COLUMNS}, created) VALUES (?, ?, ?, ?, ?, ?)",
                        (*dataclasses.astuple(allocation), time.time()))

    def remove(self, allocation):
        self.db.execute("DELETE FROM allocations WHERE pool = ? AND ip = ?",
                        (allocation.pool, allocation.ip))

    def all(self, network=None):
        if network is None:
            return self._rows("", ())
        return self._rows("WHERE network = ?", (network,))

    def cursor(self, pool):
        row = self.db.execute("SELECT ip FROM cursors WHERE pool = ?", (pool,)).fetchone()
        return row[0] if row else None

    def set_cursor(self, pool, ip):
        self.db.execute("INSERT OR REPLACE INTO cursors (pool, ip) VALUES (?, ?)", (pool, ip))


# path -> sqlite_file.IdleConnections, in a process that opted in (keep_files_open)
_idle: dict = {}
_idle_lock = threading.Lock()
_keep_open = False


def keep_files_open() -> None:
    """From now on, this process keeps its connections to each store file
    between transactions (sqlite_file.IdleConnections): for the shim's and
    the CNI daemon's workers, which make transaction after transaction. A
    one-off plug-in process opens one per transaction and closes it."""
    global _keep_open
    _keep_open = True


class SQLiteStore(Store):
    """One file per host; SQLite's write lock serialises allocating processes."""

    FILENAME = "ipam.db"

    def __init__(self, data_dir: str):
        self.path = os.path.join(data_dir, self.FILENAME)
        self.data_dir = data_dir

    def _connect(self) -> sqlite3.Connection:
        try:
            os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
            # WAL: readers never block the writer; synchronous=FULL: a commit survives a power loss
            db = sqlite_file.connect(self.path, _SCHEMA, BUSY_TIMEOUT_S)
        except (OSError, sqlite3.Error) as exc:
            raise CNIError(IO_FAILURE, f"cannot open the IPAM store {self.path}", str(exc)) from None
        return db

    def run(self, fn, synced: bool = True):
        with self._transaction(synced) as txn:
            return fn(txn)

    @contextlib.contextmanager
    def _connection(self):
        """A connection of the process's idle ones (keep_files_open), or one
        of its own, closed after: the file's last close checkpoints the log
        into it and deletes it (two syncs and a truncate, ~1 of the ~1.7 ms
        a one-row transaction took here)."""
        if _keep_open:
            with _idle_lock:
                idle = _idle.get(self.path)
                if idle is None:
                    idle = _idle[self.path] = sqlite_file.IdleConnections(self.path, self._connect)
            with idle.connection() as db:
                yield db
            return
        db = self._connect()
        try:
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _transaction(self, synced: bool):
        with self._connection() as db, sqlite_file.synced(db, synced):
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise CNIError(TRY_AGAIN_LATER, "the IPAM store is busy, try again", str(exc)) from None
            try:
                yield _SQLiteTransaction(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")


def open_store(data_dir: str, etcd_endpoints=(), etcd_prefix: str = "/rancher-cni", etcd_tls=None) -> Store:
    """The store to use; the one place that picks the implementation: etcd
    when endpoints are given (addresses global across hosts), else SQLite."""
    if etcd_endpoints:
        from .etcd_store import EtcdStore  # its HTTP client costs import time
        return EtcdStore(list(etcd_endpoints), etcd_prefix, etcd_tls)
    return SQLiteStore(data_dir)
