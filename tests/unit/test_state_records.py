"""The shim's state records (cnm_shim/state.py) are typed, and state.db stays
what it was: a file written before the records were typed loads into them,
and writing a record back stores the same JSON document."""

import json
import os
import sqlite3

import pytest

from cnm_shim.doctor import CannotCheck, ReadOnlyState
from cnm_shim.ipam_driver import Holder
from cnm_shim.state import Endpoint, Network, Pool, State

NET, EP = "a" * 64, "b" * 64
# Documents as the untyped code (before issue 14, with ports.py's allocations
# and pool reference counts) stored them, key for key.
OLD_NETWORK = {
    "id": NET, "driver": "rancher-bridge", "backend": "bridge",
    "options": {"bridge": None, "mtu": None, "ip_masq": True, "hairpin": False, "promisc": False,
                "macspoofchk": False, "vlan": 0, "cni.export": False, "cni.name": None},
    "cni_name": "rancher-aaaaaaaaaaaa", "bridge": "rb-aaaaaaaaaaaa",
    "conflist": {"cniVersion": "1.0.0", "name": "rancher-aaaaaaaaaaaa", "plugins": [{"type": "rancher-bridge"}]},
    "docker_ipam": False, "bridge_created": True, "exported": None,
}
OLD_ENDPOINT = {  # joined, with a published port
    "network_id": NET, "endpoint_id": EP, "address": "10.80.0.5/24", "address6": "", "mac": "02:42:0a:50:00:05",
    "result": {"cniVersion": "1.0.0", "ips": [{"address": "10.80.0.5/24"}]}, "src_name": "rcbbbbbbbbbbbb",
    "sandbox_key": "/var/run/docker/netns/x", "ports_at_join": None,
    "port_requests": [{"protocol": "tcp", "container_port": 80, "host_ip": "", "first": 8080, "last": 8080}],
    "port_mappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
}
OLD_POOL = {"id": "RancherLocal/10.80.0.0/24", "subnet": "10.80.0.0/24", "sub_pool": None, "gateway": "10.80.0.1",
            "refs": 2, "created": 1764490000.5}


def old_state_db(state_dir, documents) -> str:
    """A state.db as the old code left it: the table and the JSON rows, written with sqlite3 alone."""
    os.makedirs(state_dir, mode=0o700)
    path = os.path.join(state_dir, "state.db")
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE objects (kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, "
                   "PRIMARY KEY (kind, key))")
        db.executemany("INSERT INTO objects VALUES (?, ?, ?)",
                       [(kind, key, json.dumps(doc, sort_keys=True)) for kind, key, doc in documents])
    db.close()
    return path


def rows(path) -> dict:
    db = sqlite3.connect(path)
    try:
        return {(kind, key): value for kind, key, value in db.execute("SELECT kind, key, value FROM objects")}
    finally:
        db.close()


@pytest.fixture
def old_db(tmp_path):
    return old_state_db(str(tmp_path / "state"), [
        ("network", NET, OLD_NETWORK), ("endpoint", f"{NET}/{EP}", OLD_ENDPOINT), ("pool", OLD_POOL["id"], OLD_POOL)])


def test_a_state_db_written_before_the_records_were_typed_loads_into_them(old_db, tmp_path):
    state = State(str(tmp_path / "state"))
    net, ep, pool = state.network(NET), state.endpoint(NET, EP), state.pool(OLD_POOL["id"])
    assert isinstance(net, Network) and (net.bridge, net.bridge_created, net.options["mtu"]) == \
        ("rb-aaaaaaaaaaaa", True, None)
    assert isinstance(ep, Endpoint) and ep.port_mappings[0]["hostPort"] == 8080 and ep.result["ips"]
    assert isinstance(pool, Pool) and pool.gateway == "10.80.0.1"
    assert [n.id for n in state.networks()] == [NET] and state.endpoints(NET) == [ep] and state.pools() == [pool]
    assert state.endpoints("c" * 64) == []


def test_each_record_written_back_is_the_same_json_document(old_db, tmp_path):
    state = State(str(tmp_path / "state"))
    before = rows(old_db)
    for record in (state.network(NET), state.endpoint(NET, EP), state.pool(OLD_POOL["id"])):
        state.save(record)
    assert rows(old_db) == before
    assert state.network(NET).to_dict() == OLD_NETWORK and state.endpoint(NET, EP).to_dict() == OLD_ENDPOINT


