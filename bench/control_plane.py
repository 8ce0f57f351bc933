"""The multi-host control plane under load (issue 20): N simulated hosts, each
a network namespace with an underlay veth, the network's bridge and VTEP
(`vxlannet.ensure`, as the plug-in makes them) and the production VXLAN agent
(`vxlan_registry.Agent.run`, unchanged), against one etcd member of the
project's test kind (tests/etcd_cluster.py) on the underlay. No dockerd and no
containers: the plug-in's only part in the control plane is the record file it
writes per container (`vxlan_registry.record_endpoint`), and that is what this
benchmark writes, at a set rate, adding and removing endpoints.

Measured per N:
- convergence: from writing an endpoint's record on its host to its FDB entry
  and its neighbour entry being in the kernel of every other host (each host's
  RTM_NEWNEIGH notifications, read on a netlink socket opened in its
  namespace), p50 and p95;
- etcd requests/s (gRPC messages the member received, from its /metrics:
  grpc_server_msg_received_total) and bytes/s it sent to its clients
  (etcd_network_client_grpc_sent_bytes_total): what the agents read;
- agent CPU per host (% of one core): the agent processes' CPU, their
  children's (iptables) included, over the window, divided by N; idle and
  under churn.

Agents run as threads, each in its host's namespace (setns(2) is per thread),
spread over --workers processes: 200 Python processes would not fit beside the
other work on this machine. Each thread runs exactly what `cnm-shim
vxlan-agent` runs.

    tests/sandbox.sh .venv/bin/python bench/control_plane.py --hosts 10,50,200
"""

import argparse
import json
import os
import pathlib
import random
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from tests.isolation import bench_main_guard  # noqa: E402

VNI = 1042
PREFIX = "/rancher-cni"
ETCD_ADDRESS = "10.96.255.254"
SUBNET, GATEWAY = "10.42.0.0/16", "10.42.0.1"
NS_PREFIX = "rcnicp"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def sh(*argv):
    return subprocess.run(argv, check=True, capture_output=True, text=True)


def host_name(i: int) -> str:
    return f"{NS_PREFIX}{i}"


def host_address(i: int) -> str:
    return f"10.96.{i // 250}.{i % 250 + 1}"


# -- the worker: agents as threads, each in its host's namespace ---------------

def worker(spec: dict) -> None:
    """Runs the agents of spec["hosts"] until stdin closes."""
    import ipaddress
    from cni_backend import vxlan_registry, vxlannet
    from cni_backend.ipam.etcd_store import client_for
    from cni_backend.net import netns

    stop = threading.Event()
    ready = threading.Barrier(len(spec["hosts"]) + 1)
    endpoint = spec["etcd"]

    def agent(name: str, vtep: str, state: str, offset: float) -> None:
        fd = netns.open_netns(f"/run/netns/{name}")
        netns._setns(fd)  # this thread only
        os.close(fd)
        subnets = ((ipaddress.ip_network(SUBNET), ipaddress.ip_address(GATEWAY)),)
        vxlannet.ensure(vxlannet.VxlanNetwork(bridge=f"vxbr{VNI}", vni=VNI, port=4789, vtep_dev="underlay",
                                              peers=(), state_dir=state, registry=True, subnets=subnets))
        running = vxlan_registry.Agent(lambda: client_for(endpoint), PREFIX, VNI, vtep, state, ttl=10)
        ready.wait()
        time.sleep(max(0.0, spec["start"] + offset - time.time()))   # --ramp: hosts join as a cluster grows
        if spec.get("profile") and name == spec["hosts"][0][0]:   # one agent thread, profiled
            import cProfile
            clock = time.thread_time if spec.get("profile_clock") == "cpu" else time.monotonic
            profile = cProfile.Profile(clock)   # this thread's CPU, or the wall clock (where it waits)
            try:
                profile.runcall(running.run, interval=spec["interval"], stop=stop.is_set)
            finally:
                profile.dump_stats(f"{spec['profile']}.{name}")
            return
        running.run(interval=spec["interval"], stop=stop.is_set)

    threads = [threading.Thread(target=agent, args=(*h, offset), daemon=True)
               for h, offset in zip(spec["hosts"], spec["offsets"])]
    for thread in threads:
        thread.start()
    ready.wait()
    print("ready", flush=True)
    sys.stdin.read()
    stop.set()
    for thread in threads:
        thread.join(timeout=30)


# -- convergence, read from every host's kernel --------------------------------

RTM_NEWNEIGH, NDA_DST, NDA_LLADDR, AF_BRIDGE = 28, 1, 2, 7
NUD_PERMANENT = 0x80
RTMGRP_NEIGH = 4


def neigh_socket(name: str) -> socket.socket:
    from cni_backend.net import netns
    with netns.entered(f"/run/netns/{name}"):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: a burst must not overflow it
    sock.bind((0, RTMGRP_NEIGH))
    return sock


