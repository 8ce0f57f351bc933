"""`cnm-shim doctor` against a running plug-in: healthy is exit 0; drift made
behind Docker's back (a host veth deleted, one of our iptables rules or jumps
removed, an IPAM allocation no endpoint owns) is reported with exit 1, and
--repair fixes what is ours to fix. The `docker` fixture's guards then check
that nothing is left, as after any other test."""

import http.client
import json
import os
import shlex
import socket
import subprocess
import sys

import pytest

from cni_backend.ipam.store import Allocation, open_store
from tests.conftest import run
from tests.engine.dockerd import CLI
from cnm_shim import ipam_driver
from cnm_shim.state import POOL, State
from tests.engine.helpers import address, can_ping, container, network, post_unix

pytestmark = pytest.mark.engine


def doctor(docker, *args):
    """(exit code, the JSON report) of `cnm-shim doctor` on the test's shim."""
    shim = docker.shim
    argv = [sys.executable, "-m", "cnm_shim.cli", "doctor", "--json", "--state-dir", str(shim.state_dir),
            "--run-dir", str(shim.root / "run"), "--ipam-data-dir", str(shim.ipam_dir),
            "--cni-path", f"{shim.bin}:/usr/lib/cni", "--runtime-cache-dir", str(shim.root / "no-runtime"),
            "--docker-host", f"unix://{docker.dockerd.socket}", *args]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode in (0, 1), f"doctor could not check: {done.stdout} {done.stderr}"
    return done.returncode, json.loads(done.stdout)


