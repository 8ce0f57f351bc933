"""Prometheus metrics of `cnm-shim serve`, through the official
prometheus_client library.

Where: a Unix socket (RUN_DIR/metrics.sock, mode 0660, root) by default; a TCP
address only with `serve --metrics-listen HOST:PORT`, as the plug-in listens on
no TCP port unless told. `cnm-shim metrics` prints what the socket serves.

Several gunicorn workers answer Docker: each records its calls in the
library's multiprocess mode (one file per process in RUN_DIR/metrics,
PROMETHEUS_MULTIPROC_DIR, set by `serve` before any worker starts and emptied
at each start), and the exporter, a child process of `serve`, sums the files
at every scrape. A worker that dies keeps its counts (its files stay).

What:
  cnm_docker_calls_total{verb,backend,result}  Docker's calls; result ok|error
  cnm_docker_call_seconds{verb,backend}        their latency (histogram)
  cnm_cni_calls_total{command,plugin,result}   CNI plug-in executions the shim made for them
  cnm_cni_call_seconds{command,plugin}         their latency (histogram)
  cnm_cni_daemon_workers_busy, _limit         the CNI daemon's workers serving a call, and how many may
                                               (when the daemon is serve's child)
  cnm_cni_daemon_calls_total                   calls the CNI daemon took (one worker forked for each)
  cnm_endpoints{network,driver}                endpoints per network, from state.db
  cnm_ipam_pool_addresses{network,pool,kind}   size, used, free of each network's address range
                                               (used: its endpoints' addresses and the gateway)
  cnm_firewall_rules{family}                   firewall rules the plug-in owns, counted at each scrape:
                                               ipv4/ipv6, iptables (its chains' rules and its jumps, by
                                               iptables-save); nft, the rules of its nftables tables
                                               (bridge rancher_cni, netdev rancher_flat_*; nft -j list ruleset)
  cnm_vxlan_vtep_up{network}                   1 when the network's VTEP is up and on its bridge
  cnm_vxlan_flood_peers{network}               the VTEP's flood peers (the other hosts it sends to)
  cnm_ipsec_charon_running{network}            1 when the network's charon runs
  cnm_ipsec_peer_up{network,peer}              1 when the peer's IKE_SA is ESTABLISHED and the network's
                                               CHILD_SA INSTALLED
  cnm_doctor_last_run_timestamp_seconds        when `cnm-shim doctor` last ran (RUN_DIR/doctor-last.json)
  cnm_doctor_status{status}                    1 for what it concluded: healthy, drift, cannot check
  cnm_doctor_drift{kind}                       the problems it left unrepaired, by kind
"""

import collections
import http.server
import ipaddress
import json
import os
import socket
import socketserver
import subprocess
import threading
import time

ENV = "PROMETHEUS_MULTIPROC_DIR"
SOCKET_NAME = "metrics.sock"
DIR_NAME = "metrics"
DOCTOR_RECORD = "doctor-last.json"
DOCTOR_KINDS = ("network", "endpoint", "firewall", "ipam", "pool", "cache", "staging", "ipsec", "docker-endpoint")
DOCTOR_STATUSES = ("healthy", "drift", "cannot check")
# Docker's verbs, the only values the verb label takes (anything else: "other")
VERBS = ("Plugin.Activate", "NetworkDriver.GetCapabilities", "NetworkDriver.CreateNetwork",
         "NetworkDriver.AllocateNetwork", "NetworkDriver.DeleteNetwork", "NetworkDriver.FreeNetwork",
         "NetworkDriver.CreateEndpoint", "NetworkDriver.EndpointOperInfo", "NetworkDriver.DeleteEndpoint",
         "NetworkDriver.Join", "NetworkDriver.Leave", "NetworkDriver.DiscoverNew", "NetworkDriver.DiscoverDelete",
         "NetworkDriver.ProgramExternalConnectivity", "NetworkDriver.RevokeExternalConnectivity",
         "IpamDriver.GetCapabilities", "IpamDriver.GetDefaultAddressSpaces", "IpamDriver.RequestPool",
         "IpamDriver.ReleasePool", "IpamDriver.RequestAddress", "IpamDriver.ReleaseAddress")