def parse_neigh(data: bytes):
    """(family, state, {attr: bytes}) per RTM_NEWNEIGH message in `data`."""
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16:
            return
        if kind == RTM_NEWNEIGH:
            family, _, _, _, state, _, _ = struct.unpack_from("=BBHiHBB", data, offset + 16)
            attrs, at = {}, offset + 28
            while at + 4 <= offset + length:
                alen, atype = struct.unpack_from("=HH", data, at)
                if alen < 4:
                    break
                attrs[atype] = data[at + 4:at + alen]
                at += (alen + 3) & ~3
            yield family, state, attrs
        offset += (length + 3) & ~3


class Convergence:
    """Per endpoint added: when its FDB and neighbour entries reached every
    other host."""

    def __init__(self, names: list):
        self.names = names
        self.sockets = {neigh_socket(n): i for i, n in enumerate(names)}
        self.lock = threading.Lock()
        self.pending = {}      # mac -> [t0, ip, origin host, {host: 0b01 fdb | 0b10 neigh}]
        self.early = {}        # (host, mac) -> bits seen before the endpoint was announced here
        self.done = []         # (t0, seconds)
        self.stopped = False
        self.withdrawn = 0
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def expect(self, mac: str, ip: str, origin: int, t0: float) -> None:
        with self.lock:
            entry = [t0, ip, origin, {}]
            self.pending[mac] = entry
            for host in range(len(self.names)):
                bits = self.early.pop((host, mac), 0)
                if bits:
                    self._mark(mac, entry, host, bits, time.monotonic())

    def withdraw(self, mac: str) -> None:
        """An endpoint removed before it converged: not counted."""
        with self.lock:
            if self.pending.pop(mac, None) is not None:
                self.withdrawn += 1

    def _mark(self, mac, entry, host, bits, now) -> None:
        if host == entry[2]:
            return
        entry[3][host] = entry[3].get(host, 0) | bits
        if entry[3][host] == 3 and len(entry[3]) == len(self.names) - 1 and all(v == 3 for v in entry[3].values()):
            self.done.append((entry[0], now - entry[0]))
            del self.pending[mac]

    def _loop(self) -> None:
        import select
        poller = select.epoll()
        by_fd = {}
        for sock, host in self.sockets.items():
            poller.register(sock.fileno(), select.EPOLLIN)
            by_fd[sock.fileno()] = (sock, host)
        while not self.stopped:
            for fd, _ in poller.poll(0.2):
                sock, host = by_fd[fd]
                try:
                    data = sock.recv(1 << 20)
                except OSError as exc:  # ENOBUFS: lost notifications; the final check still counts
                    print(f"netlink socket of host {host}: {exc}", file=sys.stderr)
                    continue
                now = time.monotonic()
                with self.lock:
                    for family, state, attrs in parse_neigh(data):
                        mac = attrs.get(NDA_LLADDR)
                        if not mac or len(mac) != 6 or not state & NUD_PERMANENT:
                            continue
                        mac = ":".join(f"{b:02x}" for b in mac)
                        bits = 1 if family == AF_BRIDGE else 2
                        entry = self.pending.get(mac)
                        if entry is None:
                            self.early[(host, mac)] = self.early.get((host, mac), 0) | bits
                        else:
                            self._mark(mac, entry, host, bits, now)

    def close(self) -> None:
        self.stopped = True
        self.thread.join()
        for sock in self.sockets:
            sock.close()


# -- what etcd and the agents spent ---------------------------------------------

def etcd_counters(endpoint: str) -> dict:
    text = urllib.request.urlopen(f"{endpoint}/metrics", timeout=10).read().decode()
    requests = sent = 0.0
    for line in text.splitlines():
        if line.startswith("grpc_server_msg_received_total{"):
            requests += float(line.rsplit(" ", 1)[1])
        elif line.startswith("etcd_network_client_grpc_sent_bytes_total "):
            sent = float(line.rsplit(" ", 1)[1])
    return {"requests": requests, "bytes": sent}


def cpu_seconds(pid: int, children: bool = True) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if children else 0)
    return ticks / CLK_TCK


class Window:
    def __init__(self, endpoint: str, workers: list, etcd_pid: int):
        self.endpoint, self.workers, self.etcd_pid = endpoint, workers, etcd_pid
        self.start = self._sample()

    def _sample(self) -> dict:
        return {"t": time.monotonic(), **etcd_counters(self.endpoint),
                "agents": sum(cpu_seconds(w.pid) for w in self.workers),
                "etcd_cpu": cpu_seconds(self.etcd_pid, children=False)}

    def result(self, hosts: int) -> dict:
        end = self._sample()
        seconds = end["t"] - self.start["t"]
        return {"seconds": round(seconds, 1),
                "etcd_requests_per_s": round((end["requests"] - self.start["requests"]) / seconds, 1),
                "etcd_bytes_read_per_s": round((end["bytes"] - self.start["bytes"]) / seconds),
                "agent_cpu_per_host_pct": round(100 * (end["agents"] - self.start["agents"]) / seconds / hosts, 2),
                "etcd_cpu_pct": round(100 * (end["etcd_cpu"] - self.start["etcd_cpu"]) / seconds, 1)}


