"""The reference meta plug-ins chained after ours, driven by Docker: a
per-container rate limit through `bandwidth` and link attributes through
`tuning` (Debian's containernetworking-plugins in /usr/lib/cni) on a
rancher-bridge network; tuning's sysctls refused, `docker run --sysctl` as
the way that works; `firewall` chained below our isolation."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import ns_exec, ping, run
from tests.conftest import unique
from tests.engine.helpers import address, can_ping, container, network
from tests.engine.test_doctor import doctor
from tests.engine.test_docker_vxlan import other_host  # noqa: F401  (a fixture: a host behind a kernel VTEP)

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(not all(os.access(f"/usr/lib/cni/{p}", os.X_OK) for p in ("bandwidth", "tuning")),
                       reason="containernetworking-plugins missing"),
]
WEB = ("sh", "-c", "mkdir -p /www && hostname > /www/index.html && httpd -f -p 80 -h /www")
needs_iperf3 = pytest.mark.skipif(shutil.which("iperf3") is None, reason="iperf3 missing")

RATE = 20_000_000  # bits per second


def tbf_rates() -> list:
    """The rates (bits/s) of every tbf qdisc on the host's links."""
    return [q["options"]["rate"] * 8 for q in json.loads(run("tc", "-j", "qdisc", "show").stdout)
            if q.get("kind") == "tbf"]


def ifb_links() -> list:
    return [link["ifname"] for link in json.loads(run("ip", "-j", "link", "show", "type", "ifb").stdout)]