def shim_state(docker) -> dict:
    done = subprocess.run([sys.executable, "-m", "cnm_shim.cli", "status", "--json",
                           "--state-dir", str(docker.shim.state_dir)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def endpoint_of(docker, name, net) -> dict:
    """The shim's endpoint record of container `name` (found by its address)."""
    ip = address(docker, name, net)
    return next(ep for ep in shim_state(docker)["endpoints"] if ep["address"].split("/")[0] == ip)


def host_veth(ep: dict) -> str:
    return next(i["name"] for i in ep["result"]["interfaces"] if i["name"].startswith("veth") and not i.get("sandbox"))


def rules_with(text: str) -> list:
    return [line for line in run("iptables-save").stdout.splitlines() if text in line]


def test_a_healthy_network_is_exit_0(docker):
    net = network(docker, "--subnet", "10.161.0.0/24")
    a, b = container(docker, net), container(docker, net)
    code, report = doctor(docker)
    assert (code, report["findings"], report["docker"]["checked"]) == (0, [], True), report
    code, repaired = doctor(docker, "--repair")
    assert (code, repaired["findings"]) == (0, []), "--repair on a healthy host changes nothing"
    [found] = report["data_paths"]
    assert found["path"] == "bridge" and found["bridge"]["state"] == "present", found
    assert can_ping(docker, a, address(docker, b, net))
    frames = doctor(docker)[1]["data_paths"][0]["bridge_path"]["frames_from_containers"]
    assert frames > found["bridge_path"]["frames_from_containers"], "the ping is counted on the bridge path"
    # the host as the kernel has it: the gateway bridge turned forwarding on
    assert report["host"]["sysctls"]["net.ipv4.ip_forward"] == "1"
    assert report["host"]["features"]["nft_bridge"] is True


def test_a_host_veth_deleted_behind_dockers_back_is_reported(docker):
    net = network(docker, "--subnet", "10.162.0.0/24")
    a, b = container(docker, net), container(docker, net)
    ep = endpoint_of(docker, a, net)
    run("ip", "link", "del", host_veth(ep))
    code, report = doctor(docker)
    assert code == 1, report
    [finding] = report["findings"]
    assert finding["kind"] == "endpoint" and finding["subject"].startswith(ep["endpoint_id"][:12])
    assert "CHECK" in finding["problem"], finding
    code, report = doctor(docker, "--repair")
    assert code == 1 and not report["findings"][0]["repaired"], "the container's inside is not the doctor's to fix"
    assert can_ping(docker, b, address(docker, b, net))


def test_a_removed_iptables_rule_is_reported_and_repair_restores_it(docker):
    net = network(docker, "--subnet", "10.163.0.0/24")
    a, b = container(docker, net), container(docker, net)
    ip_a = address(docker, a, net)
    [accept] = [r for r in rules_with(f"-s {ip_a}/32") if r.endswith("-j ACCEPT")]
    run("iptables", *shlex.split("-D" + accept[2:]))
    code, report = doctor(docker)
    assert code == 1, report
    [finding] = report["findings"]
    assert finding["kind"] == "endpoint" and "firewall rule" in finding["problem"], finding
    code, report = doctor(docker, "--repair")
    assert code == 0 and report["findings"][0]["repaired"], report
    assert accept in rules_with(f"-s {ip_a}/32")
    code, report = doctor(docker)
    assert (code, report["findings"], report["errors"], report["docker"]["checked"]) == (0, [], [], True), report
    assert can_ping(docker, a, address(docker, b, net))


def test_a_removed_forward_jump_is_reported_and_repair_puts_it_back(docker):
    net = network(docker, "--subnet", "10.164.0.0/24")
    container(docker, net)
    [jump] = [r for r in rules_with("-A FORWARD ") if r.endswith("-j RANCHER-CNI-FORWARD")]
    run("iptables", *shlex.split("-D" + jump[2:]))
    code, report = doctor(docker)
    assert code == 1, report
    [finding] = report["findings"]  # network-level: the attachments' own rules are all there
    assert finding["kind"] == "firewall" and "RANCHER-CNI-FORWARD" in finding["problem"], finding
    code, report = doctor(docker, "--repair")
    assert code == 0, report
    assert rules_with("-j RANCHER-CNI-FORWARD") == [jump]
    assert doctor(docker)[0] == 0


def test_an_orphan_ipam_allocation_is_reported_and_released_by_repair(docker):
    net = network(docker, "--subnet", "10.165.0.0/24")
    a = container(docker, net)
    store = open_store(str(docker.shim.ipam_dir))
    [held] = store.run(lambda txn: txn.all())
    orphan = Allocation(held.pool, "10.165.0.200", held.network, "rcnitorphan", "eth0")
    store.run(lambda txn: txn.add(orphan))
    code, report = doctor(docker)
    assert code == 1, report
    [finding] = report["findings"]
    assert finding["kind"] == "ipam" and finding["subject"].startswith("10.165.0.200"), finding
    code, report = doctor(docker, "--repair")
    assert code == 0 and report["findings"][0]["repaired"], report
    assert store.run(lambda txn: txn.all()) == [held], "only the orphan is released"
    assert address(docker, a, net) == held.ip
    assert doctor(docker)[0] == 0


def test_a_pool_whose_release_pool_never_came_is_reported_and_released_by_repair(docker):
    """A pool no network uses (Docker's RequestPool came, CreateNetwork did not, nor
    ReleasePool) is released; a pool a network of another driver uses, which the
    plug-in has no record of but Docker lists, is left alone."""
    foreign = network(docker, "--ipam-driver", "rancher-bridge", "--subnet", "10.166.0.0/24", driver="bridge")
    call = {"AddressSpace": "RancherLocal", "Pool": "10.167.0.0/24"}
    status, leaked = post_unix(docker.shim.socket, "IpamDriver.RequestPool", json.dumps(call).encode())
    assert status == 200, leaked
    assert post_unix(docker.shim.socket, "IpamDriver.RequestAddress", json.dumps({
        "PoolID": leaked["PoolID"], "Options": {"RequestAddressType": "com.docker.network.gateway"}}).encode())[0] == 200
    state = State(str(docker.shim.state_dir))
    assert doctor(docker)[1]["findings"] == [], "within the grace period nothing is judged"
    for pool in state.all(POOL):  # requested longer ago than the grace period
        state.put(POOL, pool["id"], dict(pool, created=pool["created"] - ipam_driver.POOL_GRACE_S - 1))
    code, report = doctor(docker)
    assert code == 1, report
    [finding] = report["findings"]
    assert (finding["kind"], finding["subject"], finding["repairable"]) == ("pool", leaked["PoolID"], True), finding
    assert "its ReleasePool never came" in finding["problem"]
    code, report = doctor(docker, "--repair")
    assert code == 0 and report["findings"][0]["repaired"], report
    assert [p["subnet"] for p in state.all(POOL)] == ["10.166.0.0/24"], "the foreign network's pool stays"
    assert open_store(str(docker.shim.ipam_dir)).run(lambda txn: txn.allocated("10.167.0.0/24")) == {}
    c = container(docker, foreign)
    assert address(docker, c, foreign).startswith("10.166.0.")
    assert doctor(docker)[0] == 0


def test_a_deleted_bridge_is_reported_and_repair_rebuilds_it(docker):
    net = network(docker, "--subnet", "10.166.0.0/24")
    a, b = container(docker, net), container(docker, net)
    bridge = "rb-" + json.loads(docker("network", "inspect", net).stdout)[0]["Id"][:12]
    run("ip", "link", "del", bridge)  # the containers' host veths survive, masterless
    code, report = doctor(docker)
    assert code == 1 and any(f["kind"] == "network" and bridge in f["problem"] + f["subject"]
                             for f in report["findings"]), report
    code, report = doctor(docker, "--repair")
    assert code == 0, report
    assert run("ip", "link", "show", bridge).returncode == 0
    assert can_ping(docker, a, address(docker, b, net)), "the ports are back on the rebuilt bridge"
    assert doctor(docker)[0] == 0


def test_a_stale_staging_namespace_is_reported_and_removed(docker):
    from cni_backend import staging
    path = docker.shim.root / "run" / "staging" / ("f" * 24)
    staging.create(str(path))  # what a worker killed between create and remove leaves
    code, report = doctor(docker)
    assert code == 1 and [f["kind"] for f in report["findings"]] == ["staging"], report
    code, report = doctor(docker, "--repair")
    assert code == 0 and not path.exists(), report


# -- what Docker forgot while the plug-in's socket was away ---------------------------

class PluginSocket:
    """The plug-in's socket file, moved away and back: the plug-in keeps
    serving, but dockerd finds nothing to dial (what `make run` saw when a
    benchmark deleted its sockets)."""

    def __init__(self, docker):
        self.path = docker.shim.socket
        # beside it (a rename stays on its file system), under a name dockerd
        # never looks up (it tries NAME.sock and NAME/NAME.sock)
        self.parking = os.path.join(os.path.dirname(self.path), "rcnit-parked")
        self.parked = os.path.join(self.parking, os.path.basename(self.path))

    def __enter__(self):
        os.mkdir(self.parking)
        os.rename(self.path, self.parked)
        return self

    def __exit__(self, *exc):
        os.rename(self.parked, self.path)
        os.rmdir(self.parking)

    def post(self, call: str, body: dict) -> dict:
        """One remote-driver call straight to the plug-in, as dockerd makes it."""
        conn = UnixHTTPConnection(self.path)
        try:
            conn.request("POST", f"/{call}", json.dumps(body), {"Accept": "application/vnd.docker.plugins.v1.2+json"})
            reply = conn.getresponse()
            return json.loads(reply.read() or b"{}")
        finally:
            conn.close()


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=120)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def network_id(docker, net) -> str:
    return json.loads(docker("network", "inspect", net).stdout)[0]["Id"]


def docker_calls_fail_meanwhile(docker, *commands):
    """Run the docker commands at once (each waits out Docker's ~15 s of
    retries per plug-in call); every one must still succeed on Docker's side."""
    running = [subprocess.Popen([CLI, "-H", f"unix://{docker.dockerd.socket}", *argv],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for argv in commands]
    for argv, proc in zip(commands, running):
        out, err = proc.communicate()
        assert proc.returncode == 0, f"docker {' '.join(argv)}: {err}"


def links() -> set:
    return {link["ifname"] for link in json.loads(run("ip", "-j", "link", "show").stdout)}


def test_what_docker_forgot_while_the_socket_was_away_is_found_and_repair_removes_it(docker):
    """A container with a published port removed and a network (our IPAM
    driver's) removed while the plug-in's socket is gone: Docker gives up on
    each call after its retries and forgets them anyway. The doctor finds
    both by asking the engine, --repair tears them down as DeleteEndpoint /
    DeleteNetwork / ReleasePool would have, and nothing Docker still has is
    touched (the other container keeps its address and its ping)."""
    kept_net = network(docker, "--subnet", "10.167.0.0/24")
    gone_net = network(docker, "--subnet", "10.168.0.0/24", "--ipam-driver", "rancher-bridge")
    published = container(docker, kept_net, "-p", "18080:80")
    kept, neighbour = container(docker, kept_net), container(docker, kept_net)
    ep_gone, ep_kept = endpoint_of(docker, published, kept_net), endpoint_of(docker, kept, kept_net)
    kept_id, gone_id = network_id(docker, kept_net), network_id(docker, gone_net)
    gone_bridge = "rb-" + gone_id[:12]
    assert rules_with(f"--to-destination {ep_gone['address'].split('/')[0]}:80"), "the published port's DNAT"
    assert gone_bridge in links() and host_veth(ep_gone) in links()
    away = PluginSocket(docker)
    try:
        with away:
            docker_calls_fail_meanwhile(docker, ("rm", "-f", published), ("network", "rm", gone_net))
        docker.made["containers"].remove(published)
        docker.made["networks"].remove(gone_net)
        assert ep_gone["endpoint_id"] in {e["endpoint_id"] for e in shim_state(docker)["endpoints"]}, \
            "the plug-in still holds the endpoint Docker forgot"

        code, report = doctor(docker)
        assert code == 1, report
        found = {(f["kind"], f["subject"]) for f in report["findings"]}
        assert found == {("endpoint", f"{ep_gone['endpoint_id'][:12]} on rancher-{kept_id[:12]}"),
                         ("network", f"rancher-{gone_id[:12]} ({gone_id[:12]})")}, report
        assert all(f["repairable"] for f in report["findings"]), report

        code, report = doctor(docker, "--repair")
        assert code == 0 and all(f["repaired"] for f in report["findings"]), report
        state = shim_state(docker)
        ep_neighbour = endpoint_of(docker, neighbour, kept_net)
        assert sorted(e["endpoint_id"] for e in state["endpoints"]) == \
            sorted([ep_kept["endpoint_id"], ep_neighbour["endpoint_id"]])
        assert [n["id"] for n in state["networks"]] == [kept_id]
        assert state["pools"] == [], "the forgotten network's pool is released"
        assert gone_bridge not in links() and host_veth(ep_gone) not in links()
        assert "rc" + ep_gone["endpoint_id"][:12] not in links()
        assert not rules_with(ep_gone["address"].split("/")[0] + "/32") and not rules_with("18080"), "DNAT and rules"
        assert {ip for _, _, ip in docker.shim.allocations()} == {e["address"].split("/")[0]
                                                                   for e in (ep_kept, ep_neighbour)}
        assert can_ping(docker, kept, address(docker, neighbour, kept_net)) and host_veth(ep_kept) in links()
        code, report = doctor(docker)
        assert (code, report["findings"]) == (0, []), report
    finally:  # on failure: the plug-in's own teardown, so nothing spills into the next test
        away.post("NetworkDriver.DeleteEndpoint", {"NetworkID": kept_id, "EndpointID": ep_gone["endpoint_id"]})
        away.post("NetworkDriver.DeleteNetwork", {"NetworkID": gone_id})
        away.post("IpamDriver.ReleasePool", {"PoolID": "RancherLocal/10.168.0.0/24"})


def test_a_network_docker_has_and_the_plug_in_lacks_is_reported_not_touched(docker):
    """The reverse: a network record lost (a plug-in started on an empty
    state dir) is reported, not repairable, and --repair leaves it alone."""
    import sqlite3
    net = network(docker, "--subnet", "10.169.0.0/24")
    net_id = network_id(docker, net)
    with sqlite3.connect(docker.shim.state_dir / "state.db") as db:
        row = db.execute("SELECT kind, key, value FROM objects WHERE kind = 'network' AND key = ?", (net_id,)).fetchone()
        db.execute("DELETE FROM objects WHERE kind = 'network' AND key = ?", (net_id,))
    try:
        code, report = doctor(docker, "--repair")
        assert code == 1, report
        [finding] = report["findings"]
        assert (finding["kind"], finding["subject"], finding["repaired"]) == \
            ("docker-network", f"{net} ({net_id[:12]})", False), report
        assert "rb-" + net_id[:12] in links(), "the bridge of a network Docker has stays"
    finally:
        with sqlite3.connect(docker.shim.state_dir / "state.db") as db:
            db.execute("INSERT OR REPLACE INTO objects (kind, key, value) VALUES (?, ?, ?)", row)
    assert doctor(docker)[0] == 0


def test_no_engine_answering_skips_the_docker_check_and_says_so(docker):
    code, report = doctor(docker, "--docker-host", f"unix://{docker.shim.root}/no-engine.sock")
    assert code == 0 and report["docker"]["checked"] is False, report
    assert "no Docker engine answers" in report["docker"]["reason"], report


def test_a_forgotten_exported_network_a_cni_runtime_still_uses_is_left_to_the_runtime(docker, make_netns):
    """Docker forgot an exported network, but a CNI runtime's attachment is
    still on it: that is not Docker's to judge, so --repair leaves it (and
    the attachment keeps working); once the runtime has detached, --repair
    removes the network."""
    from tests.engine.test_both_models import exported_conflist
    net = network(docker, "--subnet", "10.171.0.0/24", "-o", "cni.export=true")
    net_id, exported = network_id(docker, net), exported_conflist(docker, net)
    runtime_cache, netns = docker.shim.root / "runtime-cache", make_netns()
    cni = [sys.executable, "-m", "cnm_shim.cli", "cni"]
    paths = ["--cni-path", str(docker.shim.bin), "--cache-dir", str(runtime_cache), "--container-id", "rcnitrt"]
    env = dict(os.environ, RANCHER_CNI_SOCKET=docker.shim.cni_socket)
    subprocess.run(cni + ["add", exported, netns] + paths, check=True, env=env, capture_output=True)
    attached = True
    away = PluginSocket(docker)
    try:
        with away:
            docker_calls_fail_meanwhile(docker, ("network", "rm", net))
        docker.made["networks"].remove(net)
        code, report = doctor(docker, "--repair", "--runtime-cache-dir", str(runtime_cache))
        assert code == 1, report
        [finding] = report["findings"]
        assert (finding["kind"], finding["repairable"], finding["repaired"]) == ("network", False, False), report
        assert "rcnitrt/eth0" in finding["note"], finding
        assert "rb-" + net_id[:12] in links()
        subprocess.run(cni + ["check", exported, netns] + paths, check=True, env=env, capture_output=True)
        subprocess.run(cni + ["del", exported, netns] + paths, check=True, env=env, capture_output=True)
        attached = False
        code, report = doctor(docker, "--repair", "--runtime-cache-dir", str(runtime_cache))
        assert code == 0 and [f["repaired"] for f in report["findings"]] == [True], report
        assert "rb-" + net_id[:12] not in links() and shim_state(docker)["networks"] == []
        assert not os.path.exists(exported), "the exported conflist goes with the network"
    finally:
        if attached:
            subprocess.run(cni + ["del", exported, netns] + paths, env=env, capture_output=True)
        away.post("NetworkDriver.DeleteNetwork", {"NetworkID": net_id})


def test_an_endpoint_docker_has_and_the_plug_in_lacks_is_reported_not_touched(docker):
    """A lost endpoint record of a running container: reported; its cached
    CNI attachment, rules and address are not collected as orphans."""
    import sqlite3
    net = network(docker, "--subnet", "10.172.0.0/24")
    a, b = container(docker, net), container(docker, net)
    ep = endpoint_of(docker, a, net)
    key = f"{ep['network_id']}/{ep['endpoint_id']}"
    with sqlite3.connect(docker.shim.state_dir / "state.db") as db:
        row = db.execute("SELECT kind, key, value FROM objects WHERE kind = 'endpoint' AND key = ?", (key,)).fetchone()
        db.execute("DELETE FROM objects WHERE kind = 'endpoint' AND key = ?", (key,))
    try:
        code, report = doctor(docker, "--repair")
        assert code == 1 and [(f["kind"], f["subject"], f["repaired"]) for f in report["findings"]] == \
            [("docker-endpoint", f"{ep['endpoint_id'][:12]} on rancher-{ep['network_id'][:12]}", False)], report
        assert host_veth(ep) in links(), "its cached attachment, rules and address are not orphans: Docker has it"
        assert can_ping(docker, b, address(docker, a, net))
    finally:
        with sqlite3.connect(docker.shim.state_dir / "state.db") as db:
            db.execute("INSERT OR REPLACE INTO objects (kind, key, value) VALUES (?, ?, ?)", row)
    assert doctor(docker)[0] == 0
