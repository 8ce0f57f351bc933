"""Docker drives rancher-flat: containers on the business subnet behind a test
uplink (a veth to a router namespace), with the metadata link."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from cni_backend import install
from tests.conftest import ping, run, unique
from tests.rigs import router_with_uplink
from tests.engine.helpers import address, can_ping, container
from tests.engine.test_doctor import doctor
from tests.engine.test_both_models import exported_conflist

pytestmark = pytest.mark.engine

SUBNET, ROUTER, HOST_IP, LINK_IP, MD_IP = "192.168.78.0/24", "192.168.78.1", "192.168.78.10", "192.168.78.2", "169.254.169.250"


@pytest.fixture
def rig(make_netns, tmp_path):
    router, uplink = router_with_uplink(make_netns, f"{ROUTER}/24", f"{HOST_IP}/24")
    md_bridge = unique("md")
    run("ip", "link", "add", md_bridge, "type", "bridge")
    run("ip", "addr", "add", f"{MD_IP}/32", "dev", md_bridge)
    run("ip", "link", "set", md_bridge, "up")
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("metadata-ok\n")
    server = subprocess.Popen(["busybox", "httpd", "-f", "-p", f"{MD_IP}:80", "-h", str(www)])
    yield {"router": router, "uplink": uplink, "md_bridge": md_bridge}
    server.kill()
    server.wait()
    run("ip", "link", "del", md_bridge, check=False)
    run("ip", "link", "del", uplink, check=False)


def flat_network(docker, rig, *extra, link=True, subnet=SUBNET, gateway=ROUTER):
    name = unique("f")
    args = ["network", "create", "-d", "rancher-flat", "--subnet", subnet, "--gateway", gateway,
            "-o", f"parent={rig['uplink']}", "-o", f"metadata_bridge={rig['md_bridge']}"]
    if link:
        args += ["-o", f"metadata_link_ip={LINK_IP}", "--aux-address", f"link={LINK_IP}"]
    done = docker(*args, *extra, name, check=False)
    if done.returncode == 0:
        docker.made["networks"].append(name)
    return name, done


def uplink_state(uplink):
    link = json.loads(run("ip", "-j", "addr", "show", "dev", uplink).stdout)[0]
    return link.get("master"), sorted(a["local"] for a in link["addr_info"] if a["scope"] == "global")


def test_flat_containers_on_the_business_network(docker, rig):
    before = uplink_state(rig["uplink"])
    net, done = flat_network(docker, rig, "--ip-range", "192.168.78.128/25")
    assert done.returncode == 0, done.stderr
    assert uplink_state(rig["uplink"])[0] is not None, "the uplink is a port of the flat bridge"
    a, b = container(docker, net), container(docker, net)
    ip_a, ip_b = address(docker, a, net), address(docker, b, net)
    assert all(int(ip.rsplit(".", 1)[1]) >= 128 for ip in (ip_a, ip_b))
    assert ping(rig["router"], ip_a), "reachable from outside the host, no port mapping, no NAT"
    assert can_ping(docker, a, ROUTER) and can_ping(docker, a, ip_b)
    assert f"default via {ROUTER}" in docker("exec", a, "ip", "route").stdout
    # (busybox 1.35's wget crashes with -T, so no timeout flags here)
    fetched = docker("exec", b, "wget", "-O", "-", f"http://{MD_IP}/", check=False)
    assert fetched.stdout == "metadata-ok\n", fetched.stderr
    for name in (a, b):
        docker("rm", "-f", name)
    docker.made["containers"].clear()
    docker("network", "rm", net)
    docker.made["networks"].clear()
    assert uplink_state(rig["uplink"]) == before


def test_flat_with_our_ipam_keeps_the_link_address(docker, rig):
    net, done = flat_network(docker, rig, "--ipam-driver", "rancher-flat", link=False)
    assert done.returncode == 0, done.stderr
    docker("network", "rm", net)
    docker.made["networks"].clear()
    name, done = flat_network(docker, rig, "--ipam-driver", "rancher-flat", "-o", f"metadata_link_ip={LINK_IP}",
                              link=False)  # no --aux-address: our IPAM keeps the link address by itself
    assert done.returncode == 0, done.stderr
    assert ("@docker", LINK_IP) in {(owner, ip) for owner, _, ip in docker.shim.allocations()}


@pytest.mark.parametrize("case", ["missing parent", "absent parent", "link outside subnet", "link not reserved",
                                  "parent in use", "fast_path not a boolean"])
def test_flat_option_errors_are_clear_and_leave_nothing(docker, rig, case):
    before = uplink_state(rig["uplink"])
    if case == "parent in use":
        first, done = flat_network(docker, rig)
        assert done.returncode == 0, done.stderr
        second, done = flat_network(docker, rig, link=False, subnet="192.168.79.0/24", gateway="192.168.79.1")
        expected = "already part of"
    else:
        extra = {"missing parent": [], "absent parent": ["-o", "parent=rcnitabsent0"],
                 "link outside subnet": ["-o", "metadata_link_ip=10.1.1.1"],
                 "link not reserved": ["-o", f"metadata_link_ip={LINK_IP}"],
                 "fast_path not a boolean": ["-o", "fast_path=fast"]}[case]
        name = unique("f")
        args = ["network", "create", "-d", "rancher-flat", "--subnet", SUBNET, "--gateway", ROUTER,
                "-o", f"metadata_bridge={rig['md_bridge']}"]
        if case != "missing parent" and case != "absent parent":
            args += ["-o", f"parent={rig['uplink']}"]
        done = docker(*args, *extra, name, check=False)
        expected = {"missing parent": "option parent is required", "absent parent": "does not exist",
                    "link outside subnet": "outside the subnet", "link not reserved": "--aux-address",
                    "fast_path not a boolean": "fast_path='fast' is not a boolean"}[case]
    assert done.returncode != 0 and expected in done.stderr, done.stderr
    if case == "parent in use":
        docker("network", "rm", first)
        docker.made["networks"].clear()
    assert uplink_state(rig["uplink"]) == before


def fast_path_chains() -> dict:
    """table -> its per-container chains, of every flat network's fast path."""
    listing = json.loads(run("nft", "-j", "list", "ruleset", "netdev").stdout)["nftables"]
    chains = {}
    for entry in listing:
        if "table" in entry and entry["table"]["name"].startswith("rancher_flat_"):
            chains[entry["table"]["name"]] = []
        elif "chain" in entry and entry["chain"]["table"].startswith("rancher_flat_") \
                and entry["chain"]["name"] not in ("out", "uplink"):
            chains[entry["chain"]["table"]].append(entry["chain"]["name"])
    return chains


