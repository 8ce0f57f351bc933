"""A/B of variants of rancher-ipsec's hosts against the hand-made strongSwan
tunnel, all in one run: the three pairs of hosts are built once, exactly as
bench/ipsec_throughput.py builds them; then, round after round, the bare
reference, the bridged reference (its containers on a plain bridge) and each
variant of ours carry an iperf3 transfer (the order
reversed every other round). A variant is applied to ours' hosts just before
its transfer and undone after it. With --perf, `perf record -a` runs around
each transfer and the report gives the CPU samples of charon, iperf3 and
ksoftirqd per MB carried (robust against other load, which steals CPU but
not samples of these), and the share of those in netfilter, conntrack and
the bridge.

    python bench/ipsec_ab.py [--rounds 4] [--seconds 5] [--perf] [VARIANT,...]

Variants (diagnostics only: some of them lose behaviour the plug-in keeps):
    current          ours as the plug-in makes it
    previous-rules   the guard's multiport rules and the ctstate ACCEPT before
                     the subnet's (the rules before session 8's change)
    notrack          + NOTRACK for ESP in UDP to/from the peer and for the
                     containers' traffic between the local and remote blocks
    esp-notrack      + NOTRACK for ESP in UDP to/from the peer only
    no-netfilter     + NOTRACK for everything and br_netfilter off
"""

import argparse
import collections
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from tests.isolation import bench_main_guard  # noqa: E402

from cni_backend import ipsec_tunnels  # noqa: E402

import ipsec_throughput as bench  # noqa: E402

HOSTS = bench.OURS_HOSTS
SUBNET = "10.44.0.0/16"  # bench.build_ours's subnet; host n has block 10.44.<n+1>.0/24
_NETFILTER = re.compile(r"^(nf_|nft_|__nf|br_|__br|ipt_|xt_|hash_conntrack|ipv4_conntrack|ip_sabotage)")
_WORKERS = re.compile(r"^(charon|iperf3|ksoftirqd/\d+)$")


def _nft_table(host: str, script: str | None) -> None:
    bench.ns(host, "nft", "delete", "table", "inet", "rcnibenchab", check=False)
    if script:
        subprocess.run(["ip", "netns", "exec", host, "nft", "-f", "-"], check=True, text=True,
                       input="table inet rcnibenchab {\n" + script + "}\n")


def _notrack(on: bool, inner: bool) -> None:
    for n, host in enumerate(HOSTS):
        peer, block = bench.OURS_UNDERLAY[1 - n], f"10.44.{n + 1}.0/24"
        pre = [f"ip saddr {peer} udp dport 4500 notrack"]
        if inner:
            pre += [f'iifname "ipsec0" ip saddr {SUBNET} ip daddr {block} notrack',
                    f'iifname "ipsbench" ip saddr {block} ip daddr {SUBNET} ip daddr != {block} notrack']
        _nft_table(host, on and (
            " chain pre { type filter hook prerouting priority raw;\n" + "".join(f"  {r}\n" for r in pre) + " }\n"
            f" chain out {{ type filter hook output priority raw;\n  ip daddr {peer} udp dport 4500 notrack\n }}\n"))


def _no_netfilter(on: bool) -> None:
    for host in HOSTS:
        _nft_table(host, on and (" chain pre { type filter hook prerouting priority raw; notrack; }\n"
                                 " chain out { type filter hook output priority raw; notrack; }\n"))
        bench.ns(host, "sysctl", "-qw", f"net.bridge.bridge-nf-call-iptables={0 if on else 1}")


_saved = {}


def _previous_rules(on: bool) -> None:
    """The filter table as the code before session 8 made it."""
    for host in HOSTS:
        if not on:
            subprocess.run(["ip", "netns", "exec", host, "iptables-restore"], input=_saved.pop(host),
                           text=True, check=True)
            continue
        saved = _saved[host] = bench.ns(host, "iptables-save", "-t", "filter").stdout
        lines = saved.splitlines()
        guard = [line for line in lines if line.startswith("-A INPUT ") and line.endswith("-ipsec -j ACCEPT")
                 or line.startswith("-A INPUT ") and line.endswith("-ipsec -j DROP")]
        note = guard[0].split("--comment ")[1].split()[0]
        peers = sorted({m.group(1) for line in guard if (m := re.search(r"-s (\S+)", line))})
        match = f"-p udp -m multiport --dports 500,4500 -m comment --comment {note}"
        old_guard = [f"-A INPUT -s {p} {match} -j ACCEPT" for p in peers] + [f"-A INPUT {match} -j DROP"]
        forward = [line for line in lines if line.startswith("-A RANCHER-CNI-FORWARD ")]
        subnet = [line for line in forward if f"-s {SUBNET} " in line]
        out = []
        for line in lines:
            if line in guard:
                out += old_guard if line == guard[0] else []
            elif line in forward:
                out += [r for r in forward if r not in subnet] + subnet if line == forward[0] else []
            else:
                out.append(line)
        subprocess.run(["ip", "netns", "exec", host, "iptables-restore"], input="\n".join(out) + "\n",
                       text=True, check=True)


