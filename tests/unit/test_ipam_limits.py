"""IPAM bounds (issue 15, items 8 and 9), against the real SQLite files in a
temp dir: pools no network may have are refused on both sides; a large
'exclude' costs the allocator a constant amount of work under the store's write
lock; concurrent RequestPools (separate processes, like gunicorn's workers)
never get one pool twice, and a pool counts its holders; a pool whose
ReleasePool never came is reclaimed once no network uses it."""

import ipaddress
import json
import multiprocessing
import sqlite3
import sys
import time

import pytest

from cni_backend.errors import CNIError, INVALID_CONFIG, POOL_EXHAUSTED
from cni_backend.ipam import allocator, config
from cni_backend.ipam.store import DOCKER_OWNER, SQLiteStore
from cnm_shim import ipam_driver
from cnm_shim.ipam_driver import IpamDriver
from cnm_shim.state import POOL, State
from tests.unit.shim_client import Client, app_in

REFUSED_POOLS = [
    ("0.0.0.0/0", False, "it is the default route"),
    ("::/0", True, "it is the default route"),
    ("127.0.0.0/8", False, "it overlaps loopback (127.0.0.0/8)"),
    ("224.0.0.0/4", False, "it overlaps multicast (224.0.0.0/4)"),
    ("169.254.0.0/16", False, "it overlaps link-local (169.254.0.0/16)"),
    ("240.0.0.0/4", False, "it overlaps reserved (240.0.0.0/4"),
    ("0.0.0.0/8", False, "it overlaps 'this network'"),
    ("10.0.0.0/7", False, "a prefix shorter than /8 is not a network"),
    ("fe80::/64", True, "it overlaps link-local (fe80::/10)"),
    ("ff05::/64", True, "it overlaps multicast (ff00::/8)"),
    ("::1/128", True, "it overlaps loopback (::1)"),
    ("2001:db8::/31", True, "a prefix shorter than /32 is not a network"),
]


@pytest.fixture
def shim(tmp_path):
    post = Client(app_in(tmp_path))

    def stored(kind="pool"):
        with sqlite3.connect(tmp_path / "state" / "state.db") as db:
            return {key: json.loads(value) for key, value in
                    db.execute("SELECT key, value FROM objects WHERE kind = ?", (kind,))}

    post.stored = stored
    post.tmp = tmp_path
    return post


# -- pools no network may have -------------------------------------------------------

@pytest.mark.parametrize("pool,v6,fragment", REFUSED_POOLS)
def test_request_pool_refuses_a_pool_no_network_may_have(shim, pool, v6, fragment):
    status, answer = shim("/IpamDriver.RequestPool", {"AddressSpace": "RancherLocal", "Pool": pool, "V6": v6})
    assert status == 400, answer
    assert f"subnet {ipaddress.ip_network(pool)} is refused: {fragment}" in answer["Err"], answer
    assert "10.22.0.0/16" in answer["Err"], "the message names what is valid"
    assert shim.stored() == {}


@pytest.mark.parametrize("pool,v6,fragment", REFUSED_POOLS)
def test_the_cni_ipam_config_refuses_a_pool_no_network_may_have(tmp_path, pool, v6, fragment):
    for ipam, runtime in (({"ranges": [[{"subnet": pool}]]}, {}), ({"subnet": pool}, {}),
                          ({"ranges": [[{"subnet": "10.9.0.0/24"}]]}, {"ipRanges": [[{"subnet": pool}]]})):
        with pytest.raises(CNIError) as err:
            config.load(dict(ipam, dataDir=str(tmp_path)), runtime)
        assert err.value.code == INVALID_CONFIG and fragment in err.value.msg, err.value.msg


@pytest.mark.parametrize("pool", ["10.0.0.0/8", "192.168.0.0/16", "172.16.0.0/12", "100.64.0.0/10",
                                  "2001:db8::/32", "fd00:22::/64"])
def test_ordinary_large_pools_are_still_accepted(tmp_path, pool):
    config.load({"ranges": [[{"subnet": pool}]], "dataDir": str(tmp_path)}, {})


# -- a large exclude ------------------------------------------------------------------

