"""`cnm-shim`: the project's command line."""

import argparse
import hashlib
import json
import os
import sys

from cni_backend import logfmt, version
from cni_backend.errors import CNIError
from cni_backend.invoke import api, conflist

from . import paths

DEFAULT_CNI_PATH = paths.CNI_BIN_DIR


def _netns_path(netns: str) -> str:
    return netns if "/" in netns else os.path.join("/var/run/netns", netns)


def _parse_args_pairs(text: str) -> list:
    pairs = []
    for item in filter(None, (text or "").split(";")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--args: {item!r} is not KEY=VALUE")
        pairs.append((key, value))
    return pairs


def _cni(opts) -> api.CNI:
    path = (opts.cni_path or os.environ.get("CNI_PATH") or DEFAULT_CNI_PATH).split(os.pathsep)
    return api.CNI(path, cache_dir=opts.cache_dir)


def cmd_cni(opts) -> int:
    conf_dir = opts.conf_dir or os.environ.get("NETCONFPATH") or conflist.DEFAULT_CONF_DIR
    conf, raw = conflist.find(opts.network, conf_dir)
    cni = _cni(opts)
    logfmt.bind(os.environ.get(logfmt.REQUEST_ENV))  # one ID for every plug-in of the chain
    if opts.action == "gc":
        valid = [tuple(v.split("/", 1)) for v in opts.valid]
        for container_id, ifname in cni.gc(conf, raw, valid):
            print(f"removed {container_id}/{ifname}")
        return 0
    if opts.action == "status":
        cni.status(conf)
        return 0
    if not opts.netns:
        raise SystemExit(f"cnm-shim cni {opts.action}: NETNS is required")
    netns = _netns_path(opts.netns)
    container_id = opts.container_id or "cnm-" + hashlib.sha256(netns.encode()).hexdigest()[:20]
    try:
        capability_args = json.loads(opts.cap_args) if opts.cap_args else {}
    except ValueError as exc:
        raise SystemExit(f"--cap-args is not JSON: {exc}")
    att = api.Attachment(container_id, netns, opts.ifname,
                         args=_parse_args_pairs(opts.args), capability_args=capability_args)
    if opts.action == "add":
        result = cni.add(conf, raw, att)
        print(json.dumps(version.convert_result(result, conf["cniVersion"]), indent=2))
    elif opts.action == "check":
        cni.check(conf, raw, att)
    else:
        cni.delete(conf, raw, att)
    return 0


def cmd_cni_server(opts) -> int:
    from cni_backend import server
    limits = {"max_workers": opts.max_workers, "timeout": opts.receive_timeout, "idle": opts.idle_timeout}
    agents = None
    if opts.ipsec_state_dir:  # hosts without Docker: the daemon keeps charon watched
        from .children import Children
        agents = Children()
        agents.start(ipsec_agent_argv(opts.ipsec_state_dir, opts.ipsec_agent_interval))
    watch = None
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # serve's child: its workers are exported (metrics.py)
        from . import metrics
        watch = metrics.DaemonWorkers().watch
    try:
        server.serve(opts.socket, **{k: v for k, v in limits.items() if v is not None}, watch=watch)
    finally:
        if agents is not None:
            agents.stop(5)
        if watch is not None:
            from prometheus_client import multiprocess
            multiprocess.mark_process_dead(os.getpid())  # its gauges end with it
    return 0


def ipsec_agent_argv(state_dir: str, interval: float) -> list:
    return [sys.executable, "-m", "cnm_shim.cli", "ipsec-agent", "--state-dir", state_dir,
            "--interval", str(interval)]


def cmd_ipsec_agent(opts) -> int:
    import signal
    from cni_backend import ipsecnet, ipsec_tunnels
    try:
        ipsec_tunnels.check_path(opts.state_dir, "--state-dir")
    except CNIError as exc:
        raise SystemExit(f"cnm-shim ipsec-agent: {exc}")
    if not 0.1 <= opts.interval <= 3600:
        raise SystemExit(f"cnm-shim ipsec-agent: --interval {opts.interval} is not valid: 0.1 to 3600 seconds")
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    ipsecnet.watch(opts.state_dir, interval=opts.interval, stop=lambda: bool(stopping))
    return 0


def cmd_serve(opts) -> int:
    from . import server
    return server.serve(opts)


def cmd_restart_stranded(opts) -> int:
    from .recovery import restart_stranded
    for name in restart_stranded(opts.docker_host, opts.drivers.split(","), delay=opts.delay):
        print(name)
    return 0


def cmd_options(opts) -> int:
    from . import about, backends, options
    names = [opts.backend] if opts.backend else list(backends.REGISTRY)
    if opts.json:
        found = [about.options(name) for name in names]
        print(json.dumps(found[0] if opts.backend else found, indent=2))
        return 0
    print("\n".join(options.describe(name) for name in names), end="")
    return 0


def cmd_metrics(opts) -> int:
    from . import metrics
    try:
        text = metrics.scrape(opts.socket)
    except OSError as exc:
        raise SystemExit(f"cnm-shim metrics: nothing answers on {opts.socket} ({exc}): is cnm-shim serve "
                         "running (its --metrics-socket)?")
    print(text, end="")
    return 0


def cmd_metrics_exporter(opts) -> int:
    import signal
    from . import metrics
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    metrics.serve(opts.socket, opts.dir, opts.state_dir, opts.listen)
    return 0


def cmd_version(opts) -> int:
    from . import about
    found = about.report()
    print(json.dumps(found, indent=2) if opts.json else about.text(found), end="\n" if opts.json else "")
    return 0


def cmd_status(opts) -> int:
    from .datapath import describe, host, host_summary
    from .state import State
    state = State(opts.state_dir)
    networks, endpoints = state.networks(), state.endpoints()
    data_paths = {net.id: describe(net) for net in networks}  # what carries the traffic, from counters
    if opts.json:
        print(json.dumps({"networks": [net.to_dict() for net in networks],
                          "endpoints": [ep.to_dict() for ep in endpoints],
                          "pools": [pool.to_dict() for pool in state.pools()],
                          "data_paths": list(data_paths.values()), "host": host()}, indent=2))
        return 0
    print(f"host: {host_summary(host())}")
    for net in networks:
        chain = [plugin["type"] for plugin in net.conflist["plugins"]]
        print(f"network {net.id[:12]}  driver {net.driver}  cni {net.cni_name}  bridge {net.bridge}"
              + (f"  chain {' -> '.join(chain)}" if len(chain) > 1 else "")
              + (f"  exported {net.exported}" if net.exported else ""))
        print(f"  data path: {data_paths[net.id]['summary']}")
        for ep in (e for e in endpoints if e.network_id == net.id):
            result = ep.result or {}
            host_side = [i["name"] for i in result.get("interfaces", []) if i.get("name", "").startswith("veth")]
            addresses = ", ".join(ip["address"] for ip in result.get("ips", [])) or ep.address
            ports = ", ".join(f"{m['hostPort']}->{m['containerPort']}/{m['protocol']}" for m in ep.port_mappings or [])
            print(f"  endpoint {ep.endpoint_id[:12]}  {addresses}  mac {ep.mac}  "
                  f"host {host_side[0] if host_side else '-'}  sandbox {ep.sandbox_key or '-'}"
                  + (f"  ports {ports}" if ports else ""))
    return 0


def lease_ttl(text: str) -> int:
    """--ttl / RANCHER_LEASE_TTL: whole seconds, 2 to 3600 (etcd counts the
    lease down on its side; the agent renews it every third of the TTL)."""
    try:
        ttl = int(text)
    except (TypeError, ValueError):
        ttl = None
    if ttl is None or not 2 <= ttl <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a lease TTL: whole seconds from 2 to 3600 "
                                         "(10 by default; how long a dead or cut-off host stays registered)")
    return ttl


