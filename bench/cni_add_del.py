"""Wall time (p50, p95) of a full CNI ADD + DEL into a fresh network
namespace: rancher-bridge + rancher-ipam against the reference bridge +
host-local plug-ins, measured in the same run, interleaved, each row's p50
as a ratio to the reference's. Our rows:

- zero set-up: the executables as a runtime calls them, nothing started
  beforehand, no socket named: the first call started the daemon (the
  warm-up round), and the calls after it use it;
- zero set-up, first cycle: the same, but the auto-started daemon is stopped
  before each round, so every ADD is a first call on a fresh host (it starts
  the daemon and does its own work), and the DEL finds the daemon up or not;
- pre-started daemon: `cnm-shim cni-server` started by hand, named by
  RANCHER_CNI_SOCKET;
- no daemon: a socket named where nothing listens (which also means no
  auto-start), every call does its own work (interpreter start + pyroute2
  import each time), as before the daemon existed.

It runs only in the tests' sandbox (tests/sandbox.sh), where the default
daemon socket /run/rancher-cni/cni.sock is private:

    tests/sandbox.sh .venv/bin/python bench/cni_add_del.py [--rounds 30]
"""

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cni_backend import install, wire  # noqa: E402
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


def fresh_netns(env: dict) -> tuple:
    """A new namespace for one attachment, and the CNI environment naming it."""
    netns = "rcnibench" + secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", netns], check=True)
    return netns, dict(env, CNI_CONTAINERID=netns, CNI_NETNS=f"/var/run/netns/{netns}", CNI_IFNAME="eth0")


def cycle(binary: str, config: dict, env: dict) -> float:
    """One ADD + DEL into a fresh namespace; seconds spent in the two plug-in runs."""
    netns, call_env = fresh_netns(env)
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

    def pick(q):  # nearest rank
        return round(ordered[max(0, min(len(ordered) - 1, int(-(-q * len(ordered) // 1)) - 1))] * 1000, 1)
    return {"p50_ms": pick(0.5), "p95_ms": pick(0.95), "rounds": len(ordered)}


def auto_daemon() -> int | None:
    """The pid listening on the default socket (SO_PEERCRED), or None."""
    sock = wire.connect(wire.DEFAULT_SOCKET)
    if sock is None:
        return None
    try:
        return wire.peer_credentials(sock)[0]
    finally:
        sock.close()


def stop_auto_daemon() -> None:
    """Stop the daemon our executables started (not our child: it detached)."""
    pid = auto_daemon()
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.01)


def first_call_readiness(binary: str, config: dict, env: dict) -> tuple:
    """On a fresh host: (ms the first ADD took, doing its own work; ms from its
    start until the daemon it started answered): which is sooner tells whether
    the first call should wait for the daemon or do its own work."""
    stop_auto_daemon()
    netns, call_env = fresh_netns(env)
    stdin = json.dumps(config).encode()
    try:
        start = time.perf_counter()
        added = subprocess.run([binary], input=stdin, env=dict(call_env, CNI_COMMAND="ADD"), capture_output=True)
        took = time.perf_counter() - start
        while auto_daemon() is None:
            time.sleep(0.002)
        ready = time.perf_counter() - start
        subprocess.run([binary], input=stdin, env=dict(call_env, CNI_COMMAND="DEL"), capture_output=True, check=True)
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=True)
    if added.returncode:
        raise SystemExit(f"{binary} failed: {added.stdout}")
    return round(took * 1000, 1), round(ready * 1000, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", help="also write the figures to this file")
    opts = parser.parse_args()
    bench_main_guard(__file__)  # before anything is made
    if not os.path.exists(f"{REFERENCE}/bridge"):
        raise SystemExit("the reference plug-ins are missing: apt-get install containernetworking-plugins")
    if auto_daemon() is not None:
        raise SystemExit(f"a CNI daemon already listens on {wire.DEFAULT_SOCKET}: the zero set-up rows need none")
    root = tempfile.mkdtemp(prefix="rcnibench.")
    bindir = f"{root}/bin"
    install.write_executables(bindir)
    socket_path = f"{root}/cni.sock"
    daemon = subprocess.Popen([sys.executable, "-m", "cnm_shim.cli", "--log-level", "WARNING",
                               "cni-server", "--socket", socket_path])
    first_calls = []
    try:
        while not os.path.exists(socket_path):
            time.sleep(0.05)
        base = {k: v for k, v in os.environ.items() if k not in (wire.SOCKET_ENV, wire.AUTOSTART_ENV)}
        base["CNI_PATH"] = f"{bindir}:{REFERENCE}"
        ours = (f"{bindir}/rancher-bridge", make_config("ours", root))
        runs = {
            "reference bridge+host-local": (f"{REFERENCE}/bridge", make_config("reference", root), base),
            "ours, zero set-up (auto-started daemon)": (*ours, base),
            "ours, zero set-up, first cycle on a fresh host": (*ours, base),
            "ours, pre-started daemon": (*ours, dict(base, RANCHER_CNI_SOCKET=socket_path)),
            # a socket named where none listens: auto-start off, and the auto-started daemon not used
            "ours, no daemon": (*ours, dict(base, RANCHER_CNI_SOCKET=f"{root}/absent.sock")),
        }
        cold = "ours, zero set-up, first cycle on a fresh host"
        samples = {name: [] for name in runs}
        for args in runs.values():  # warm-up: bridges and chains exist afterwards, as in steady use
            cycle(*args)
        for _ in range(3):
            first_calls.append(first_call_readiness(*runs[cold]))
        for _ in range(opts.rounds):
            for name, args in runs.items():
                if name == cold:
                    stop_auto_daemon()
                elif auto_daemon() is None:  # the cold row's ADD started one; it may still be starting
                    while auto_daemon() is None:
                        time.sleep(0.01)
                samples[name].append(cycle(*args))
    finally:
        stop_auto_daemon()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait()
        for bridge in ("rcnibref", "rcnibours"):
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
    figures = {name: summary(values) for name, values in samples.items()}
    reference = figures["reference bridge+host-local"]["p50_ms"]
    print(f"{'CNI ADD+DEL into a fresh netns':48} {'p50':>9} {'p95':>9} {'ratio':>7}")
    for name, figure in figures.items():
        figure["ratio"] = round(figure["p50_ms"] / reference, 2)
        print(f"{name:48} {figure['p50_ms']:7.1f}ms {figure['p95_ms']:7.1f}ms {figure['ratio']:7.2f}")
    print(f"{opts.rounds} rounds, interleaved; ratio = p50 / the reference's p50")
    print("first call on a fresh host (ms): its own ADD, and until the daemon it started answered: "
          + ", ".join(f"{took} / {ready}" for took, ready in first_calls))
    figures["first_call_ms"] = [{"add": took, "daemon_ready": ready} for took, ready in first_calls]
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