def throughput(sandbox: str, target: str, reverse: bool) -> float:
    """Mbit/s iperf3 measures from the host to the container (`reverse`: back)."""
    server = subprocess.Popen(["nsenter", f"--net={sandbox}", "iperf3", "-s", "-1", "-p", "5299"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        argv = ["iperf3", "-c", target, "-p", "5299", "-t", "5", "-O", "1", "-J"] + (["-R"] if reverse else [])
        report = json.loads(subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout)
        return report["end"]["sum_received"]["bits_per_second"] / 1e6
    finally:
        server.kill()
        server.wait()


@needs_iperf3
def test_a_rate_limited_network_shapes_each_containers_traffic_both_ways_and_leaves_nothing(docker):
    net = network(docker, "--subnet", "10.146.0.0/24", "-o", "bandwidth.ingress_rate=20mbit",
                  "-o", "bandwidth.egress_rate=20mbit")
    before = ifb_links()
    a = container(docker, net)
    assert tbf_rates().count(RATE) == 2, "one token bucket on the host veth (to the container), one on its ifb (from it)"
    assert len(ifb_links()) == len(before) + 1
    sandbox = json.loads(docker("inspect", a).stdout)[0]["NetworkSettings"]["SandboxKey"]
    to_container, from_container = (throughput(sandbox, address(docker, a, net), reverse) for reverse in (False, True))
    print(f"iperf3 through bandwidth at 20 Mbit/s: to the container {to_container:.1f}, from it {from_container:.1f}")
    for measured in (to_container, from_container):
        assert 18.0 <= measured <= 22.0, f"{measured:.1f} Mbit/s is not within 10 % of the configured 20 Mbit/s"

    status = subprocess.run([sys.executable, "-m", "cnm_shim.cli", "status", "--state-dir",
                             str(docker.shim.state_dir)], capture_output=True, text=True, check=True).stdout
    assert "chain rancher-bridge -> bandwidth" in status, status
    code, report = doctor(docker)
    assert code == 0, report  # its CHECK runs the bandwidth plug-in's, which compares the qdiscs
    # behind Docker's back, the egress limit lowered to 5 Mbit/s
    run("tc", "qdisc", "replace", "dev", ifb_links()[-1], "root", "tbf", "rate", "5mbit", "burst", "32kb",
        "latency", "25ms")
    code, report = doctor(docker)
    assert code == 1 and [f["problem"] for f in report["findings"]] == ["CHECK: bandwidth: Rate doesn't match"], report

    docker("rm", "-f", a)
    assert tbf_rates().count(RATE) == 0 and ifb_links() == before, "the DEL took the qdiscs and the ifb with it"


# -- tuning ------------------------------------------------------------------------



def sandbox_of(docker, name) -> str:
    return json.loads(docker("inspect", name).stdout)[0]["NetworkSettings"]["SandboxKey"]


def link_inside(docker, name, ifname="eth0") -> dict:
    """The container's interface as `ip link` shows it in the container's namespace."""
    [link] = json.loads(run("nsenter", f"--net={sandbox_of(docker, name)}", "ip", "-j", "-d", "link", "show",
                            ifname).stdout)
    return link


def backups(docker) -> list:
    """The files the tuning plug-in keeps the values it changed in, to restore them at DEL: in the shim's run
    directory (its default, /run/cni/tuning, is the machine's)."""
    directory = docker.shim.root / "run" / "tuning"
    return sorted(os.listdir(directory)) if directory.is_dir() else []


def status_text(docker) -> str:
    return subprocess.run([sys.executable, "-m", "cnm_shim.cli", "status", "--state-dir", str(docker.shim.state_dir)],
                          capture_output=True, text=True, check=True).stdout


def test_tuning_sets_the_containers_link_attributes_which_survive_dockers_move_and_doctor_checks_them(docker):
    net = network(docker, "--subnet", "10.147.0.0/24", "-o", "tuning.mtu=1300", "-o", "tuning.promisc=true",
                  "-o", "tuning.allmulti=true")
    a = container(docker, net)
    [saved] = backups(docker)
    link = link_inside(docker, a)
    assert (link["mtu"], link["promiscuity"]) == (1300, 1), link
    assert "PROMISC" in link["flags"] and "ALLMULTI" in link["flags"], link
    # the container's own view (busybox's `ip link` garbles the flags): IFF_PROMISC 0x100, IFF_ALLMULTI 0x200
    mtu, flags = docker("exec", a, "cat", "/sys/class/net/eth0/mtu", "/sys/class/net/eth0/flags").stdout.split()
    assert int(mtu) == 1300 and int(flags, 16) & 0x300 == 0x300, (mtu, flags)
    plain = container(docker, network(docker, "--subnet", "10.148.0.0/24"))
    assert link_inside(docker, plain)["mtu"] == 1500 and "PROMISC" not in link_inside(docker, plain)["flags"]

    assert "chain rancher-bridge -> tuning" in status_text(docker)
    code, report = doctor(docker)
    assert code == 0, report  # CHECK runs tuning's, which compares the link with its configuration
    run("nsenter", f"--net={sandbox_of(docker, a)}", "ip", "link", "set", "eth0", "mtu", "1400")  # behind Docker's back
    code, report = doctor(docker)
    assert code == 1 and [f["problem"].split(":")[:2] for f in report["findings"]] == [["CHECK", " tuning"]], report

    docker("rm", "-f", a, plain)
    assert backups(docker) == [], "the DEL left the tuning plug-in's saved values behind"
    assert not os.path.exists(os.path.join("/run/cni/tuning", saved)), "nor in the machine's directory"


@pytest.mark.parametrize("option, says", [
    ("tuning.sysctl.net.ipv4.conf.eth0.arp_ignore=1",
     ("the tuning plug-in's sysctls cannot be set on a Docker container's interface",
      "docker run --sysctl net.ipv4.conf.eth0.NAME=VALUE")),
    ("firewall.ingress_policy=closed", ("option firewall.ingress_policy='closed' is not an ingress policy of the "
                                        "reference firewall plug-in; valid values: open, same-bridge",)),
    ("firewall.backend=firewalld", ("of the reference firewall plug-in's settings only -o firewall=true (or false) "
                                    "and -o firewall.ingress_policy are offered",
                                    "backend is iptables (firewalld is not used)")),
])
def test_a_refused_meta_plugin_setting_says_why_in_dockers_output_and_nothing_is_made(docker, option, says):
    bridges_before = ifb_links(), json.loads(run("ip", "-j", "link", "show", "type", "bridge").stdout)
    iptables_before = run("iptables-save").stdout.count("\n-A ")
    name = unique("n")
    done = docker("network", "create", "-d", "rancher-bridge", "--subnet", "10.149.0.0/24", "-o", option, name,
                  check=False)
    assert done.returncode != 0
    for text in says:
        assert text in done.stderr, done.stderr
    assert run("iptables-save").stdout.count("\n-A ") == iptables_before
    assert name not in docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert (ifb_links(), json.loads(run("ip", "-j", "link", "show", "type", "bridge").stdout)) == bridges_before
    assert json.loads(subprocess.run([sys.executable, "-m", "cnm_shim.cli", "status", "--json", "--state-dir",
                                      str(docker.shim.state_dir)], capture_output=True, text=True,
                                     check=True).stdout)["networks"] == []


def test_docker_run_sysctl_sets_a_per_interface_sysctl_inside_the_container_on_our_network(docker):
    """What the refusal above points to: runc writes the container's sysctls
    once Docker has moved our interface in, so eth0's own settings apply."""
    net = network(docker, "--subnet", "10.150.0.0/24", "-o", "tuning.mtu=1300")
    tuned = container(docker, net, "--sysctl", "net.ipv4.conf.eth0.arp_ignore=2",
                      "--sysctl", "net.ipv4.conf.eth0.rp_filter=2")
    plain = container(docker, net)
    sysctl = "cat /proc/sys/net/ipv4/conf/eth0/arp_ignore /proc/sys/net/ipv4/conf/eth0/rp_filter"
    assert docker("exec", tuned, "sh", "-c", sysctl).stdout.split() == ["2", "2"]
    assert docker("exec", plain, "sh", "-c", sysctl).stdout.split() != ["2", "2"]
    assert link_inside(docker, tuned)["mtu"] == 1300


# -- firewall ----------------------------------------------------------------------

def forward_jumps() -> list:
    return [line.split()[-1] for line in run("iptables", "-w", "-S", "FORWARD").stdout.splitlines()[1:]]


@pytest.mark.skipif(not os.access("/usr/lib/cni/firewall", os.X_OK), reason="containernetworking-plugins missing")
def test_firewall_true_chains_the_reference_firewall_below_our_isolation_and_leaves_nothing(docker,
                                                                                           docker_host_firewall):
    had_cni_chains = ":CNI-FORWARD" in run("iptables-save").stdout
    try:
        net = network(docker, "--subnet", "10.151.0.0/24", "-o", "firewall=true")
        other = network(docker, "--subnet", "10.152.0.0/24")
        a, b, c = container(docker, net), container(docker, net), container(docker, other)
        ip_a, ip_b, ip_c = address(docker, a, net), address(docker, b, net), address(docker, c, other)
        assert "chain rancher-bridge -> firewall" in status_text(docker)
        assert can_ping(docker, a, ip_b) and can_ping(docker, b, ip_a), "the firewall's ACCEPTs let them talk"
        assert not can_ping(docker, a, ip_c) and not can_ping(docker, c, ip_a), "our isolation holds above it"
        saved = run("iptables-save").stdout
        for ip in (ip_a, ip_b):
            assert f"-A CNI-FORWARD -s {ip}/32 -j ACCEPT" in saved, saved
        jumps = forward_jumps()
        assert jumps.index("RANCHER-CNI-FORWARD") < jumps.index("CNI-FORWARD"), jumps
        code, report = doctor(docker)
        assert code == 0, report  # the jump order is in line, and the firewall plug-in's CHECK passes

        # the admin's rule in CNI-ADMIN applies to our containers (our ACCEPTs yield to CNI-FORWARD)
        admin_rule = ["CNI-ADMIN", "-s", ip_a, "-d", ip_b, "-j", "DROP"]
        run("iptables", "-w", "-A", *admin_rule)
        assert not can_ping(docker, a, ip_b), "the admin's DROP in CNI-ADMIN is honoured"
        run("iptables", "-w", "-D", *admin_rule)
        assert can_ping(docker, a, ip_b)

        # CNI-FORWARD put back first behind the shim's back: doctor reports it and --repair moves ours above
        cni_jump = ["FORWARD", "-m", "comment", "--comment", "CNI firewall plugin rules", "-j", "CNI-FORWARD"]
        run("iptables", "-w", "-D", *cni_jump)
        run("iptables", "-w", "-I", cni_jump[0], "1", *cni_jump[1:])
        code, report = doctor(docker)
        assert code == 1 and [(f["kind"], f["subject"]) for f in report["findings"]] == \
            [("firewall", "chains and jumps")], report
        assert "RANCHER-CNI-FORWARD" in report["findings"][0]["problem"], report
        doctor(docker, "--repair")
        jumps = forward_jumps()
        assert jumps.index("RANCHER-CNI-FORWARD") < jumps.index("CNI-FORWARD"), jumps
        assert doctor(docker)[0] == 0 and not can_ping(docker, a, ip_c)

        docker("rm", "-f", a, b)
        saved = run("iptables-save").stdout
        assert ip_a not in saved and ip_b not in saved, "the DELs left the containers' rules behind"
        docker("network", "rm", net)
        docker.made["networks"].remove(net)
        assert not can_ping(docker, c, ip_a)
        docker("rm", "-f", c)
        docker("network", "rm", other)
        docker.made["networks"].remove(other)
        saved = run("iptables-save").stdout
        assert "RANCHER-CNI" not in saved and "rcni-" not in saved, saved
        assert ":CNI-ADMIN" in saved, "the plug-in's chains (the admin's) stay, as it intends"
    finally:
        if not had_cni_chains:  # the plug-in's chains, which it leaves for the admin: not the machine's to keep
            run("iptables", "-w", "-D", "FORWARD", "-m", "comment", "--comment", "CNI firewall plugin rules",
                "-j", "CNI-FORWARD", check=False)
            for chain in ("CNI-FORWARD", "CNI-ADMIN"):
                run("iptables", "-w", "-F", chain, check=False)
                run("iptables", "-w", "-X", chain, check=False)


@pytest.mark.skipif(not os.access("/usr/lib/cni/firewall", os.X_OK), reason="containernetworking-plugins missing")
def test_firewall_on_a_vxlan_network_keeps_its_subnet_open_across_the_vtep_and_its_isolation(docker,
                                                                                             docker_host_firewall,
                                                                                             other_host, make_netns):
    """rancher-vxlan with -o firewall=true -o firewall.ingress_policy=same-bridge, the other host's
    workload behind a kernel VTEP (tests/engine/test_docker_vxlan.py's rig), and a client outside the host
    behind a veth, for a published port (routed through FORWARD, unlike one reached from the host itself)."""
    had_cni_chains = ":CNI-FORWARD" in run("iptables-save").stdout
    workload = "10.43.200.1"
    client, client_link = make_netns(), unique("cl")
    run("ip", "link", "add", client_link, "type", "veth", "peer", "name", "eth0", "netns", client)
    run("ip", "addr", "add", "10.127.50.1/24", "dev", client_link)
    run("ip", "link", "set", client_link, "up")
    ns_exec(client, "ip", "addr", "add", "10.127.50.2/24", "dev", "eth0")
    ns_exec(client, "ip", "link", "set", "eth0", "up")
    try:
        net = network(docker, "--subnet", "10.43.0.0/16", "--ip-range", "10.43.1.0/24",
                      "-o", f"vtep_dev={other_host['underlay']}", "-o", "peers=10.98.0.2", "-o", "firewall=true",
                      "-o", "firewall.ingress_policy=same-bridge", driver="rancher-vxlan")
        other = network(docker, "--subnet", "10.153.0.0/24")
        a = container(docker, net, "-p", "18184:80", command=WEB)
        c = container(docker, other)
        ip_a, ip_c = address(docker, a, net), address(docker, c, other)
        assert "chain rancher-vxlan -> firewall" in status_text(docker)
        fetched = ""
        for _ in range(20):  # httpd starting
            fetched = ns_exec(client, "wget", "-q", "-T", "2", "-t", "1", "-O", "-", "http://10.127.50.1:18184/",
                              check=False).stdout
            if fetched:
                break
        assert fetched.strip() == docker("inspect", "-f", "{{.Config.Hostname}}", a).stdout.strip(), \
            "the published port is reached from outside the host"
        assert can_ping(docker, a, workload), "the container reaches the other host's workload over VXLAN"
        assert ping(other_host["workload"], ip_a), "and the workload opens connections to it: the subnet is open"
        assert not can_ping(docker, a, ip_c) and not can_ping(docker, c, ip_a), "our isolation holds above it"
        saved = run("iptables-save").stdout
        assert f"-A CNI-FORWARD -s {ip_a}/32 -j ACCEPT" in saved, saved
        bridges = {line.split(" -o ")[1].split()[0] for line in saved.splitlines()
                   if line.startswith("-A CNI-ISOLATION-STAGE-2 -o rv-")}
        assert len(bridges) == 1, saved  # the network's bridge, kept apart by same-bridge
        jumps = forward_jumps()
        assert jumps.index("RANCHER-CNI-FORWARD") < jumps.index("CNI-FORWARD"), jumps
        code, report = doctor(docker)
        assert code == 0, report

        admin_rule = ["CNI-ADMIN", "-s", ip_a, "-d", workload, "-j", "DROP"]
        run("iptables", "-w", "-A", *admin_rule)
        assert not can_ping(docker, a, workload), "the admin's DROP in CNI-ADMIN applies to the VXLAN container"
        run("iptables", "-w", "-D", *admin_rule)
        assert can_ping(docker, a, workload)

        docker("rm", "-f", a, c)
        docker("network", "rm", net, other)
        docker.made["networks"].remove(net)
        docker.made["networks"].remove(other)
        saved = run("iptables-save").stdout
        assert "RANCHER-CNI" not in saved and "rcni-" not in saved, saved
        assert ip_a not in saved and not [b for b in bridges if b in saved], "the bridge's same-bridge rules went"
    finally:
        run("ip", "link", "del", client_link, check=False)
        if not had_cni_chains:
            run("iptables", "-w", "-D", "FORWARD", "-m", "comment", "--comment", "CNI firewall plugin rules",
                "-j", "CNI-FORWARD", check=False)
            for chain in ("CNI-FORWARD", "CNI-ADMIN"):
                run("iptables", "-w", "-F", chain, check=False)
                run("iptables", "-w", "-X", chain, check=False)
