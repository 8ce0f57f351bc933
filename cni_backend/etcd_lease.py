"""This host's keys in etcd, bound to a lease it keeps alive: what the VXLAN
agent and the IPsec registry share. A host that stops renewing (dead, cut
off) loses its keys when the lease's TTL runs out, so every other host drops
what they named; a host that comes back registers again under a new lease.

What the registries read back goes through `entry_object` first: a value of
bounded size that is a JSON object, or the reason it is not.

A subclass names itself in `LABEL` (for the log), calls `_publish` with the
keys it wants now, `_rows` to read a prefix (or `_snapshot` for the rows and
the revision they were read at), `_watch` to follow the prefix from there, and
`_reconnect` when a call failed (the next member, the same lease).

`PrefixWatch` reads etcd's watch stream (the gRPC gateway's /v3/watch) itself
rather than through etcd3gw's `watch_prefix`: that one drops the response
that says the watch was cancelled because its start revision was compacted
(`compact_revision`, etcd's ErrCompacted) and its reader thread ends silently
when the member goes away, so a caller would wait forever on a dead watch.
Here both end the watch with the reason, and the caller resyncs in full."""

import base64
import json
import logging
import socket
import threading
import time
import weakref

try:
    from etcd3gw.lease import Lease
except ImportError:  # only the agents need it
    Lease = None

log = logging.getLogger("rancher-cni")


def entry_object(value, max_bytes: int) -> dict:
    """A registry value read from etcd (bytes or text) as a JSON object, or
    ValueError saying why not: longer than `max_bytes`, not JSON, not an object."""
    if isinstance(value, (bytes, bytearray)):
        if len(value) > max_bytes:
            raise ValueError(f"value of {len(value)} bytes (at most {max_bytes})")
        value = value.decode("utf-8", "replace")
    try:
        entry = json.loads(value)
    except (TypeError, ValueError, RecursionError):
        raise ValueError("value is not JSON") from None
    if not isinstance(entry, dict):
        raise ValueError("value is not a JSON object")
    return entry


