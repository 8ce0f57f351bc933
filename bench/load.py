"""Load: many attachments on one host, ours against the reference in the same run.

    tests/sandbox.sh .venv/bin/python bench/load.py [--quick] [--json FILE] [--update-docs]

1. CNI: N bare network namespaces (1,000; --quick 200) attached to one bridge
   network (a /22) through CNI the way a runtime does it (libcni semantics,
   cni_backend.invoke, our executables handing the work to the daemon), and,
   interleaved, to one bridge of the reference plug-ins (Debian's
   containernetworking-plugins bridge + host-local). The reference runs in a
   host namespace of its own, so neither sees the other's iptables rules. ADD
   latency p50/p95 for the windows ending at 10 %, 50 % and 100 % of N, the
   CNI daemon's RSS at those points, then DEL of everything (latency of the
   first and last window) and a check that nothing is left.
2. Docker: M containers (200; --quick 40) on one rancher-bridge network of a
   private engine (tests/engine: Dockerd + Shim), interleaved with M on a
   network of Docker's built-in bridge driver and with M on one of
   bench/floor_driver.py (the least a remote driver in Python does: what
   Docker's remote-driver protocol costs by itself, bench/docker_run.py's
   floor row), with M on one of the floor with its veths made ahead (its
   Joins only hand one out: a remote driver with no work of its own on the
   container's path) and M with `--network none` (what the rest of a
   `docker run -d` takes, for the network's own share); `docker run -d`
   p50/p95 at
   25 %, 50 %, 100 % of M; the shim's RSS (gunicorn master + workers + CNI
   daemon) and dockerd's at those points. Then the shim is killed (SIGKILL,
   every process) and started again: seconds until its socket answers, until
   `docker network inspect` works and until a new container runs, with 0, M
   and 1,000 endpoints in its state (the rest made through the HTTP API with
   real CreateEndpoint + Join calls on a network Docker does not know).

Run it in tests/sandbox.sh: it needs /run/docker/plugins/rancher-bridge.sock
and makes thousands of links, which other tests on the machine must not see.
It removes everything it made. No assertion on timing: it reports.
"""

import argparse
import ctypes
import http.client
import json
import os
import re
import secrets
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import docker_run  # noqa: E402
from cni_backend import install  # noqa: E402
from cni_backend.invoke import api as cni_api, conflist as conflists  # noqa: E402
from cni_backend.invoke.execute import PLUGIN_TIMEOUT_S  # noqa: E402
from tests.isolation import bench_main_guard  # noqa: E402
from tests.conftest import process_tree  # noqa: E402

REFERENCE = "/usr/lib/cni"
AHEAD_DRIVER = f"{docker_run.FLOOR_DRIVER}-ahead"  # bench/floor_driver.py with FLOOR_VETHS_AHEAD
PREFIX = "rload"
PAIRED = ("ours", "floor", "ahead")  # the kinds whose containers' own ratios to the bridge driver are reported
CLONE_NEWNET = 0x40000000
DOCS = REPO / "docs" / "performance.md"
BEGIN, END = "<!-- load:begin -->", "<!-- load:end -->"


def sh(*argv, check=True, **kw):
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kw)


# -- figures -------------------------------------------------------------------

