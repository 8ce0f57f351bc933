"""`cnm-shim compare`: one network, containers attached and detached through
Docker (CNM: dockerd -> shim -> CNI) and through CNI runtimes (containerd's
`ctr run --cni`, our invoke API into bare namespaces), measured side by side.

It needs a Docker engine (DOCKER_HOST / --docker-host) with our shim serving
the rancher-* drivers, and the shim's CNI daemon (--cni-socket); containerd is
the one at --containerd-socket or a private one it starts. While it runs, the
trace control file (cni_backend.trace) makes the shim, the CNI daemon and the
invoke API record phase timings into the output folder; it is removed after.
Everything it makes (containers, namespaces, links, the network, the image)
carries the prefix `rcmp` and is removed before it returns, also on failure.
"""

import contextlib
import datetime
import importlib.metadata
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

from cni_backend import files, trace, version
from cni_backend.invoke import api, conflist as conflists

from .. import backends, paths
from . import observe, report
from .models import (MODELS, PREFIX, Containerd, CtrModel, DockerModel, NetnsModel, busybox_rootfs, eth0_ipv4,
                     run, token)

# bridge 10.251.0.0/24, flat 10.252.0.0/24, vxlan 10.253.0.0/24, a next backend 10.254.0.0/24
DEFAULT_SUBNETS = {name: f"10.{251 + i}.0.0/24" for i, name in enumerate(backends.REGISTRY)}