CNI_COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


def prepare(run_dir: str) -> str:
    """The multiprocess folder, emptied (counts start at zero with the server),
    and named in the environment the workers inherit. Before prometheus_client
    is imported anywhere in this process."""
    folder = os.path.join(run_dir, DIR_NAME)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    for name in os.listdir(folder):
        if name.endswith(".db"):
            os.unlink(os.path.join(folder, name))
    os.environ[ENV] = folder
    return folder


def verb_of(path: str) -> str:
    verb = path.lstrip("/")
    return verb if verb in VERBS else "other"


class Calls:
    """The per-call metrics, made on first use (in the worker, after the
    environment names the multiprocess folder)."""

    def __init__(self):
        self._made = None

    def _metrics(self):
        if self._made is None:
            from prometheus_client import Counter, Histogram
            self._made = (Counter("cnm_docker_calls", "Docker's calls to the plug-in, by verb, backend and result",
                                  ["verb", "backend", "result"]),
                          Histogram("cnm_docker_call_seconds", "How long the plug-in took to answer Docker's calls",
                                    ["verb", "backend"], buckets=BUCKETS),
                          Counter("cnm_cni_calls", "CNI plug-in executions the shim made, by command, plug-in "
                                  "type and result", ["command", "plugin", "result"]),
                          Histogram("cnm_cni_call_seconds", "How long a CNI plug-in execution took",
                                    ["command", "plugin"], buckets=BUCKETS))
        return self._made

    def observe(self, verb: str, backend: str, ok: bool, seconds: float) -> None:
        if ENV not in os.environ:  # not under serve (the app in tests, a one-off): nothing to export to
            return
        counter, histogram = self._metrics()[:2]
        counter.labels(verb, backend, "ok" if ok else "error").inc()
        histogram.labels(verb, backend).observe(seconds)

    def observe_cni(self, command: str, plugin: str, ok: bool, seconds: float) -> None:
        """One CNI plug-in execution (cni_backend/invoke/api.py's observer),
        counted in the calling worker: our own plug-ins run in a fork of it,
        which ends at once, third-party ones are exec'd."""
        if ENV not in os.environ:
            return
        counter, histogram = self._metrics()[2:]
        command = command if command in CNI_COMMANDS else "other"
        counter.labels(command, plugin[:64], "ok" if ok else "error").inc()
        histogram.labels(command, plugin[:64]).observe(seconds)


CALLS = Calls()


class DaemonWorkers:
    """The CNI daemon's workers, when the daemon is `serve`'s child (it
    inherits the multiprocess folder): recorded by the daemon's parent process
    only, never by its forked workers, so no file per call."""

    def __init__(self):
        from prometheus_client import Counter, Gauge
        self.busy = Gauge("cnm_cni_daemon_workers_busy", "CNI daemon workers serving a call now",
                          multiprocess_mode="livesum")
        self.limit = Gauge("cnm_cni_daemon_workers_limit", "CNI daemon workers allowed at once (more calls wait)",
                           multiprocess_mode="livesum")
        self.calls = Counter("cnm_cni_daemon_calls", "Calls the CNI daemon took (a worker forked for each), "
                             "from CNI runtimes and from other executables of ours")

    def watch(self, busy: int, limit: int, started: int) -> None:
        self.busy.set(busy)
        self.limit.set(limit)
        if started:
            self.calls.inc(started)


def range_size(rng: dict) -> int:
    """Addresses a conflist range hands out: rangeStart..rangeEnd, or the
    subnet less its network and broadcast addresses (IPv4, /30 and wider)."""
    if rng.get("rangeStart") and rng.get("rangeEnd"):
        return int(ipaddress.ip_address(rng["rangeEnd"])) - int(ipaddress.ip_address(rng["rangeStart"])) + 1
    net = ipaddress.ip_network(rng["subnet"], strict=False)
    return net.num_addresses - (2 if net.version == 4 and net.prefixlen <= 30 else 0)