def pct(samples: list, q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def window(samples: list, end: int, size: int) -> dict:
    part = samples[max(0, end - size):end]
    return {"from": max(0, end - size) + 1, "to": end, "p50_ms": round(statistics.median(part) * 1000, 1),
            "p95_ms": round(pct(part, 0.95) * 1000, 1)}


def paired_window(ours: list, reference: list, end: int, size: int) -> dict:
    """The median of the containers' own ratios (ours / reference, run side
    by side) in a window, with its 95 % bootstrap interval."""
    start = max(0, end - size)
    ratios = [a / b for a, b in zip(ours[start:end], reference[start:end])]
    median, low, high = docker_run.median_interval(ratios)
    return {"median": round(median, 3), "low": round(low, 3), "high": round(high, 3)}


def rss_mib(pids: list) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
        except OSError:
            pass
    return round(total / 1024, 1)


# -- 1. CNI ----------------------------------------------------------------------

def _setns_runner(netns_path: str):
    """run_process, but the plug-in runs with `netns_path` as its host namespace."""
    libc = ctypes.CDLL(None, use_errno=True)

    def enter():
        fd = os.open(netns_path, os.O_RDONLY)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            os._exit(127)
        os.close(fd)

    def run(path, env, stdin):
        done = subprocess.run([path], input=stdin, env=env, capture_output=True, timeout=PLUGIN_TIMEOUT_S,
                              check=False, preexec_fn=enter)
        return done.returncode, done.stdout, done.stderr
    return run


def _conflist(kind: str, root: str, bridge: str, subnet: str) -> tuple:
    plugin = ({"type": "rancher-bridge", "ipam": {"type": "rancher-ipam", "subnet": subnet, "dataDir": f"{root}/ipam"}}
              if kind == "ours" else
              {"type": "bridge", "ipam": {"type": "host-local", "subnet": subnet, "dataDir": f"{root}/host-local"}})
    plugin.update(bridge=bridge, isGateway=True, ipMasq=True)
    raw = json.dumps({"cniVersion": "1.0.0", "name": f"{PREFIX}-{kind}", "plugins": [plugin]}).encode()
    return conflists.parse(raw), raw


def cni_load(n: int, size: int, marks: list) -> dict:
    root = tempfile.mkdtemp(prefix=f"{PREFIX}-cni.")
    bindir, sock = f"{root}/bin", f"{root}/cni.sock"
    install.write_executables(bindir)
    refhost = f"{PREFIX}-refhost"
    names = {"ours": [], "reference": []}
    daemon = subprocess.Popen([sys.executable, "-m", "cnm_shim.cli", "--log-level", "WARNING", "cni-server",
                               "--socket", sock], start_new_session=True)
    sh("ip", "netns", "add", refhost)
    sh("ip", "-n", refhost, "link", "set", "lo", "up")
    os.environ["RANCHER_CNI_SOCKET"] = sock
    nets = {
        "ours": (cni_api.CNI([bindir], cache_dir=f"{root}/cache-ours"),
                 *_conflist("ours", root, f"{PREFIX}br0", "10.210.0.0/22")),
        "reference": (cni_api.CNI([REFERENCE], cache_dir=f"{root}/cache-ref",
                                  runner=_setns_runner(f"/run/netns/{refhost}")),
                      *_conflist("reference", root, f"{PREFIX}br1", "10.214.0.0/22")),
    }
    add = {k: [] for k in nets}
    delete = {k: [] for k in nets}
    rss = {}
    figures = {}
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the CNI daemon did not start")
            time.sleep(0.05)
        rss[0] = rss_mib(process_tree(daemon.pid))
        started = time.monotonic()
        for i in range(n):
            order = list(nets) if i % 2 == 0 else list(reversed(nets))
            for kind in order:
                cni, conf, raw = nets[kind]
                ns = f"{PREFIX}{kind[0]}{i}"
                sh("ip", "netns", "add", ns)
                names[kind].append(ns)
                att = cni_api.Attachment(ns, f"/run/netns/{ns}", "eth0")
                t0 = time.perf_counter()
                cni.add(conf, raw, att)
                add[kind].append(time.perf_counter() - t0)
            if i + 1 in marks:
                rss[i + 1] = rss_mib(process_tree(daemon.pid))
                print(f"  {i + 1} attached ({time.monotonic() - started:.0f} s), daemon RSS {rss[i + 1]} MiB",
                      flush=True)
        rules = {"ours": _count_rules(None), "reference": _count_rules(refhost)}
        for i in range(n):
            order = list(nets) if i % 2 == 0 else list(reversed(nets))
            for kind in order:
                cni, conf, raw = nets[kind]
                ns = names[kind][i]
                t0 = time.perf_counter()
                cni.delete(conf, raw, cni_api.Attachment(ns, f"/run/netns/{ns}", "eth0"))
                delete[kind].append(time.perf_counter() - t0)
                sh("ip", "netns", "del", ns)
        rss["after DEL"] = rss_mib(process_tree(daemon.pid))
        print(f"  all deleted ({time.monotonic() - started:.0f} s)", flush=True)
        left = _cni_leftovers(root, refhost)
        figures = {
            "attachments": n, "window": size,
            "add": {k: [window(v, m, size) for m in marks] for k, v in add.items()},
            "del": {k: [window(v, size, size), window(v, n, size)] for k, v in delete.items()},
            "daemon_rss_mib": rss, "rules_at_peak": rules, "left_behind": left,
        }
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)
        for kind in names:
            for ns in names[kind]:
                sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", f"{PREFIX}br0", check=False)
        sh("ip", "netns", "del", refhost, check=False)
        os.environ.pop("RANCHER_CNI_SOCKET", None)
        shutil.rmtree(root, ignore_errors=True)
    return figures


