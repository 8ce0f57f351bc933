"""This host's keys in etcd, bound to a lease it keeps alive: what the VXLAN
agent and the IPsec registry share. A host that stops renewing (dead, cut
off) loses its keys when the lease's TTL runs out, so every other host drops
what they named; a host that comes back registers again under a new lease.

What the registries read back goes through `entry_object` first: a value of
bounded size that is a JSON object, or the reason it is not.

A subclass names itself in `LABEL` (for the log), calls `_publish` with the
keys it wants now, `_rows` to read a prefix, and `_reconnect` when a call
failed (the next member, the same lease)."""

import json
import logging
import time

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
    LABEL = "registry"

    def __init__(self, connect, ttl: int, client=None):
        """`connect()` returns a client for the next etcd member (called again
        whenever the current one fails); `client`: the first, if already made."""
        self.connect, self.client, self.ttl = connect, client, ttl
        self.lease = None
        self.registered = {}    # key -> value as last written under the current lease
        self.renewed = 0.0

    def _ensure_lease(self) -> None:
        """Renewed every third of the TTL; a new one (and every key written
        again) when it expired meanwhile."""
        if self.lease is not None and time.monotonic() - self.renewed < self.ttl / 3:
            return
        if self.lease is not None and self.lease.refresh() > 0:
            self.renewed = time.monotonic()
            return
        self.lease = self.client.lease(self.ttl)  # first start, or the old one expired
        self.renewed = time.monotonic()
        self.registered = {}
        log.info("%s: lease %s (ttl %ss)", self.LABEL, self.lease.id, self.ttl)

    def _publish(self, wanted: dict) -> None:
        """Exactly `wanted` ({key: value}) under our lease: changed ones
        written, ones no longer wanted deleted."""
        self._ensure_lease()
        for key, value in wanted.items():
            if self.registered.get(key) != value:
                self.client.put(key, value, lease=self.lease)
        for key in set(self.registered) - set(wanted):
            self.client.delete(key)
        self.registered = wanted

    def _rows(self, prefix: str) -> list:
        """(key, value, create revision) of every key under `prefix`."""
        rows = []
        for value, meta in self.client.get_prefix(prefix):
            key = meta.get("key", b"")
            rows.append((key.decode("utf-8", "replace") if isinstance(key, bytes) else key,
                         value, meta.get("create_revision")))
        return rows

    def _reconnect(self) -> None:
        """A new client (and token) from the next member, keeping the lease."""
        try:
            self.client = self.connect()
        except Exception as exc:  # noqa: BLE001 - that member is away too: the next round tries another
            log.warning("%s: connecting: %s: %s", self.LABEL, type(exc).__name__, exc)
            return
        if self.lease is not None:
            self.lease = Lease(self.lease.id, self.client)
