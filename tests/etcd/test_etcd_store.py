"""rancher-ipam's etcd store: the same contract as SQLite, global across hosts."""

import ipaddress
import json
import multiprocessing
import os
import subprocess

import pytest

from cni_backend.errors import CNIError
from cni_backend.ipam import allocator, config
from cni_backend.ipam.etcd_store import EtcdStore
from tests.etcd_cluster import EtcdCluster

pytestmark = pytest.mark.etcd


@pytest.fixture
def store(etcd, request):
    return EtcdStore(etcd.endpoints, prefix=f"/test/{request.node.name}")


def conf(subnet="10.60.0.0/29", **ipam):
    return config.load(dict(ipam, ranges=[[{"subnet": subnet}]]), {})


def alloc(store, c, owner, wanted=()):
    return store.run(lambda txn: allocator.allocate(txn, c, owner, [ipaddress.ip_address(w) for w in wanted]))


def test_allocation_contract(store):
    c = conf()
    got = [alloc(store, c, ("n", f"c{i}", "eth0"))[0].ip for i in range(5)]
    assert got == ["10.60.0.2", "10.60.0.3", "10.60.0.4", "10.60.0.5", "10.60.0.6"]
    assert alloc(store, c, ("n", "c1", "eth0"))[0].ip == "10.60.0.3", "sticky per container and ifname"
    with pytest.raises(CNIError) as err:
        alloc(store, c, ("n", "c9", "eth0"))
    assert err.value.code == 102
    with pytest.raises(CNIError) as err:
        alloc(store, c, ("n", "c9", "eth0"), ["10.60.0.4"])
    assert err.value.code == 101 and "c2" in err.value.details
    store.run(lambda txn: allocator.release(txn, ("n", "c0", "eth0")))
    stale = store.run(lambda txn: allocator.collect_garbage(txn, "n", {("c1", "eth0")}))
    assert sorted(a.container_id for a in stale) == ["c2", "c3", "c4"]
    assert [a.container_id for a in store.run(lambda txn: txn.all())] == ["c1"]


def _allocate_in_host_process(args):
    endpoints, prefix, host, n = args
    c = conf("10.61.0.0/24")
    owner = ("n", f"host{host}-c{n}", "eth0")
    return EtcdStore(endpoints, prefix).run(lambda txn: allocator.allocate(txn, c, owner, []))[0].ip


def test_thirty_allocations_from_three_hosts_at_once_are_distinct(etcd):
    jobs = [(etcd.endpoints, "/test/thirty", host, n) for host in range(3) for n in range(10)]
    # Workers from a fork server (forking pytest may copy a lock another
    # thread holds); a hang fails the test instead of stalling the run.
    with multiprocessing.get_context("forkserver").Pool(30) as pool:
        ips = pool.map_async(_allocate_in_host_process, jobs).get(timeout=300)
    assert len(set(ips)) == 30


def test_a_three_member_cluster_with_one_member_down_still_allocates():
    try:
        cluster = EtcdCluster(members=3)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    try:
        store = EtcdStore(cluster.endpoints, "/test/quorum")
        assert alloc(store, conf("10.63.0.0/24"), ("n", "before", "eth0"))
        cluster.stop("m0")
        for i in range(5):  # whichever member the store tries first
            assert alloc(store, conf("10.63.0.0/24"), ("n", f"after{i}", "eth0"))
        assert len(store.run(lambda txn: txn.all("n"))) == 6
    finally:
        cluster.close()


def test_unreachable_etcd_is_a_clear_try_again_error(tmp_path):
    dead = EtcdStore(["http://127.0.0.1:9"], "/test/dead")
    with pytest.raises(CNIError) as err:
        alloc(dead, conf(), ("n", "c1", "eth0"))
    assert err.value.code == 11 and "etcd is unreachable" in err.value.msg and "127.0.0.1:9" in err.value.details


def test_the_ipam_executable_uses_etcd_from_its_config(etcd, tmp_path):
    from cni_backend import install
    install.write_executables(str(tmp_path / "bin"))
    network = {"cniVersion": "1.0.0", "name": "global", "type": "rancher-ipam",
               "ipam": {"type": "rancher-ipam", "ranges": [[{"subnet": "10.62.0.0/24"}]],
                        "etcdEndpoints": etcd.endpoints, "etcdPrefix": "/test/exec",
                        "insecureEtcd": True}}
    env = dict(os.environ, CNI_COMMAND="ADD", CNI_CONTAINERID="c1", CNI_NETNS="/proc/self/ns/net",
               CNI_IFNAME="eth0", CNI_PATH=str(tmp_path / "bin"), RANCHER_CNI_SOCKET=str(tmp_path / "none"))
    done = subprocess.run([str(tmp_path / "bin" / "rancher-ipam")], input=json.dumps(network).encode(),
                          env=env, capture_output=True)
    assert done.returncode == 0, done.stdout
    assert json.loads(done.stdout)["ips"][0]["address"] == "10.62.0.2/24"
    held = EtcdStore(etcd.endpoints, "/test/exec").run(lambda txn: txn.all("global"))
    assert [(a.container_id, a.ip) for a in held] == [("c1", "10.62.0.2")]
    done = subprocess.run([str(tmp_path / "bin" / "rancher-ipam")], input=json.dumps(network).encode(),
                          env=dict(env, CNI_COMMAND="DEL"), capture_output=True)
    assert done.returncode == 0 and EtcdStore(etcd.endpoints, "/test/exec").run(lambda txn: txn.all()) == []


def _make_certificates(directory) -> dict:
    """A CA, and one certificate for 127.0.0.1 used by the server and the client."""
    def openssl(*argv):
        subprocess.run(["openssl", *argv], check=True, capture_output=True, cwd=directory)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "1", "-subj", "/CN=rcnit-ca")
    (directory / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=node")
    openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "node.pem", "-days", "1", "-extfile", "ext.cnf")
    return {"ca": str(directory / "ca.pem"), "cert": str(directory / "node.pem"), "key": str(directory / "node.key")}


def test_etcd_over_tls_with_client_certificates(tmp_path):
    if subprocess.run(["which", "openssl"], capture_output=True).returncode:
        pytest.skip("openssl is not installed")
    tls = _make_certificates(tmp_path)
    try:
        cluster = EtcdCluster(tls=tls)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    try:
        secure = EtcdStore(cluster.endpoints, "/test/tls", tls)
        assert alloc(secure, conf(), ("n", "c1", "eth0"))[0].ip == "10.60.0.2"
        without_cert = EtcdStore(cluster.endpoints, "/test/tls", {"ca": tls["ca"]})
        with pytest.raises(CNIError) as err:
            alloc(without_cert, conf(), ("n", "c2", "eth0"))
        assert err.value.code == 11
    finally:
        cluster.close()
