"""The IPAM store in etcd (v3, through its JSON gateway): addresses global
across hosts.

Optimistic transactions: `run(fn)` lets fn read and write through a
transaction that records, for every pool it reads, the revision of that pool's
version key; the commit is one etcd Txn that succeeds only if none of those
keys changed, writes everything, and bumps the version of each pool written.
Two hosts allocating from one pool at once: one commits, the other runs fn
again on fresh data. Layout under the prefix:

  pools/<pool>/version                     bumped by every change to the pool
  pools/<pool>/ips/<ip>                    the allocation (JSON)
  owners/<network>/<container>/<ifname>/<pool>/<ip>   index by owner
  cursors/<pool>                           last address handed out (a hint)
"""

import dataclasses
import json
import random
import time
import urllib.parse

from ..errors import CNIError, INVALID_CONFIG, TRY_AGAIN_LATER
from .store import Allocation, Store, Transaction

ATTEMPTS = 60
TIMEOUT_S = 5


def _part(text: str) -> str:
    return urllib.parse.quote(text, safe="") or "-"


class _EtcdTransaction(Transaction):
    def __init__(self, client, prefix: str):
        self.client = client
        self.prefix = prefix.rstrip("/")
        self.pools = {}        # pool -> {ip: Allocation}, with this transaction's writes applied
        self.versions = {}     # pool version key -> mod revision read (0: absent)
        self.writes = {}       # key -> value, or None to delete
        self.dirty = set()     # pools written

    # keys
    def _pool_key(self, pool: str) -> str:
        return f"{self.prefix}/pools/{_part(pool)}"

    def _owner_key(self, a: Allocation) -> str:
        return (f"{self.prefix}/owners/{_part(a.network)}/{_part(a.container_id)}/{_part(a.ifname)}"
                f"/{_part(a.pool)}/{a.ip}")

    # reads
    def _pool(self, pool: str) -> dict:
        if pool not in self.pools:
            version_key = self._pool_key(pool) + "/version"
            found = self.client.get(version_key, metadata=True)
            self.versions[version_key] = int(found[0][1]["mod_revision"]) if found else 0
            rows = self.client.get_prefix(self._pool_key(pool) + "/ips/")
            self.pools[pool] = {}
            for value, _ in rows:
                allocation = Allocation(**json.loads(value))
                self.pools[pool][allocation.ip] = allocation
        return self.pools[pool]

    def _by_owner_prefix(self, prefix: str) -> list:
        found = []
        for value, _ in self.client.get_prefix(prefix):
            allocation = Allocation(**json.loads(value))
            current = self._pool(allocation.pool).get(allocation.ip)
            if current == allocation:
                found.append(current)
        # this transaction's own adds are not in etcd yet
        for pool in self.dirty:
            for allocation in self.pools[pool].values():
                if self._owner_key(allocation).startswith(prefix) and allocation not in found:
                    found.append(allocation)
        return sorted(found, key=lambda a: (a.pool, a.ip))

    def allocated(self, pool):
        return dict(self._pool(pool))

    def held_by(self, network, container_id, ifname):
        return self._by_owner_prefix(f"{self.prefix}/owners/{_part(network)}/{_part(container_id)}/{_part(ifname)}/")

    def all(self, network=None):
        prefix = f"{self.prefix}/owners/" + (f"{_part(network)}/" if network is not None else "")
        return self._by_owner_prefix(prefix)

    def cursor(self, pool):
        found = self.client.get(f"{self.prefix}/cursors/{_part(pool)}")
        return found[0].decode() if found else None

    # writes
    def add(self, allocation):
        self._pool(allocation.pool)[allocation.ip] = allocation
        value = json.dumps(dataclasses.asdict(allocation))
        self.writes[self._pool_key(allocation.pool) + f"/ips/{allocation.ip}"] = value
        self.writes[self._owner_key(allocation)] = value
        self.dirty.add(allocation.pool)

    def remove(self, allocation):
        self._pool(allocation.pool).pop(allocation.ip, None)
        self.writes[self._pool_key(allocation.pool) + f"/ips/{allocation.ip}"] = None
        self.writes[self._owner_key(allocation)] = None
        self.dirty.add(allocation.pool)

    def set_cursor(self, pool, ip):
        self.writes[f"{self.prefix}/cursors/{_part(pool)}"] = ip

    def commit(self) -> bool:
        if not self.writes:
            return True
        from etcd3gw.utils import _encode
        compare = []
        for key, revision in self.versions.items():
            if revision:
                compare.append({"key": _encode(key), "result": "EQUAL", "target": "MOD", "mod_revision": revision})
            else:
                compare.append({"key": _encode(key), "result": "EQUAL", "target": "VERSION", "version": 0})
        success = []
        for key, value in self.writes.items():
            if value is None:
                success.append({"request_delete_range": {"key": _encode(key)}})
            else:
                success.append({"request_put": {"key": _encode(key), "value": _encode(value)}})
        for pool in self.dirty:
            success.append({"request_put": {"key": _encode(self._pool_key(pool) + "/version"),
                                            "value": _encode(str(time.time()))}})
        reply = self.client.transaction({"compare": compare, "success": success, "failure": []})
        return bool(reply.get("succeeded"))