class CallBudget:
    """Counts Python function calls while active and stops the code under test
    once it exceeds `limit`: work measured, not time."""

    def __init__(self, limit: int):
        self.limit, self.calls = limit, 0

    def _count(self, frame, event, arg):
        if event == "call":
            self.calls += 1
            if self.calls > self.limit:
                sys.setprofile(None)
                raise AssertionError(f"more than {self.limit} calls: the allocator walks the range")

    def __enter__(self):
        sys.setprofile(self._count)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)


def test_excluding_a_slash_8_costs_constant_work_and_statements_under_the_write_lock(tmp_path):
    store = SQLiteStore(str(tmp_path))
    statements = []
    connect = store._connect

    def traced():
        db = connect()
        db.set_trace_callback(statements.append)
        return db

    store._connect = traced  # counts what SQLite runs: the real store, observed
    everything = config.load({"ranges": [[{"subnet": "10.0.0.0/8"}]], "exclude": ["10.0.0.0/8"],
                              "dataDir": str(tmp_path)}, {})
    with CallBudget(5000), pytest.raises(CNIError) as err:
        store.run(lambda txn: allocator.allocate(txn, everything, ("n", "c1", "eth0"), []))
    assert err.value.code == POOL_EXHAUSTED
    assert len(statements) <= 10, statements

    # the excluded part of the range is skipped in one step, however large
    half = config.load({"ranges": [[{"subnet": "10.0.0.0/8"}]], "exclude": ["10.0.0.0/9", "10.200.0.0/16"],
                        "dataDir": str(tmp_path)}, {})
    got = []
    with CallBudget(20000):
        for i in range(3):
            got += store.run(lambda txn, i=i: allocator.allocate(txn, half, ("n", f"c{i}", "eth0"), []))
    assert [a.ip for a in got] == ["10.128.0.0", "10.128.0.1", "10.128.0.2"]
    # the cursor resumes inside an excluded span: the next free after it, then wrapping
    store.run(lambda txn: txn.set_cursor("10.0.0.0/8", "10.200.0.9"))
    assert store.run(lambda txn: allocator.allocate(txn, half, ("n", "c9", "eth0"), []))[0].ip == "10.201.0.0"
    store.run(lambda txn: txn.set_cursor("10.0.0.0/8", "10.255.255.254"))  # the range's last address
    assert store.run(lambda txn: allocator.allocate(txn, half, ("n", "c10", "eth0"), []))[0].ip == "10.128.0.3"


def test_excluded_single_addresses_and_ipv6_ranges_are_skipped(tmp_path):
    store = SQLiteStore(str(tmp_path))
    c = config.load({"ranges": [[{"subnet": "fd00:9::/64"}]], "exclude": ["fd00:9::/80", "fd00:9:0:0:1::"],
                     "dataDir": str(tmp_path)}, {})
    with CallBudget(20000):
        got = [store.run(lambda txn, i=i: allocator.allocate(txn, c, ("n", f"c{i}", "eth0"), []))[0].ip
               for i in range(2)]
    assert got == ["fd00:9::1:0:0:1", "fd00:9::1:0:0:2"]


# -- RequestPool: one transaction, reference counts --------------------------------------

def _request_pools(state_dir, ipam_dir, body, barrier, out):
    driver = IpamDriver(State(state_dir), SQLiteStore(ipam_dir))
    barrier.wait()
    try:
        out.put(driver.request_pool(body)["PoolID"])
    except Exception as exc:  # noqa: BLE001 - the parent asserts on it
        out.put(f"error: {exc}")


def _concurrently(tmp_path, body, count=20) -> list:
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(count), ctx.Queue()
    procs = [ctx.Process(target=_request_pools, args=(str(tmp_path / "state"), str(tmp_path / "ipam"), body,
                                                      barrier, out)) for _ in range(count)]
    for p in procs:
        p.start()
    got = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return got


def test_twenty_concurrent_request_pools_without_subnet_get_twenty_distinct_pools(tmp_path):
    State(str(tmp_path / "state"))  # the file exists before the race, as it does once the shim runs
    got = _concurrently(tmp_path, {"AddressSpace": "RancherLocal"})
    assert not [g for g in got if g.startswith("error")], got
    assert len(set(got)) == 20, sorted(got)
    pools = State(str(tmp_path / "state")).all(POOL)
    assert len(pools) == 20 and all(p["refs"] == 1 for p in pools)


