"""rancher-ipsec's state in a real etcd (cni_backend/ipsec_registry.py): the
network's pre-shared key, made once by whichever host comes first, and the
registry of IPsec hosts whose entries become each network's peers."""

import json
import logging
import multiprocessing
import os
import stat
import time

import pytest

from cni_backend import ipsec_registry
from cni_backend.errors import CNIError
from cni_backend.ipam.etcd_store import client_for

pytestmark = pytest.mark.etcd

SUBNET = "10.42.0.0/16"
A, B, C = "10.99.0.1", "10.99.0.2", "10.99.0.3"


@pytest.fixture
def prefix(request):
    return f"/test/{request.node.name}"


def _create_in_host_process(args):
    endpoints, prefix, path, start = args
    while time.time() < start:  # every "host" asks at the same moment
        pass
    settings = ipsec_registry.EtcdSettings(tuple(endpoints), prefix)
    client = client_for(endpoints[0])
    value, created = ipsec_registry.get_or_create_key(client, settings.key(SUBNET))
    ipsec_registry.fetch_key(settings, SUBNET, path)
    return value, created


def test_hosts_creating_the_network_at_once_agree_on_one_key(etcd, prefix, tmp_path, caplog):
    paths = [str(tmp_path / f"h{n}" / "ipsec" / "keys" / "k.psk") for n in range(6)]
    start = time.time() + 2.0  # a fork server's worker first imports this module
    # Workers from a fork server: a worker forked from pytest may copy a lock
    # another thread holds and hang. A hang fails here instead of stalling the run.
    with multiprocessing.get_context("forkserver").Pool(6) as pool:
        results = pool.map_async(_create_in_host_process,
                                 [(etcd.endpoints, prefix, p, start) for p in paths]).get(timeout=120)
    assert sum(created for _, created in results) == 1, "one host made the key, the others took it"
    keys = {value for value, _ in results}
    assert len(keys) == 1, "every host got the same key"
    key = keys.pop()
    assert len(key) == 44 and len(__import__("base64").b64decode(key)) == 32
    for path in paths:
        with open(path, "rb") as f:
            assert f.read().strip() == key
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # and a later one takes it too, without a word of the key in the log
    with caplog.at_level(logging.DEBUG, logger="rancher-cni"):
        ipsec_registry.fetch_key(ipsec_registry.EtcdSettings(tuple(etcd.endpoints), prefix), SUBNET,
                                 str(tmp_path / "late.psk"))
    assert open(tmp_path / "late.psk", "rb").read().strip() == key
    assert "taken from etcd" in caplog.text and key.decode() not in caplog.text


@pytest.mark.parametrize("stored", ["s3cret-but-short", "A" * 43 + "!", "QUFB" * 11, "A" * 400],
                         ids=["short", "not-base64", "33-bytes", "long"])
def test_a_key_in_etcd_that_is_not_32_bytes_of_base64_is_refused_and_never_shown(etcd, tmp_path, stored):
    settings = ipsec_registry.EtcdSettings(tuple(etcd.endpoints), f"/test/bad-key-{len(stored)}")
    client_for(etcd.endpoints[0]).put(settings.key(SUBNET), stored)
    path = tmp_path / "k.psk"
    with pytest.raises(CNIError) as refused:
        ipsec_registry.fetch_key(settings, SUBNET, str(path))
    message = f"{refused.value.msg} {refused.value.details}"
    assert "is refused" in message and "etcdctl del" in message and stored not in message, message
    assert not path.exists(), "nothing written"


def test_an_unreachable_etcd_is_a_try_again_error(tmp_path):
    settings = ipsec_registry.EtcdSettings(("http://127.0.0.1:9",), "/x")
    with pytest.raises(CNIError) as refused:
        ipsec_registry.fetch_key(settings, SUBNET, str(tmp_path / "k.psk"))
    assert refused.value.code == 11 and "could not be read from etcd" in refused.value.msg


def _record(state_dir, name: str, local: str, block: str, peers=()) -> dict:
    """What ipsecnet.ensure writes for a network taking its peers from etcd."""
    record = {"name": name, "child": "n0", "local": local, "peers": list(peers), "block": block, "subnet": SUBNET,
              "psk_file": "/k", "ike_proposal": "aes128-sha256-modp2048", "esp_proposal": "aes128-sha256",
              "registry": True}
    folder = state_dir / "ipsec" / "networks"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(record))
    return record