def add_parser(sub) -> None:
    parser = sub.add_parser("compare", help="attach/detach containers through Docker (CNM) and CNI runtimes, "
                                            "report latency, topology, data plane and calls side by side")
    parser.add_argument("--backend", choices=tuple(backends.REGISTRY), default="bridge")
    parser.add_argument("--conflist", help="conflist backend: the CNI network (its \"name\") in --cni-conf-dir, "
                                           "e.g. the reference bridge with host-local; its IPAM store must be one "
                                           "all three models share (host-local: a dataDir outside /var/lib)")
    parser.add_argument("-n", "--containers", type=int, default=10, help="containers per model (at least 2)")
    parser.add_argument("--docker-host", default=os.environ.get("DOCKER_HOST", "unix:///run/docker.sock"))
    parser.add_argument("--containerd-socket", help="default: start a private containerd")
    parser.add_argument("--cni-path", default=os.environ.get("CNI_PATH", paths.CNI_BIN_DIR).split(os.pathsep)[0],
                        help="our CNI executables (for the invoke model)")
    parser.add_argument("--cni-conf-dir", default=paths.CNI_CONF_DIR, help="where the shim exports conflists")
    parser.add_argument("--cni-socket", default=os.environ.get("RANCHER_CNI_SOCKET", paths.CNI_SOCKET),
                        help="the shim's CNI daemon")
    parser.add_argument("--subnet", help="default per backend: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_SUBNETS.items()))
    parser.add_argument("--vtep-dev", help="vxlan: the underlay interface (default: a veth pair compare makes)")
    parser.add_argument("--iperf-seconds", type=int, default=3)
    parser.add_argument("--out", help="the report folder (default ./compare-BACKEND-TIMESTAMP)")
    parser.set_defaults(func=main)


def main(opts) -> int:
    if opts.containers < 2:
        raise SystemExit("compare: --containers must be at least 2 (the data plane needs a pair per model)")
    if (opts.backend == "conflist") != bool(opts.conflist):
        raise SystemExit("compare: --conflist NAME goes with --backend conflist, and only with it")
    if not os.path.exists(opts.cni_socket):
        raise SystemExit(f"compare: no CNI daemon at {opts.cni_socket} (the shim's --cni-socket): the CNI runtimes "
                         "must reach the same IPAM store as the shim")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = os.path.abspath(opts.out or f"compare-{opts.backend}-{stamp}")
    os.makedirs(folder, exist_ok=True)
    with Comparison(opts, folder) as comparison:
        figures = comparison.measure()
    written = report.write(figures, folder)
    print(report.console(figures))
    print("\nreport: " + ", ".join(written.values()))
    if "chart.png" not in written:
        print(f"compare: {report.NO_CHART}")
    return 0


class Progress:
    def __init__(self, total: int):
        self.total, self.done = total, 0

    def step(self, label: str) -> None:
        self.done += 1
        filled = int(30 * self.done / self.total)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {label:<32}")
        sys.stderr.flush()
        if self.done == self.total:
            sys.stderr.write("\n")


class Comparison(contextlib.ExitStack):
    def __init__(self, opts, folder: str):
        super().__init__()
        self.opts, self.folder = opts, folder
        self.trace_path = os.path.join(folder, "trace.jsonl")
        self.subnet = opts.subnet or DEFAULT_SUBNETS[opts.backend]
        self.started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")

    def __enter__(self):
        super().__enter__()
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    # -- setup; every step registers its undo --------------------------------

    def _setup(self) -> None:
        import docker
        opts = self.opts
        self.client = docker.DockerClient(base_url=opts.docker_host, version="auto", timeout=120)
        self.callback(self.client.close)
        self.image = f"{PREFIX}-busybox:{token()}"
        repository, tag = self.image.split(":")
        self.client.api.import_image_from_data(busybox_rootfs(), repository=repository, tag=tag,
                                               changes=['ENV PATH=/bin', 'CMD ["sh"]'])
        self.callback(self.client.images.remove, self.image, force=True)
        archive = b"".join(self.client.images.get(self.image).save(named=True))
        self._trace_on()
        self.docker_name = f"{PREFIX}-{opts.backend}-{token()}"
        driver = backends.get(opts.backend).driver
        if opts.backend == "conflist":
            conf, raw, options, ipam = self._foreign_network(docker)
        else:
            options = {"cni.export": "true", "cni.name": f"{PREFIX}{token()}"}
            gateway = str(next(iter(__import__("ipaddress").ip_network(self.subnet).hosts())))
            options.update(self._backend_fixture(gateway))
            # our IpamDriver: with Docker's own IPAM, Docker would hand out addresses the CNI runtimes hold
            ipam = docker.types.IPAMConfig(driver=driver,
                                           pool_configs=[docker.types.IPAMPool(subnet=self.subnet, gateway=gateway)])
        network = self.client.networks.create(self.docker_name, driver=driver, options=options,
                                              ipam=ipam)
        self.callback(network.remove)
        self.network_id = network.id
        if opts.backend != "conflist":
            self.cni_name = options["cni.name"]
            conf, raw = conflists.find(os.path.join(opts.cni_conf_dir, f"50-{self.cni_name}.conflist"),
                                       opts.cni_conf_dir)
        os.environ["RANCHER_CNI_SOCKET"] = opts.cni_socket  # the executables hand their work to the shim's daemon
        cache = tempfile.mkdtemp(prefix="rcmp-cache.")
        self.callback(shutil.rmtree, cache, ignore_errors=True)
        netns_model = NetnsModel(api.CNI(self.plugin_dirs, cache_dir=cache), conf, raw)
        self.callback(netns_model.cleanup)
        containerd = Containerd(opts.containerd_socket, archive, f"docker.io/library/{self.image}")
        self.callback(containerd.close)
        self.containerd_version = containerd.version()
        containerd.link_plugins([p["type"] for p in conf["plugins"]], self.plugin_dirs)
        ctr_model = CtrModel(containerd, f"00-{conf['name']}.conflist", raw, dict(os.environ))
        self.callback(ctr_model.cleanup)
        docker_model = DockerModel(self.client, self.docker_name, self.image)
        self.callback(docker_model.cleanup)
        self.models = {"cnm": docker_model, "ctr": ctr_model, "netns": netns_model}

    @property
    def plugin_dirs(self) -> list:
        """Our executables first, then the CNI path the shim searches (the reference plug-ins)."""
        return [self.opts.cni_path] + [d for d in paths.CNI_PATH if d != self.opts.cni_path]

    def _foreign_network(self, docker) -> tuple:
        """(conflist, raw, options, IPAM config) of a conflist network: Docker's
        null IPAM, so the conflist's own IPAM chooses every model's addresses
        (from one store) and the shim returns Docker's to it."""
        conf, raw = conflists.named(self.opts.conflist, self.opts.cni_conf_dir, self.plugin_dirs)
        self.cni_name = conf["name"]
        ranges = [r for p in conf["plugins"] for rs in (p.get("ipam") or {}).get("ranges", []) for r in rs]
        self.subnet = ", ".join(str(r.get("subnet")) for r in ranges) or "chosen by the conflist's IPAM"
        return conf, raw, {"cni.conflist": conf["name"]}, docker.types.IPAMConfig(driver="null")

    def _trace_on(self) -> None:
        control = trace.control_path()
        made_dir = not os.path.isdir(os.path.dirname(control))
        os.makedirs(os.path.dirname(control), exist_ok=True)
        previous = open(control).read() if os.path.exists(control) else None
        files.write_atomic(control, self.trace_path, 0o644)

        def off():
            if previous is None:
                os.unlink(control)
            else:
                files.write_atomic(control, previous, 0o644)
            if made_dir:
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.dirname(control))
        self.callback(off)

    def _backend_fixture(self, gateway: str) -> dict:
        """flat: a veth as the parent uplink, its peer in a 'router' namespace holding
        the gateway; vxlan: a veth underlay (198.18.0.0/30, benchmark range)."""
        backend = self.opts.backend
        if backend == "bridge":
            return {}
        suffix = token()
        outside, router = f"{PREFIX}u{suffix}", f"{PREFIX}r{suffix}"
        if backend == "vxlan" and self.opts.vtep_dev:
            return {"vtep_dev": self.opts.vtep_dev, "vni": str(random.randint(5000, 9000))}
        run("ip", "netns", "add", router)
        self.callback(run, "ip", "netns", "del", router, check=False)
        run("ip", "link", "add", outside, "type", "veth", "peer", "name", "up0", "netns", router)
        self.callback(run, "ip", "link", "del", outside, check=False)
        inside = ["ip", "netns", "exec", router]
        run(*inside, "ip", "link", "set", "up0", "up")
        run(*inside, "ip", "link", "set", "lo", "up")
        if backend == "flat":
            prefix = self.subnet.split("/")[1]
            run(*inside, "ip", "addr", "add", f"{gateway}/{prefix}", "dev", "up0")
            return {"parent": outside}
        run("ip", "addr", "add", "198.18.0.1/30", "dev", outside)
        run("ip", "link", "set", outside, "up")
        run(*inside, "ip", "addr", "add", "198.18.0.2/30", "dev", "up0")
        return {"vtep_dev": outside, "vni": str(random.randint(5000, 9000))}

    # -- measuring ------------------------------------------------------------------

    def measure(self) -> dict:
        n = self.opts.containers
        pairs = [("cnm", "cnm"), ("ctr", "ctr"), ("netns", "netns"), ("cnm", "ctr"), ("cnm", "netns"), ("ctr", "netns")]
        progress = Progress(2 * n * len(MODELS) + len(pairs) + 1)
        windows, attached = [], {m: [] for m in MODELS}
        firewall, topology = {}, {}
        for i in range(n):  # interleaved, the order rotating, so no model always goes first
            order = list(MODELS)[i % 3:] + list(MODELS)[:i % 3]
            for model in order:
                before = observe.firewall_snapshot() if i == 1 else None
                start = time.time()
                handle, elapsed = self.models[model].attach(i)
                windows.append([start, None, model, "attach", elapsed])
                attached[model].append(handle)
                if before is not None:
                    after = observe.firewall_snapshot()
                    windows[-1][1] = time.time()  # the snapshot must not eat the next op's window
                    firewall[model] = (before, after, handle.netns)
                progress.step(f"attach {model} #{i}")
        ips = {m: [eth0_ipv4(a.netns) for a in attached[m]] for m in MODELS}
        for model in MODELS:
            topo, norm = observe.container_topology(attached[model][0].netns)
            before, after, netns = firewall[model]
            _, norm1 = observe.container_topology(netns)
            topo["host.firewall.added"] = observe.firewall_added(before, after, norm1)
            topology[model] = topo
        progress.step("topology")
        dataplane = []
        for a, b in pairs:
            client = attached[a][0]
            server = attached[b][1] if a == b else attached[b][0]
            server_ip = ips[b][1] if a == b else ips[b][0]
            dataplane.append({"pair": f"{a} -> {b}", "ping": observe.ping(client.netns, server_ip),
                              "iperf3": observe.iperf3(server.netns, server_ip, client.netns, self.opts.iperf_seconds)})
            progress.step(f"data plane {a} -> {b}")
        for i in reversed(range(n)):
            order = list(MODELS)[i % 3:] + list(MODELS)[:i % 3]
            for model in order:
                start = time.time()
                elapsed = self.models[model].detach(attached[model].pop())
                windows.append([start, None, model, "detach", elapsed])
                progress.step(f"detach {model} #{i}")
        windows.append([time.time(), None, None, None, None])
        return self._figures(windows, topology, dataplane, ips)

    def _figures(self, windows, topology, dataplane, ips) -> dict:
        spans = trace.spans(self.trace_path)
        samples = {m: {"attach": [], "detach": []} for m in MODELS}
        calls = {m: {} for m in MODELS}
        for current, following in zip(windows, windows[1:]):
            start, end, model, op, elapsed = current
            end = end or following[0]
            inside = [s for s in spans if start <= s["t0"] < end]
            phase = {"total": elapsed * 1000}
            for name, key in (("shim", "docker->shim"), ("cni.exec", "cni exec"), ("plugin", "plug-in"),
                              ("netlink", "netlink"), ("firewall", "firewall")):
                chosen = [s["ms"] for s in inside if s["span"] == name]
                if chosen:
                    phase[key] = sum(chosen)
            if "docker->shim" in phase:
                # DeleteEndpoint's DEL runs after its answer: outside every shim span, not the shim's own
                calls_of_shim = [(s["t0"], s["t0"] + s["ms"] / 1000) for s in inside if s["span"] == "shim"]
                after = [s["ms"] for s in inside if s["span"] == "cni.exec"
                         and not any(a <= s["t0"] <= b for a, b in calls_of_shim)]
                phase["shim own"] = phase["docker->shim"] - (phase.get("cni exec", 0) - sum(after))
                phase["outside shim"] = phase["total"] - phase["docker->shim"]
                if after:
                    phase["after answer"] = sum(after)
            samples[model][op].append(phase)
            counted = calls[model]
            for s in inside:
                kind = {"shim": f"Docker -> plug-in: {s.get('path', '').lstrip('/')}",
                        "cni.exec": "CNI executions (caller side)", "plugin": "plug-in runs (our plug-ins)",
                        "netlink": "netlink requests", "firewall": "firewall tool runs"}[s["span"]]
                counted[kind] = counted.get(kind, 0) + 1
        n = self.opts.containers
        for model, counted in calls.items():
            counted.update({k: round(v / n, 1) for k, v in counted.items()})
            counted["Docker -> plug-in requests (all)"] = round(sum(
                v for k, v in counted.items() if k.startswith("Docker -> plug-in:")), 1)
        latency = {m: {op: {p: report.stats([s[p] for s in samples[m][op] if p in s])
                            for p in report.PHASES if any(p in s for s in samples[m][op])}
                        for op in samples[m]} for m in MODELS}
        return {
            "backend": self.opts.backend, "containers": n, "started": self.started,
            "command": shlex.join(["cnm-shim", *sys.argv[1:]]),  # also when run as python -m cnm_shim.cli
            "environment": self._versions(),
            "network": {"docker_name": self.docker_name, "cni_name": self.cni_name, "subnet": self.subnet,
                        "id": self.network_id},
            "models": MODELS, "latency": latency, "samples": samples, "calls": calls,
            "topology": {"per_model": topology, "differences": observe.differences(topology)},
            "dataplane": dataplane, "addresses": ips,
        }

    def _versions(self) -> dict:
        info = self.client.version()
        try:
            ours = importlib.metadata.version("rancher-cnm-cni")
        except importlib.metadata.PackageNotFoundError:
            ours = "?"
        here = os.path.dirname(os.path.abspath(__file__))
        commit = subprocess.run(["git", "-C", here, "describe", "--always", "--dirty"], capture_output=True,
                                text=True).stdout.strip()
        iperf = run("iperf3", "--version", check=False).stdout.splitlines()
        return {"Docker engine": f"{info.get('Version')} (API {info.get('ApiVersion')})",
                "containerd": self.containerd_version,
                "kernel": platform.release(),
                "plug-ins (rancher-cnm-cni)": f"{ours}" + (f", git {commit}" if commit else ""),
                "CNI spec versions": ", ".join(version.SUPPORTED_VERSIONS),
                "iperf3": iperf[0] if iperf else "?",
                "python": platform.python_version(),
                "host": f"{os.cpu_count()} CPUs"}
