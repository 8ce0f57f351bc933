"""TCP throughput between containers on two hosts over rancher-ipsec, against
a strongSwan tunnel made by hand between another pair of host namespaces of
the same kind (bare, then with conntrack on), same run, interleaved; and, for
scale, rancher-vxlan between a third pair. Hosts and containers are
namespaces made here; nothing leaves the machine.

    python bench/ipsec_throughput.py [--rounds 3] [--seconds 5] [--no-vxlan]

Both IPsec sides run the same charon binary with the same strongswan.conf
(ipsec_tunnels.strongswan_conf: the same data path, probed as the plug-in
probes it, and the same plug-in list), the same PSK, the same IKE and ESP
proposals, ESP in UDP 4500 (encap=yes), a 1500-byte underlay veth, and
containers with MTU 1400 (kernel-libipsec's ipsec0 takes no more; rancher-ipsec
gives its containers that). The reference has no rancher plug-in code in its
data path: each container is a veth routed by its host (no bridge, no proxy
ARP, no firewall rules), and the tunnel is one connection loaded by hand
(ipsec_tunnels.Charon, the thin VICI client, with a Tunnel: this host's /24 to
the other's). Two charons cannot share a host namespace (each binds UDP
500/4500 and makes ipsec0), hence a second pair of hosts.

The reference runs twice a round: on bare hosts (no netfilter rule at all:
the strict reference, the one the target is against), and with connection
tracking switched on in its hosts, which is what rancher-ipsec's bridge rules
do (and Docker's, on any Docker host): the second ratio shows how much of the
difference is the host firewall's conntrack rather than our plumbing.

A third pair of hosts carries the same hand-made tunnel to containers on a
plain Linux bridge (a veth port each, the gateway address on the bridge, no
firewall rule), as Docker's bridge driver or the CNI bridge plug-in attach a
container: the plumbing rancher-ipsec has as well, since its network is a
local bridge like the other backends'. Its ratio is what the plug-in and its
rules cost over a tunnel and a bridge made by hand; the bare reference's adds
the bridge's own cost.
"""

import argparse
import contextlib
import json
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from tests.isolation import bench_main_guard  # noqa: E402

from cni_backend import install, ipsec_tunnels  # noqa: E402

import vxlan_throughput as vxlan  # noqa: E402  (iperf, and the rancher-vxlan pair, built as its own benchmark builds it)

OURS_HOSTS = ("rcnibipsHA", "rcnibipsHB")
OURS = ("rcnibipsCA", "rcnibipsCB")
REF_HOSTS = ("rcnibipsRA", "rcnibipsRB")
REF = ("rcnibipsXA", "rcnibipsXB")
BRIDGED_HOSTS = ("rcnibipsBA", "rcnibipsBB")
BRIDGED = ("rcnibipsYA", "rcnibipsYB")
OURS_UNDERLAY = ("10.98.0.1", "10.98.0.2")
REF_UNDERLAY = ("10.98.1.1", "10.98.1.2")
BRIDGED_UNDERLAY = ("10.98.2.1", "10.98.2.2")
REF_BLOCKS = ("10.45.1.0/24", "10.45.2.0/24")
OURS_SIDE = "rancher-ipsec"
REF_SIDE = "hand-made tunnel"
REF_CT_SIDE = "hand-made tunnel, conntrack on"
BRIDGED_SIDE = "hand-made tunnel, bridged"
MTU = 1400  # ipsecnet.LIBIPSEC_TUN_MTU: what ipsec0 takes, and what ours gives its containers


def sh(*argv, check=True):
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def ns(netns, *argv, check=True):
    return sh("ip", "netns", "exec", netns, *argv, check=check)


def write_psk(path: pathlib.Path) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, os.urandom(24).hex().encode())
    os.close(fd)
    return str(path)


def underlay(hosts: tuple, addresses: tuple) -> None:
    ns(hosts[0], "ip", "link", "add", "underlay", "type", "veth", "peer", "name", "underlay", "netns", hosts[1])
    for host, address in zip(hosts, addresses):
        ns(host, "ip", "addr", "add", f"{address}/24", "dev", "underlay")
        ns(host, "ip", "link", "set", "underlay", "mtu", "1500", "up")