def _in_range(address: str, rng: dict) -> bool:
    try:
        ip = ipaddress.ip_interface(address).ip
    except ValueError:
        return False
    if ip not in ipaddress.ip_network(rng["subnet"], strict=False):
        return False
    if rng.get("rangeStart") and rng.get("rangeEnd"):
        return ipaddress.ip_address(rng["rangeStart"]) <= ip <= ipaddress.ip_address(rng["rangeEnd"])
    return True


def pool_use(conflist: dict, addresses: list) -> list:
    """(subnet, size, used) for each range of the network's IPAM section;
    used: the endpoints' addresses and the gateway inside the range."""
    found = []
    for plugin in conflist.get("plugins") or []:
        ipam = plugin.get("ipam") if isinstance(plugin, dict) else None
        if not isinstance(ipam, dict):
            continue
        for range_set in ipam.get("ranges") or []:
            for rng in range_set:
                if not isinstance(rng, dict) or not rng.get("subnet"):
                    continue
                held = [a for a in addresses if a and _in_range(a, rng)]
                if rng.get("gateway") and _in_range(rng["gateway"], rng):
                    held.append(rng["gateway"])
                found.append((rng["subnet"], range_size(rng), len(held)))
        break  # the first plug-in with IPAM is the network's
    return found


class StateCollector:
    """Endpoints per network and each network's pool use, read from state.db
    at every scrape (read-only, beside the running plug-in)."""

    def __init__(self, state_dir: str):
        self.state_dir = state_dir

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily
        from .state import State
        endpoints = GaugeMetricFamily("cnm_endpoints", "Endpoints per network", labels=["network", "driver"])
        pools = GaugeMetricFamily("cnm_ipam_pool_addresses", "Addresses of each network's pools: size, used, free",
                                  labels=["network", "pool", "kind"])
        if os.path.exists(os.path.join(self.state_dir, "state.db")):
            state = State(self.state_dir, read_only=True)
            found = state.endpoints()
            for net in state.networks():
                mine = [ep for ep in found if ep.network_id == net.id]
                endpoints.add_metric([net.id[:12], net.driver], len(mine))
                addresses = [a for ep in mine for a in (ep.address, ep.address6)]
                for subnet, size, used in pool_use(net.conflist, addresses):
                    for kind, value in (("size", size), ("used", used), ("free", max(size - used, 0))):
                        pools.add_metric([net.id[:12], subnet, kind], value)
        yield endpoints
        yield pools


# cni_backend/net/iptables.py: our fixed chains, an attachment's own chain
# (ATTACHMENT_PREFIX), and per-attachment tags
OUR_CHAIN_PREFIXES = ("RANCHER-CNI", "RCNI-", "rcni")
OUR_COMMENT = "--comment rancher-cni"


def owned_rules(save_output: str) -> int:
    """Rules (-A lines) in our chains, and our jumps from the built-in chains."""
    count = 0
    for line in save_output.splitlines():
        if not line.startswith("-A "):
            continue
        chain = line.split(" ", 2)[1]
        if chain.startswith(OUR_CHAIN_PREFIXES) or OUR_COMMENT in line:
            count += 1
    return count


# nftables tables of ours: the anti-spoofing bridge table (cni_backend/net/firewall.py
# NFT_TABLE) and flat's fast path, one netdev table per network (flat_fastpath.py)
OUR_NFT_TABLES = (("bridge", "rancher_cni"),)
OUR_NFT_PREFIXES = (("netdev", "rancher_flat_"),)


def owned_nft_rules(listing: dict) -> int:
    """Rules in our nftables tables, from `nft -j list ruleset`."""
    count = 0
    for item in listing.get("nftables") or []:
        rule = item.get("rule") if isinstance(item, dict) else None
        if not isinstance(rule, dict):
            continue
        family, table = rule.get("family"), str(rule.get("table", ""))
        if (family, table) in OUR_NFT_TABLES or any(family == f and table.startswith(p)
                                                    for f, p in OUR_NFT_PREFIXES):
            count += 1
    return count


