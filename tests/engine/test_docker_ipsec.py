"""Docker drives rancher-ipsec; the "other host" is a namespace running the
rancher-ipsec CNI plug-in itself (its own charon, its own block of the subnet),
across an underlay veth the test makes. Only IKE and ESP in UDP cross it."""

import json
import os
import subprocess
import sys
import time

import pytest

from cni_backend import ipsec_tunnels
from tests import packets
from tests.conftest import CNIEnv, ns_exec, ping, run, unique
from tests.engine.helpers import address, container, network
from tests.netns.test_ipsec import alive, write_key

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(not os.access(ipsec_tunnels.CHARON, os.X_OK),
                       reason="strongSwan's charon is not installed (make deps)"),
    pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun for kernel-libipsec"),
]

DOCKER_HOST, OTHER_HOST = "10.97.0.1", "10.97.0.2"
SUBNET = "10.45.0.0/16"


def charon_pid(state_dir) -> int | None:
    try:
        with open(os.path.join(state_dir, "ipsec", "charon", "charon.owner")) as f:
            return int(f.read())
    except OSError:
        return None


@pytest.fixture
def other_host(make_netns, tmp_path):
    """A second host on an underlay veth, the key both share, and the CNI
    plug-in's environment there; its network is removed at the end."""
    host = make_netns()
    underlay = unique("ul")
    run("ip", "link", "add", underlay, "type", "veth", "peer", "name", "ul", "netns", host)
    run("ip", "addr", "add", f"{DOCKER_HOST}/24", "dev", underlay)
    run("ip", "link", "set", underlay, "up")
    ns_exec(host, "ip", "addr", "add", f"{OTHER_HOST}/24", "dev", "ul")
    ns_exec(host, "ip", "link", "set", "ul", "up")
    (tmp_path / "b").mkdir()
    env = CNIEnv(tmp_path / "b", daemon=False)
    config = {"cniVersion": "1.0.0", "name": "secure", "type": "rancher-ipsec", "bridge": "rcnitipsb",
              "isGateway": True, "peers": [DOCKER_HOST], "pskFile": write_key(tmp_path / "psk"),
              "stateDir": str(env.state),
              "ipam": {"type": "rancher-ipam", "dataDir": str(env.state),
                       "ranges": [[{"subnet": SUBNET, "gateway": "10.45.2.1",
                                    "rangeStart": "10.45.2.2", "rangeEnd": "10.45.2.254"}]]}}
    made = []
    yield {"netns": host, "env": env, "config": config, "psk": config["pskFile"], "made": made}
    for netns, container_id, result in made:
        env.exec("DEL", dict(config, prevResult=result), netns, container_id=container_id, host_netns=host)
    code = ("import json, sys; from cni_backend import ipsecnet; from cni_backend.plugins import ipsec; "
            "ipsecnet.remove(ipsec.load_network(json.loads(sys.argv[1])))")
    ns_exec(host, sys.executable, "-c", code, json.dumps(config))
    pid = charon_pid(env.state)
    if pid and alive(pid):
        os.kill(pid, 9)
    env.close()
    run("ip", "link", "del", underlay, check=False)


def attach_on_other_host(other_host, make_netns) -> tuple:
    workload = make_netns()
    code, result = other_host["env"].exec("ADD", other_host["config"], workload, container_id="w1",
                                          host_netns=other_host["netns"])
    assert code == 0, result
    other_host["made"].append((workload, "w1", result))
    return workload, result["ips"][0]["address"].split("/")[0]


def ipsec_network(docker, psk, *extra):
    return network(docker, "--ipam-driver", "rancher-ipsec", "--subnet", SUBNET, "--ip-range", "10.45.1.0/24",
                   "-o", f"peers={OTHER_HOST}", "-o", f"ipsec.psk_file={psk}", *extra, driver="rancher-ipsec")


def eventually_pings(docker, name, target, timeout=40) -> bool:
    deadline = time.monotonic() + timeout  # the first IKE exchange, then the CHILD_SA
    while time.monotonic() < deadline:
        if docker("exec", name, "ping", "-c", "1", "-W", "1", target, check=False).returncode == 0:
            return True
    return False


def status(docker) -> str:
    return subprocess.run([sys.executable, "-m", "cnm_shim.cli", "status", "--state-dir", str(docker.shim.state_dir)],
                          capture_output=True, text=True, check=True).stdout