class LeasedKeys:
    """One lease per agent process (per host, for what that agent registers):
    granted once, renewed every third of its TTL, and attached to every key
    the agent writes. The renewal runs in a thread of its own (`_keep_alive`,
    on a client of its own), so an agent busy for longer than the TTL (a full
    resync on a starved CPU, a long netlink batch) does not lose its keys;
    the agent's loop renews too, as a second line, when that thread could not. Every timer here counts on
    time.monotonic(); the expiry itself is etcd's (server side), so a wall
    clock set forward or back changes nothing.

    A lease that is gone when renewed or written under (etcd answers TTL -1,
    or "requested lease not found": the host was cut off from etcd, or
    stalled, for longer than the TTL, and its keys expired meanwhile) is
    replaced by a new one, and every key the host wants is written again from
    its local truth, in transactions, under the same names: nothing is
    duplicated, nothing is lost, and no key outside this host's own set is
    ever touched."""
    LABEL = "registry"
    TXN_OPS = 64   # per transaction; etcd refuses more than 128 (--max-txn-ops)

    def __init__(self, connect, ttl: int, client=None):
        """`connect()` returns a client for the next etcd member (called again
        whenever the current one fails); `client`: the first, if already made."""
        self.connect, self.client, self.ttl = connect, client, ttl
        self.lease = None
        self.registered = {}    # key -> value as last written under the current lease
        self.renewed = 0.0      # time.monotonic() of the last renewal (by the agent or the keep-alive thread)
        self.leases = 0         # leases granted so far (the first, then one per loss)
        self.keeping = None     # the lease ID the keep-alive thread renews; None stops it

    def _ensure_lease(self) -> None:
        """Renewed every third of the TTL; a new one (and every key written
        again) when it expired meanwhile."""
        if self.lease is not None and time.monotonic() - self.renewed < self.ttl / 3:
            return
        if self.lease is not None and self.lease.refresh() > 0:
            self.renewed = time.monotonic()
            return
        old = self.lease
        self.lease = self.client.lease(self.ttl)  # first start, or the old one expired
        self.renewed = time.monotonic()
        self.registered = {}
        self.leases += 1
        self.keeping = self.lease.id
        threading.Thread(target=self._keep_alive, args=(weakref.ref(self), self.lease.id), daemon=True,
                         name=f"lease-{self.lease.id}").start()
        if old is None and self.leases == 1:
            log.info("%s: lease %s (ttl %ss)", self.LABEL, self.lease.id, self.ttl)
        else:
            log.warning("%s: lease %s was gone (this host was cut off from etcd or stalled for longer than its "
                        "ttl of %ss, so its keys expired): registering again under lease %s",
                        self.LABEL, old.id if old is not None else "?", self.ttl, self.lease.id)

    @staticmethod
    def _keep_alive(ref, lease_id) -> None:
        """Renew `lease_id` every third of the TTL until it is no longer the
        lease kept (a new one replaced it, `stop_keep_alive`, the agent is
        gone: `ref` is a weak reference to it) or etcd says it is gone: then
        the agent's next `_ensure_lease` finds it so and registers again. A
        failed renewal is tried again a second later on a client for the
        next member; nothing here writes a key."""
        client, retry = None, False
        while True:
            agent = ref()
            if agent is None or agent.keeping != lease_id:
                return
            due = 1.0 if retry else agent.renewed + agent.ttl / 3 - time.monotonic()
            del agent   # not kept alive by its own keep-alive while it sleeps
            time.sleep(max(0.0, due))
            agent = ref()
            if agent is None or agent.keeping != lease_id:
                return
            try:
                client = client or agent.connect()
                left = Lease(lease_id, client).refresh()
            except Exception as exc:  # noqa: BLE001 - etcd away: the next member, a second later
                log.debug("%s: renewing lease %s: %s: %s", agent.LABEL, lease_id, type(exc).__name__, exc)
                client, retry = None, True
                continue
            if agent.keeping != lease_id:
                return
            if left <= 0:
                agent.renewed = 0.0   # the agent's next round renews, finds it gone and registers again
                return
            agent.renewed, retry = time.monotonic(), False

    def stop_keep_alive(self) -> None:
        """The keep-alive thread ends (at its next wake-up); the lease then runs out unless renewed."""
        self.keeping = None

    def run(self, interval: float = 1.0, stop=lambda: False) -> None:
        """The agent's loop (`_run`, the subclass's) until `stop()`; its lease's keep-alive ends with it."""
        try:
            self._run(interval, stop)
        finally:
            self.stop_keep_alive()

    def _publish(self, wanted: dict, stale=()) -> None:
        """Exactly `wanted` ({key: value}) under our lease: changed ones
        written, ones no longer wanted deleted, and so are `stale` ones (this
        host's own keys left by an earlier run of its agent)."""
        self._ensure_lease()
        try:
            self._write(wanted, stale)
        except Exception as exc:
            if not lease_lost(exc):
                raise
            self.lease = None   # it expired between its renewal and this write: a new one, everything again
            self._ensure_lease()
            self._write(wanted, stale)
        self.registered = dict(wanted)

    def _write(self, wanted: dict, stale=()) -> None:
        from etcd3gw.utils import _encode
        ops = [{"request_put": {"key": _encode(key), "value": _encode(value), "lease": self.lease.id}}
               for key, value in wanted.items() if self.registered.get(key) != value]
        ops += [{"request_delete_range": {"key": _encode(key)}}
                for key in sorted((set(self.registered) | set(stale)) - set(wanted))]
        for start in range(0, len(ops), self.TXN_OPS):
            self.client.transaction({"compare": [], "success": ops[start:start + self.TXN_OPS], "failure": []})

    def _rows(self, prefix: str) -> list:
        """(key, value, create revision) of every key under `prefix`."""
        rows = []
        for value, meta in self.client.get_prefix(prefix):
            key = meta.get("key", b"")
            rows.append((key.decode("utf-8", "replace") if isinstance(key, bytes) else key,
                         value, meta.get("create_revision")))
        return rows

    def _snapshot(self, prefix: str) -> tuple:
        """(revision, [(key, value, create revision)]): every key under
        `prefix`, and the store's revision they were read at (a watch from
        revision + 1 misses nothing and repeats nothing)."""
        from etcd3gw.utils import _encode, _increment_last_byte
        reply = self.client.post(self.client.get_url("/kv/range"),
                                 json={"key": _encode(prefix), "range_end": _encode(_increment_last_byte(prefix))})
        rows = [(base64.b64decode(kv.get("key", "")).decode("utf-8", "replace"),
                 base64.b64decode(kv.get("value", "")), kv.get("create_revision"))
                for kv in reply.get("kvs", [])]
        return int(reply["header"]["revision"]), rows

    def _watch(self, prefix: str, start_revision: int) -> "PrefixWatch":
        return PrefixWatch(self.client, prefix, start_revision)

    def _reconnect(self) -> None:
        """A new client (and token) from the next member, keeping the lease."""
        try:
            self.client = self.connect()
        except Exception as exc:  # noqa: BLE001 - that member is away too: the next round tries another
            log.warning("%s: connecting: %s: %s", self.LABEL, type(exc).__name__, exc)
            return
        if self.lease is not None:
            self.lease = Lease(self.lease.id, self.client)


