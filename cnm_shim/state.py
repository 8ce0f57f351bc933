"""What the shim must remember across its own and dockerd's restarts (Docker
re-sends nothing): networks, endpoints and IPAM pools, as JSON documents in one
SQLite file. Every write is a transaction, so concurrent workers and a kill -9
never leave a half-written record."""

import contextlib
import json
import os
import sqlite3

from cni_backend import sqlite_file

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (kind, key));
"""
NETWORK, ENDPOINT, POOL = "network", "endpoint", "pool"
_BUSY_TIMEOUT_S = 30


class State:
    def __init__(self, state_dir: str):
        self.path = os.path.join(state_dir, "state.db")
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        sqlite_file.connect(self.path, _SCHEMA, _BUSY_TIMEOUT_S).close()

    @contextlib.contextmanager
    def _db(self):
        db = sqlite_file.open_db(self.path, _BUSY_TIMEOUT_S)  # synchronous=FULL: commits survive a power loss
        try:
            yield db
        finally:
            db.close()

    def put(self, kind: str, key: str, value: dict) -> None:
        with self._db() as db:
            Transaction(db).put(kind, key, value)

    def get(self, kind: str, key: str) -> dict | None:
        with self._db() as db:
            return Transaction(db).get(kind, key)

    def delete(self, kind: str, key: str) -> None:
        with self._db() as db:
            Transaction(db).delete(kind, key)

    def all(self, kind: str) -> list:
        with self._db() as db:
            return Transaction(db).all(kind)

    @contextlib.contextmanager
    def transaction(self):
        """Reads and writes that commit together, under the write lock taken
        first (BEGIN IMMEDIATE): a check-then-write in here cannot interleave
        with another worker's (RequestPool's choice of a free pool)."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @staticmethod
    def endpoint_key(network_id: str, endpoint_id: str) -> str:
        return f"{network_id}/{endpoint_id}"


class Transaction:
    """State's reads and writes on one connection (State.transaction's, or one per call)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def put(self, kind: str, key: str, value: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO objects (kind, key, value) VALUES (?, ?, ?)",
                        (kind, key, json.dumps(value, sort_keys=True)))

    def get(self, kind: str, key: str) -> dict | None:
        row = self.db.execute("SELECT value FROM objects WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        return json.loads(row[0]) if row else None

    def delete(self, kind: str, key: str) -> None:
        self.db.execute("DELETE FROM objects WHERE kind = ? AND key = ?", (kind, key))

    def all(self, kind: str) -> list:
        rows = self.db.execute("SELECT value FROM objects WHERE kind = ? ORDER BY key", (kind,)).fetchall()
        return [json.loads(row[0]) for row in rows]