def test_a_lost_fast_path_falls_back_to_the_bridge_and_doctor_puts_it_back(docker, rig):
    net, done = flat_network(docker, rig)
    assert done.returncode == 0, done.stderr
    a = container(docker, net)
    [(table, [chain])] = fast_path_chains().items()
    run("nft", "flush", "chain", "netdev", table, chain)
    run("nft", "delete", "chain", "netdev", table, chain)
    assert ping(rig["router"], address(docker, a, net)) and can_ping(docker, a, ROUTER), "the bridge still carries it"
    code, report = doctor(docker)
    assert code == 1 and "fast path" in report["findings"][0]["problem"], report
    code, report = doctor(docker, "--repair")
    assert code == 0 and report["findings"][0]["repaired"], report
    assert fast_path_chains() == {table: [chain]}
    assert can_ping(docker, a, ROUTER)
    docker("rm", "-f", a)
    docker.made["containers"].clear()
    docker("network", "rm", net)
    docker.made["networks"].clear()
    assert fast_path_chains() == {}


def test_a_released_uplink_is_reported_and_repair_enslaves_it_again(docker, rig):
    net, done = flat_network(docker, rig)
    assert done.returncode == 0, done.stderr
    a = container(docker, net)
    bridge = uplink_state(rig["uplink"])[0]
    run("ip", "link", "set", rig["uplink"], "nomaster")  # behind Docker's back
    code, report = doctor(docker)
    assert code == 1 and [f["problem"] for f in report["findings"]] == [
        f"{rig['uplink']} is not enslaved to {bridge}"], report
    code, report = doctor(docker, "--repair")
    assert code == 0 and report["findings"][0]["repaired"], report
    assert uplink_state(rig["uplink"])[0] == bridge
    assert ping(rig["router"], address(docker, a, net)) and can_ping(docker, a, ROUTER)
    assert doctor(docker)[0] == 0


