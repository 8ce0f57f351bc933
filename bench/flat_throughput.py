"""TCP throughput from a container to a router namespace over rancher-flat,
against Docker's built-in macvlan driver on the same uplink, same run,
interleaved. rancher-flat is measured as built (its fast path on) and with
`-o fast_path=false` (every frame through the bridge and br_netfilter). The
router namespace and the uplink veth are made here; nothing leaves the machine.

    python bench/flat_throughput.py [--rounds 3] [--seconds 5] [--congestion cubic]

--congestion picks iperf3's TCP congestion control (default: the host's).
With BBR, throughput is bounded by its pacing; with CUBIC, by the CPU the
data path costs, so the two show different things.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import pathlib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from tests.isolation import bench_main_guard  # noqa: E402
from tests.engine.conftest import Shim  # noqa: E402
from tests.engine.dockerd import Dockerd  # noqa: E402

ROUTER_NS, UPLINK = "rcnibenchR", "rcnibenchup"
SUBNET, GATEWAY = "192.168.88.0/24", "192.168.88.1"


def sh(*argv, check=True):
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def make_rig():
    sh("ip", "netns", "add", ROUTER_NS)
    sh("ip", "link", "add", UPLINK, "type", "veth", "peer", "name", "wan0", "netns", ROUTER_NS)
    for argv in (("ip", "link", "add", "sw", "type", "bridge"), ("ip", "link", "set", "wan0", "master", "sw", "up"),
                 ("ip", "addr", "add", f"{GATEWAY}/24", "dev", "sw"), ("ip", "link", "set", "sw", "up")):
        sh("ip", "netns", "exec", ROUTER_NS, *argv)
    sh("ip", "link", "set", UPLINK, "up")
    return subprocess.Popen(["ip", "netns", "exec", ROUTER_NS, "iperf3", "-s"], stdout=subprocess.DEVNULL)


CONFIGS = {  # label -> (driver, extra options)
    "rancher-flat": ("rancher-flat", []),
    "rancher-flat fast_path=false": ("rancher-flat", ["-o", "fast_path=false"]),
    "macvlan": ("macvlan", []),
}


def fast_path_packets() -> int:
    """Packets the flat fast path forwarded (the counters of every netdev
    rancher_flat_* table): the proof of which path carried a run, not the
    configuration's word for it."""
    listing = json.loads(sh("nft", "-j", "list", "ruleset", "netdev").stdout or '{"nftables": []}')["nftables"]
    return sum(expr["counter"]["packets"] for entry in listing if "rule" in entry
               and entry["rule"]["table"].startswith("rancher_flat_")
               for expr in entry["rule"]["expr"] if "counter" in expr)


def measure(dockerd: Dockerd, config: str, seconds: int, congestion: str | None) -> tuple:
    """Gbit/s of one iperf3 run from a fresh container on a fresh network, and
    the packets the fast path forwarded meanwhile."""
    driver, options = CONFIGS[config]
    net, name = f"bench-{driver}", f"bench-{driver}-c"
    created = dockerd.cli("network", "create", "-d", driver, "--subnet", SUBNET, "--gateway", GATEWAY,
                          "-o", f"parent={UPLINK}", *options, net)
    assert created.returncode == 0, created.stderr
    try:
        started = dockerd.cli("run", "-d", "--name", name, "--network", net, dockerd.image, "sleep", "600")
        assert started.returncode == 0, started.stderr
        pid = json.loads(dockerd.cli("inspect", name).stdout)[0]["State"]["Pid"]
        # -O 1: the first second (slow start, ARP) is not counted
        out = sh("nsenter", f"--net=/proc/{pid}/ns/net", "iperf3", "-c", GATEWAY, "-t", str(seconds), "-O", "1",
                 *(["-C", congestion] if congestion else []), "-J").stdout
        return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9, fast_path_packets()
    finally:
        dockerd.cli("rm", "-f", name)
        dockerd.cli("network", "rm", net)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--congestion", help="iperf3's TCP congestion control, e.g. cubic (default: the host's)")
    parser.add_argument("--bridge-nf", choices=["0", "1"], help="set net.bridge.bridge-nf-call-iptables for the run")
    opts = parser.parse_args()
    bench_main_guard(__file__)  # before anything is made
    root = pathlib.Path(tempfile.mkdtemp(prefix="rcnibench."))
    server = make_rig()
    shim = Shim(root)
    dockerd = Dockerd()
    if opts.bridge_nf is not None:  # dockerd's close() puts the machine's value back
        for key in ("iptables", "ip6tables"):
            pathlib.Path(f"/proc/sys/net/bridge/bridge-nf-call-{key}").write_text(opts.bridge_nf)
    print("net.bridge.bridge-nf-call-iptables =", pathlib.Path("/proc/sys/net/bridge/bridge-nf-call-iptables").read_text().strip())
    congestion = opts.congestion or pathlib.Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    print("TCP congestion control:", congestion)
    samples = {config: [] for config in CONFIGS}
    fast_path = {config: [] for config in CONFIGS}
    try:
        for round_number in range(opts.rounds):
            shift = round_number % len(samples)  # each configuration takes each place in turn: no order bias
            for config in list(samples)[shift:] + list(samples)[:shift]:
                gbits, packets = measure(dockerd, config, opts.seconds, opts.congestion)
                samples[config].append(gbits)
                fast_path[config].append(packets)
    finally:
        dockerd.close()
        shim.stop()
        server.kill()
        server.wait()
        sh("ip", "link", "del", UPLINK, check=False)
        sh("ip", "netns", "del", ROUTER_NS, check=False)
    macvlan = statistics.median(samples["macvlan"])
    print(f"{'iperf3 TCP container -> router namespace':42} {'median':>12}  ratio  paired  samples")
    for config, values in samples.items():
        median = statistics.median(values)
        # The VM's speed drifts during a run; a round's three measurements are
        # minutes apart at most, so the median of per-round ratios sees less of it.
        paired = statistics.median(v / m for v, m in zip(values, samples["macvlan"]))
        print(f"{config:42} {median:8.2f} Gbit/s  {median / macvlan:5.2f}  {paired:5.2f}   "
              f"{' '.join(f'{v:.1f}' for v in values)}")
    print("target: rancher-flat / macvlan >= 0.95 (ratio: of the medians; paired: median of per-round ratios)")
    for config, packets in fast_path.items():
        print(f"{config:42} fast path forwarded {statistics.median(packets):,.0f} packets per run (median)")
    if not min(fast_path["rancher-flat"]):
        print("WARNING: a rancher-flat run forwarded nothing on the fast path: that figure is the bridge path's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