class FirewallCollector:
    def collect(self):
        from prometheus_client.core import GaugeMetricFamily
        found = GaugeMetricFamily("cnm_firewall_rules", "Firewall rules the plug-in owns: iptables (its chains and "
                                  "jumps) by family ipv4/ipv6, and its nftables tables' rules as family nft",
                                  labels=["family"])
        for family, tool in (("ipv4", ["iptables-save"]), ("ipv6", ["ip6tables-save"]),
                             ("nft", ["nft", "-j", "list", "ruleset"])):
            try:
                done = subprocess.run(tool, capture_output=True, text=True, timeout=20, check=True)
                value = owned_nft_rules(json.loads(done.stdout)) if family == "nft" else owned_rules(done.stdout)
            except (OSError, subprocess.SubprocessError, ValueError, AttributeError):
                continue  # not root, or the tool is missing: no figure rather than a wrong one
            found.add_metric([family], value)
        yield found


def peer_samples(found: dict) -> list:
    """(metric, labels, value) from one network's data path as `cnm-shim
    status` describes it (cnm_shim/datapath.py)."""
    network = str(found.get("network", ""))[:12]
    samples = []
    vtep = found.get("vtep")
    if isinstance(vtep, dict):
        samples.append(("cnm_vxlan_vtep_up", (network,), 1 if vtep.get("state") == "up" else 0))
        samples.append(("cnm_vxlan_flood_peers", (network,), len(vtep.get("flood_peers") or [])))
    ipsec = found.get("ipsec")
    if isinstance(ipsec, dict):
        samples.append(("cnm_ipsec_charon_running", (network,), 0 if ipsec.get("charon_pid") is None else 1))
        for peer, sa in sorted((ipsec.get("peers") or {}).items()):
            up = sa.get("ike_sa") == "ESTABLISHED" and sa.get("child_sa") == "INSTALLED"
            samples.append(("cnm_ipsec_peer_up", (network, peer), 1 if up else 0))
    return samples


PEER_METRICS = {
    "cnm_vxlan_vtep_up": ("1 when the network's VTEP is up and on its bridge", ["network"]),
    "cnm_vxlan_flood_peers": ("The VTEP's flood peers", ["network"]),
    "cnm_ipsec_charon_running": ("1 when the network's charon runs", ["network"]),
    "cnm_ipsec_peer_up": ("1 when the peer's IKE_SA is ESTABLISHED and the CHILD_SA INSTALLED", ["network", "peer"]),
}


class PeersCollector:
    """VXLAN and IPsec networks' peers, from their data paths at each scrape."""

    def __init__(self, state_dir: str):
        self.state_dir = state_dir

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily
        from .datapath import describe
        from .state import State
        families = {name: GaugeMetricFamily(name, text, labels=labels) for name, (text, labels) in PEER_METRICS.items()}
        if os.path.exists(os.path.join(self.state_dir, "state.db")):
            for net in State(self.state_dir, read_only=True).networks():
                if net.backend in ("vxlan", "ipsec"):
                    for name, labels, value in peer_samples(describe(net)):
                        families[name].add_metric(list(labels), value)
        yield from families.values()


def record_doctor(run_dir: str, status: str, unrepaired_kinds: list) -> None:
    """What the last doctor run concluded, for the exporter. Best effort: a
    doctor run by a user who cannot write RUN_DIR still reports."""
    from cni_backend import files
    record = {"time": time.time(), "status": status, "drift": dict(collections.Counter(unrepaired_kinds))}
    try:
        os.makedirs(run_dir, mode=0o755, exist_ok=True)
        files.write_atomic(os.path.join(run_dir, DOCTOR_RECORD), json.dumps(record), 0o644)
    except OSError:
        pass