def _count_rules(netns: str | None) -> int:
    enter = ["ip", "netns", "exec", netns] if netns else []
    total = 0
    for tool in ("iptables-save", "ip6tables-save"):
        total += sum(line.startswith("-A ") for line in sh(*enter, tool, check=False).stdout.splitlines())
    return total


def _cni_leftovers(root: str, refhost: str) -> list:
    left = []
    for netns, bridge in ((None, f"{PREFIX}br0"), (refhost, f"{PREFIX}br1")):
        ports = sh(*(["ip", "-n", netns] if netns else ["ip"]), "-o", "link", "show", "master", bridge,
                   check=False).stdout.split("\n")
        left += [f"port on {bridge}: {p.split(': ')[1]}" for p in ports if p.strip()]
    enter = ["ip", "netns", "exec", refhost]
    for tool in ("iptables-save", "ip6tables-save"):
        left += [f"rule: {r}" for r in sh(tool, check=False).stdout.splitlines() if "rcni" in r or "RANCHER" in r]
        left += [f"reference rule: {r}" for r in sh(*enter, tool, check=False).stdout.splitlines()
                 if r.startswith("-A ") and "CNI-" in r]
    with sqlite3.connect(f"{root}/ipam/ipam.db") as db:
        left += [f"allocation: {row}" for row in db.execute("SELECT ip, container_id FROM allocations")]
    for folder in Path(f"{root}/host-local").glob("*"):
        left += [f"host-local: {f.name}" for f in folder.iterdir() if re.fullmatch(r"[0-9.]+", f.name)]
    for cache in ("cache-ours", "cache-ref"):
        results = Path(root, cache, "results")
        left += [f"cache: {f.name}" for f in results.iterdir()] if results.exists() else []
    left += [f"namespace: {ns}" for ns in sh("ip", "netns", "list").stdout.split() if ns.startswith(PREFIX)
             and ns != refhost]
    return left


# -- 2. Docker ---------------------------------------------------------------------

class Unix(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=300)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def call(sock: str, path: str, body: dict) -> dict:
    conn = Unix(sock)
    try:
        conn.request("POST", path, json.dumps(body), {"Accept": "application/vnd.docker.plugins.v1.2+json"})
        reply = conn.getresponse()
        data = json.loads(reply.read() or b"{}")
    finally:
        conn.close()
    if reply.status != 200 or data.get("Err"):
        raise RuntimeError(f"{path}: {reply.status} {data}")
    return data


