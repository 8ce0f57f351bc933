"""TCP throughput between containers on two hosts over rancher-vxlan, against
a hand-made kernel VXLAN between the same two host namespaces (the limit for
any VXLAN) and against the underlay itself, same run, interleaved. Hosts and
containers are namespaces made here; nothing leaves the machine.

    python bench/vxlan_throughput.py [--rounds 3] [--seconds 5]
"""

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from tests.isolation import bench_main_guard  # noqa: E402

from cni_backend import install  # noqa: E402

HOSTS = ("rcnibenchHA", "rcnibenchHB")
OURS = ("rcnibenchCA", "rcnibenchCB")
HANDMADE = ("rcnibenchXA", "rcnibenchXB")


def sh(*argv, check=True):
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def ns(netns, *argv, check=True):
    return sh("ip", "netns", "exec", netns, *argv, check=check)


def build(root: pathlib.Path) -> list:
    for name in HOSTS + OURS + HANDMADE:
        sh("ip", "netns", "add", name)
    ns(HOSTS[0], "ip", "link", "add", "underlay", "type", "veth", "peer", "name", "underlay", "netns", HOSTS[1])
    for n, host in enumerate(HOSTS):
        ns(host, "ip", "addr", "add", f"10.97.0.{n + 1}/24", "dev", "underlay")
        ns(host, "ip", "link", "set", "underlay", "up")
        # the hand-made reference: a kernel VXLAN on another VNI and port, same underlay
        ns(host, "ip", "link", "add", "vx99", "type", "vxlan", "id", "99", "local", f"10.97.0.{n + 1}",
           "remote", f"10.97.0.{2 - n}", "dstport", "4790", "dev", "underlay")
        ns(host, "ip", "link", "add", "hbr", "type", "bridge")
        ns(host, "ip", "link", "set", "vx99", "master", "hbr", "up")
        ns(host, "ip", "link", "set", "hbr", "up")
        ns(host, "ip", "link", "add", "hv", "type", "veth", "peer", "name", "eth0", "netns", HANDMADE[n])
        ns(host, "ip", "link", "set", "hv", "master", "hbr", "up")
        ns(HANDMADE[n], "ip", "addr", "add", f"10.55.0.{n + 1}/24", "dev", "eth0")
        ns(HANDMADE[n], "ip", "link", "set", "eth0", "mtu", "1450", "up")
    install.write_executables(str(root / "bin"))
    results = []
    for n, host in enumerate(HOSTS):
        config = {"cniVersion": "1.0.0", "name": "bench", "type": "rancher-vxlan", "vni": 1042, "vtepDev": "underlay",
                  "peers": [f"10.97.0.{2 - n}"], "stateDir": str(root / host),
                  "ipam": {"type": "rancher-ipam", "dataDir": str(root / host),
                           "ranges": [[{"subnet": "10.42.0.0/16", "rangeStart": f"10.42.{n + 1}.2",
                                        "rangeEnd": f"10.42.{n + 1}.254"}]]}}
        env = dict(os.environ, CNI_COMMAND="ADD", CNI_CONTAINERID=f"bench{n}", CNI_NETNS=f"/var/run/netns/{OURS[n]}",
                   CNI_IFNAME="eth0", CNI_PATH=str(root / "bin"), RANCHER_CNI_SOCKET=str(root / "none"))
        done = subprocess.run(["ip", "netns", "exec", host, str(root / "bin" / "rancher-vxlan")],
                              input=json.dumps(config).encode(), env=env, capture_output=True)
        assert done.returncode == 0, done.stdout
        results.append(json.loads(done.stdout)["ips"][0]["address"].split("/")[0])
    return results


def iperf(client_ns: str, server_ns: str, server_ip: str, seconds: int) -> float:
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1"], stdout=subprocess.DEVNULL)
    try:
        for _ in range(50):  # until the server listens
            done = ns(client_ns, "iperf3", "-c", server_ip, "-t", str(seconds), "-O", "1", "-J", check=False)
            report = json.loads(done.stdout or "{}")
            if done.returncode == 0 and "error" not in report:
                return report["end"]["sum_received"]["bits_per_second"] / 1e9
            time.sleep(0.1)
        raise RuntimeError(done.stdout[-500:])
    finally:
        server.kill()
        server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    opts = parser.parse_args()
    bench_main_guard(__file__)  # before anything is made
    root = pathlib.Path(tempfile.mkdtemp(prefix="rcnibench."))
    samples = {"rancher-vxlan": [], "hand-made kernel VXLAN": [], "underlay (no VXLAN)": []}
    try:
        ours_a, ours_b = build(root)
        runs = {"rancher-vxlan": (OURS[0], OURS[1], ours_b),
                "hand-made kernel VXLAN": (HANDMADE[0], HANDMADE[1], "10.55.0.2"),
                "underlay (no VXLAN)": (HOSTS[0], HOSTS[1], "10.97.0.2")}
        for round_number in range(opts.rounds):
            order = list(runs) if round_number % 2 == 0 else list(reversed(runs))  # no order bias
            for name in order:
                samples[name].append(iperf(*runs[name], opts.seconds))
        fragments = ns(OURS[0], "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1422", ours_b, check=False)
    finally:
        for name in HOSTS + OURS + HANDMADE:
            sh("ip", "netns", "del", name, check=False)
        shutil.rmtree(root, ignore_errors=True)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    print(f"{'iperf3 TCP between containers on two hosts':44} {'median':>12}")
    for name, value in medians.items():
        print(f"{name:44} {value:8.2f} Gbit/s")
    print(f"{'ratio rancher-vxlan / hand-made VXLAN':44} {medians['rancher-vxlan'] / medians['hand-made kernel VXLAN']:8.2f}"
          "   (target >= 0.95)")
    print(f"{'ratio rancher-vxlan / underlay':44} {medians['rancher-vxlan'] / medians['underlay (no VXLAN)']:8.2f}")
    print("full-size packet (1450 bytes, DF set) crosses without fragmentation:",
          "yes" if fragments.returncode == 0 else "NO")
    return 0


if __name__ == "__main__":
    sys.exit(main())