def cmd_vxlan_agent(opts) -> int:
    import itertools
    import signal
    from cni_backend import vxlan_registry, vxlannet
    from cni_backend.ipam.etcd_store import check_endpoints, client_for
    endpoints = check_endpoints([e for e in opts.etcd_endpoints.split(",") if e], opts.insecure_etcd)
    if not endpoints:
        raise SystemExit("cnm-shim vxlan-agent: --etcd-endpoints (RANCHER_ETCD_ENDPOINTS) is required")
    net = vxlannet.VxlanNetwork(bridge="", vni=opts.vni, port=4789, vtep_dev=opts.vtep_dev,
                                peers=vxlannet.parse_peers([p for p in opts.peers.split(",") if p]),
                                state_dir=opts.state_dir)
    members = itertools.cycle(endpoints)

    tls = etcd_client_settings(opts)

    def connect():
        return client_for(next(members), tls)

    agent = vxlan_registry.Agent(connect, opts.etcd_prefix, opts.vni, vxlannet.local_address(net), opts.state_dir,
                                 ttl=opts.ttl, static_peers=net.peers, port=net.port)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    agent.run(interval=opts.interval, stop=lambda: bool(stopping))
    return 0


def cmd_ipsec_registry(opts) -> int:
    import itertools
    import signal
    from cni_backend import ipsec_registry
    from cni_backend.ipam.etcd_store import check_endpoints, client_for
    endpoints = check_endpoints([e for e in opts.etcd_endpoints.split(",") if e], opts.insecure_etcd)
    if not endpoints:
        raise SystemExit("cnm-shim ipsec-registry: --etcd-endpoints (RANCHER_ETCD_ENDPOINTS) is required")
    members = itertools.cycle(endpoints)
    tls = etcd_client_settings(opts)
    agent = ipsec_registry.Agent(lambda: client_for(next(members), tls), opts.etcd_prefix, opts.state_dir,
                                 ttl=opts.ttl)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    agent.run(interval=opts.interval, stop=lambda: bool(stopping))
    return 0