def test_keys_a_record_does_not_know_survive_a_write_and_missing_ones_take_defaults(tmp_path):
    """A document of another version: an extra key is kept, a key it lacks
    (an endpoint never joined, a network from before `exported`) reads as empty."""
    newer = dict(OLD_NETWORK, future_field={"x": 1})
    del newer["exported"]
    bare = {"network_id": NET, "endpoint_id": EP, "address": "10.80.0.6/24", "address6": "", "mac": "02:42:0a:50:00:06",
            "result": None}
    older_pool = {"id": "RancherLocal/10.81.0.0/24", "subnet": "10.81.0.0/24", "sub_pool": None}
    path = old_state_db(str(tmp_path / "state"), [("network", NET, newer), ("endpoint", f"{NET}/{EP}", bare),
                                                  ("pool", older_pool["id"], older_pool)])
    state = State(str(tmp_path / "state"))
    net, ep = state.network(NET), state.endpoint(NET, EP)
    assert (state.pool(older_pool["id"]).refs, state.pool(older_pool["id"]).created) == (1, 0.0), \
        "a pool from before reference counts: one holder, time unknown"
    assert net.exported is None and net.extra == {"future_field": {"x": 1}}
    assert (ep.result, ep.src_name, ep.sandbox_key, ep.port_mappings, ep.port_requests, ep.ports_at_join) == (None,) * 6
    state.save(net)
    assert json.loads(rows(path)[("network", NET)]) == dict(newer, exported=None)


def test_the_doctor_reads_state_through_state_without_writing(old_db, tmp_path):
    before, mtime = rows(old_db), os.stat(old_db).st_mtime_ns
    state = ReadOnlyState(str(tmp_path / "state"))
    assert [n.to_dict() for n in state.networks()] == [OLD_NETWORK]
    assert state.endpoint(NET, EP).to_dict() == OLD_ENDPOINT
    with pytest.raises(CannotCheck, match="readonly"):
        state.save(state.network(NET))
    assert rows(old_db) == before and os.stat(old_db).st_mtime_ns == mtime
    assert sorted(os.listdir(tmp_path / "state")) == ["state.db"], "no WAL, no lock file: nothing written"


def test_the_doctor_says_why_it_cannot_read_the_state(tmp_path):
    with pytest.raises(CannotCheck, match="no shim state at .*wrong --state-dir"):
        ReadOnlyState(str(tmp_path / "nowhere"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "state.db").write_bytes(b"not a database" * 100)
    with pytest.raises(CannotCheck, match="cannot read .*state.db"):
        ReadOnlyState(str(tmp_path / "bad")).networks()


@pytest.mark.parametrize("stored,holder", [
    ("RancherLocal/10.80.0.0/24", Holder("RancherLocal/10.80.0.0/24")),
    ("RancherLocal/10.80.0.0/24@host-1", Holder("RancherLocal/10.80.0.0/24", "host-1")),
    ("RancherGlobal/fd00:80::/64/fd00:80::/80@h.example.com", Holder("RancherGlobal/fd00:80::/64/fd00:80::/80",
                                                                     "h.example.com")),
])
def test_a_docker_reservations_holder_reads_and_writes_the_stored_form(stored, holder):
    assert Holder.parse(stored) == holder and str(holder) == stored


def test_a_metadata_link_address_held_by_another_pool_of_the_subnet_is_refused(tmp_path):
    """Two of Docker's pools on one subnet, one with an ip-range: its ID
    starts with the other's. The link address must be this pool's own
    reservation, not one whose holder merely starts with this pool's ID
    (the other network's gateway, here)."""
    from cni_backend.ipam.store import SQLiteStore
    from cnm_shim.errors import DriverError
    from cnm_shim.ipam_driver import IpamDriver
    driver = IpamDriver(State(str(tmp_path / "state")), SQLiteStore(str(tmp_path / "ipam")), host="h")
    plain = driver.request_pool({"AddressSpace": "RancherLocal", "Pool": "10.80.0.0/24"})["PoolID"]
    ranged = driver.request_pool({"AddressSpace": "RancherLocal", "Pool": "10.80.0.0/24",
                                  "SubPool": "10.80.0.128/25"})["PoolID"]
    assert ranged.startswith(plain)
    driver.request_address({"PoolID": ranged, "Address": "10.80.0.200",
                            "Options": {"RequestAddressType": "com.docker.network.gateway"}})
    with pytest.raises(DriverError, match="10.80.0.200 is already in use .by RancherLocal/10.80.0.0/24/10.80.0.128/25"):
        driver.reserve_link_address("10.80.0.0/24", "10.80.0.200")
    driver.request_address({"PoolID": plain, "Address": "10.80.0.1",
                            "Options": {"RequestAddressType": "com.docker.network.gateway"}})
    driver.reserve_link_address("10.80.0.0/24", "10.80.0.1")  # its own reservation (an --aux-address): fine
