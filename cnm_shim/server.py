"""`cnm-shim serve`: gunicorn on one Unix socket per driver in /run/docker/plugins,
plus the CNI daemon the executables hand their work to, and the ipsec agent
(charon watched for the rancher-ipsec networks of --ipam-data-dir); with etcd,
the ipsec registry too (cnm-shim ipsec-registry: the networks' peers from
etcd), a process of its own so that etcd's timeouts never delay a revival.

Sync workers, on purpose: each is a single-threaded process, so the staging
namespace work may setns(2) safely, and a hung call ties up one worker, not all.

Stopping (SIGTERM, SIGINT): the socket files go first, so that Docker's next
connection fails to connect and is retried with its body intact; the workers
finish their calls and serve what was already queued (cnm_shim/worker.py);
then the children (cnm_shim/children.py) get SIGTERM. Everything is gone after
GRACEFUL_TIMEOUT + CHILD_GRACE seconds at most. SIGQUIT stops at once.
"""

import logging
import os
import signal
import sys
import time

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.glogging import Logger as GunicornLogger

from cni_backend import logfmt, runtime, staging, wire
from cni_backend.ipam.etcd_store import check_endpoints

from . import backends, listeners, metrics
from .app import DRIVERS, create_app
from .cli import etcd_client_settings, ipsec_agent_argv
from .children import Children
from .worker import DrainingWorker

log = logging.getLogger("cnm-shim")

GRACEFUL_TIMEOUT = 10  # seconds a worker has to finish its call and its queue before SIGKILL
CHILD_GRACE = 5  # then the CNI daemon, agents and restart pass, before SIGKILL


def restart_stranded_later(children: Children, docker_host: str, drivers) -> None:
    """Once the sockets are bound: a short-lived child starts the containers
    dockerd gave up on while we were down (cnm_shim/recovery.py). A child,
    not a thread, as the master forks workers."""
    socket_path = docker_host.removeprefix("unix://")
    if not docker_host or (docker_host.startswith("unix://") and not os.path.exists(socket_path)):
        return
    children.start([sys.executable, "-m", "cnm_shim.cli", "restart-stranded", "--docker-host", docker_host,
                    "--drivers", ",".join(sorted(set(drivers))), "--delay", "1"])


class ShimArbiter(Arbiter):
    """gunicorn's master, with the stop a plug-in needs: SIGINT stops as
    gracefully as SIGTERM (a second one, while stopping, still means now),
    and only the socket files that are still ours are removed, before the
    workers are told to stop. gunicorn's own stop unlinks by name, after
    the listeners are closed, and fails on a file somebody already removed,
    stranding the workers."""

    claimed: tuple = ()  # listeners.Claimed, set by ShimServer

    def handle_int(self):
        raise StopIteration

    def stop(self, graceful=True):
        for sock in self.claimed:
            sock.release()
        for listener in self.LISTENERS:
            listener.close()
        self.LISTENERS = []
        super().stop(graceful)


class ShimLogger(GunicornLogger):
    """gunicorn's error log (and its access log, when asked for) in our
    format (cni_backend/logfmt.py): the handlers gunicorn sets up, each
    given our formatter. The access log stays off unless --access-log."""

    def setup(self, cfg):
        super().setup(cfg)
        for log_ in (self.error_log, self.access_log):
            for handler in log_.handlers:
                handler.setFormatter(logfmt.formatter(stream=getattr(handler, "stream", None)))


class ShimServer(BaseApplication):
    def __init__(self, app_config: dict, gunicorn_options: dict, claimed: list):
        self.app_config = app_config
        self.gunicorn_options = gunicorn_options
        self.claimed = claimed
        super().__init__()

    def load_config(self):
        for key, value in self.gunicorn_options.items():
            if key in self.cfg.settings:  # newer settings are skipped on older gunicorns
                self.cfg.set(key, value)

    def load(self):
        return create_app(self.app_config)

    def run(self):
        arbiter = ShimArbiter(self)
        arbiter.claimed = tuple(self.claimed)
        arbiter.run()


def _cni_daemon_running(path: str) -> bool:
    sock = wire.connect(path)
    if sock is None:
        return False
    sock.close()
    return True