VARIANTS = {
    "current": lambda on: None,
    "previous-rules": _previous_rules,
    "notrack": lambda on: _notrack(on, inner=True),
    "esp-notrack": lambda on: _notrack(on, inner=False),
    "no-netfilter": _no_netfilter,
}


def _perf_costs(data: str, mbytes: float) -> tuple:
    """(samples of the transfer's workers per MB, % of them in netfilter and the bridge)."""
    lines = subprocess.run(["perf", "script", "-i", data, "-F", "comm,ip,sym"], capture_output=True,
                           text=True).stdout.splitlines()
    work = hooked = 0
    for line in lines:
        parts = line.split()
        if parts and _WORKERS.match(parts[0]):
            work += 1
            hooked += bool(len(parts) > 2 and _NETFILTER.match(parts[-1]))
    return work / mbytes, 100.0 * hooked / max(work, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--perf", action="store_true", help="perf record each transfer: CPU per MB")
    parser.add_argument("variants", nargs="?", default="current,previous-rules")
    opts = parser.parse_args()
    wanted = opts.variants.split(",")
    unknown = [v for v in wanted if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; valid: {', '.join(VARIANTS)}")
    bench_main_guard(__file__)
    root = pathlib.Path(tempfile.mkdtemp(prefix="rcnibench-ipsecab."))
    namespaces = bench.OURS_HOSTS + bench.OURS + bench.REF_HOSTS + bench.REF + bench.BRIDGED_HOSTS + bench.BRIDGED
    references = ["reference", "bridged reference"]
    charons, samples, costs = [], {name: [] for name in references + wanted}, collections.defaultdict(list)
    try:
        for name in namespaces:
            bench.sh("ip", "netns", "add", name)
        bench.underlay(bench.OURS_HOSTS, bench.OURS_UNDERLAY)
        bench.underlay(bench.REF_HOSTS, bench.REF_UNDERLAY)
        bench.underlay(bench.BRIDGED_HOSTS, bench.BRIDGED_UNDERLAY)
        psk = bench.write_psk(root / "psk")
        datapath = ipsec_tunnels.probe_datapath()
        ours_b = bench.build_ours(root, psk)
        bench.build_reference(root, psk, datapath, charons)
        bench.build_reference(root, psk, datapath, charons, bridged=True)
        bench.wait_child(str(root / "ours0" / "ipsec" / "charon" / "charon.vici"))
        bench.wait_child(charons[0].vici_socket)
        bench.wait_child(charons[2].vici_socket)
        remote = bench.REF_BLOCKS[1].replace(".0/24", ".2")
        runs = {"reference": (bench.REF[0], bench.REF[1], remote),
                "bridged reference": (bench.BRIDGED[0], bench.BRIDGED[1], remote)}
        runs.update({name: (bench.OURS[0], bench.OURS[1], ours_b) for name in wanted})
        for client, _, server_ip in runs.values():
            bench.df_ping(client, server_ip)  # the neighbours resolved before the first sample
        for number in range(opts.rounds):
            order = list(runs) if number % 2 == 0 else list(reversed(runs))
            for name in order:
                variant = VARIANTS.get(name, lambda on: None)
                variant(True)
                try:
                    perf = None
                    if opts.perf:
                        perf = subprocess.Popen(["perf", "record", "-q", "-a", "-F", "2000", "-o", str(root / "perf.data"),
                                                 "--", "sleep", str(opts.seconds + 1)],
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    rate = bench.vxlan.iperf(*runs[name], opts.seconds) * 1000
                    if perf:
                        perf.wait()
                        costs[name].append(_perf_costs(str(root / "perf.data"), rate * (opts.seconds - 1) / 8))
                finally:
                    variant(False)
                samples[name].append(rate)
            print(f"round {number}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in samples.items()), flush=True)
    finally:
        bench.cleanup(root, charons, namespaces)
    print(f"{'variant':18} {'Mbit/s':>8} {'ratio':>6}   samples (ratio: median of the rounds' own)")
    for name, values in samples.items():
        ratio = statistics.median(v / r for v, r in zip(values, samples["reference"]))
        print(f"{name:18} {statistics.median(values):8.1f} {ratio:6.2f}   " + " ".join(f"{v:.0f}" for v in values))
    for name, values in costs.items():
        print(f"{name:18} CPU samples/MB {statistics.median(c for c, _ in values):6.1f}   netfilter+bridge "
              f"{statistics.median(s for _, s in values):.1f} %   ("
              + " ".join(f"{c:.0f}/{s:.1f}%" for c, s in values) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
