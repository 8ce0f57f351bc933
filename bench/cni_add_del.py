"""Median wall time of a full CNI ADD + DEL into a fresh network namespace:
rancher-bridge + rancher-ipam (through the daemon, and without it) against the
reference bridge + host-local plug-ins, measured in the same run, interleaved.

    python bench/cni_add_del.py [--rounds 40]
"""

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cni_backend import install  # noqa: E402
from tests.isolation import bench_main_guard  # noqa: E402

REFERENCE = "/usr/lib/cni"


def make_config(kind: str, root: str) -> dict:
    if kind == "reference":
        return {"cniVersion": "1.0.0", "name": "benchref", "type": "bridge", "bridge": "rcnibref",
                "isGateway": True, "ipMasq": True,
                "ipam": {"type": "host-local", "subnet": "10.201.0.0/24", "dataDir": f"{root}/host-local"}}
    return {"cniVersion": "1.0.0", "name": "benchours", "type": "rancher-bridge", "bridge": "rcnibours",
            "isGateway": True, "ipMasq": True,
            "ipam": {"type": "rancher-ipam", "subnet": "10.202.0.0/24", "dataDir": f"{root}/state"}}


def cycle(binary: str, config: dict, env: dict) -> float:
    """One ADD + DEL into a fresh namespace; seconds spent in the two plug-in runs."""
    netns = "rcnibench" + secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", netns], check=True)
    call_env = dict(env, CNI_CONTAINERID=netns, CNI_NETNS=f"/var/run/netns/{netns}", CNI_IFNAME="eth0")
    stdin = json.dumps(config).encode()
    try:
        start = time.perf_counter()
        added = subprocess.run([binary], input=stdin, env=dict(call_env, CNI_COMMAND="ADD"), capture_output=True)
        deleted = subprocess.run([binary], input=stdin, env=dict(call_env, CNI_COMMAND="DEL"), capture_output=True)
        elapsed = time.perf_counter() - start
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=True)
    if added.returncode or deleted.returncode:
        raise SystemExit(f"{binary} failed: {added.stdout or deleted.stdout}")
    return elapsed


def summary(samples: list) -> dict:
    ordered = sorted(samples)
    return {"median_ms": round(statistics.median(ordered) * 1000, 1),
            "p90_ms": round(ordered[int(len(ordered) * 0.9) - 1] * 1000, 1), "rounds": len(ordered)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--json", help="also write the figures to this file")
    opts = parser.parse_args()
    bench_main_guard(__file__)  # before anything is made
    if not os.path.exists(f"{REFERENCE}/bridge"):
        raise SystemExit("the reference plug-ins are missing: apt-get install containernetworking-plugins")
    root = tempfile.mkdtemp(prefix="rcnibench.")
    bindir = f"{root}/bin"
    install.write_executables(bindir)
    socket_path = f"{root}/cni.sock"
    daemon = subprocess.Popen([sys.executable, "-m", "cnm_shim.cli", "--log-level", "WARNING",
                               "cni-server", "--socket", socket_path])
    try:
        while not os.path.exists(socket_path):
            time.sleep(0.05)
        base = dict(os.environ, CNI_PATH=f"{bindir}:{REFERENCE}")
        runs = {
            "reference bridge+host-local": (f"{REFERENCE}/bridge", make_config("reference", root), base),
            "rancher-bridge+rancher-ipam (daemon)": (f"{bindir}/rancher-bridge", make_config("ours", root),
                                                     dict(base, RANCHER_CNI_SOCKET=socket_path)),
            "rancher-bridge+rancher-ipam (no daemon)": (f"{bindir}/rancher-bridge", make_config("ours", root),
                                                        dict(base, RANCHER_CNI_SOCKET=f"{root}/absent.sock")),
        }
        samples = {name: [] for name in runs}
        for args in runs.values():  # warm-up: bridges and chains exist afterwards, as in steady use
            cycle(*args)
        for _ in range(opts.rounds):
            for name, args in runs.items():
                samples[name].append(cycle(*args))
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait()
        for bridge in ("rcnibref", "rcnibours"):
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
    figures = {name: summary(values) for name, values in samples.items()}
    reference = figures["reference bridge+host-local"]["median_ms"]
    print(f"{'CNI ADD+DEL into a fresh netns':42} {'median':>9} {'p90':>9} {'ratio':>7}")
    for name, figure in figures.items():
        figure["ratio"] = round(figure["median_ms"] / reference, 2)
        print(f"{name:42} {figure['median_ms']:7.1f}ms {figure['p90_ms']:7.1f}ms {figure['ratio']:7.2f}")
    print("target: rancher-bridge+rancher-ipam (daemon) ratio <= 1.5")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