def docker_load(m: int, size: int, marks: list, endpoints: int) -> dict:
    from tests.engine.conftest import Shim
    from tests.engine.dockerd import Dockerd

    root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-shim."))
    shim = Shim(root, log_level="INFO")  # as installed: the tests' DEBUG log costs time per call
    dockerd = floor = ahead = None
    api_net = f"{PREFIX}api" + secrets.token_hex(20)
    extra = []
    figures = {}
    try:
        dockerd = Dockerd()
        image = dockerd.image

        def docker(*args):
            done = dockerd.cli(*args, timeout=300)
            if done.returncode:
                raise RuntimeError(f"docker {' '.join(args)}: {done.stderr}\n{shim.log()}")
            return done.stdout

        def shim_rss():
            return rss_mib(process_tree(shim.process.pid))

        def dockerd_rss():
            return rss_mib([dockerd.dockerd.pid])

        floor = docker_run.start_floor_driver(shim.plugin_dir)
        claims = root / "floor-claims"
        claims.mkdir()
        ahead = docker_run.start_floor_driver(shim.plugin_dir, AHEAD_DRIVER, {
            "FLOOR_VETHS_AHEAD": str(m), "FLOOR_CLAIMS_DIR": str(claims)})
        docker("network", "create", "-d", "rancher-bridge", "--subnet", "10.220.0.0/22", f"{PREFIX}-ours")
        docker("network", "create", "-d", "bridge", "--subnet", "10.224.0.0/22", f"{PREFIX}-ref")
        docker("network", "create", "-d", docker_run.FLOOR_DRIVER, "--subnet", "10.232.0.0/22", f"{PREFIX}-floor")
        docker("network", "create", "-d", AHEAD_DRIVER, "--subnet", "10.240.0.0/22", f"{PREFIX}-ahead")
        nets = {"ours": f"{PREFIX}-ours", "reference": f"{PREFIX}-ref", "floor": f"{PREFIX}-floor",
                "ahead": f"{PREFIX}-ahead"}
        kinds = {**nets, "none": "none"}  # kind -> the network its containers run on
        probes = []

        def reload(label: str) -> dict:
            # for scale: what starting an interpreter with the server's imports
            # takes on the machine as it is now (a machine holding many
            # containers starts any Python program more slowly)
            t0 = time.monotonic()
            subprocess.run([sys.executable, "-c", "import flask, gunicorn.app.base, pyroute2"], check=True)
            imports = time.monotonic() - t0
            shim.kill9()
            t0 = time.monotonic()
            shim.start()
            sockets = time.monotonic() - t0
            call(shim.socket, "/NetworkDriver.GetCapabilities", {})
            answers = time.monotonic() - t0
            docker("network", "inspect", nets["ours"])
            inspect = time.monotonic() - t0
            name = f"{PREFIX}-probe{len(probes)}"
            docker("run", "-d", "--name", name, "--network", nets["ours"], image, "sleep", "3600")
            probes.append(name)
            run = time.monotonic() - t0
            docker("rm", "-f", name)
            endpoints_now = sum(kind == "endpoint" for kind, _ in shim.state_entries())
            figure = {"endpoints": endpoints_now, "sockets_s": round(sockets, 2), "answers_s": round(answers, 2),
                      "inspect_s": round(inspect, 2), "new_container_s": round(run, 2), "rss_mib": shim_rss(),
                      "imports_alone_s": round(imports, 2)}
            print(f"  shim restart with {endpoints_now} endpoints ({label}): answers after {answers:.2f} s, "
                  f"new container runs after {run:.2f} s (python + imports alone: {imports:.2f} s)", flush=True)
            return figure

        reloads = [reload("network only")]
        runs = {k: [] for k in kinds}
        rss = {0: {"shim": shim_rss(), "dockerd": dockerd_rss()}}
        started = time.monotonic()
        for i in range(m):
            order = list(kinds)[i % len(kinds):] + list(kinds)[:i % len(kinds)]  # each kind first in turn
            for kind in order:
                t0 = time.perf_counter()
                docker("run", "-d", "--name", f"{PREFIX}-{kind[:3]}{i}", "--network", kinds[kind], image,
                       "sleep", "3600")
                runs[kind].append(time.perf_counter() - t0)
            if i + 1 in marks:
                rss[i + 1] = {"shim": shim_rss(), "dockerd": dockerd_rss()}
                print(f"  {i + 1} containers on each network ({time.monotonic() - started:.0f} s), "
                      f"shim RSS {rss[i + 1]['shim']} MiB", flush=True)
        reloads.append(reload("the containers"))
        # the rest of the endpoints: real CreateEndpoint + Join on a network Docker does not know
        call(shim.socket, "/NetworkDriver.CreateNetwork", {
            "NetworkID": api_net, "Options": {"com.docker.network.generic": {"bridge": f"{PREFIX}br2"}},
            "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.228.0.0/22", "Gateway": "10.228.0.1/22"}],
            "IPv6Data": []})
        joins = []
        hosts = list(__import__("ipaddress").ip_network("10.228.0.0/22").hosts())[1:]
        for j in range(max(0, endpoints - m)):
            endpoint = secrets.token_hex(32)
            body = {"NetworkID": api_net, "EndpointID": endpoint}
            call(shim.socket, "/NetworkDriver.CreateEndpoint",
                 dict(body, Interface={"Address": f"{hosts[j]}/22", "MacAddress": ""}, Options={}))
            extra.append(endpoint)
            t0 = time.perf_counter()
            call(shim.socket, "/NetworkDriver.Join", dict(body, SandboxKey=f"/var/run/docker/netns/{endpoint[:12]}",
                                                          Options={}))
            joins.append(time.perf_counter() - t0)
        rss["endpoints"] = {"shim": shim_rss(), "dockerd": dockerd_rss()}
        reloads.append(reload("containers + API endpoints"))
        t0 = time.monotonic()
        for endpoint in extra:
            body = {"NetworkID": api_net, "EndpointID": endpoint}
            call(shim.socket, "/NetworkDriver.Leave", body)
            call(shim.socket, "/NetworkDriver.DeleteEndpoint", body)
        extra.clear()
        call(shim.socket, "/NetworkDriver.DeleteNetwork", {"NetworkID": api_net})
        # One at a time: with `docker rm -f` of 50 at once across the three
        # networks, dockerd 20.10 now and then kept a network's endpoint count
        # above what it lists (`network rm`: "has active endpoints" with no
        # endpoint left), on any of the three, the bridge driver's too.
        for name in (f"{PREFIX}-{kind[:3]}{i}" for i in range(m) for kind in kinds):
            docker("rm", "-f", name)
        refused = []
        for net in nets.values():  # a refusal is reported with what is left, and the figures are kept
            done = dockerd.cli("network", "rm", net, timeout=300)
            if done.returncode:
                refused.append(f"dockerd: network rm {net}: {done.stderr.strip()}; "
                               f"{_what_dockerd_still_holds(dockerd, net)}")
        print(f"  all removed ({time.monotonic() - t0:.0f} s)", flush=True)
        jsize = max(1, min(size * 2, len(joins) // 4))
        figures = {
            "containers": m, "window": size,
            "run": {k: [window(v, mark, size) for mark in marks] for k, v in runs.items()},
            # the floors' too: whether a remote driver doing less than ours is above the bridge driver
            "paired": {kind: [paired_window(runs[kind], runs["reference"], mark, size) for mark in marks]
                       for kind in PAIRED},
            "rss_mib": rss, "reloads": reloads,
            "api_join": [window(joins, jsize, jsize), window(joins, len(joins), jsize)] if joins else [],
            "left_behind": refused + [f"shim state: {e}" for e in shim.state_entries()]
                           + [f"allocation: {a}" for a in shim.allocations()],
        }
    finally:
        for endpoint in extra:  # a failure half-way: what the API made goes the same way
            try:
                call(shim.socket, "/NetworkDriver.DeleteEndpoint", {"NetworkID": api_net, "EndpointID": endpoint})
            except Exception:  # noqa: BLE001
                pass
        try:
            call(shim.socket, "/NetworkDriver.DeleteNetwork", {"NetworkID": api_net})
        except Exception:  # noqa: BLE001
            pass
        if dockerd:
            dockerd.close()
        shim.stop()
        for driver in (floor, ahead):
            if driver is not None:
                driver.terminate()
                driver.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
    return figures


# -- report -----------------------------------------------------------------------

def _what_dockerd_still_holds(dockerd, net: str) -> str:
    """What a refused `network rm` leaves to look at: the endpoints dockerd
    still lists on the network, and its log's errors and warnings."""
    attached = dockerd.cli("network", "inspect", "-f", "{{len .Containers}}", net, timeout=60).stdout.strip()
    log = Path(dockerd.root, "dockerd.log")
    errors = [line for line in log.read_text(errors="replace").splitlines()
              if "level=error" in line or "level=warn" in line] if log.exists() else []
    return f"{attached or '?'} endpoints listed; dockerd's last errors: {errors[-5:]}"


def report(cni: dict, dock: dict) -> str:
    lines = []
    if cni:
        n = cni["attachments"]
        lines += [f"CNI ADD, {n} namespaces on one bridge (/22), interleaved",
                  f"{'attachments':>14} {'ours p50':>9} {'p95':>8} {'ref p50':>9} {'p95':>8} {'ratio p50':>10} "
                  f"{'p95':>5} {'daemon RSS':>11}"]
        for ours, ref in zip(cni["add"]["ours"], cni["add"]["reference"]):
            lines.append(f"{ours['from']:>7}-{ours['to']:<6} {ours['p50_ms']:7.1f}ms {ours['p95_ms']:6.1f}ms "
                         f"{ref['p50_ms']:7.1f}ms {ref['p95_ms']:6.1f}ms {ours['p50_ms'] / ref['p50_ms']:10.2f} "
                         f"{ours['p95_ms'] / ref['p95_ms']:5.2f} {cni['daemon_rss_mib'][ours['to']]:7.1f} MiB")
        lines.append(f"CNI DEL (first {cni['window']} with ~{n} attached, last {cni['window']})")
        for ours, ref, label in zip(cni["del"]["ours"], cni["del"]["reference"], ("first", "last")):
            lines.append(f"{label + ' ' + str(cni['window']):>14} {ours['p50_ms']:7.1f}ms {ours['p95_ms']:6.1f}ms "
                         f"{ref['p50_ms']:7.1f}ms {ref['p95_ms']:6.1f}ms {ours['p50_ms'] / ref['p50_ms']:10.2f} "
                         f"{ours['p95_ms'] / ref['p95_ms']:5.2f}")
        lines.append(f"daemon RSS idle {cni['daemon_rss_mib'][0]} MiB, after all DELs "
                     f"{cni['daemon_rss_mib']['after DEL']} MiB; iptables rules at {n}: "
                     f"ours {cni['rules_at_peak']['ours']}, reference {cni['rules_at_peak']['reference']}")
        lines.append("left behind: " + ("nothing" if not cni["left_behind"] else "; ".join(cni["left_behind"][:10])))
    if dock:
        m = dock["containers"]
        lines += ["", f"docker run -d, {m} containers per network, interleaved; {docker_run.FLOOR_ROW}; "
                      "ahead: the floor with its veths made at CreateNetwork (Join only hands one out); "
                      "none: --network none",
                  f"{'containers':>14} {'ours p50':>9} {'p95':>8} {'bridge p50':>10} {'p95':>7} {'ratio p50':>10} "
                  f"{'p95':>5} {'floor p50':>10} {'ratio':>6} {'ahead p50':>10} {'ratio':>6} {'none p50':>9} "
                  f"{'shim RSS':>9} {'dockerd RSS':>12}"]
        runs = dock["run"]
        for ours, ref, floor, ahead, none in zip(runs["ours"], runs["reference"], runs["floor"], runs["ahead"],
                                                 runs["none"]):
            rss = dock["rss_mib"][ours["to"]]
            lines.append(f"{ours['from']:>7}-{ours['to']:<6} {ours['p50_ms']:7.0f}ms {ours['p95_ms']:6.0f}ms "
                         f"{ref['p50_ms']:8.0f}ms {ref['p95_ms']:5.0f}ms {ours['p50_ms'] / ref['p50_ms']:10.2f} "
                         f"{ours['p95_ms'] / ref['p95_ms']:5.2f} {floor['p50_ms']:8.0f}ms "
                         f"{floor['p50_ms'] / ref['p50_ms']:6.2f} {ahead['p50_ms']:8.0f}ms "
                         f"{ahead['p50_ms'] / ref['p50_ms']:6.2f} {none['p50_ms']:7.0f}ms "
                         f"{rss['shim']:5.1f} MiB {rss['dockerd']:8.1f} MiB")
        lines += ["containers' own ratios to the bridge driver, median [95 % interval]",
                  f"{'containers':>14} " + " ".join(f"{kind:>17}" for kind in PAIRED)]
        for counted, *paired in zip(runs["ours"], *(dock["paired"][kind] for kind in PAIRED)):
            lines.append(f"{counted['from']:>7}-{counted['to']:<6} " + " ".join(
                f"{docker_run.interval_text(p['median'], p['low'], p['high']):>17}" for p in paired))
        if dock["api_join"]:
            first, last = dock["api_join"]
            lines.append(f"Join through the HTTP API (CNI ADD, the interface handed over in the host): endpoints {first['from']}-"
                         f"{first['to']} p50 {first['p50_ms']:.0f}ms p95 {first['p95_ms']:.0f}ms, "
                         f"{last['from']}-{last['to']} p50 {last['p50_ms']:.0f}ms p95 {last['p95_ms']:.0f}ms "
                         f"(after the first {m} containers' endpoints)")
        lines += ["", "shim restart (SIGKILL, start): seconds from start",
                  f"{'endpoints':>10} {'answers':>8} {'inspect':>8} {'new container runs':>19} {'RSS after':>10} "
                  f"{'python + imports alone, before':>31}"]
        for r in dock["reloads"]:
            lines.append(f"{r['endpoints']:>10} {r['answers_s']:7.2f}s {r['inspect_s']:7.2f}s "
                         f"{r['new_container_s']:18.2f}s {r['rss_mib']:6.1f} MiB {r['imports_alone_s']:30.2f}s")
        lines.append("left behind: " + ("nothing" if not dock["left_behind"] else "; ".join(dock["left_behind"][:10])))
    return "\n".join(lines)


def update_docs(text: str, command: str) -> None:
    body = (f"{BEGIN}\n`{command}` on {time.strftime('%Y-%m-%d')}:\n\n```\n{text}\n```\n{END}")
    doc = DOCS.read_text()
    if BEGIN in doc:
        doc = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: body, doc, flags=re.S)
    else:
        doc = doc.rstrip("\n") + "\n\n## Load\n\n" + body + "\n"
    DOCS.write_text(doc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 namespaces, 40 containers, 400 endpoints")
    parser.add_argument("--namespaces", type=int)
    parser.add_argument("--containers", type=int)
    parser.add_argument("--endpoints", type=int, help="endpoints in the shim's state at the last restart")
    parser.add_argument("--skip", choices=("cni", "docker"), action="append", default=[])
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--update-docs", action="store_true", help="put the tables into docs/performance.md")
    opts = parser.parse_args()
    bench_main_guard(__file__)  # before anything is made
    if os.geteuid() != 0:
        raise SystemExit("needs root; run it as: tests/sandbox.sh .venv/bin/python bench/load.py")
    if os.path.exists("/run/docker/plugins/rancher-bridge.sock"):
        raise SystemExit("/run/docker/plugins/rancher-bridge.sock exists: run this in tests/sandbox.sh")
    if not os.path.exists(f"{REFERENCE}/bridge"):
        raise SystemExit("the reference plug-ins are missing: apt-get install containernetworking-plugins")
    n = opts.namespaces or (200 if opts.quick else 1000)
    m = opts.containers or (40 if opts.quick else 200)
    endpoints = opts.endpoints or (400 if opts.quick else 1000)
    cni = dock = {}
    started = time.monotonic()
    if "cni" not in opts.skip:
        size = max(1, n // 10)
        print(f"CNI: {n} namespaces, ours and the reference", flush=True)
        cni = cni_load(n, size, [size, n // 2, n])
    if "docker" not in opts.skip:
        size = max(1, m // 4)
        print(f"Docker: {m} containers per network, then {endpoints} endpoints", flush=True)
        dock = docker_load(m, size, [size, m // 2, m], endpoints)
    text = report(cni, dock)
    print()
    print(text)
    print(f"\n({time.monotonic() - started:.0f} s in all)")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"cni": cni, "docker": dock}, f, indent=2, default=str)
    if opts.update_docs:
        args = [a for a in sys.argv[1:] if a != "--update-docs"]
        update_docs(text, " ".join(["tests/sandbox.sh .venv/bin/python bench/load.py", *args]))
    return 1 if (cni and cni["left_behind"]) or (dock and dock["left_behind"]) else 0


if __name__ == "__main__":
    sys.exit(main())
