"""rancher-ipsec across three Docker hosts (the multi-host rig): static peers,
one key file (the same content on each host), each host its own block of the
subnet. Containers reach each other and carry iperf3 through the tunnels; the
underlay sees IKE and ESP in UDP only; a host with the wrong key stays out; a
host that leaves takes its tunnels and routes from the others; a charon killed
with -9 comes back by itself."""

import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from cni_backend import ipsec_tunnels, ipsecnet
from tests import packets
from tests.conftest import _leaks, host_state, unique
from tests.multihost.rig import Rig
from tests.processes import process_tree

pytestmark = [
    pytest.mark.multihost,
    pytest.mark.skipif(not os.access(ipsec_tunnels.CHARON, os.X_OK),
                       reason="strongSwan's charon is not installed (make deps)"),
    pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun for kernel-libipsec"),
    pytest.mark.skipif(not shutil.which("iperf3"), reason="iperf3 is not installed"),
]

MARKER = b"rancher-ipsec-mh"  # the pings' payload pattern (16 bytes)


@pytest.fixture(scope="module")
def rig():
    """One rig for the module; what it leaves behind (links, namespaces,
    mounts, rules, processes) fails the module's last test."""
    before, processes_before = host_state(), set(process_tree(os.getpid()))
    rig = Rig(3)
    yield rig
    rig.close()
    deadline = time.monotonic() + 10
    while (leaked := _leaks(before, processes_before)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not leaked, f"the rig left state behind: {leaked}"


# -- the hosts ------------------------------------------------------------------

def key_file(host, name: str, key: bytes) -> str:
    """`key` in a file of the host's own root, mode 0600."""
    path = os.path.join(host.root, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, key)
    os.close(fd)
    return path


def block(subnet: str, host) -> str:
    """Host N's block of the subnet: its N-th /24."""
    return str(list(ipaddress.ip_network(subnet).subnets(new_prefix=24))[host.index])


def charon_of(host) -> ipsec_tunnels.Charon:
    return ipsec_tunnels.Charon(os.path.join(host.root, "ipam", "ipsec", "charon"))


def charon_pid(host) -> int | None:
    """The pid of the host's charon while it runs."""
    try:
        with open(os.path.join(host.root, "ipam", "ipsec", "charon", "charon.owner")) as f:
            pid = int(f.read())
        with open(f"/proc/{pid}/stat") as f:
            return pid if f.read().rsplit(")", 1)[1].split()[0] != "Z" else None
    except (OSError, ValueError):
        return None


def installed_to(host, peer) -> list:
    """The host's INSTALLED CHILD_SAs with `peer` (a host)."""
    if charon_pid(host) is None:
        return []
    sa = charon_of(host).sas().get(ipsecnet.peer_connection(peer.address), {})
    return [name for name, state in sa.get("children", {}).items() if state == "INSTALLED"]


def charon_log(host) -> str:
    """The host's charon log (every charon the host ran in this module)."""
    try:
        with open(os.path.join(host.root, "ipam", "ipsec", "charon", "charon.log"), errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def table_220(host) -> str:
    return subprocess.run(["ip", "-n", host.netns, "route", "show", "table", "220"],
                          capture_output=True, text=True, check=True).stdout


@pytest.fixture
def ipsec_net(rig):
    """`make(subnet, keys)`: the network on every host (host N: the subnet's
    N-th /24 as its block, the other two as peers, key `keys[N-1]`), a
    container on each; (network, [(host, container, address, pid)]). At the end the
    containers and networks go, and with the last network each host's charon."""
    made = []

    def create(host, net: str, subnet: str, key: bytes) -> None:
        peers = ",".join(h.address for h in rig.hosts if h is not host)
        done = host.docker("network", "create", "-d", "rancher-ipsec", "--ipam-driver", "rancher-ipsec",
                           "--subnet", subnet, "--ip-range", block(subnet, host), "-o", f"peers={peers}",
                           "-o", f"ipsec.psk_file={key_file(host, net + '.psk', key)}", net)
        assert done.returncode == 0, done.stderr

    def attach(host, net: str, subnet: str) -> tuple:
        name = unique("c")
        done = host.docker("run", "-d", "--name", name, "--network", net, host.dockerd.image, "sleep", "600")
        assert done.returncode == 0, done.stderr
        state = json.loads(host.docker("inspect", name).stdout)[0]
        address = state["NetworkSettings"]["Networks"][net]["IPAddress"]
        assert ipaddress.ip_address(address) in ipaddress.ip_network(block(subnet, host))
        return host, name, address, state["State"]["Pid"]

    def make(subnet: str, keys) -> tuple:
        net = unique("ips")
        made.append(net)
        for host, key in zip(rig.hosts, keys, strict=True):
            create(host, net, subnet, key)
        return net, [attach(host, net, subnet) for host in rig.hosts]

    make.create, make.attach = create, attach
    yield make
    for host in rig.hosts:
        for line in host.docker("ps", "-aq").stdout.split():
            host.docker("rm", "-f", line)
        for net in made:
            host.docker("network", "rm", net)
    left = [host.index for host in rig.hosts if charon_pid(host) is not None]
    assert not left, f"the last network's removal stopped each host's charon: still running on hosts {left}"


# -- traffic --------------------------------------------------------------------

def in_container(pid: int, *argv, **kw) -> subprocess.CompletedProcess:
    """A host tool run in the container's network namespace (busybox has no iperf3)."""
    return subprocess.run(["nsenter", "-t", str(pid), "-n", *argv], capture_output=True, text=True, **kw)


def pings(pid: int, address: str) -> bool:
    return in_container(pid, "ping", "-c", "1", "-W", "1", address).returncode == 0


def until(what: str, check, timeout: float):
    """Wait for `check()` to hold; a bound, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}"
        time.sleep(0.3)
    return found


def all_reach(containers, timeout: float = 40) -> None:
    for source in containers:
        for target in containers:
            if source is not target:
                until(f"host {source[0].index} -> host {target[0].index}",
                      lambda s=source, t=target: pings(s[3], t[2]), timeout)


def iperf3(client, server) -> float:
    """Mbit/s from the client container to the server container (3 s); a
    run that reports no result is told and tried again (3 runs at most)."""
    problems = []
    for _ in range(3):
        listening = subprocess.Popen(["nsenter", "-t", str(server[3]), "-n", "iperf3", "-s", "-1", "-B", server[2]],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            until("iperf3 listens", lambda: in_container(server[3], "ss", "-Hltn", "sport = :5201").stdout.strip(), 10)
            done = in_container(client[3], "iperf3", "-c", server[2], "-t", "3", "-J", timeout=60)
            try:
                return json.loads(done.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
            except (ValueError, KeyError):
                problems.append(f"exit {done.returncode}: {done.stdout[-300:]} {done.stderr[-300:]}")
                print(f"iperf3 host {client[0].index} -> host {server[0].index} gave no result: {problems[-1]}")
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                listening.wait(5)
            if listening.poll() is None:
                listening.kill()
                listening.wait()
    raise AssertionError(f"iperf3 host {client[0].index} -> host {server[0].index}: {problems}")


# -- the tests ------------------------------------------------------------------

def test_three_hosts_ping_and_carry_iperf3_and_the_underlay_sees_only_ike_and_esp_in_udp(rig, ipsec_net):
    key = os.urandom(24).hex().encode()
    _, containers = ipsec_net("10.46.0.0/16", [key] * 3)
    all_reach(containers)
    for host in rig.hosts:
        for peer in rig.hosts:
            if peer is not host:
                sa = charon_of(host).sas()[ipsecnet.peer_connection(peer.address)]
                assert sa["ike"] == "ESTABLISHED" and set(sa["children"].values()) == {"INSTALLED"}, sa
                assert all(sa["udp_encap"].values()), f"ESP in UDP between {host.address} and {peer.address}"

    # each host's switch port: every pair's traffic is seen on two of them
    with contextlib.ExitStack() as stack:
        captures = [stack.enter_context(packets.capture(rig.underlay, f"h{h.index}", seconds=6)) for h in rig.hosts]
        time.sleep(0.5)
        for source in containers:
            for target in containers:
                if source is not target:
                    done = in_container(source[3], "ping", "-c", "3", "-i", "0.2", "-W", "1", "-p", MARKER.hex(),
                                        target[2])
                    assert done.returncode == 0, done.stdout + done.stderr
    frames = [f for capture in captures for f in capture]
    hosts = {ipaddress.ip_address(h.address).packed for h in rig.hosts}
    between = [f for f in frames if f[12:14] == b"\x08\x00" and f[26:30] in hosts and f[30:34] in hosts]
    assert len(between) >= 6 * 3 * 2 * 2, "each ping and answer in the tunnel, seen at both ends' ports"
    for frame in between:
        protocol, ports = frame[23], {int.from_bytes(frame[34:36], "big"), int.from_bytes(frame[36:38], "big")}
        assert protocol == 17 and ports <= {500, 4500}, f"only IKE and ESP in UDP between hosts: {frame[:40].hex()}"
    assert [f for f in between if 4500 in (int.from_bytes(f[34:36], "big"), int.from_bytes(f[36:38], "big"))]
    assert not packets.carrying(frames, MARKER), "no ping payload in plain text on the underlay"
    for _, _, address, _ in containers:
        packed = ipaddress.ip_address(address).packed
        assert not [f for f in frames if packed in f[14:]], f"the container address {address} crossed in plain text"

    for client, server in zip(containers, containers[1:] + containers[:1]):
        rate = iperf3(client, server)
        print(f"iperf3 host {client[0].index} -> host {server[0].index} through IPsec: {rate:.0f} Mbit/s")
        assert rate > 0


def test_a_host_with_the_wrong_key_stays_out_and_the_others_reach_each_other(rig, ipsec_net):
    key = os.urandom(24).hex().encode()
    _, containers = ipsec_net("10.47.0.0/16", [key, key, os.urandom(24).hex().encode()])
    one, two, three = containers
    all_reach([one, two])
    deadline = time.monotonic() + 15  # host 1 (the initiator) tried host 3 meanwhile, and fails on
    while time.monotonic() < deadline:
        for source, target in ((one, three), (two, three), (three, one), (three, two)):
            assert not pings(source[3], target[2]), f"host {source[0].index} reached host {target[0].index}"
    for host in (one[0], two[0]):
        assert not installed_to(host, three[0]), f"host {host.index} has a CHILD_SA with the wrong-key host"
        assert block("10.47.0.0/16", three[0]) not in table_220(host)
        assert not installed_to(three[0], host)
    assert pings(one[3], two[2]) and pings(two[3], one[2]), "hosts 1 and 2 still reach each other"
    for host, peer in ((one[0], three[0]), (three[0], one[0])):  # the refused side and the refusing one
        shown = subprocess.run([*host.enter, sys.executable, "-m", "cnm_shim.cli", "status",
                                "--state-dir", f"{host.root}/state"], capture_output=True, text=True).stdout
        said = shown.partition(f"peer {peer.address}:")[2].partition("; peer ")[0].splitlines()[:1]
        print(f"host {host.index} on host {peer.index}: {said}")
        assert said and "pre-shared keys differ" in said[0], f"status names the authentication failure: {shown}"
        assert key.decode() not in shown


def test_a_host_whose_key_is_corrected_is_reached_without_touching_the_others(rig, ipsec_net):
    """The others' charons gave up on it after its authentication failed, and
    it only answers them: their ipsec agents start the connections again."""
    subnet, key = "10.51.0.0/16", os.urandom(24).hex().encode()
    logs = {host: len(charon_log(host)) for host in rig.hosts}
    net, containers = ipsec_net(subnet, [key, key, os.urandom(24).hex().encode()])
    one, two, three = containers
    for host in (one[0], two[0]):  # host 3 answers both: they initiate, and are refused
        until(f"host {host.index}'s try on host 3 failed",
              lambda h=host: "AUTHENTICATION_FAILED" in charon_log(h)[logs[h]:], 40)
    host = three[0]
    host.docker("rm", "-f", three[1])
    done = host.docker("network", "rm", net)
    assert done.returncode == 0, done.stderr
    ipsec_net.create(host, net, subnet, key)
    all_reach([one, two, ipsec_net.attach(host, net, subnet)], timeout=120)


def test_a_host_that_leaves_takes_its_tunnels_and_routes_from_the_others_and_is_reached_when_back(rig, ipsec_net):
    subnet, key = "10.48.0.0/16", os.urandom(24).hex().encode()
    net, containers = ipsec_net(subnet, [key] * 3)
    one, two, three = containers
    all_reach(containers)
    gone = three[0]  # it answers both others: they initiate (the lower underlay address does)
    for host in (one[0], two[0]):
        assert installed_to(host, gone) and block(subnet, gone) in table_220(host)
    logs = {host: len(charon_log(host)) for host in (one[0], two[0])}
    gone.docker("rm", "-f", three[1])
    done = gone.docker("network", "rm", net)
    assert done.returncode == 0, done.stderr
    assert charon_pid(gone) is None, "its last network took host 3's charon"
    for host in (one[0], two[0]):  # its charon said goodbye (DELETE); else DPD (dpd_delay 10 s) would
        until(f"host {host.index}'s CHILD_SA with the gone host ends", lambda h=host: not installed_to(h, gone), 40)
        until(f"host {host.index}'s route to the gone host's block goes",
              lambda h=host: block(subnet, gone) not in table_220(h), 40)
        print(f"host {host.index} after host 3 left: {charon_of(host).sas()}")
    assert pings(one[3], two[2]) and pings(two[3], one[2]), "hosts 1 and 2 still reach each other"
    assert not pings(one[3], three[2])

    # the others' charons try to reach host 3 again (close_action start), and
    # give up a try after 5 retransmits (165 s); host 3 comes back after that
    for host in (one[0], two[0]):
        until(f"host {host.index} gave up a try on host 3", lambda h=host: "giving up after" in charon_log(h)[logs[h]:],
              240)
    ipsec_net.create(gone, net, subnet, key)
    back = ipsec_net.attach(gone, net, subnet)
    all_reach([one, two, back], timeout=120)


def test_a_host_cut_off_the_underlay_is_dropped_by_dead_peer_detection_and_reached_when_back(rig, ipsec_net):
    """No goodbye this time (a pulled cable, a crashed host): the others find
    it dead by DPD (dpd_delay 10 s, then charon's 5 retransmits, about 3 min
    in all), drop its CHILD_SAs and routes, and reach it again once it is back."""
    subnet = "10.50.0.0/16"
    _, containers = ipsec_net(subnet, [os.urandom(24).hex().encode()] * 3)
    one, two, three = containers
    all_reach(containers)
    cut = three[0]
    port = ["ip", "-n", rig.underlay, "link", "set", f"h{cut.index}"]
    subprocess.run([*port, "down"], check=True)
    try:
        started = time.monotonic()
        for host in (one[0], two[0]):
            until(f"host {host.index} dropped the cut host's CHILD_SA and route",
                  lambda h=host: not installed_to(h, cut) and block(subnet, cut) not in table_220(h), 300)
            print(f"host {host.index}: host 3's CHILD_SA and route gone {time.monotonic() - started:.0f} s after "
                  f"the cut; {charon_of(host).sas().get(ipsecnet.peer_connection(cut.address))}")
        assert pings(one[3], two[2]) and pings(two[3], one[2]), "hosts 1 and 2 still reach each other"
    finally:
        subprocess.run([*port, "up"], check=True)
    all_reach(containers, timeout=120)


def test_a_charon_killed_with_9_comes_back_and_traffic_resumes(rig, ipsec_net):
    """The ipsec agent `cnm-shim serve` runs starts it again with its tunnels."""
    _, containers = ipsec_net("10.49.0.0/16", [os.urandom(24).hex().encode()] * 3)
    one, two, three = containers
    all_reach(containers)
    victim = two[0]  # it initiates towards host 3 and answers host 1
    old = charon_pid(victim)
    os.kill(old, 9)
    killed = time.monotonic()
    until("host 2's charon runs again", lambda: charon_pid(victim) not in (None, old), 30)
    for source, target in ((one, two), (two, one), (two, three), (three, two)):
        until(f"host {source[0].index} -> host {target[0].index} again", lambda s=source, t=target: pings(s[3], t[2]),
              90)
    print(f"after kill -9 of host 2's charon, traffic through it again within {time.monotonic() - killed:.0f} s")
    assert pings(one[3], three[2]), "hosts 1 and 3 kept reaching each other"
