"""The driver's share of a `docker run -d`, call by call: ours against the floor.

    tests/sandbox.sh .venv/bin/python bench/driver_path.py [--containers 40] [--json FILE]

A `docker run -d` waits for the network driver from CreateEndpoint's request
to the answer of the last call before the container starts (Join,
ProgramExternalConnectivity, EndpointOperInfo twice). That stretch is a few
milliseconds of a run of several hundred, so the whole run's time (bench/
docker_run.py, bench/load.py) cannot show a change of one millisecond in it;
this bench measures the stretch itself.

A private engine and shim (tests/engine: Dockerd + Shim) in the tests'
sandbox, with tracing on (cni_backend/trace.py) for the shim and for
bench/floor_driver.py (the least a remote driver in Python does), both
recording one `shim` span per Docker call. `containers` containers on a
rancher-bridge network (Docker's IPAM) and as many on one of the floor's,
interleaved, after warm-ups. For each side, medians over the containers of:
each call's time in the driver, the time between one call's answer and the
next call (dockerd's own work, and the HTTP round trip), and the whole
stretch. Tracing costs each side a few microseconds a span; ours records
more spans (netlink, firewall, the plug-in), so its figures are a little
high. It removes everything it made. No assertion on timing: it reports.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.isolation import bench_main_guard  # noqa: E402

PREFIX = "rdpath"
# the calls a `docker run -d` makes before the container starts, in order
CREATION = ("CreateEndpoint", "Join", "ProgramExternalConnectivity", "EndpointOperInfo", "EndpointOperInfo")


def creation_calls(spans: list, start: float, end: float) -> list:
    """The driver's spans of one `docker run -d` that ran from `start` to
    `end` (epoch seconds): its creation calls, in order, or [] when they are
    not all there."""
    calls = sorted((s for s in spans if s["span"] == "shim" and start <= s["t0"] <= end
                    and s["path"].startswith("/NetworkDriver.")), key=lambda s: s["t0"])
    verbs = tuple(s["path"].split(".", 1)[1] for s in calls)
    return calls if verbs == CREATION else []


def path_figures(runs: list) -> dict:
    """Medians over `runs` (each creation_calls' list) of each call's time,
    the gap before it and the whole stretch, in ms."""
    def median_ms(values) -> float:
        return round(statistics.median(values), 2)

    def after_start_ms(span: dict, first: dict) -> float:
        return (span["t0"] - first["t0"]) * 1000

    figure = {"runs": len(runs), "calls": [], "gaps": []}
    for i, verb in enumerate(CREATION):
        figure["calls"].append([verb, median_ms([run[i]["ms"] for run in runs])])
        if i:
            figure["gaps"].append(median_ms([after_start_ms(run[i], run[i - 1]) - run[i - 1]["ms"] for run in runs]))
    figure["in_driver_ms"] = median_ms([sum(s["ms"] for s in run) for run in runs])
    figure["stretch_ms"] = median_ms([after_start_ms(run[-1], run[0]) + run[-1]["ms"] for run in runs])
    return figure


def report(figures: dict) -> str:
    ours, floor = figures["ours"], figures["floor"]
    lines = [f"docker run -d, the driver's stretch (CreateEndpoint's request to the last answer), medians of "
             f"{ours['runs']} / {floor['runs']} containers, ms", "",
             "| | ours | floor |", "|---|---|---|"]
    for i, (verb, ms) in enumerate(ours["calls"]):
        if i:
            lines.append(f"| dockerd, before {verb} | {ours['gaps'][i - 1]} | {floor['gaps'][i - 1]} |")
        lines.append(f"| {verb} | {ms} | {floor['calls'][i][1]} |")
    lines.append(f"| in the driver | {ours['in_driver_ms']} | {floor['in_driver_ms']} |")
    lines.append(f"| **the stretch** | **{ours['stretch_ms']}** | **{floor['stretch_ms']}** |")
    lines.append(f"| whole `docker run -d`, p50 | {figures['run_ms']['ours']} | {figures['run_ms']['floor']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=40)
    parser.add_argument("--warmups", type=int, default=3)
    parser.add_argument("--json", help="write the figures to this file as JSON")
    args = parser.parse_args()
    bench_main_guard(__file__)
    if args.containers < 1 or args.warmups < 0:
        raise SystemExit("--containers must be at least 1 and --warmups 0 or more")
    from bench import docker_run
    from cni_backend import trace
    from tests.engine.conftest import Shim
    from tests.engine.dockerd import Dockerd

    root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-shim."))
    trace_file = root / "trace.jsonl"
    os.environ["RANCHER_TRACE"] = str(trace_file)  # inherited by the shim and the floor
    shim = Shim(root, log_level="INFO")
    dockerd = floor = None
    nets = {"ours": f"{PREFIX}-ours", "floor": f"{PREFIX}-floor"}
    made = []
    try:
        dockerd = Dockerd()

        def docker(*argv):
            done = dockerd.cli(*argv, timeout=300)
            if done.returncode:
                raise RuntimeError(f"docker {' '.join(argv)}: {done.stderr}\n{shim.log()}")
            return done.stdout

        floor = docker_run.start_floor_driver(shim.plugin_dir)
        docker("network", "create", "-d", "rancher-bridge", "--subnet", "10.236.0.0/22", nets["ours"])
        made.append(nets["ours"])
        docker("network", "create", "-d", docker_run.FLOOR_DRIVER, "--subnet", "10.237.0.0/22", nets["floor"])
        made.append(nets["floor"])
        windows = {side: [] for side in nets}
        for i in range(args.warmups + args.containers):
            for side in (list(nets) if i % 2 == 0 else list(nets)[::-1]):
                start = time.time()
                docker("run", "-d", "--name", f"{PREFIX}-{side}{i}", "--network", nets[side], dockerd.image,
                       "sleep", "3600")
                if i >= args.warmups:
                    windows[side].append((start, time.time()))
        spans = trace.spans(str(trace_file))
        figures = {"run_ms": {}}
        for side, side_windows in windows.items():
            runs = [calls for calls in (creation_calls(spans, *w) for w in side_windows) if calls]
            if not runs:
                raise RuntimeError(f"no {side} run made the calls {CREATION} (a changed Docker?)")
            figures[side] = path_figures(runs)
            figures["run_ms"][side] = round(statistics.median(end - start for start, end in side_windows) * 1000, 1)
        print(report(figures))
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    finally:
        if dockerd is not None:
            names = dockerd.cli("ps", "-aq", "--filter", f"name={PREFIX}-", timeout=60).stdout.split()
            if names:
                dockerd.cli("rm", "-f", *names, timeout=600)
            for name in made:  # the rancher-bridge network's bridge and rules go with it
                dockerd.cli("network", "rm", name, timeout=120)
            dockerd.close()
        shim.stop()
        if floor is not None:
            floor.terminate()
            floor.wait(timeout=30)
        os.environ.pop("RANCHER_TRACE", None)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