# -- one run --------------------------------------------------------------------

def build(hosts: int) -> None:
    sh("ip", "link", "add", "cpul", "type", "bridge")
    sh("ip", "addr", "add", f"{ETCD_ADDRESS}/16", "dev", "cpul")
    sh("ip", "link", "set", "cpul", "up")
    for i in range(hosts):
        name = host_name(i)
        sh("ip", "netns", "add", name)
        sh("ip", "link", "add", f"cpv{i}", "type", "veth", "peer", "name", "underlay", "netns", name)
        sh("ip", "link", "set", f"cpv{i}", "master", "cpul", "up")
        sh("ip", "-n", name, "addr", "add", f"{host_address(i)}/16", "dev", "underlay")
        sh("ip", "-n", name, "link", "set", "underlay", "up")
        sh("ip", "-n", name, "link", "set", "lo", "up")


def teardown(hosts: int) -> None:
    for i in range(hosts):
        subprocess.run(["ip", "link", "del", f"cpv{i}"], capture_output=True)
        subprocess.run(["ip", "netns", "del", host_name(i)], capture_output=True)
    subprocess.run(["ip", "link", "del", "cpul"], capture_output=True)


def percentile(values: list, q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run(hosts: int, args, root: pathlib.Path) -> dict:
    from cni_backend import vxlan_registry
    from tests.etcd_cluster import EtcdCluster
    build(hosts)
    etcd = workers = monitor = None
    try:
        etcd = EtcdCluster(members=1, address=ETCD_ADDRESS)
        endpoint = etcd.endpoints[0]
        etcd_pid = etcd.processes[etcd.names[0]].pid
        states = [root / f"h{i}" for i in range(hosts)]
        monitor = Convergence([host_name(i) for i in range(hosts)])
        rng = random.Random(20)
        counters = [0] * hosts
        present = [dict() for _ in range(hosts)]   # per host: record name -> ip
        macs = {}                                  # (record name, host) -> mac

        def add(i: int) -> None:
            k = counters[i]
            counters[i] += 1
            ip = f"10.42.{i % 250 + 1}.{k % 250 + 2}"
            if any(ip == vxlan_ip for vxlan_ip in present[i].values()):
                return
            mac = f"02:42:{(i >> 8) & 0xff:02x}:{i & 0xff:02x}:{(k >> 8) & 0xff:02x}:{k & 0xff:02x}"
            name = f"c{k}"
            monitor.expect(mac, ip, i, time.monotonic())
            vxlan_registry.record_endpoint(str(states[i]), VNI, name, [f"{ip}/16"], mac)
            present[i][name] = ip
            macs[name, i] = mac

        def remove(i: int) -> None:
            if present[i]:
                name = rng.choice(sorted(present[i]))
                vxlan_registry.forget_endpoint(str(states[i]), VNI, name)
                del present[i][name]
                monitor.withdraw(macs.pop((name, i)))

        for i in range(hosts):
            states[i].mkdir(parents=True)
            for _ in range(args.endpoints):
                add(i)
        initial = len(monitor.pending)
        t_start = time.monotonic()
        start = time.time() + 5   # the workers' agents start from here, at --ramp hosts a second
        workers = []
        per = -(-hosts // args.workers)
        for w in range(args.workers):
            mine = [(host_name(i), host_address(i), str(states[i])) for i in range(w * per, min(hosts, (w + 1) * per))]
            if not mine:
                continue
            offsets = [i / args.ramp if args.ramp else 0.0 for i in range(w * per, w * per + len(mine))]
            spec = {"hosts": mine, "etcd": endpoint, "interval": args.interval, "profile": args.profile,
                    "profile_clock": args.profile_clock, "start": start, "offsets": offsets}
            code = ["--code", args.code] if args.code else []
            workers.append(subprocess.Popen([sys.executable, __file__, *code, "--worker", json.dumps(spec)],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for process in workers:
            assert process.stdout.readline().strip() == "ready", "a worker did not start"
        deadline = time.monotonic() + args.settle + (hosts / args.ramp if args.ramp else 0)
        while monitor.pending and time.monotonic() < deadline:
            time.sleep(0.2)
        first = {"initial_endpoints": initial, "initial_unconverged": len(monitor.pending),
                 "initial_full_s": round(max((s for _, s in monitor.done), default=float("nan")), 2),
                 "startup_s": round(time.monotonic() - t_start, 1)}
        monitor.done.clear()
        time.sleep(2)
        idle = Window(endpoint, workers, etcd_pid)
        time.sleep(args.idle_seconds)
        idle_result = idle.result(hosts)
        churn = Window(endpoint, workers, etcd_pid)
        changes, period = 0, 1.0 / args.rate
        t_next = time.monotonic()
        end = t_next + args.churn_seconds
        while time.monotonic() < end:
            i = rng.randrange(hosts)
            (add if changes % 2 == 0 else remove)(i)
            changes += 1
            t_next += period
            time.sleep(max(0.0, t_next - time.monotonic()))
        churn_result = churn.result(hosts)
        deadline = time.monotonic() + args.settle
        while monitor.pending and time.monotonic() < deadline:
            time.sleep(0.2)
        times = [s for _, s in monitor.done]
        return {"hosts": hosts, "endpoints_per_host": args.endpoints, "interval_s": args.interval, "ramp_per_s": args.ramp,
                **first, "changes": changes, "rate_per_s": args.rate,
                "converged": len(times), "unconverged": len(monitor.pending), "withdrawn": monitor.withdrawn,
                "convergence_p50_s": round(statistics.median(times), 3) if times else None,
                "convergence_p95_s": round(percentile(times, 0.95), 3) if times else None,
                "idle": idle_result, "churn": churn_result,
                "loadavg": open("/proc/loadavg").read().split()[:3]}
    finally:
        if monitor is not None:
            monitor.close()
        for process in workers or []:
            process.stdin.close()
        for process in workers or []:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if etcd is not None:
            etcd.close()
        teardown(hosts)


def table(results: list, label: str) -> str:
    lines = [f"| agent | hosts | endpoints | conv. p50 s | conv. p95 s | idle etcd req/s | idle etcd KB/s "
             f"| idle agent CPU %/host | churn etcd req/s | churn etcd KB/s | churn agent CPU %/host | etcd CPU % idle/churn |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        i, c = r["idle"], r["churn"]
        lines.append(f"| {label} | {r['hosts']} | {r['hosts'] * r['endpoints_per_host']} | {r['convergence_p50_s']} "
                     f"| {r['convergence_p95_s']} | {i['etcd_requests_per_s']} | {i['etcd_bytes_read_per_s'] / 1000:.1f} "
                     f"| {i['agent_cpu_per_host_pct']} | {c['etcd_requests_per_s']} "
                     f"| {c['etcd_bytes_read_per_s'] / 1000:.1f} | {c['agent_cpu_per_host_pct']} "
                     f"| {i['etcd_cpu_pct']}/{c['etcd_cpu_pct']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", default="10,50", help="comma-separated N, e.g. 10,50,200")
    parser.add_argument("--endpoints", type=int, default=5, help="endpoints per host at the start")
    parser.add_argument("--rate", type=float, default=10.0, help="endpoint changes per second under churn")
    parser.add_argument("--idle-seconds", type=float, default=15.0)
    parser.add_argument("--churn-seconds", type=float, default=20.0)
    parser.add_argument("--settle", type=float, default=60.0, help="at most this long to wait for convergence")
    parser.add_argument("--interval", type=float, default=1.0, help="the agent's --interval")
    parser.add_argument("--ramp", type=float, default=0.0,
                        help="hosts started a second (0: all at once); the settle time after the start grows by "
                             "the ramp's length")
    parser.add_argument("--workers", type=int, default=2, help="processes the agents' threads are spread over")
    parser.add_argument("--label", default="", help="names the agent in the table (e.g. polling, watch)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--code", help="take cni_backend from this directory (e.g. `git archive` of an older "
                        "commit, for the baseline) instead of this checkout")
    parser.add_argument("--profile", help="cProfile the first agent thread of each worker process into "
                        "PROFILE.<host> (pstats format)")
    parser.add_argument("--profile-clock", choices=("cpu", "wall"), default="cpu",
                        help="what --profile measures: the thread's CPU time, or wall time (where it waits)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.code:
        sys.path.insert(0, os.path.abspath(args.code))
    if args.worker:
        worker(json.loads(args.worker))
        return
    bench_main_guard(__file__)
    sizes = [int(n) for n in args.hosts.split(",")]
    if any(not 2 <= n <= 250 for n in sizes):
        raise SystemExit(f"--hosts {args.hosts}: each N must be 2 to 250")
    import cni_backend
    print(f"agent code: {os.path.dirname(cni_backend.__file__)}; load average before: "
          f"{open('/proc/loadavg').read().split()[:3]}", flush=True)
    results = []
    root = pathlib.Path(tempfile.mkdtemp(prefix="rcni-cp."))
    try:
        for n in sizes:
            result = run(n, args, root / str(n))
            print(json.dumps(result), flush=True)
            results.append(result)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(table(results, args.label or "agent"))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