def check_endpoints(endpoints, insecure: bool, flag: str = "--insecure-etcd") -> tuple:
    """The endpoints, each an http(s) URL with a host; a plain `http://` one
    only when `insecure` (the caller's `flag` said so): over http any host on
    the path reads and rewrites the address pools and the VXLAN registry."""
    checked = []
    for endpoint in endpoints:
        url = urllib.parse.urlsplit(endpoint) if isinstance(endpoint, str) else None
        try:
            valid = url is not None and url.scheme in ("http", "https") and bool(url.hostname) and \
                (url.port is None or url.port > 0) and not url.path.strip("/") and not url.query
        except ValueError:  # a port that is not a number
            valid = False
        if not valid:
            raise CNIError(INVALID_CONFIG, f"etcd endpoint {endpoint!r} is not a URL such as https://10.0.0.1:2379")
        if url.scheme == "http" and not insecure:
            raise CNIError(INVALID_CONFIG, f"etcd endpoint {endpoint} is plain http: refused",
                           "use https:// with the CA and this host's client certificate (--etcd-ca, --etcd-cert, "
                           f"--etcd-key), or accept an unauthenticated, unencrypted etcd explicitly with {flag}")
        checked.append(endpoint)
    return tuple(checked)


# How the client settings (the `tls` dict: file paths and the etcd user) are
# named in an ipam section; cnm_shim's renderer writes them with these names.
CONFIG_KEYS = {"ca": "etcdCaFile", "cert": "etcdCertFile", "key": "etcdKeyFile",
               "user": "etcdUser", "password_file": "etcdPasswordFile"}


def _password(path: str | None) -> str:
    try:
        with open(path or "") as f:
            return f.read().rstrip("\n")
    except OSError as exc:
        raise CNIError(INVALID_CONFIG, f"etcd password file {path!r} cannot be read: {exc.strerror}",
                       "an etcd user needs its password in a file (--etcd-password-file, etcdPasswordFile)") from None


def _authenticate(session, base: str, user: str, password_file: str | None) -> None:
    """An etcd user's token on every request of `session`. The JSON gateway
    does not take the user from a client certificate's CN (etcd refuses such
    a certificate there once auth is on), so a host names its user and
    password; its certificate still proves the connection."""
    reply = session.post(f"{base}/v3/auth/authenticate", json={"name": user, "password": _password(password_file)},
                         timeout=TIMEOUT_S)
    if reply.status_code != 200:
        try:
            why = reply.json().get("message") or reply.text
        except ValueError:
            why = reply.text
        raise CNIError(INVALID_CONFIG, f"etcd refused user {user!r}: {why.strip()[:300]}",
                       "check --etcd-user / --etcd-password-file (etcdUser / etcdPasswordFile), and that the "
                       "client certificate has an empty CommonName (docs/multi-host.md)")
    session.headers["Authorization"] = reply.json()["token"]


def client_for(endpoint: str, tls: dict | None = None):
    """An etcd v3 client for one member; `tls` may hold ca, cert, key (paths),
    and user, password_file (an etcd user, when etcd's auth is on)."""
    import requests  # slow to import: only when etcd is used
    from etcd3gw.client import Etcd3Client
    tls = tls or {}
    session = requests.Session()
    if tls.get("ca"):
        session.verify = tls["ca"]
        # else REQUESTS_CA_BUNDLE, when set, silently replaces the CA we were given
        session.trust_env = False
    if tls.get("cert") and tls.get("key"):
        session.cert = (tls["cert"], tls["key"])
    url = urllib.parse.urlsplit(endpoint)
    if tls.get("user"):
        _authenticate(session, f"{url.scheme}://{url.netloc}", tls["user"], tls.get("password_file"))
    return Etcd3Client(host=url.hostname, port=url.port or 2379, protocol=url.scheme, timeout=TIMEOUT_S,
                       api_path="/v3/", session=session)


class EtcdStore(Store):
    def __init__(self, endpoints: list, prefix: str = "/rancher-cni", tls: dict | None = None):
        self.endpoints = endpoints
        self.prefix = prefix
        self.tls = tls

    def run(self, fn, synced: bool = True):  # etcd's commits are on its members' disks either way
        import requests
        from etcd3gw.exceptions import Etcd3Exception
        errors = []
        for endpoint in random.sample(self.endpoints, len(self.endpoints)):  # any member will do
            try:
                return self._run_on(client_for(endpoint, self.tls), fn)
            except (requests.RequestException, Etcd3Exception, OSError) as exc:  # down: try the next one
                errors.append(f"{endpoint}: {type(exc).__name__}: {exc}")
        raise CNIError(TRY_AGAIN_LATER, "etcd is unreachable, addresses cannot be allocated now",
                       "; ".join(errors)[:2000])

    def _run_on(self, client, fn):
        for attempt in range(ATTEMPTS):
            txn = _EtcdTransaction(client, self.prefix)
            result = fn(txn)
            if txn.commit():
                return result
            time.sleep(random.uniform(0.002, 0.02) * (1 + attempt))  # another host won this round
        raise CNIError(TRY_AGAIN_LATER, f"etcd: the pool kept changing for {ATTEMPTS} attempts, try again")