def build_ours(root: pathlib.Path, psk: str) -> str:
    """rancher-ipsec on both hosts, run as a runtime runs it; host B's container address."""
    install.write_executables(str(root / "bin"))
    addresses = []
    for n in (1, 0):  # B (the responder, the higher address) first: A finds it ready
        state = root / f"ours{n}"
        state.mkdir()
        config = {"cniVersion": "1.0.0", "name": "benchipsec", "type": "rancher-ipsec", "bridge": "ipsbench",
                  "isGateway": True, "peers": [OURS_UNDERLAY[1 - n]], "pskFile": psk, "stateDir": str(state),
                  "ipam": {"type": "rancher-ipam", "dataDir": str(state),
                           "ranges": [[{"subnet": "10.44.0.0/16", "gateway": f"10.44.{n + 1}.1",
                                        "rangeStart": f"10.44.{n + 1}.2", "rangeEnd": f"10.44.{n + 1}.254"}]]}}
        env = dict(os.environ, CNI_COMMAND="ADD", CNI_CONTAINERID=f"benchipsec{n}",
                   CNI_NETNS=f"/var/run/netns/{OURS[n]}", CNI_IFNAME="eth0", CNI_PATH=str(root / "bin"),
                   RANCHER_CNI_SOCKET=str(root / "none"))
        done = subprocess.run(["ip", "netns", "exec", OURS_HOSTS[n], str(root / "bin" / "rancher-ipsec")],
                              input=json.dumps(config).encode(), env=env, capture_output=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"rancher-ipsec ADD on host {n} failed: {done.stdout.decode()[-800:]}")
        addresses.insert(0, json.loads(done.stdout)["ips"][0]["address"].split("/")[0])
    return addresses[1]


