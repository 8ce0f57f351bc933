"""What the shim must remember across its own and dockerd's restarts (Docker
re-sends nothing): networks, endpoints and IPAM pools, as JSON documents in one
SQLite file. Every write is a transaction, so concurrent workers and a kill -9
never leave a half-written record."""

import contextlib
import json
import os

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
            db.execute("INSERT OR REPLACE INTO objects (kind, key, value) VALUES (?, ?, ?)",
                       (kind, key, json.dumps(value, sort_keys=True)))

    def get(self, kind: str, key: str) -> dict | None:
        with self._db() as db:
            row = db.execute("SELECT value FROM objects WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        return json.loads(row[0]) if row else None

    def delete(self, kind: str, key: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM objects WHERE kind = ? AND key = ?", (kind, key))

    def all(self, kind: str) -> list:
        with self._db() as db:
            rows = db.execute("SELECT value FROM objects WHERE kind = ? ORDER BY key", (kind,)).fetchall()
        return [json.loads(row[0]) for row in rows]

    @staticmethod
    def endpoint_key(network_id: str, endpoint_id: str) -> str:
        return f"{network_id}/{endpoint_id}"
