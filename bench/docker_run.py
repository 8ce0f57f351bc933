"""`docker run --rm --network N busybox true`: ours against Docker's own drivers, in one run.

    tests/sandbox.sh .venv/bin/python bench/docker_run.py [--pairs 30] [--warmups 2] [--json FILE]

A private engine and shim (tests/engine: Dockerd + Shim, as the engine tests
start them) in the tests' sandbox, never beside a live plug-in. For each row,
after the warm-ups, `pairs` interleaved pairs (ours first in even pairs,
the reference first in odd ones), and per side p50 / p95 of the wall time of
the whole `docker run` and the ratio of the p50s (with the min and max of the
per-pair ratios), and the median of the per-pair ratios with its 95 %
bootstrap interval: how far the noise of this run leaves the ratio open:

  rancher-bridge, Docker's IPAM      vs  Docker's bridge driver
  rancher-bridge, our IPAM           vs  Docker's bridge driver
  rancher-flat on a parent           vs  macvlan (bridge mode) on a parent
  rancher-vxlan                      vs  Docker's bridge driver
  --network none                         for scale: what the network costs is the rest

The flat and macvlan parents are two veths of the same kind, each with its
peer in one namespace the bench made (a router with the subnet's gateway): a
link that is a port of rancher-flat's bridge cannot carry a macvlan at the
same time (the kernel gives a device one receive handler), and the host's
NIC is never touched. The vxlan underlay is a veth to another namespace.
It removes everything it made. No assertion on timing: it reports.
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.isolation import bench_main_guard  # noqa: E402

PREFIX = "rdrun"
ROUTER_NS = f"{PREFIX}-router"
UNDERLAY_NS = f"{PREFIX}-peer"
FLAT_SUBNET, FLAT_GW = "192.168.88.0/24", "192.168.88.1"
MACVLAN_SUBNET, MACVLAN_GW = "192.168.89.0/24", "192.168.89.1"


def sh(*argv, check=True):
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def pct(samples: list, q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def median_interval(ratios: list, level: float = 0.95, resamples: int = 4000) -> tuple:
    """The median of the per-pair ratios and its percentile bootstrap
    interval at `level`: the pairs resampled with replacement, the median of
    each resample, the middle `level` of those medians. Seeded, so the same
    samples give the same interval."""
    draw = random.Random(0)
    medians = sorted(statistics.median(draw.choices(ratios, k=len(ratios))) for _ in range(resamples))
    tail = (1 - level) / 2
    return (statistics.median(ratios), medians[int(tail * resamples)],
            medians[min(resamples - 1, int((1 - tail) * resamples))])


def make_links() -> dict:
    """Two parents (flat, macvlan) whose peers sit in a router namespace, and a vxlan underlay."""
    for ns in (ROUTER_NS, UNDERLAY_NS):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", ROUTER_NS, "link", "add", "sw", "type", "bridge")
    sh("ip", "-n", ROUTER_NS, "addr", "add", f"{FLAT_GW}/24", "dev", "sw")
    sh("ip", "-n", ROUTER_NS, "addr", "add", f"{MACVLAN_GW}/24", "dev", "sw")
    sh("ip", "-n", ROUTER_NS, "link", "set", "sw", "up")
    links = {"flat": f"{PREFIX}fl0", "macvlan": f"{PREFIX}mv0", "underlay": f"{PREFIX}ul0"}
    for kind, peer in (("flat", "wan0"), ("macvlan", "wan1")):
        sh("ip", "link", "add", links[kind], "type", "veth", "peer", "name", peer, "netns", ROUTER_NS)
        sh("ip", "-n", ROUTER_NS, "link", "set", peer, "master", "sw", "up")
        sh("ip", "link", "set", links[kind], "up")
    sh("ip", "link", "add", links["underlay"], "type", "veth", "peer", "name", "ul", "netns", UNDERLAY_NS)
    sh("ip", "addr", "add", "10.97.0.1/24", "dev", links["underlay"])
    sh("ip", "link", "set", links["underlay"], "up")
    sh("ip", "-n", UNDERLAY_NS, "addr", "add", "10.97.0.2/24", "dev", "ul")
    sh("ip", "-n", UNDERLAY_NS, "link", "set", "ul", "up")
    return links


def remove_links(links: dict) -> None:
    for name in links.values():
        sh("ip", "link", "del", name, check=False)
    for ns in (ROUTER_NS, UNDERLAY_NS):
        sh("ip", "netns", "del", ns, check=False)


def networks(links: dict) -> dict:
    """name -> `docker network create` arguments."""
    return {
        f"{PREFIX}-bridge": ["-d", "rancher-bridge", "--subnet", "10.230.0.0/24"],
        f"{PREFIX}-bridge-ipam": ["-d", "rancher-bridge", "--ipam-driver", "rancher-bridge",
                                  "--subnet", "10.231.0.0/24"],
        f"{PREFIX}-ref": ["-d", "bridge", "--subnet", "10.232.0.0/24"],
        f"{PREFIX}-flat": ["-d", "rancher-flat", "--subnet", FLAT_SUBNET, "--gateway", FLAT_GW,
                           "--ip-range", "192.168.88.128/25", "-o", f"parent={links['flat']}"],
        f"{PREFIX}-macvlan": ["-d", "macvlan", "--subnet", MACVLAN_SUBNET, "--gateway", MACVLAN_GW,
                              "--ip-range", "192.168.89.128/25", "-o", f"parent={links['macvlan']}"],
        f"{PREFIX}-floor": ["-d", FLOOR_DRIVER, "--subnet", "10.234.0.0/24"],
        f"{PREFIX}-vxlan": ["-d", "rancher-vxlan", "--subnet", "10.233.0.0/24", "-o", "vni=1077",
                            "-o", f"vtep_dev={links['underlay']}", "-o", "peers=10.97.0.2"],
    }


# bench/floor_driver.py: what the remote-driver protocol costs by itself, served as ours is
FLOOR_DRIVER = f"{PREFIX}-floor"
FLOOR_ROW = "floor: a minimal Python remote driver (veth + bridge port only) vs bridge"


def start_floor_driver(plugin_dir: str, name: str = FLOOR_DRIVER, env: dict | None = None) -> subprocess.Popen:
    socket_path = os.path.join(plugin_dir, f"{name}.sock")
    process = subprocess.Popen([sys.executable, "-m", "gunicorn", "--chdir", str(REPO), "--workers", "3",
                                "--bind", f"unix:{socket_path}", "bench.floor_driver:app"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                               env=dict(os.environ, **(env or {})))
    deadline = time.monotonic() + 30
    while not os.path.exists(socket_path):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("bench/floor_driver.py did not start")
        time.sleep(0.05)
    return process


ROWS = [  # (label, ours, reference)
    ("rancher-bridge, Docker's IPAM vs bridge", f"{PREFIX}-bridge", f"{PREFIX}-ref"),
    ("rancher-bridge, our IPAM vs bridge", f"{PREFIX}-bridge-ipam", f"{PREFIX}-ref"),
    ("rancher-flat vs macvlan (same kind of parent)", f"{PREFIX}-flat", f"{PREFIX}-macvlan"),
    ("rancher-vxlan vs bridge", f"{PREFIX}-vxlan", f"{PREFIX}-ref"),
    (FLOOR_ROW, f"{PREFIX}-floor", f"{PREFIX}-ref"),
]


def measure(docker, image: str, pairs: int, warmups: int, rows: list) -> dict:
    def once(net: str) -> float:
        t0 = time.monotonic()
        docker("run", "--rm", "--network", net, image, "busybox", "true")  # the image links no `true` applet
        return time.monotonic() - t0

    figures = {}
    for label, ours, reference in rows:
        for _ in range(warmups):
            once(ours)
            once(reference)
        times = {"ours": [], "reference": []}
        for i in range(pairs):
            order = [("ours", ours), ("reference", reference)]
            for kind, net in (order if i % 2 == 0 else order[::-1]):
                times[kind].append(once(net))
        ratios = [a / b for a, b in zip(times["ours"], times["reference"])]
        figure = {side: {"p50_ms": round(statistics.median(v) * 1000, 1), "p95_ms": round(pct(v, 0.95) * 1000, 1)}
                  for side, v in times.items()}
        figure["ratio"] = round(statistics.median(times["ours"]) / statistics.median(times["reference"]), 2)
        figure["ratio_min"], figure["ratio_max"] = round(min(ratios), 2), round(max(ratios), 2)
        figure["pairs_median"], *figure["pairs_interval"] = (round(r, 3) for r in median_interval(ratios))
        figures[label] = figure
        print(f"  {label}: ours p50 {figure['ours']['p50_ms']} ms p95 {figure['ours']['p95_ms']} ms, "
              f"reference p50 {figure['reference']['p50_ms']} ms p95 {figure['reference']['p95_ms']} ms, "
              f"ratio {figure['ratio']} (pairs {figure['ratio_min']}-{figure['ratio_max']}, "
              f"their median {_interval(figure)})", flush=True)
    for _ in range(warmups):
        once("none")
    none = [once("none") for _ in range(pairs)]
    figures["--network none"] = {"p50_ms": round(statistics.median(none) * 1000, 1),
                                 "p95_ms": round(pct(none, 0.95) * 1000, 1)}
    print(f"  --network none: p50 {figures['--network none']['p50_ms']} ms "
          f"p95 {figures['--network none']['p95_ms']} ms", flush=True)
    return figures


def interval_text(median: float, low: float, high: float) -> str:
    """A median and its interval as the reports print them: 0.99 [0.96-1.02]."""
    return f"{median:.2f} [{low:.2f}-{high:.2f}]"


def _interval(figure: dict) -> str:
    return interval_text(figure["pairs_median"], *figure["pairs_interval"])


def report(figures: dict, pairs: int, warmups: int) -> str:
    lines = [f"docker run --rm --network N busybox true, {pairs} interleaved pairs after {warmups} warm-ups", "",
             "| what | ours p50 / p95 | reference p50 / p95 | ratio (pairs min-max) | pairs' median [95 % interval] |",
             "|---|---|---|---|---|"]
    for label, fig in figures.items():
        if "ours" in fig:
            lines.append(f"| {label} | {fig['ours']['p50_ms']} / {fig['ours']['p95_ms']} ms | "
                         f"{fig['reference']['p50_ms']} / {fig['reference']['p95_ms']} ms | "
                         f"**{fig['ratio']}** ({fig['ratio_min']}-{fig['ratio_max']}) | {_interval(fig)} |")
    none = figures["--network none"]
    lines.append(f"| --network none, for scale | {none['p50_ms']} / {none['p95_ms']} ms | | | |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--warmups", type=int, default=2)
    parser.add_argument("--only", help="rows whose label contains this text")
    parser.add_argument("--json", help="write the figures to this file as JSON")
    args = parser.parse_args()
    bench_main_guard(__file__)
    if args.pairs < 1 or args.warmups < 0:
        raise SystemExit("--pairs must be at least 1 and --warmups 0 or more")
    from tests.engine.conftest import Shim
    from tests.engine.dockerd import Dockerd

    root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-shim."))
    links, made, dockerd, floor = {}, [], None, None
    shim = Shim(root, log_level="INFO")  # as installed: the tests' DEBUG log costs time per call
    try:
        dockerd = Dockerd()
        shim.docker_host = f"unix://{dockerd.socket}"

        def docker(*argv):
            done = dockerd.cli(*argv, timeout=300)
            if done.returncode:
                raise RuntimeError(f"docker {' '.join(argv)}: {done.stderr}\n{shim.log()}")
            return done.stdout

        floor = start_floor_driver(shim.plugin_dir)
        links = make_links()
        for name, argv in networks(links).items():
            docker("network", "create", *argv, name)
            made.append(name)
        rows = [r for r in ROWS if not args.only or args.only in r[0]]
        figures = measure(docker, dockerd.image, args.pairs, args.warmups, rows)
        print()
        print(report(figures, args.pairs, args.warmups))
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    finally:
        if dockerd is not None:
            for name in made:
                dockerd.cli("network", "rm", name)
            dockerd.close()
        shim.stop()
        if floor is not None:
            floor.terminate()
            floor.wait(timeout=30)
        remove_links(links) if links else None
        for ns in (ROUTER_NS, UNDERLAY_NS):
            sh("ip", "netns", "del", ns, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