def start_cni_daemon(children: Children, path: str) -> None:
    """The CNI daemon as a child, unless one already listens on `path`: that
    one is somebody else's, used and left alone."""
    if _cni_daemon_running(path):
        log.info("using the CNI daemon already listening on %s", path)
        return
    child = children.start([sys.executable, "-m", "cnm_shim.cli", "cni-server", "--socket", path], socket=path)
    deadline = time.monotonic() + 30
    while not _cni_daemon_running(path):
        if child.process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the CNI daemon did not start on {path}")
        time.sleep(0.05)
    child.remember_socket()


def sockets(backend: str | None, socket_name: str | None) -> dict:
    """Socket file name -> driver name. All three drivers by default; one when
    a backend is chosen, as in the managed plug-in, whose single socket Docker
    names after the plug-in (any alias), not after the backend."""
    if backend is None:
        return {f"{name}.sock": name for name in DRIVERS}
    driver = backends.get(backend).driver
    return {socket_name or f"{driver}.sock": driver}


def _etcd_client_argv(opts) -> list:
    """serve's etcd client flags, for an agent it starts."""
    argv = []
    for flag, value in (("--etcd-ca", opts.etcd_ca), ("--etcd-cert", opts.etcd_cert), ("--etcd-key", opts.etcd_key),
                        ("--etcd-user", opts.etcd_user), ("--etcd-password-file", opts.etcd_password_file)):
        if value:
            argv += [flag, value]
    return argv


def start_vxlan_agent(children: Children, vni: str, opts) -> None:
    if not opts.etcd_endpoints:
        raise SystemExit("a vxlan agent needs --etcd-endpoints (RANCHER_ETCD_ENDPOINTS)")
    argv = [sys.executable, "-m", "cnm_shim.cli", "vxlan-agent", "--vni", vni, "--etcd-endpoints", opts.etcd_endpoints,
            "--state-dir", opts.ipam_data_dir] + (["--insecure-etcd"] if opts.insecure_etcd else [])
    if opts.vtep_dev:
        argv += ["--vtep-dev", opts.vtep_dev]
    argv += _etcd_client_argv(opts)
    children.start(argv)


def start_ipsec_registry(children: Children, opts) -> None:
    """With etcd: the rancher-ipsec networks' registry (peers from etcd), idle
    until a network without -o peers exists here."""
    argv = [sys.executable, "-m", "cnm_shim.cli", "ipsec-registry", "--etcd-endpoints", opts.etcd_endpoints,
            "--state-dir", opts.ipam_data_dir] + (["--insecure-etcd"] if opts.insecure_etcd else [])
    argv += _etcd_client_argv(opts)
    children.start(argv)


def metrics_socket(opts) -> str:
    return opts.metrics_socket or os.path.join(opts.run_dir, metrics.SOCKET_NAME)


def start_metrics_exporter(children: Children, folder: str, opts) -> None:
    """The exporter (cnm_shim/metrics.py) as a child: it sums the workers'
    files at each scrape, on the Unix socket and --metrics-listen."""
    path = metrics_socket(opts)
    argv = [sys.executable, "-m", "cnm_shim.cli", "metrics-exporter", "--socket", path, "--dir", folder,
            "--state-dir", opts.state_dir] + (["--listen", opts.metrics_listen] if opts.metrics_listen else [])
    children.start(argv, socket=path)


def _warm_worker(worker) -> None:
    """A worker runs our own plug-ins for Docker's calls (invoke/own.py):
    what they need is loaded once here, not in its first call."""
    runtime.warm_own_plugins()
    runtime.set_on_stuck(retire_stuck_worker)


def retire_stuck_worker(plugin: str) -> None:
    """A plug-in call outlived its timeout on a thread of this worker, which
    cannot stop it: the worker answers the call (the timeout error), then
    exits as on SIGTERM (worker.py: it serves what is queued first), which
    ends the thread and releases what it holds (locks, sockets), and gunicorn
    starts another worker."""
    log.error("%s still running after its timeout in worker %d: the worker retires after this call",
              plugin, os.getpid())
    os.kill(os.getpid(), signal.SIGTERM)