def cmd_install_cni(opts) -> int:
    from cni_backend import install
    for path in install.write_executables(opts.dir):
        print(path)
    return 0


def add_etcd_tls_options(parser) -> None:
    """For https:// etcd members: the CA to trust and this host's client
    certificate; with etcd's auth on, this host's etcd user."""
    parser.add_argument("--etcd-ca", default=os.environ.get("RANCHER_ETCD_CA"))
    parser.add_argument("--etcd-cert", default=os.environ.get("RANCHER_ETCD_CERT"))
    parser.add_argument("--etcd-key", default=os.environ.get("RANCHER_ETCD_KEY"))
    parser.add_argument("--etcd-user", default=os.environ.get("RANCHER_ETCD_USER") or None,
                        help="this host's etcd user, when etcd's auth (RBAC) is on")
    parser.add_argument("--etcd-password-file", default=os.environ.get("RANCHER_ETCD_PASSWORD_FILE") or None,
                        help="the file holding that user's password")
    parser.add_argument("--insecure-etcd", action="store_true",
                        default=os.environ.get("RANCHER_INSECURE_ETCD", "").lower() in ("1", "true", "yes"),
                        help="accept plain http:// etcd endpoints (anyone on the path can read and rewrite the "
                             "address pools and the VXLAN registry); refused otherwise")


def etcd_client_settings(opts) -> dict:
    """What add_etcd_tls_options gave, as etcd_store.client_for takes it."""
    return {k: v for k, v in (("ca", opts.etcd_ca), ("cert", opts.etcd_cert), ("key", opts.etcd_key),
                              ("user", opts.etcd_user), ("password_file", opts.etcd_password_file)) if v}