def build_reference(root: pathlib.Path, psk: str, datapath: str, charons: list, bridged: bool = False) -> None:
    """Two charons started and loaded by hand, each host's container routed
    into the tunnel: from a veth of the host's own, or with `bridged` from a
    port of a plain bridge. Each charon goes into `charons` before it starts,
    so that a failure half way still stops it."""
    hosts, containers, addresses = (BRIDGED_HOSTS, BRIDGED, BRIDGED_UNDERLAY) if bridged else (REF_HOSTS, REF, REF_UNDERLAY)
    mine = []
    for n, host in enumerate(hosts):
        ns(host, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        gateway, container = REF_BLOCKS[n].replace(".0/24", ".1"), REF_BLOCKS[n].replace(".0/24", ".2")
        # the host's address in its block (charon's source) on the veth itself, or on the bridge
        ns(host, "ip", "link", "add", "rv", "type", "veth", "peer", "name", "eth0", "netns", containers[n])
        if bridged:
            ns(host, "ip", "link", "add", "refbr", "type", "bridge")
            ns(host, "ip", "link", "set", "refbr", "mtu", str(MTU), "up")
            ns(host, "ip", "link", "set", "rv", "master", "refbr")
        ns(host, "ip", "addr", "add", f"{gateway}/24", "dev", "refbr" if bridged else "rv")
        ns(host, "ip", "link", "set", "rv", "mtu", str(MTU), "up")
        ns(containers[n], "ip", "addr", "add", f"{container}/24", "dev", "eth0")
        ns(containers[n], "ip", "link", "set", "eth0", "mtu", str(MTU), "up")
        ns(containers[n], "ip", "route", "add", "default", "via", gateway)
        charon = ipsec_tunnels.Charon(str(root / f"{'bridged' if bridged else 'ref'}{n}"), datapath=datapath, netns=host)
        charons.append(charon)
        mine.append(charon)
        charon.start()
    for n in (1, 0):  # the responder first
        mine[n].load(ipsec_tunnels.Tunnel.from_config(
            datapath=datapath, name="ref", local_address=addresses[n], remote_address=addresses[1 - n],
            local_subnets=[REF_BLOCKS[n]], remote_subnets=[REF_BLOCKS[1 - n]], psk_file=psk))


def conntrack(hosts: tuple, on: bool) -> None:
    """Connection tracking on or off in the hosts' namespaces: one table whose
    rules only accept (the policy is accept anyway), but whose `ct state`
    turns tracking on for every packet, as rancher-ipsec's bridge rules do and
    as Docker's do on any Docker host."""
    for host in hosts:
        ns(host, "nft", "delete", "table", "ip", "rcnibenchct", check=False)
        if on:
            subprocess.run(["ip", "netns", "exec", host, "nft", "-f", "-"], check=True, text=True, input=(
                "table ip rcnibenchct {\n"
                "  chain ctforward { type filter hook forward priority filter; ct state established,related accept; }\n"
                "  chain ctinput { type filter hook input priority filter; ct state established,related accept; }\n"
                "}\n"))


def child_sa(vici_socket: str) -> str:
    """The CHILD_SA line swanctl prints: mode, encapsulation and algorithms."""
    listed = sh("swanctl", "--list-sas", "--uri", f"unix://{vici_socket}").stdout
    return next((line.split(",", 2)[2].strip() for line in listed.splitlines() if "INSTALLED" in line), "none")


def wait_child(vici_socket: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while (line := child_sa(vici_socket)) == "none":
        if time.monotonic() > deadline:
            raise RuntimeError(f"no CHILD_SA installed at {vici_socket}")
        time.sleep(0.2)
    return line


def df_ping(client_ns: str, server_ip: str) -> bool:
    """A full-size packet (MTU bytes, DF set) crosses."""
    return ns(client_ns, "ping", "-c", "1", "-W", "3", "-M", "do", "-s", str(MTU - 28), server_ip,
              check=False).returncode == 0


def _stop_pid(pid_file: pathlib.Path) -> None:
    """The plug-in's charon (it outlives the plug-in, in its own session)."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file.read_text())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if not f.read().split(b"\0")[0].endswith(b"charon"):
                return
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)  # raises once it has gone
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


def cleanup(root: pathlib.Path, charons: list, namespaces: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not leave half of it
    for charon in charons:
        with contextlib.suppress(Exception):
            charon.stop()
    for n in range(2):
        _stop_pid(root / f"ours{n}" / "ipsec" / "charon" / "charon.owner")
    for name in namespaces:  # links, routes, rules and the firewall go with them
        sh("ip", "netns", "del", name, check=False)
    shutil.rmtree(root, ignore_errors=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _terminated(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--no-vxlan", action="store_true", help="leave out the rancher-vxlan figure")
    opts = parser.parse_args()
    bench_main_guard(__file__)  # before anything is made
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminated)
    if not os.access(ipsec_tunnels.CHARON, os.X_OK):
        raise SystemExit(f"strongSwan's charon is not installed at {ipsec_tunnels.CHARON} (make deps)")

    root = pathlib.Path(tempfile.mkdtemp(prefix="rcnibench-ipsec."))
    namespaces = OURS_HOSTS + OURS + REF_HOSTS + REF + BRIDGED_HOSTS + BRIDGED
    if not opts.no_vxlan:
        namespaces += vxlan.HOSTS + vxlan.OURS + vxlan.HANDMADE
    charons = []
    samples = {OURS_SIDE: [], REF_SIDE: [], REF_CT_SIDE: [], BRIDGED_SIDE: []}
    try:
        for name in OURS_HOSTS + OURS + REF_HOSTS + REF + BRIDGED_HOSTS + BRIDGED:
            sh("ip", "netns", "add", name)
        underlay(OURS_HOSTS, OURS_UNDERLAY)
        underlay(REF_HOSTS, REF_UNDERLAY)
        underlay(BRIDGED_HOSTS, BRIDGED_UNDERLAY)
        psk = write_psk(root / "psk")
        datapath = ipsec_tunnels.probe_datapath()
        ours_b = build_ours(root, psk)
        build_reference(root, psk, datapath, charons)
        build_reference(root, psk, datapath, charons, bridged=True)
        sas = {OURS_SIDE: wait_child(str(root / "ours0" / "ipsec" / "charon" / "charon.vici")),
               REF_SIDE: wait_child(charons[0].vici_socket), BRIDGED_SIDE: wait_child(charons[2].vici_socket)}
        ref_b = REF_BLOCKS[1].replace(".0/24", ".2")
        runs = {OURS_SIDE: (OURS[0], OURS[1], ours_b), REF_SIDE: (REF[0], REF[1], ref_b),
                REF_CT_SIDE: (REF[0], REF[1], ref_b), BRIDGED_SIDE: (BRIDGED[0], BRIDGED[1], ref_b)}
        if not opts.no_vxlan:
            samples["rancher-vxlan (for scale)"] = []
            (root / "vxlan").mkdir()
            runs["rancher-vxlan (for scale)"] = (vxlan.OURS[0], vxlan.OURS[1], vxlan.build(root / "vxlan")[1])
        full = {name: df_ping(client, ip) for name, (client, _, ip) in runs.items() if name in sas}
        for round_number in range(opts.rounds):
            order = list(runs) if round_number % 2 == 0 else list(reversed(runs))  # no order bias
            for name in order:
                conntrack(REF_HOSTS, name == REF_CT_SIDE)
                samples[name].append(vxlan.iperf(*runs[name], opts.seconds) * 1000)  # Mbit/s
    finally:
        cleanup(root, charons, namespaces)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    print(f"data path: {datapath}; CHILD_SAs:")
    for name, line in sas.items():
        print(f"  {name:30} {line}")
    print(f"{'iperf3 TCP between containers on two hosts':44} {'median':>12}   samples")
    for name, value in medians.items():
        print(f"{name:44} {value:7.1f} Mbit/s   " + " ".join(f"{v:.0f}" for v in samples[name]))
    for reference, note in ((REF_SIDE, "   (target >= 0.95)"), (REF_CT_SIDE, ""), (BRIDGED_SIDE, "")):
        ratio = medians[OURS_SIDE] / medians[reference]
        # the sides of a round ran seconds apart: their ratio cancels the machine's slower swings
        paired = [o / r for o, r in zip(samples[OURS_SIDE], samples[reference])]
        print(f"ratio rancher-ipsec / {reference}: {ratio:.2f}{note}; median of the rounds' own ratios "
              f"{statistics.median(paired):.2f} (" + " ".join(f"{p:.2f}" for p in paired) + ")")
    for name, crossed in full.items():
        print(f"{name}: a {MTU}-byte packet with DF set crosses:", "yes" if crossed else "NO")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # everything made is gone by now (main's finally)
        sys.exit("interrupted; the namespaces, charons and files it made are removed")