def _agent(etcd, prefix, state_dir, ttl=10):
    return ipsec_registry.Agent(lambda: client_for(etcd.endpoints[0]), prefix, str(state_dir), ttl=ttl)


def test_bad_host_entries_are_skipped_with_one_warning_each(etcd, prefix, tmp_path, caplog, agents):
    record = _record(tmp_path, "secure", A, "10.42.1.0/24")
    agent = agents[A] = _agent(etcd, prefix, tmp_path)
    agent.client = client_for(etcd.endpoints[0])
    agent.register([record])
    put = agent.client.put
    root = f"{prefix}/ipsec/hosts/"
    part = "10.42.0.0%2F16"
    good = {f"{root}{B}/{part}": {"underlay": B, "block": "10.42.2.0/24"}}
    bad = {
        f"{root}{C}/{part}": ({"underlay": B, "block": "10.42.3.0/24"}, "is not 10.99.0.3, the host"),
        f"{root}224.0.0.9/{part}": ({"underlay": "224.0.0.9", "block": "10.42.4.0/24"}, "not a unicast"),
        f"{root}10.99.0.4/{part}": ({"underlay": "10.99.0.4", "block": "10.43.4.0/24"}, "is not a part of"),
        f"{root}10.99.0.5/{part}": ({"underlay": "10.99.0.5", "block": "10.42.1.128/25"}, "overlaps this host's"),
        f"{root}10.99.0.6/{part}": ({"underlay": "10.99.0.6", "block": "10.42.2.0/23"}, "registered earlier by host 10.99.0.2"),
        f"{root}10.99.0.7/{part}": ({"underlay": "10.99.0.7", "block": "10.42.0.0/16"}, "is not a part of"),
        f"{root}10.99.0.8/{part}": ({"underlay": "10.99.0.8", "block": "10.42.8.1/24"}, "not an IPv4 network"),
        f"{root}10.99.0.9/{part}": ("not json", "not JSON"),
        f"{root}10.99.0.10/{part}/x": ({"underlay": "10.99.0.10", "block": "10.42.10.0/24"}, "not <underlay>/<subnet>"),
    }
    for key, value in good.items():
        put(key, json.dumps(value))
    for key, (value, _) in bad.items():
        put(key, value if isinstance(value, str) else json.dumps(value))
    put(f"{root}10.99.0.11/10.77.0.0%2F16", json.dumps({"underlay": "10.99.0.11", "block": "10.77.1.0/24"}))
    with caplog.at_level(logging.WARNING, logger="rancher-cni"):
        assert agent.peers([record]) == {"secure": [B]}, "only the sound entry is a peer"
        warnings = [r.getMessage() for r in caplog.records]
        for key, (_, why) in bad.items():
            assert [w for w in warnings if key in w and why in w], (key, why, warnings)
        assert len(warnings) == len(bad), "one warning per bad key; another subnet's entry is not ours to judge"
        caplog.clear()
        assert agent.peers([record]) == {"secure": [B]}
        assert caplog.records == [], "warned once, not every round"


def test_a_host_whose_lease_expires_is_no_longer_a_peer(etcd, prefix, tmp_path, agents):
    states = {host: tmp_path / host for host in (A, B)}
    records = {A: _record(states[A], "secure", A, "10.42.1.0/24"),
               B: _record(states[B], "secure", B, "10.42.2.0/24")}
    agents.update({host: _agent(etcd, prefix, states[host], ttl=3) for host in (A, B)})
    for host, agent in agents.items():
        agent.client = agent.connect()
        agent.register([records[host]])
    assert agents[A].peers([records[A]]) == {"secure": [B]}
    assert agents[B].peers([records[B]]) == {"secure": [A]}
    # B stops renewing (its agent died, and its keep-alive thread with it): its entry goes with its lease,
    # A's stays while A renews
    agents[B].stop_keep_alive()
    deadline = time.monotonic() + 20
    while agents[A].peers([records[A]]) != {"secure": []}:
        assert time.monotonic() < deadline, "B's entry outlived its lease"
        agents[A].register([records[A]])
        time.sleep(0.5)
    assert agents[B].peers([records[B]]) == {"secure": [A]}, "A renewed its lease all along"
    # a network that goes from a host takes its entry with it at once
    agents[A].register([])
    assert agents[B].peers([records[B]]) == {"secure": []}