def add_log_format(parser) -> None:
    """--log-format on a subcommand too (`cnm-shim serve --log-format json`);
    SUPPRESS keeps the top-level value when it is not given here."""
    parser.add_argument("--log-format", choices=logfmt.FORMATS, type=str.lower, metavar="FORMAT",
                        default=argparse.SUPPRESS, help="text (default) or json: one object per line for log shippers")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnm-shim", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("CNM_SHIM_LOG_LEVEL", "INFO"))
    parser.add_argument("--log-format", choices=logfmt.FORMATS, type=str.lower, metavar="FORMAT",
                        default=os.environ.get(logfmt.FORMAT_ENV, "text").strip().lower() or "text",
                        help="text (default) or json, one object per line for log shippers "
                             f"(env {logfmt.FORMAT_ENV}); also after serve and cni-server")
    sub = parser.add_subparsers(dest="command", required=True)
    from . import backends

    cni = sub.add_parser("cni", help="run a CNI network's plug-ins like a runtime does (cnitool)")
    cni.add_argument("action", choices=["add", "check", "del", "gc", "status"])
    cni.add_argument("network", help="network name in the config dir, or a conflist file")
    cni.add_argument("netns", nargs="?", help="netns name (under /var/run/netns) or path")
    cni.add_argument("--ifname", default="eth0")
    cni.add_argument("--container-id")
    cni.add_argument("--args", default=os.environ.get("CNI_ARGS", ""), help="CNI_ARGS, K=V;K=V")
    cni.add_argument("--cap-args", default=os.environ.get("CAP_ARGS", ""), help="runtimeConfig as JSON")
    cni.add_argument("--conf-dir", help=f"default $NETCONFPATH or {conflist.DEFAULT_CONF_DIR}")
    cni.add_argument("--cni-path", help=f"default $CNI_PATH or {DEFAULT_CNI_PATH}")
    cni.add_argument("--cache-dir", default=api.cache.DEFAULT_CACHE_DIR)
    cni.add_argument("--valid", action="append", default=[], metavar="CONTAINER/IFNAME",
                     help="for gc: an attachment to keep (repeatable)")
    cni.set_defaults(func=cmd_cni)

    daemon = sub.add_parser("cni-server", help="run the daemon the CNI executables hand their work to")
    daemon.add_argument("--socket", default=os.environ.get("RANCHER_CNI_SOCKET", paths.CNI_SOCKET))
    daemon.add_argument("--max-workers", type=int,
                        help="calls served at once; more wait for a worker to be free (default 16)")
    daemon.add_argument("--idle-timeout", type=float,
                        help="seconds a free worker is kept for the next call before it exits (default 60)")
    daemon.add_argument("--receive-timeout", type=float,
                        help="seconds a caller has to send its request and take the reply (default 10)")
    daemon.add_argument("--ipsec-state-dir", default=os.environ.get("RANCHER_IPSEC_STATE_DIR") or None,
                        help="run an ipsec-agent beside the daemon for the rancher-ipsec networks of this "
                             "stateDir (hosts without Docker)")
    daemon.add_argument("--ipsec-agent-interval", type=float, default=2.0)
    add_log_format(daemon)
    daemon.set_defaults(func=cmd_cni_server)

    serve = sub.add_parser("serve", help="answer Docker's NetworkDriver and IpamDriver calls (foreground)")
    serve.add_argument("--plugin-dir", default=paths.PLUGIN_DIR)
    serve.add_argument("--backend", choices=tuple(backends.REGISTRY), default=os.environ.get("RANCHER_BACKEND") or None,
                       help="serve only this backend (default: all three, one socket each)")
    serve.add_argument("--socket", help="with --backend: the socket's file name (default rancher-BACKEND.sock)")
    serve.add_argument("--vxlan-agent-vnis", default=os.environ.get("RANCHER_VXLAN_AGENT_VNIS", ""),
                       help="comma-separated VNIs to run a vxlan-agent for (needs --etcd-endpoints)")
    serve.add_argument("--vtep-dev", default=os.environ.get("RANCHER_VTEP_DEV") or None,
                       help="the vxlan agents' underlay interface (default: the default route's)")
    serve.add_argument("--workers", type=int, default=int(os.environ.get("CNM_SHIM_WORKERS", "4")))
    serve.add_argument("--state-dir", default=paths.STATE_DIR)
    serve.add_argument("--run-dir", default=paths.RUN_DIR)
    serve.add_argument("--ipam-data-dir", default=paths.IPAM_DATA_DIR)
    serve.add_argument("--cni-path", default=os.environ.get("CNI_PATH", os.pathsep.join(paths.CNI_PATH)))
    serve.add_argument("--cni-conf-dir", default=paths.CNI_CONF_DIR, help="where -o cni.export=true writes")
    serve.add_argument("--cni-socket", default=os.environ.get("RANCHER_CNI_SOCKET", paths.CNI_SOCKET))
    serve.add_argument("--no-cni-daemon", action="store_true", help="do not start the CNI daemon")
    serve.add_argument("--ipsec-agent-interval", type=float,
                       default=float(os.environ.get("RANCHER_IPSEC_AGENT_INTERVAL", "2")),
                       help="how often the ipsec agent (for the rancher-ipsec networks of --ipam-data-dir) "
                            "checks that charon runs; 0: no agent")
    serve.add_argument("--etcd-endpoints", default=os.environ.get("RANCHER_ETCD_ENDPOINTS", ""),
                       help="comma-separated etcd URLs: addresses global across hosts, VXLAN registry")
    add_etcd_tls_options(serve)
    serve.add_argument("--metrics-socket", help="where the Prometheus metrics are served "
                       f"(default RUN_DIR/metrics.sock, {paths.RUN_DIR}/metrics.sock)")
    serve.add_argument("--metrics-listen", metavar="HOST:PORT",
                       default=os.environ.get("CNM_SHIM_METRICS_LISTEN") or os.environ.get("RANCHER_METRICS_LISTEN")
                       or None,
                       help="serve the metrics on this TCP address too (none unless asked), e.g. 127.0.0.1:9614 "
                            "(env CNM_SHIM_METRICS_LISTEN; the managed plug-in's setting)")
    serve.add_argument("--access-log", action="store_true", help="gunicorn's access log, one line per Docker "
                       "request on stdout (off by default; our own log has a line per call that changes something)")
    add_log_format(serve)
    serve.add_argument("--docker-host", default=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"),
                       help="the engine whose stranded restart-policy containers to start once up ('' = none)")
    serve.set_defaults(func=cmd_serve)

    stranded = sub.add_parser("restart-stranded", help="start restart-policy containers dockerd could not "
                              "start because the plug-in was not up (serve runs this by itself)")
    stranded.add_argument("--docker-host", default=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"))
    stranded.add_argument("--drivers", default=",".join(backends.DRIVERS))
    stranded.add_argument("--delay", type=float, default=0.0)
    stranded.set_defaults(func=cmd_restart_stranded)

    options = sub.add_parser("options", help="a backend's -o options for docker network create, with their help")
    options.add_argument("backend", nargs="?", choices=tuple(backends.REGISTRY), metavar="BACKEND",
                         help="one of: " + ", ".join(backends.REGISTRY) + " (default: all)")
    options.add_argument("--json", action="store_true", help="name, default, required and help of each option")
    options.set_defaults(func=cmd_options)

    ver = sub.add_parser("version", help="our version, the CNI spec versions, this kernel's data paths "
                                         "(probed; needs root) and the optional packages present")
    ver.add_argument("--json", action="store_true")
    ver.set_defaults(func=cmd_version)

    status = sub.add_parser("status", help="networks and endpoints with their CNI results")
    status.add_argument("--state-dir", default=paths.STATE_DIR)
    status.add_argument("--json", action="store_true", help="networks, endpoints, pools, data paths and host as JSON")
    status.set_defaults(func=cmd_status)

    agent = sub.add_parser("vxlan-agent", help="share this host's VXLAN endpoints through etcd, program the others'")
    agent.add_argument("--etcd-endpoints", default=os.environ.get("RANCHER_ETCD_ENDPOINTS", ""), required=False)
    agent.add_argument("--etcd-prefix", default="/rancher-cni")
    agent.add_argument("--vni", type=int, default=1042)
    agent.add_argument("--vtep-dev", default=os.environ.get("RANCHER_VTEP_DEV") or None,
                       help="underlay interface (default: the default route's)")
    agent.add_argument("--peers", default="", help="static peers, comma-separated")
    agent.add_argument("--state-dir", default=paths.IPAM_DATA_DIR)
    agent.add_argument("--ttl", type=lease_ttl, default=os.environ.get("RANCHER_LEASE_TTL", "10"),
                       help="lease TTL in seconds (2-3600, default 10, or RANCHER_LEASE_TTL): how fast a dead "
                       "host disappears")
    agent.add_argument("--interval", type=float, default=1.0)
    add_etcd_tls_options(agent)
    agent.set_defaults(func=cmd_vxlan_agent)

    ipsec_agent = sub.add_parser("ipsec-agent", help="keep this host's charon running: start it again with every "
                                 "recorded rancher-ipsec network's tunnels when it dies")
    ipsec_agent.add_argument("--state-dir", default=paths.IPAM_DATA_DIR,
                             help="the rancher-ipsec networks' stateDir (default: the IPAM data dir)")
    ipsec_agent.add_argument("--interval", type=float, default=2.0, help="seconds between checks")
    ipsec_agent.set_defaults(func=cmd_ipsec_agent)

    registry = sub.add_parser("ipsec-registry", help="register this host's rancher-ipsec networks in etcd and "
                              "set their peers from the other hosts' entries (serve runs it when given etcd)")
    registry.add_argument("--etcd-endpoints", default=os.environ.get("RANCHER_ETCD_ENDPOINTS", ""))
    registry.add_argument("--etcd-prefix", default="/rancher-cni")
    registry.add_argument("--state-dir", default=paths.IPAM_DATA_DIR, help="the plug-in's stateDir")
    registry.add_argument("--ttl", type=lease_ttl, default=os.environ.get("RANCHER_LEASE_TTL", "10"),
                          help="lease TTL in seconds (2-3600, default 10, or RANCHER_LEASE_TTL): how fast a dead "
                          "host's tunnels go")
    registry.add_argument("--interval", type=float, default=1.0)
    add_etcd_tls_options(registry)
    registry.set_defaults(func=cmd_ipsec_registry)

    shown = sub.add_parser("metrics", help="print the Prometheus metrics cnm-shim serve exposes")
    shown.add_argument("--socket", default=os.path.join(paths.RUN_DIR, "metrics.sock"),
                       help="serve's --metrics-socket (default %(default)s)")
    shown.set_defaults(func=cmd_metrics)

    exporter = sub.add_parser("metrics-exporter", help="the metrics exporter cnm-shim serve runs as a child")
    exporter.add_argument("--socket", required=True)
    exporter.add_argument("--dir", required=True, help="the workers' multiprocess folder")
    exporter.add_argument("--state-dir", default=paths.STATE_DIR)
    exporter.add_argument("--listen", metavar="HOST:PORT")
    exporter.set_defaults(func=cmd_metrics_exporter)

    from .compare import add_parser as add_compare_parser
    add_compare_parser(sub)
    from .doctor import add_parser as add_doctor_parser
    add_doctor_parser(sub)

    inst = sub.add_parser("install-cni", help="write the CNI executables into a plug-in directory")
    inst.add_argument("--dir", default=DEFAULT_CNI_PATH)
    inst.set_defaults(func=cmd_install_cni)
    return parser


def main(argv=None) -> int:
    opts = build_parser().parse_args(argv)
    try:
        logfmt.setup(opts.log_level, opts.log_format)
    except ValueError as exc:  # a bad CNM_SHIM_LOG_LEVEL or CNM_SHIM_LOG_FORMAT
        raise SystemExit(f"cnm-shim: {exc} (--log-level, --log-format)") from None
    try:
        return opts.func(opts)
    except CNIError as exc:
        print(f"cnm-shim: error {exc.code}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