def test_one_explicit_subnet_requested_twenty_times_at_once_needs_twenty_releases(tmp_path):
    State(str(tmp_path / "state"))
    body = {"AddressSpace": "RancherLocal", "Pool": "10.93.0.0/24"}
    got = _concurrently(tmp_path, body)
    assert got == ["RancherLocal/10.93.0.0/24"] * 20
    state, store = State(str(tmp_path / "state")), SQLiteStore(str(tmp_path / "ipam"))
    driver = IpamDriver(state, store)
    assert state.get(POOL, got[0])["refs"] == 20
    driver.request_address({"PoolID": got[0], "Options": {"RequestAddressType": "com.docker.network.gateway"}})
    for _ in range(19):
        driver.release_pool({"PoolID": got[0]})
    assert state.get(POOL, got[0])["refs"] == 1, "still held: the gateway stays"
    assert [a.ip for a in store.run(lambda txn: txn.all(DOCKER_OWNER))] == ["10.93.0.1"]
    driver.release_pool({"PoolID": got[0]})
    assert state.get(POOL, got[0]) is None
    assert store.run(lambda txn: txn.all(DOCKER_OWNER)) == []


# -- a pool whose ReleasePool never came ------------------------------------------------------

def _age(tmp_path, pool_id, seconds):
    """The pool was requested `seconds` ago (its record's time, in the real file)."""
    state = State(str(tmp_path / "state"))
    record = state.get(POOL, pool_id)
    state.put(POOL, pool_id, dict(record, created=record["created"] - seconds))


def test_a_leaked_pool_over_every_default_pool_is_reclaimed_when_no_network_uses_it(shim):
    # RequestPool (and the gateway) of a network whose CreateNetwork never came, nor its ReleasePool
    status, leaked = shim("/IpamDriver.RequestPool", {"AddressSpace": "RancherLocal", "Pool": "10.208.0.0/12"})
    assert status == 200
    assert shim("/IpamDriver.RequestAddress", {"PoolID": leaked["PoolID"], "Options": {
        "RequestAddressType": "com.docker.network.gateway"}})[0] == 200
    status, answer = shim("/IpamDriver.RequestPool", {"AddressSpace": "RancherLocal"})
    assert status == 400 and "no free IPv4 pool left in 10.208.0.0/12" in answer["Err"], "within the grace period"
    assert "cnm-shim doctor" in answer["Err"]

    _age(shim.tmp, leaked["PoolID"], ipam_driver.POOL_GRACE_S + 1)
    status, answer = shim("/IpamDriver.RequestPool", {"AddressSpace": "RancherLocal"})
    assert (status, answer["Pool"]) == (200, "10.208.0.0/24"), answer
    assert set(shim.stored()) == {answer["PoolID"]}
    store = SQLiteStore(str(shim.tmp / "ipam"))
    assert store.run(lambda txn: txn.allocated("10.208.0.0/12")) == {}, "its gateway was released with it"


def test_a_pool_a_network_uses_or_that_holds_addresses_is_never_reclaimed(tmp_path):
    state, store = State(str(tmp_path / "state")), SQLiteStore(str(tmp_path / "ipam"))
    driver = IpamDriver(state, store)
    used = driver.request_pool({"AddressSpace": "RancherLocal", "Pool": "10.94.0.0/24"})["PoolID"]
    busy = driver.request_pool({"AddressSpace": "RancherLocal", "Pool": "10.95.0.0/24"})["PoolID"]
    idle = driver.request_pool({"AddressSpace": "RancherLocal", "Pool": "10.96.0.0/24"})["PoolID"]
    driver.request_address({"PoolID": busy})  # a container's address: someone uses the pool
    later = time.time() + ipam_driver.POOL_GRACE_S + 1
    with state.transaction() as txn:
        assert [p.id for p in driver.reclaimable(txn, {"10.94.0.0/24"}, now=later)] == [idle]
        assert driver.reclaimable(txn, {"10.94.0.0/24"}) == [], "all within the grace period"
        assert driver.reclaim(txn, {"10.94.0.0/24"}, now=later) == [idle]
    assert sorted(p["id"] for p in state.all(POOL)) == sorted([used, busy])
