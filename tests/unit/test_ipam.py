"""Address allocation against the real SQLite store, in a temp dir (no root)."""

import ipaddress
import multiprocessing
import pickle

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from cni_backend.errors import CNIError
from cni_backend.ipam import allocator, config
from cni_backend.ipam.store import SQLiteStore


def conf(tmp_path, **ipam):
    ipam.setdefault("ranges", [[{"subnet": "10.9.0.0/29"}]])
    return config.load(dict(ipam, dataDir=str(tmp_path)), {})


def alloc(store, c, owner, wanted=()):
    return store.run(lambda txn: allocator.allocate(txn, c, owner, [ipaddress.ip_address(w) for w in wanted]))


def fresh_pool(tmp_path_factory, subnet: str) -> tuple:
    """(config, store, range) of one subnet in a new data dir."""
    tmp = tmp_path_factory.mktemp("pool")
    c = config.load({"ranges": [[{"subnet": subnet}]], "dataDir": str(tmp)}, {})
    return c, SQLiteStore(str(tmp)), c.range_sets[0][0]


def release(store, held: dict, n: int) -> None:
    store.run(lambda txn: allocator.release(txn, ("n", f"c{n}", "eth0")))
    held.pop(n, None)


def test_small_subnet_hands_out_every_host_but_gateway_then_is_exhausted(tmp_path):
    c, store = conf(tmp_path), SQLiteStore(str(tmp_path))
    got = [alloc(store, c, ("n", f"c{i}", "eth0"))[0].ip for i in range(5)]
    assert got == ["10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"]
    with pytest.raises(CNIError) as err:
        alloc(store, c, ("n", "c9", "eth0"))
    assert err.value.code == 102 and "no free address" in err.value.msg


def test_same_container_and_ifname_get_their_address_back(tmp_path):
    c, store = conf(tmp_path), SQLiteStore(str(tmp_path))
    first = alloc(store, c, ("n", "c1", "eth0"))
    assert alloc(store, c, ("n", "c1", "eth0")) == first
    assert alloc(store, c, ("n", "c1", "eth1")) != first


def test_excluded_addresses_and_range_bounds_are_honoured(tmp_path):
    c = conf(tmp_path, ranges=[[{"subnet": "10.9.0.0/24", "rangeStart": "10.9.0.10",
                                 "rangeEnd": "10.9.0.13"}]], exclude=["10.9.0.11", "10.9.0.12/32"])
    store = SQLiteStore(str(tmp_path))
    got = [alloc(store, c, ("n", f"c{i}", "eth0"))[0].ip for i in range(2)]
    assert got == ["10.9.0.10", "10.9.0.13"]


def test_requested_address_is_given_and_then_refused_to_others(tmp_path):
    c, store = conf(tmp_path), SQLiteStore(str(tmp_path))
    assert alloc(store, c, ("n", "c1", "eth0"), ["10.9.0.5"])[0].ip == "10.9.0.5"
    with pytest.raises(CNIError) as err:
        alloc(store, c, ("n", "c2", "eth0"), ["10.9.0.5"])
    assert err.value.code == 101 and "c1" in err.value.details
    with pytest.raises(CNIError):
        alloc(store, c, ("n", "c3", "eth0"), ["10.9.0.1"])  # the gateway
    with pytest.raises(CNIError) as err:
        alloc(store, c, ("n", "c3", "eth0"), ["192.0.2.1"])
    assert "not in any configured range" in err.value.msg


def test_ipv4_and_ipv6_range_sets_give_one_address_each(tmp_path):
    c = conf(tmp_path, ranges=[[{"subnet": "10.9.0.0/24"}], [{"subnet": "fd00:9::/64"}]])
    got = alloc(SQLiteStore(str(tmp_path)), c, ("n", "c1", "eth0"))
    assert [a.ip for a in got] == ["10.9.0.2", "fd00:9::2"]


def test_release_and_gc(tmp_path):
    c, store = conf(tmp_path), SQLiteStore(str(tmp_path))
    for i in range(3):
        alloc(store, c, ("n", f"c{i}", "eth0"))
    assert [a.container_id for a in store.run(lambda txn: allocator.release(txn, ("n", "c0", "eth0")))] == ["c0"]
    stale = store.run(lambda txn: allocator.collect_garbage(txn, "n", {("c1", "eth0")}))
    assert [a.container_id for a in stale] == ["c2"]
    assert [a.container_id for a in store.run(lambda txn: txn.all())] == ["c1"]


