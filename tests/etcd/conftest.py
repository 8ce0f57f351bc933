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
