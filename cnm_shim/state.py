"""What the shim must remember across its own and dockerd's restarts (Docker
re-sends nothing): networks, endpoints and IPAM pools, as JSON documents in one
SQLite file. Every write is a transaction, so concurrent workers and a kill -9
never leave a half-written record.

Each document is one typed record (`Network`, `Endpoint`, `Pool`). On disk a
record stays the JSON object it always was, with the same keys, so a state.db
written by an older version loads; keys a record does not know (written by
another version) are kept in `extra` and written back unchanged."""

import contextlib
import dataclasses
import json
import os
import sqlite3
from typing import ClassVar

from cni_backend import sqlite_file

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (kind, key));
"""
NETWORK, ENDPOINT, POOL = "network", "endpoint", "pool"
_BUSY_TIMEOUT_S = 30


class Record:
    """A state document: its dataclass fields are its JSON keys."""

    KIND: ClassVar[str]
    SYNCED: ClassVar[bool] = True  # State.save's commit is on disk before it returns (by default)

    @classmethod
    def from_dict(cls, raw: dict):
        names = {f.name for f in dataclasses.fields(cls) if f.name != "extra"}
        known = {key: value for key, value in raw.items() if key in names}
        return cls(**known, extra={key: value for key, value in raw.items() if key not in names})

    def to_dict(self) -> dict:
        out = dict(self.extra)
        out.update((f.name, getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "extra")
        return out

    @property
    def key(self) -> str:
        raise NotImplementedError


@dataclasses.dataclass
class Network(Record):
    """A network, from CreateNetwork to DeleteNetwork."""

    KIND: ClassVar[str] = NETWORK
    id: str
    driver: str = ""              # the Docker driver (rancher-bridge …) it was created through
    backend: str = ""             # backends.REGISTRY's name: bridge | flat | vxlan
    options: dict = dataclasses.field(default_factory=dict)    # parsed -o options, by name
    cni_name: str = ""
    bridge: str = ""
    conflist: dict = dataclasses.field(default_factory=dict)   # the rendered CNI conflist
    docker_ipam: bool = False     # its addresses come from our IpamDriver (Docker reserved them)
    bridge_created: bool = False  # the bridge is ours to remove
    exported: str | None = None   # where the conflist was exported for CNI runtimes
    extra: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def key(self) -> str:
        return self.id


@dataclasses.dataclass
class Endpoint(Record):
    """An endpoint, from CreateEndpoint to DeleteEndpoint; `result` is set at Join."""

    KIND: ClassVar[str] = ENDPOINT
    # Its first save is synced (CreateEndpoint's, before anything is made or
    # allocated for it), so that after a power loss Docker's cleanup finds it
    # and its DEL releases what the CNI side holds. The later ones (the ADD's
    # result, the sandbox, the ports) are not: a power loss that rolls them
    # back takes the links and rules they describe too, and the DEL needs
    # none of them (cni_backend/sqlite_file.py). Its removal (forget) is synced.
    SYNCED: ClassVar[bool] = False
    network_id: str
    endpoint_id: str
    address: str = ""             # ip/len, from Docker's IPAM
    address6: str = ""
    mac: str = ""
    result: dict | None = None    # the CNI result of the ADD at Join
    src_name: str | None = None   # the interface's name in the host until Docker moves it
    sandbox_key: str | None = None
    ports_at_join: list | None = None   # published ports Join named, still waiting for ProgramExternalConnectivity
    port_requests: list | None = None   # the host ports asked for (ports.Request.as_dict), once published
    port_mappings: list | None = None   # CNI portMappings in place (the host ports ports.py chose)
    extra: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def key(self) -> str:
        return State.endpoint_key(self.network_id, self.endpoint_id)


@dataclasses.dataclass
class Pool(Record):
    """A pool our IpamDriver handed Docker."""

    KIND: ClassVar[str] = POOL
    id: str                       # space/subnet[/sub_pool], Docker's PoolID
    subnet: str
    sub_pool: str | None = None
    gateway: str | None = None    # the gateway address reserved in it, once Docker asked
    refs: int = 1                 # networks holding it (RequestPool +1, ReleasePool -1); older records: 1
    created: float = 0.0          # when RequestPool made it (time.time()); older records: 0, unknown
    extra: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def key(self) -> str:
        return self.id


class Records:
    """Typed access to the documents, over `get` / `put` / `all` / `delete`."""

    def save(self, record: Record) -> None:
        self.put(record.KIND, record.key, record.to_dict())

    def forget(self, record: Record) -> None:
        self.delete(record.KIND, record.key)

    def _one(self, cls, key: str):
        raw = self.get(cls.KIND, key)
        return None if raw is None else cls.from_dict(raw)

    def network(self, network_id: str) -> Network | None:
        return self._one(Network, network_id)

    def networks(self) -> list:
        return [Network.from_dict(raw) for raw in self.all(NETWORK)]

    def endpoint(self, network_id: str, endpoint_id: str) -> Endpoint | None:
        return self._one(Endpoint, State.endpoint_key(network_id, endpoint_id))

    def endpoints(self, network_id: str | None = None) -> list:
        found = [Endpoint.from_dict(raw) for raw in self.all(ENDPOINT)]
        return found if network_id is None else [ep for ep in found if ep.network_id == network_id]

    def pool(self, pool_id: str) -> Pool | None:
        return self._one(Pool, pool_id)

    def pools(self) -> list:
        return [Pool.from_dict(raw) for raw in self.all(POOL)]


class State(Records):
    """state.db; `read_only` opens an existing file without writing (no
    schema, no WAL switch), safe beside the running plug-in."""

    def __init__(self, state_dir: str, read_only: bool = False):
        self.path = os.path.join(state_dir, "state.db")
        self.read_only = read_only
        self._connections = sqlite_file.IdleConnections(
            self.path, lambda: sqlite_file.open_db(self.path, _BUSY_TIMEOUT_S))
        if not read_only:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
            sqlite_file.connect(self.path, _SCHEMA, _BUSY_TIMEOUT_S).close()

    @contextlib.contextmanager
    def _db(self):
        if self.read_only:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=_BUSY_TIMEOUT_S)
            try:
                yield db
            finally:
                db.close()
            return
        # kept between calls (a Docker request makes several); every commit synced (synchronous=FULL)
        # unless a save says otherwise (Record.SYNCED)
        with self._connections.connection() as db:
            yield db

    # -- documents, as the JSON objects stored -----------------------------------

    def save(self, record: Record, synced: bool | None = None) -> None:
        """`synced`: on disk before this returns; by default as Record.SYNCED says."""
        with self._db() as db, sqlite_file.synced(db, record.SYNCED if synced is None else synced):
            Transaction(db).put(record.KIND, record.key, record.to_dict())

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


class Transaction(Records):
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
