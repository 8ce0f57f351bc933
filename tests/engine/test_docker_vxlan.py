"""Docker drives rancher-vxlan; the "other host" is a namespace with a
hand-made kernel VXLAN (iproute2), so our VTEP is checked against the kernel's
own, across an underlay veth the test makes."""

import json

import pytest

from tests.conftest import ns_exec, ping, run, unique
from tests.engine.helpers import address, can_ping, container, network
from tests.engine.test_doctor import doctor

pytestmark = pytest.mark.engine


@pytest.fixture
def other_host(make_netns):
    host, workload = make_netns(), make_netns()
    underlay = unique("ul")
    run("ip", "link", "add", underlay, "type", "veth", "peer", "name", "ul", "netns", host)
    run("ip", "addr", "add", "10.98.0.1/24", "dev", underlay)
    run("ip", "link", "set", underlay, "up")
    for argv in (["ip", "addr", "add", "10.98.0.2/24", "dev", "ul"], ["ip", "link", "set", "ul", "up"],
                 ["ip", "link", "add", "vtep1042", "type", "vxlan", "id", "1042", "local", "10.98.0.2",
                  "dstport", "4789", "nolearning", "dev", "ul"],
                 ["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vtep1042", "dst", "10.98.0.1"],
                 ["ip", "link", "add", "br0", "type", "bridge"], ["ip", "link", "set", "vtep1042", "master", "br0", "up"],
                 ["ip", "link", "set", "br0", "up"],
                 ["ip", "link", "add", "w0", "type", "veth", "peer", "name", "eth0", "netns", workload],
                 ["ip", "link", "set", "w0", "master", "br0", "up"]):
        ns_exec(host, *argv)
    ns_exec(workload, "ip", "addr", "add", "10.43.200.1/16", "dev", "eth0")
    ns_exec(workload, "ip", "link", "set", "eth0", "mtu", "1450", "up")
    yield {"underlay": underlay, "workload": workload}
    run("ip", "link", "del", underlay, check=False)


def test_docker_containers_reach_another_hosts_workload_over_vxlan(docker, other_host):
    net = network(docker, "--subnet", "10.43.0.0/16", "--ip-range", "10.43.1.0/24",
                  "-o", f"vtep_dev={other_host['underlay']}", "-o", "peers=10.98.0.2", driver="rancher-vxlan")
    a, b = container(docker, net), container(docker, net)
    assert can_ping(docker, a, address(docker, b, net))
    assert can_ping(docker, a, "10.43.200.1"), "reached the other host through our VTEP and the kernel's"
    assert ping(other_host["workload"], address(docker, a, net))
    mtu = docker("exec", a, "cat", "/sys/class/net/eth0/mtu").stdout.strip()
    assert mtu == "1450"
    vtep = json.loads(run("ip", "-j", "-d", "link", "show", "vtep1042").stdout)[0]
    assert vtep["linkinfo"]["info_data"]["id"] == 1042 and vtep["linkinfo"]["info_data"]["learning"] is False
    [found] = doctor(docker)[1]["data_paths"]
    assert found["path"] == "bridge" and found["vtep"]["state"] == "up", found
    assert found["vtep"]["flood_peers"] == ["10.98.0.2"] and found["vtep"]["tx_packets"] > 0, found
    assert "VTEP vtep1042 up, flood peers 10.98.0.2" in found["summary"], found


def test_a_deleted_vtep_is_reported_and_repair_recreates_it(docker, other_host):
    net = network(docker, "--subnet", "10.43.0.0/16", "--ip-range", "10.43.1.0/24",
                  "-o", f"vtep_dev={other_host['underlay']}", "-o", "peers=10.98.0.2", driver="rancher-vxlan")
    a = container(docker, net)
    assert can_ping(docker, a, "10.43.200.1")
    bridge = json.loads(run("ip", "-j", "link", "show", "vtep1042").stdout)[0]["master"]
    run("ip", "link", "del", "vtep1042")  # behind Docker's back: the other host is cut off
    code, report = doctor(docker)
    assert code == 1 and [f["problem"] for f in report["findings"]] == ["vtep1042 is missing"], report
    code, report = doctor(docker, "--repair")
    assert code == 0 and report["findings"][0]["repaired"], report
    vtep = json.loads(run("ip", "-j", "-d", "link", "show", "vtep1042").stdout)[0]
    assert vtep["linkinfo"]["info_data"]["id"] == 1042 and vtep.get("master") == bridge
    assert can_ping(docker, a, "10.43.200.1"), "the VTEP, its peer and the bridge port are back"
    assert doctor(docker)[0] == 0


def test_bad_vxlan_options_fail_clearly(docker):
    done = docker("network", "create", "-d", "rancher-vxlan", "--subnet", "10.44.0.0/16",
                  "-o", "peers=10.98.0.2,not-an-ip", unique("v"), check=False)
    assert done.returncode != 0 and "not an IPv4 address" in done.stderr
    done = docker("network", "create", "-d", "rancher-vxlan", "--subnet", "10.44.0.0/16",
                  "-o", "vtep_dev=rcnitnosuch", unique("v"), check=False)
    assert done.returncode != 0 and "does not exist" in done.stderr
