"""Docker drives rancher-ipsec with etcd (`cnm-shim serve --etcd-endpoints`):
`network create` without a key file and without peers. The key is made in
etcd and copied to the state dir; the other host (a namespace running the
CNI plug-in and `cnm-shim ipsec-registry`) takes the same key from etcd, and
the hosts find each other through the registry."""

import json
import os
import subprocess
import sys
import time

import pytest

from cni_backend import ipsec_registry
from tests.conftest import ping
from tests.engine.helpers import address, container, network
from tests.engine.test_docker_ipsec import (DOCKER_HOST, OTHER_HOST, SUBNET, alive, charon_pid,  # noqa: F401
                                            eventually_pings, other_host, status)
from tests.etcd_cluster import EtcdCluster

pytestmark = pytest.mark.engine


def test_docker_creates_an_ipsec_network_with_its_key_and_peers_from_etcd(docker, other_host, make_netns,
                                                                         monkeypatch):
    try:
        etcd = EtcdCluster(address=DOCKER_HOST)  # on this host's underlay address, reached by the other host
    except RuntimeError as exc:
        pytest.skip(str(exc))
    registry = None
    shim = docker.shim
    try:
        monkeypatch.setenv("RANCHER_ETCD_ENDPOINTS", etcd.endpoints[0])
        monkeypatch.setenv("RANCHER_INSECURE_ETCD", "1")
        shim.stop()
        shim.start()  # serve with etcd: it runs cnm-shim ipsec-registry too
        net = network(docker, "--ipam-driver", "rancher-ipsec", "--subnet", SUBNET, "--ip-range", "10.45.1.0/24",
                      "-o", f"underlay={DOCKER_HOST}", driver="rancher-ipsec")
        key_file = ipsec_registry.key_file(str(shim.ipam_dir), SUBNET)
        key = open(key_file).read().strip()
        assert os.stat(key_file).st_mode & 0o777 == 0o600

        # the other host: the same network with no key file and no peers, and its registry
        config = other_host["config"]
        del config["pskFile"]
        config.update(peers=[], underlay=OTHER_HOST)
        config["ipam"].update(etcdEndpoints=etcd.endpoints, insecureEtcd=True)
        a = container(docker, net)
        ip_a = address(docker, a, net)
        workload = make_netns()
        code, result = other_host["env"].exec("ADD", config, workload, container_id="w1",
                                              host_netns=other_host["netns"])
        assert code == 0, result
        ip_w = result["ips"][0]["address"].split("/")[0]
        state = other_host["env"].state
        assert open(ipsec_registry.key_file(str(state), SUBNET)).read().strip() == key, "one key, from etcd"
        registry = subprocess.Popen(
            ["ip", "netns", "exec", other_host["netns"], sys.executable, "-m", "cnm_shim.cli", "ipsec-registry",
             "--etcd-endpoints", etcd.endpoints[0], "--insecure-etcd", "--state-dir", str(state),
             "--ttl", "3", "--interval", "0.5"], stdout=subprocess.DEVNULL, stderr=open(state / "registry.log", "a"))
        assert eventually_pings(docker, a, ip_w, timeout=60), "the hosts found each other through etcd"
        assert ping(workload, ip_a), "and back"

        inspected = docker("network", "inspect", net).stdout
        assert key not in inspected and "psk" not in json.loads(inspected)[0]["Options"]
        assert key not in status(docker) and key not in shim.log()
        assert key not in (state / "registry.log").read_text()

        # the other host leaves: its lease runs out, Docker's host unloads its tunnel
        registry.kill()
        registry.wait()
        registry = None
        deadline = time.monotonic() + 30
        while "10.45.2.0/24" in subprocess.run(["ip", "route", "show", "table", "220"], capture_output=True,
                                               text=True).stdout:
            assert time.monotonic() < deadline, "the other host's route outlived its lease"
            time.sleep(0.3)
        assert docker("exec", a, "ping", "-c", "1", "-W", "1", ip_w, check=False).returncode != 0

        pid = charon_pid(shim.ipam_dir)
        docker("rm", "-f", a)
        docker.made["containers"].remove(a)
        docker("network", "rm", net)
        docker.made["networks"].remove(net)
        assert not alive(pid) and not os.path.exists(key_file), "charon and the key's copy go with the network"
        assert other_host["env"].exec("DEL", dict(config, prevResult=result), workload, container_id="w1",
                                      host_netns=other_host["netns"])[0] == 0
    finally:
        if registry is not None:
            registry.kill()
            registry.wait()
        for name in docker.made["containers"]:
            docker("rm", "-f", name, check=False)
        for name in docker.made["networks"]:
            docker("network", "rm", name, check=False)
        docker.made["containers"].clear()
        docker.made["networks"].clear()
        monkeypatch.delenv("RANCHER_ETCD_ENDPOINTS")
        monkeypatch.delenv("RANCHER_INSECURE_ETCD")
        shim.stop()
        shim.start()
        etcd.close()