def test_a_docker_and_a_ctr_container_share_one_flat_network(docker, rig, containerd):
    """Issue 4's "the same through CNI": the network exported as a conflist,
    a `ctr run --cni` container next to a Docker one on the business subnet,
    both reached from the router, both on the fast path."""
    net, done = flat_network(docker, rig, "-o", "cni.export=true", "-o", f"cni.name={unique('cni')}")
    assert done.returncode == 0, done.stderr
    shutil.copy(exported_conflist(docker, net), os.path.join(containerd.cni_conf_dir, "00-rancher.conflist"))
    install.write_executables(containerd.cni_bin_dir)
    a = container(docker, net)
    pid = containerd.run_cni("c1", "sleep", "300", env=dict(os.environ, RANCHER_CNI_SOCKET=docker.shim.cni_socket))
    ctr_ip = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-4", "-o", "addr", "show", "eth0"],
                            capture_output=True, text=True, check=True).stdout.split()[3].split("/")[0]
    assert ctr_ip.startswith("192.168.78.") and ctr_ip not in (LINK_IP, address(docker, a, net))
    assert ping(rig["router"], ctr_ip) and ping(rig["router"], address(docker, a, net))
    assert can_ping(docker, a, ctr_ip)
    [chains] = fast_path_chains().values()
    assert len(chains) == 2, "one fast-path chain per container, whichever model made it"
    containerd.stop("c1")
    assert len(next(iter(fast_path_chains().values()))) == 1


def forward_counters(ip: str) -> int:
    """Packets the container's iptables FORWARD rules counted: what the bridge
    handed to br_netfilter for it (Docker leaves bridge-nf-call-iptables on)."""
    listing = run("iptables", "-w", "-L", "-v", "-x", "-n").stdout  # its rules are in a chain of its own
    return sum(int(line.split()[0]) for line in listing.splitlines() if f" {ip} " in f" {line} ")


def data_path(docker, net) -> dict:
    """The doctor's data-path report of network `net`."""
    net_id = json.loads(docker("network", "inspect", net).stdout)[0]["Id"]
    code, report = doctor(docker)
    assert code == 0, report
    [found] = [p for p in report["data_paths"] if p["network"] == net_id]
    return found


@pytest.mark.parametrize("fast_path", [True, False])
def test_doctor_and_status_show_the_data_path_a_flat_network_really_uses(docker, rig, fast_path):
    """The report comes from counters: with the fast path, router traffic
    shows up in its nft counters and never in br_netfilter's; with
    fast_path=false it is the bridge path; a fast path no container traffic
    took yet says so; the metadata link shows the frames it let across."""
    net, done = flat_network(docker, rig, "-o", f"fast_path={str(fast_path).lower()}")
    assert done.returncode == 0, done.stderr
    if fast_path:  # traffic to the host itself never takes the fast path
        assert ping(rig["router"], HOST_IP)
        found = data_path(docker, net)
        assert (found["path"], found["fast_path"]["state"]) == ("bridge", "configured but no packets took it"), found
    a = container(docker, net)
    ip_a = address(docker, a, net)
    walked = forward_counters(ip_a)
    assert ping(rig["router"], ip_a) and can_ping(docker, a, ROUTER)
    found = data_path(docker, net)
    if fast_path:
        assert found["path"] == "fast", found
        assert found["fast_path"]["from_uplink"] > 0 and found["fast_path"]["to_uplink"] > 0, found
        assert found["summary"].startswith(f"fast path: carrying traffic ({found['fast_path']['packets']} packets)")
        assert forward_counters(ip_a) == walked, "the kernel agrees: router traffic never met br_netfilter"
    else:
        assert (found["path"], found["fast_path"]["state"]) == ("bridge", "off"), found
        assert found["summary"].startswith("bridge path (fast path off)"), found
        assert found["bridge_path"]["frames_from_containers"] > 0, found
        assert forward_counters(ip_a) > walked, "the kernel agrees: it walked br_netfilter"
    fetched = docker("exec", a, "wget", "-O", "-", f"http://{MD_IP}/", check=False)
    assert fetched.stdout == "metadata-ok\n", fetched.stderr
    link = data_path(docker, net)["metadata_link"]
    assert link["up"] and link["frames"] > 0 and link["state"].startswith("up ("), link
    status = subprocess.run([sys.executable, "-m", "cnm_shim.cli", "status", "--state-dir", str(docker.shim.state_dir)],
                            capture_output=True, text=True, check=True).stdout
    assert ("fast path: carrying traffic (" if fast_path else "bridge path (fast path off)") in status, status