class DoctorCollector:
    """The last doctor run, from RUN_DIR/doctor-last.json; nothing before the first."""

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, DOCTOR_RECORD)

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily
        try:
            with open(self.path) as f:
                record = json.load(f)
            stamp, status, drift = float(record["time"]), str(record["status"]), dict(record["drift"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        yield GaugeMetricFamily("cnm_doctor_last_run_timestamp_seconds", "When cnm-shim doctor last ran",
                                value=stamp)
        found = GaugeMetricFamily("cnm_doctor_status", "What the last doctor run concluded (1 for its status)",
                                  labels=["status"])
        for name in DOCTOR_STATUSES:
            found.add_metric([name], 1 if name == status else 0)
        yield found
        kinds = GaugeMetricFamily("cnm_doctor_drift", "Problems the last doctor run left unrepaired, by kind",
                                  labels=["kind"])
        for kind in sorted(set(DOCTOR_KINDS) | {k for k in drift if isinstance(k, str)}):
            kinds.add_metric([kind], float(drift.get(kind, 0)))
        yield kinds


def registry(folder: str, state_dir: str):
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector
    found = CollectorRegistry()
    MultiProcessCollector(found, path=folder)
    found.register(StateCollector(state_dir))
    found.register(FirewallCollector())
    found.register(PeersCollector(state_dir))
    found.register(DoctorCollector(os.path.dirname(os.path.abspath(folder))))  # folder is RUN_DIR/metrics
    return found


def exposition(folder: str, state_dir: str) -> bytes:
    from prometheus_client import generate_latest
    return generate_latest(registry(folder, state_dir))


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.split("?")[0] not in ("/metrics", "/"):
            self.send_error(404, "only /metrics here")
            return
        from prometheus_client import CONTENT_TYPE_LATEST
        body = exposition(self.server.folder, self.server.state_dir)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self):
        return "unix" if isinstance(self.client_address, (str, bytes)) else super().address_string()

    def log_message(self, *_):
        pass


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _TCPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


LISTEN_ENV = "CNM_SHIM_METRICS_LISTEN"  # the managed plug-in's setting (plugin.json)


def parse_listen(text: str) -> tuple:
    """`HOST:PORT` for --metrics-listen (or CNM_SHIM_METRICS_LISTEN), checked:
    an IP address of this host named outright, loopback or another; never the
    wildcard, as the metrics carry no authentication and the managed plug-in
    shares the host's network."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        address = ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        address, number = None, -1
    where = f"--metrics-listen ({LISTEN_ENV}) {text!r} is not valid"
    if not sep or not 1 <= number <= 65535:
        raise SystemExit(f"{where}: an IP address and a port, e.g. 127.0.0.1:9614 or [::1]:9614")
    if address.is_unspecified:
        raise SystemExit(f"{where}: name the address to listen on (loopback, e.g. 127.0.0.1:9614, or one of this "
                         "host's addresses), not every address: the metrics are served without authentication")
    return host, number


def serve(socket_path: str, folder: str, state_dir: str, listen: str | None = None) -> None:
    """The exporter: the Unix socket, and `listen` (HOST:PORT) when given, until SIGTERM."""
    os.makedirs(os.path.dirname(socket_path), mode=0o755, exist_ok=True)
    if os.path.exists(socket_path):
        os.unlink(socket_path)  # ours, left by a killed exporter: serve claimed the run dir before us
    old = os.umask(0o117)
    try:
        servers = [_UnixServer(socket_path, _Handler)]
    finally:
        os.umask(old)
    if listen:
        host, port = parse_listen(listen)
        if ":" in host:
            _TCPServer.address_family = socket.AF_INET6
        servers.append(_TCPServer((host, port), _Handler))
    for server in servers:
        server.folder, server.state_dir = folder, state_dir
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        servers[0].serve_forever()
    finally:
        for server in servers:
            server.server_close()
        if os.path.exists(socket_path):
            os.unlink(socket_path)


def scrape(socket_path: str, timeout: float = 10) -> str:
    """GET /metrics over the Unix socket: what `cnm-shim metrics` prints."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(socket_path)
        conn.sendall(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = conn.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        raise OSError(f"{socket_path} answered {status.decode(errors='replace')}")
    return body.decode()