def test_round_robin_does_not_reuse_a_just_freed_address(tmp_path):
    c, store = conf(tmp_path), SQLiteStore(str(tmp_path))
    first = alloc(store, c, ("n", "c1", "eth0"))[0].ip
    store.run(lambda txn: allocator.release(txn, ("n", "c1", "eth0")))
    assert alloc(store, c, ("n", "c2", "eth0"))[0].ip != first


def test_a_failed_transaction_leaves_nothing(tmp_path):
    c, store = conf(tmp_path), SQLiteStore(str(tmp_path))
    def allocate_then_die(txn):
        allocator.allocate(txn, c, ("n", "c1", "eth0"), [])
        raise RuntimeError("killed half-way")

    with pytest.raises(RuntimeError):
        store.run(allocate_then_die)
    assert store.run(lambda txn: txn.all()) == []


@pytest.mark.parametrize("ipam,fragment", [
    ({"ranges": [[{"subnet": "10.0.0.0/33"}]]}, "is not an IP subnet in CIDR form"),
    ({"ranges": [[{"subnet": "10.0.0.0/24", "gateway": "10.0.1.1"}]]}, "not inside subnet"),
    ({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.50", "rangeEnd": "10.0.0.10"}]]}, "after rangeEnd"),
    ({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.0/25"}]]}, "overlap"),
    ({"ranges": [[{"subnet": "10.0.0.0/31"}]]}, "too small"),
    ({}, "no address ranges"),
    ({"ranges": [[{"subnet": "10.0.0.0/24"}]], "routes": [{"gw": "10.0.0.1"}]}, "'dst'"),
])
def test_bad_ipam_config_is_code_7_with_a_clear_message(ipam, fragment):
    with pytest.raises(CNIError) as err:
        config.load(ipam, {})
    assert err.value.code == 7 and fragment in err.value.msg


def test_runtime_config_ip_ranges_replace_the_configured_ranges(tmp_path):
    c = config.load({"ranges": [[{"subnet": "10.0.0.0/24"}]], "dataDir": str(tmp_path)},
                    {"ipRanges": [[{"subnet": "10.7.0.0/24"}]]})
    assert str(c.range_sets[0][0].subnet) == "10.7.0.0/24"


def test_requested_ips_come_from_all_three_sources():
    wanted = allocator.requested_ips({"IP": "10.0.0.5"}, {"ips": ["10.0.0.6"]}, {"ips": ["10.0.0.7/24"]})
    assert [str(w) for w in wanted] == ["10.0.0.5", "10.0.0.6", "10.0.0.7"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.integers(min_value=24, max_value=29), operations=st.lists(
    st.tuples(st.sampled_from(["add", "del"]), st.integers(min_value=0, max_value=40)), max_size=60))
def test_allocations_are_always_distinct_inside_the_range_and_sticky(tmp_path_factory, prefix, operations):
    c, store, rng = fresh_pool(tmp_path_factory, f"10.20.0.0/{prefix}")
    held = {}
    for op, n in operations:
        owner = ("n", f"c{n}", "eth0")
        if op == "del":
            release(store, held, n)
            continue
        try:
            ip = alloc(store, c, owner)[0].ip
        except CNIError as err:
            assert err.code == 102 and len(held) == rng.subnet.num_addresses - 3
            continue
        assert held.setdefault(n, ip) == ip
        address = ipaddress.ip_address(ip)
        assert rng.in_range(address) and not rng.is_reserved_by_subnet(address)
        assert len(set(held.values())) == len(held)


class _CountingReads:
    """A transaction that counts the whole-pool reads (`allocated`) it serves."""

    def __init__(self, txn):
        self.txn, self.pool_reads = txn, 0

    def allocated(self, pool):
        self.pool_reads += 1
        return self.txn.allocated(pool)

    def __getattr__(self, name):
        return getattr(self.txn, name)


def test_an_allocation_after_hundreds_looks_up_addresses_without_reading_the_pool(tmp_path):
    c = conf(tmp_path, ranges=[[{"subnet": "10.9.0.0/22"}]])
    store = SQLiteStore(str(tmp_path))
    for i in range(300):
        alloc(store, c, ("n", f"c{i}", "eth0"))
    # the next two after the cursor are taken: the probes step over them
    for ip in ("10.9.1.46", "10.9.1.47"):
        alloc(store, c, ("n", f"asked-{ip}", "eth0"), [ip])
    counted = []

    def allocate(txn):
        counted.append(_CountingReads(txn))
        return allocator.allocate(counted[0], c, ("n", "next", "eth0"), [])

    assert store.run(allocate)[0].ip == "10.9.1.48"
    assert counted[0].pool_reads == 0


def test_a_long_taken_run_after_the_cursor_is_found_by_reading_the_pool(tmp_path):
    c = conf(tmp_path, ranges=[[{"subnet": "10.9.0.0/24"}]])
    store = SQLiteStore(str(tmp_path))
    assert alloc(store, c, ("n", "first", "eth0"))[0].ip == "10.9.0.2"
    taken = [f"10.9.0.{i}" for i in range(3, 3 + allocator._PROBES + 4)]
    for ip in taken:
        alloc(store, c, ("n", f"asked-{ip}", "eth0"), [ip])
    assert alloc(store, c, ("n", "next", "eth0"))[0].ip == f"10.9.0.{3 + allocator._PROBES + 4}"


def _round_robin_model(rng, held: set, cursor):
    """What the allocator must hand out: the first free host after `cursor`, wrapping."""
    hosts = [ip for ip in rng.subnet.hosts() if not rng.is_reserved_by_subnet(ip)]
    after = [ip for ip in hosts if cursor is None or ip > cursor]
    return next((str(ip) for ip in after + hosts if str(ip) not in held), None)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(st.tuples(st.sampled_from(["add", "ask", "del"]), st.integers(min_value=0, max_value=28)),
                           max_size=80))
def test_every_dynamic_allocation_is_the_first_free_address_after_the_last_one(tmp_path_factory, operations):
    c, store, rng = fresh_pool(tmp_path_factory, "10.21.0.0/27")
    held, cursor = {}, None
    for op, n in operations:
        owner = ("n", f"c{n}", "eth0")
        if op == "del":
            release(store, held, n)
            continue
        if n in held:
            continue
        if op == "ask":
            ip = str(rng.subnet.network_address + 2 + n)
            if ip in held.values():
                continue
            held[n] = alloc(store, c, owner, [ip])[0].ip
            continue
        expected = _round_robin_model(rng, set(held.values()), cursor)
        if expected is None:
            with pytest.raises(CNIError):
                alloc(store, c, owner)
            continue
        held[n] = alloc(store, c, owner)[0].ip
        assert held[n] == expected
        cursor = ipaddress.ip_address(expected)


# Child processes come from a fork server: forking pytest itself could copy a
# lock some other thread holds and hang the child. Any hang here fails the
# test after CHILD_TIMEOUT_S instead of stalling the run.
CHILD_TIMEOUT_S = 120


def _allocate_at_the_gate(data_dir, n, gate, results):
    c = config.load({"ranges": [[{"subnet": "10.30.0.0/24"}]], "dataDir": data_dir}, {})
    gate.wait()
    try:
        results.put(alloc(SQLiteStore(data_dir), c, ("n", f"c{n}", "eth0"))[0].ip)
    except CNIError as err:
        results.put(err)


def _all_at_once(target, args_per_child):
    """target(*args, gate, results) in one process per args, released together; what each put."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    gate, results = ctx.Event(), ctx.Queue()
    children = [ctx.Process(target=target, args=(*args, gate, results)) for args in args_per_child]
    for child in children:
        child.start()
    gate.set()
    got = [results.get(timeout=CHILD_TIMEOUT_S) for _ in children]
    for child in children:
        child.join(CHILD_TIMEOUT_S)
    return got


def test_fifty_processes_allocating_at_once_get_fifty_distinct_addresses(tmp_path):
    ips = _all_at_once(_allocate_at_the_gate, [(str(tmp_path), n) for n in range(50)])
    assert not [ip for ip in ips if isinstance(ip, CNIError)]
    assert len(set(ips)) == 50


def _open_each_store(data_dirs, gate, results):
    gate.wait()
    failures = []
    for data_dir in data_dirs:
        try:
            SQLiteStore(data_dir).run(lambda txn: txn.all())
        except CNIError as err:
            failures.append(str(err))
    results.put(failures)


def test_processes_opening_new_stores_together_all_succeed(tmp_path):
    # Regression: setting up a new SQLite file (WAL mode, tables) raced, so
    # some of the first parallel ADDs on a host failed "database is locked".
    # Eight processes walking the same forty new stores hit that race about
    # ten times per run before the fix.
    data_dirs = [str(tmp_path / str(n)) for n in range(40)]
    failures = _all_at_once(_open_each_store, [(data_dirs,)] * 8)
    assert sum(failures, []) == []


def test_a_cni_error_crosses_a_process_boundary_whole():
    err = pickle.loads(pickle.dumps(CNIError(11, "the IPAM store is busy", "database is locked")))
    assert (err.code, err.msg, err.details) == (11, "the IPAM store is busy", "database is locked")


def _allocate_then_get_killed(data_dir):
    import os
    import signal
    c = config.load({"ranges": [[{"subnet": "10.31.0.0/24"}]], "dataDir": data_dir}, {})

    def killed_mid_transaction(txn):
        allocator.allocate(txn, c, ("n", "doomed", "eth0"), [])
        os.kill(os.getpid(), signal.SIGKILL)  # inside the transaction, before the commit

    SQLiteStore(data_dir).run(killed_mid_transaction)


def test_a_process_killed_mid_allocation_leaves_the_store_whole(tmp_path):
    process = multiprocessing.get_context("forkserver").Process(target=_allocate_then_get_killed, args=(str(tmp_path),))
    process.start()
    process.join(CHILD_TIMEOUT_S)
    assert process.exitcode == -9
    c = config.load({"ranges": [[{"subnet": "10.31.0.0/24"}]], "dataDir": str(tmp_path)}, {})
    store = SQLiteStore(str(tmp_path))
    assert store.run(lambda txn: txn.all()) == [], "no half-made allocation"
    assert alloc(store, c, ("n", "next", "eth0"))[0].ip == "10.31.0.2", "the store is usable, its lock released"


# -- keeping the store file open between transactions (store.keep_files_open) --

@pytest.fixture
def keeper(monkeypatch):
    """A process that opted in (invoke/own.py warm()): path -> its idle connections, this test's own."""
    from cni_backend.ipam import store as store_module
    monkeypatch.setattr(store_module, "_idle", {})
    monkeypatch.setattr(store_module, "_keep_open", True)
    yield store_module._idle
    for idle in store_module._idle.values():
        idle.close_idle()


def _written_by_another_process(path: str) -> None:
    import sqlite3
    db = sqlite3.connect(path, timeout=2, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT OR REPLACE INTO cursors (pool, ip) VALUES ('other', '10.9.0.7')")
    db.execute("COMMIT")
    db.close()


def test_without_a_keeper_each_transaction_ends_with_the_log_checkpointed_and_deleted(tmp_path):
    c, store = conf(tmp_path), SQLiteStore(str(tmp_path))
    alloc(store, c, ("n", "c1", "eth0"))
    assert not (tmp_path / "ipam.db-wal").exists()


def test_a_kept_connection_leaves_the_log_for_the_next_transaction_and_blocks_no_writer(tmp_path, keeper):
    c, store = conf(tmp_path), SQLiteStore(str(tmp_path))
    assert alloc(store, c, ("n", "c1", "eth0"))[0].ip == "10.9.0.2"
    assert (tmp_path / "ipam.db-wal").exists(), "the last close checkpointed: no connection was kept"
    assert list(keeper) == [store.path] and len(keeper[store.path].idle) == 1
    process = multiprocessing.get_context("fork").Process(target=_written_by_another_process, args=(store.path,))
    process.start()
    process.join(10)
    assert process.exitcode == 0, "the kept connection held a lock another writer waited for"
    assert alloc(store, c, ("n", "c2", "eth0"))[0].ip == "10.9.0.3"
    assert store.run(lambda txn: txn.cursor("other")) == "10.9.0.7"
    assert list(keeper) == [store.path] and len(keeper[store.path].idle) == 1, \
        "one connection per file, not one per transaction"


def _transaction_in_a_fork(path: str, queue) -> None:
    from cni_backend.ipam import store as store_module
    store = SQLiteStore(path)
    store.run(lambda txn: txn.set_cursor("child", "10.9.0.6"))
    idle = store_module._idle[store.path]
    queue.put((idle.owner[0], len(idle.idle)))


def test_a_forked_child_keeps_a_connection_of_its_own(tmp_path, keeper):
    import os
    c, store = conf(tmp_path), SQLiteStore(str(tmp_path))
    alloc(store, c, ("n", "c1", "eth0"))
    parents = list(keeper[store.path].idle)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_transaction_in_a_fork, args=(str(tmp_path), queue))
    child.start()
    pid, kept = queue.get(timeout=10)
    child.join(10)
    assert (pid, kept) == (child.pid, 1) and pid != os.getpid()
    assert keeper[store.path].idle == parents and keeper[store.path].owner[0] == os.getpid()