def test_docker_containers_reach_another_hosts_containers_through_ipsec_and_nothing_plain_crosses(
        docker, other_host, make_netns):
    net = ipsec_network(docker, other_host["psk"])
    a = container(docker, net)
    ip_a = address(docker, a, net)
    assert ip_a.startswith("10.45.1."), "Docker's address comes from this host's block, its --ip-range"
    gateway = json.loads(docker("inspect", a).stdout)[0]["NetworkSettings"]["Networks"][net]["Gateway"]
    assert gateway == "10.45.1.1", "the gateway is in this host's block: the tunnels are routed from it"
    workload, ip_w = attach_on_other_host(other_host, make_netns)
    assert eventually_pings(docker, a, ip_w), "Docker's container reaches the other host's through the tunnel"
    assert ping(workload, ip_a), "and back"

    marker = b"rancher-ipsec-16b"  # the pings' payload pattern (16 bytes)
    with packets.capture(other_host["netns"], "ul", seconds=4) as frames:
        time.sleep(0.5)
        ns_exec(workload, "ping", "-c", "3", "-i", "0.3", "-p", marker.hex(), ip_a)
    ipv4 = [f for f in frames if f[12:14] == b"\x08\x00"]
    assert len(ipv4) >= 6, "the capture saw the pings and their answers in the tunnel"
    for frame in ipv4:
        protocol, ports = frame[23], (int.from_bytes(frame[34:36], "big"), int.from_bytes(frame[36:38], "big"))
        assert protocol == 17 and set(ports) <= {500, 4500}, f"only IKE and ESP in UDP: {frame[:40].hex()}"
    assert not packets.carrying(frames, marker), "no payload in plain text"
    assert not [f for f in ipv4 if bytes(map(int, ip_a.split("."))) in f[14:]], "no container address outside"

    mtu = int(docker("exec", a, "cat", "/sys/class/net/eth0/mtu").stdout)
    assert mtu == 1400, "the user-space data path's ipsec0 takes 1400 at most"
    full = ns_exec(workload, "ping", "-c", "1", "-W", "3", "-M", "do", "-s", str(mtu - 28), ip_a, check=False)
    assert full.returncode == 0, full.stdout + full.stderr

    key = open(other_host["psk"]).read()
    inspected = docker("network", "inspect", net).stdout
    assert other_host["psk"] in inspected and key not in inspected, "the key file's path, never the key"
    shown = status(docker)
    assert "IPsec data path libipsec" in shown and key not in shown, shown
    assert key not in docker.shim.log()

    pid = charon_pid(docker.shim.ipam_dir)
    assert pid and alive(pid)
    docker("rm", "-f", a)
    docker("network", "rm", net)
    docker.made["networks"].remove(net)
    assert not alive(pid), "the last IPsec network's removal stopped this host's charon"
    links = run("ip", "-o", "link", "show").stdout
    assert "ipsec0" not in links and "ri-" not in links, links
    assert run("ip", "route", "show", "table", "220").stdout.strip() == ""


@pytest.mark.parametrize("how, message", [
    ("others can read the key", "must belong to uid 0 and have mode 0600 or stricter"),
    ("no key file", "cannot open the PSK file"),
    ("Docker's own IPAM", "create it with --ipam-driver rancher-ipsec"),
    ("no --ip-range", "create it with --ipam-driver rancher-ipsec"),
    ("an AEAD ESP proposal", "not supported by the user-space data path"),
    ("no peers and no underlay", "give the other hosts with -o peers=IP,IP"),
])
def test_a_bad_ipsec_network_fails_in_dockers_output_and_leaves_nothing(docker, tmp_path, how, message):
    psk = write_key(tmp_path / "psk", 0o644 if how == "others can read the key" else 0o600)
    args = ["--ipam-driver", "rancher-ipsec", "--subnet", SUBNET, "--ip-range", "10.45.1.0/24",
            "-o", f"peers={OTHER_HOST}", "-o", f"ipsec.psk_file={psk}"]
    if how == "no key file":
        args[-1] = f"ipsec.psk_file={tmp_path}/missing"
    if how == "Docker's own IPAM":
        args = args[2:]
    if how == "no --ip-range":
        args = args[:4] + args[6:]
    if how == "an AEAD ESP proposal":
        args += ["-o", "ipsec.esp_proposal=aes128gcm16"]
    if how == "no peers and no underlay":
        args = args[:6] + args[8:]
    links_before = run("ip", "-o", "link", "show").stdout.count("\n")
    done = docker("network", "create", "-d", "rancher-ipsec", *args, unique("ips"), check=False)
    assert done.returncode != 0 and message in done.stderr, done.stderr
    key = open(psk).read()
    assert key not in done.stderr
    assert run("ip", "-o", "link", "show").stdout.count("\n") == links_before, "no bridge left"
    assert charon_pid(docker.shim.ipam_dir) is None or not alive(charon_pid(docker.shim.ipam_dir))


def test_a_ctr_run_cni_container_joins_the_docker_ipsec_network_and_is_reached_across_the_tunnel(
        docker, other_host, make_netns, containerd):
    """The same network from a CNI runtime: `cni.export` writes the conflist,
    containerd's `ctr run --cni` attaches a container to the same bridge and
    block, and the other host reaches it through the same tunnel."""
    from tests.engine.test_both_models import ctr_container_on
    net = ipsec_network(docker, other_host["psk"], "-o", "cni.export=true", "-o", f"cni.name={unique('cni')}")
    a = container(docker, net)
    ctr_ip = ctr_container_on(docker, containerd, net)
    assert ctr_ip.startswith("10.45.1.") and ctr_ip != address(docker, a, net), "this host's block, its own address"
    workload, ip_w = attach_on_other_host(other_host, make_netns)
    assert eventually_pings(docker, a, ip_w)
    assert ping(workload, ctr_ip, count=2), "the other host reaches the CNI runtime's container through the tunnel"
    assert docker("exec", a, "ping", "-c", "1", "-W", "2", ctr_ip, check=False).returncode == 0
    containerd.stop("c1")
    assert [x for x in docker.shim.allocations() if x[1].startswith("rcnitest-")] == []