def _worker_gone(server, worker) -> None:
    """A worker's live gauges end with it; its counters stay (multiprocess mode)."""
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)


def serve(opts) -> int:
    os.environ[wire.SOCKET_ENV] = opts.cni_socket  # inherited by the executables we run
    # our children (CNI daemon, agents, exporter) log as we do
    os.environ[logfmt.FORMAT_ENV] = opts.log_format
    os.environ["CNM_SHIM_LOG_LEVEL"] = opts.log_level
    app_config = {"state_dir": opts.state_dir, "run_dir": opts.run_dir, "ipam_data_dir": opts.ipam_data_dir,
                  "cni_path": tuple(opts.cni_path.split(os.pathsep)), "cni_conf_dir": opts.cni_conf_dir,
                  "etcd_endpoints": check_endpoints([e for e in opts.etcd_endpoints.split(",") if e], opts.insecure_etcd),
                  "etcd_insecure": opts.insecure_etcd,
                  "etcd_tls": etcd_client_settings(opts) or None}
    app_config["sockets"] = sockets(opts.backend, opts.socket)
    if opts.metrics_listen:  # a bad address stops serve before any socket is there (the plug-in's enable fails)
        metrics.parse_listen(opts.metrics_listen)
    # First, before anything is started: refuse if another server answers on
    # our sockets. Listening from here on, Docker's calls queue until a worker
    # is ready instead of failing.
    claimed = listeners.claim(opts.plugin_dir, app_config["sockets"])
    children = Children()
    master = os.getpid()
    try:
        folder = metrics.prepare(opts.run_dir)  # before a worker records a call (the CNI daemon's too)
        if not opts.no_cni_daemon:
            start_cni_daemon(children, opts.cni_socket)
        start_metrics_exporter(children, folder, opts)
        stale = staging.remove_all(os.path.join(opts.run_dir, "staging"))  # before any worker stages anew
        if stale:
            log.warning("removed %d staging namespaces left by a killed worker", len(stale))
        create_app(app_config)  # fail here, loudly, not in every worker
        for vni in filter(None, opts.vxlan_agent_vnis.split(",")):
            start_vxlan_agent(children, vni, opts)
        if opts.ipsec_agent_interval and not 0.1 <= opts.ipsec_agent_interval <= 3600:
            raise SystemExit(f"--ipsec-agent-interval {opts.ipsec_agent_interval} is not valid: "
                             "0 (no agent) or 0.1 to 3600 seconds")
        if opts.ipsec_agent_interval:  # idle (a directory listing a round) until an IPsec network exists
            children.start(ipsec_agent_argv(opts.ipam_data_dir, opts.ipsec_agent_interval))
        # whatever --backend: a socket serving another backend takes -o backend=ipsec
        # too (the managed plug-in's default alias); the registry idles until then
        if app_config["etcd_endpoints"]:
            start_ipsec_registry(children, opts)
        gunicorn_options = {
            "bind": [sock.hand_over() for sock in claimed],
            "workers": opts.workers,
            "worker_class": DrainingWorker,
            "timeout": 300,
            "graceful_timeout": GRACEFUL_TIMEOUT,
            "umask": 0o117,  # the workers' heartbeat files; the sockets are bound already (listeners.py)
            "accesslog": "-" if opts.access_log else None,
            "logger_class": ShimLogger,
            "loglevel": opts.log_level.lower(),
            "proc_name": "cnm-shim",
            "control_socket_disable": True,  # gunicorn >= 25 would open one in $HOME
            "child_exit": _worker_gone,
            "post_worker_init": _warm_worker,
            "when_ready": lambda arbiter: restart_stranded_later(children, opts.docker_host,
                                                                 app_config["sockets"].values()),
        }
        ShimServer(app_config, gunicorn_options, claimed).run()
    finally:
        # gunicorn's workers are forks that leave through this frame too (as
        # SystemExit): only the master gives back what the master holds
        if os.getpid() == master:
            for sock in claimed:  # gunicorn's stop did this already, unless it never ran
                sock.release()
            children.stop(CHILD_GRACE)
    return 0