def lease_lost(exc) -> bool:
    """Whether etcd refused a write because its lease no longer exists."""
    return "lease not found" in str(getattr(exc, "detail_text", "") or exc)


class WatchEnded(Exception):
    """The watch stream is over; the message says why (compacted, the member gone)."""


class PrefixWatch:
    """Changes under a prefix from `start_revision` on, read by a thread of
    its own: `take()` hands over what arrived since the last call, as
    {key: (value, create revision) or None for a deleted key}, and raises
    WatchEnded once the stream is over (after what arrived before the end)."""

    def __init__(self, client, prefix: str, start_revision: int):
        from etcd3gw.utils import _encode, _increment_last_byte
        self.arrived = threading.Event()      # set when changes (or the end) are waiting
        self.lock = threading.Lock()
        self.changes, self.ended, self.revision = {}, None, start_revision - 1
        self.response = client.session.post(
            client.get_url("/watch"), stream=True, timeout=(client.timeout, None),
            json={"create_request": {"key": _encode(prefix), "range_end": _encode(_increment_last_byte(prefix)),
                                     "start_revision": start_revision}})
        if self.response.status_code != 200:
            text = self.response.text[:300]
            self.response.close()
            raise WatchEnded(f"watch refused: HTTP {self.response.status_code}: {text}")
        self.thread = threading.Thread(target=self._read, name="etcd-watch", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        buffered = b""
        try:
            for chunk in self.response.iter_content(chunk_size=None):
                buffered += chunk
                while b"\n" in buffered:
                    line, buffered = buffered.split(b"\n", 1)
                    if line.strip():
                        self._message(json.loads(line))
            if buffered.strip():
                self._message(json.loads(buffered))
            self._end("the member closed the watch stream")
        except WatchEnded as exc:
            self._end(str(exc))
        except Exception as exc:  # noqa: BLE001 - the connection broke (member gone) or garbage came
            self._end(f"{type(exc).__name__}: {exc}")

    def _message(self, message) -> None:
        if not isinstance(message, dict) or "error" in message:
            raise WatchEnded(f"watch error: {str(message)[:300]}")
        result = message.get("result") or {}
        if int(result.get("compact_revision") or 0):
            raise WatchEnded(f"compacted: revision {result['compact_revision']} and older are gone")
        if result.get("canceled"):
            raise WatchEnded(f"cancelled by etcd: {result.get('cancel_reason') or 'no reason given'}")
        events = result.get("events") or []
        if not events:
            return
        with self.lock:
            for event in events:
                kv = event.get("kv") or {}
                key = base64.b64decode(kv.get("key", "")).decode("utf-8", "replace")
                if event.get("type") == "DELETE":
                    self.changes[key] = None
                else:
                    self.changes[key] = (base64.b64decode(kv.get("value", "")), kv.get("create_revision"))
                self.revision = max(self.revision, int(kv.get("mod_revision") or 0))
            self.arrived.set()

    def _end(self, why: str) -> None:
        with self.lock:
            if self.ended is None:
                self.ended = why
            self.arrived.set()

    def take(self) -> dict:
        with self.lock:
            changes, self.changes = self.changes, {}
            self.arrived.clear()
            if not changes and self.ended is not None:
                self.arrived.set()
                raise WatchEnded(self.ended)
            return changes

    def wait(self, timeout: float) -> bool:
        return self.arrived.wait(timeout)

    def stop(self) -> None:
        self._end("stopped")
        try:  # wakes the reader blocked in recv(); closing alone would not
            sock = socket.fromfd(self.response.raw._fp.fileno(), socket.AF_INET, socket.SOCK_STREAM)
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        except Exception:  # noqa: BLE001, S110 - already closed
            pass
        self.response.close()
