"""The etcd layer's shared fixture: one single-member etcd per test module."""

import pytest

from tests.etcd_cluster import EtcdCluster


@pytest.fixture(scope="module")
def etcd():
    try:
        cluster = EtcdCluster(members=1)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    yield cluster
    cluster.close()


@pytest.fixture
def agents():
    """{host: registry agent}: each agent's lease keep-alive thread stops when
    the test ends, passed or failed, instead of renewing into later tests."""
    made = {}
    yield made
    for agent in made.values():
        agent.stop_keep_alive()
