"""`cnm-shim serve`: gunicorn on one Unix socket per driver in /run/docker/plugins,
plus the CNI daemon the executables hand their work to.

Sync workers, on purpose: each is a single-threaded process, so the staging
namespace work may setns(2) safely, and a hung call ties up one worker, not all.
"""

import logging
import os
import signal
import subprocess
import sys
import time

from gunicorn.app.base import BaseApplication

from cni_backend import staging, wire

from .app import DRIVERS, create_app

log = logging.getLogger("cnm-shim")


def restart_stranded_later(docker_host: str, drivers) -> None:
    """Once the sockets are bound: a short-lived child starts the containers
    dockerd gave up on while we were down (cnm_shim/recovery.py). A child,
    not a thread, as the master forks workers."""
    socket_path = docker_host.removeprefix("unix://")
    if not docker_host or (docker_host.startswith("unix://") and not os.path.exists(socket_path)):
        return
    subprocess.Popen([sys.executable, "-m", "cnm_shim.cli", "restart-stranded", "--docker-host", docker_host,
                      "--drivers", ",".join(sorted(set(drivers))), "--delay", "1"], start_new_session=False)


class ShimServer(BaseApplication):
    def __init__(self, app_config: dict, gunicorn_options: dict):
        self.app_config = app_config
        self.gunicorn_options = gunicorn_options
        super().__init__()

    def load_config(self):
        for key, value in self.gunicorn_options.items():
            if key in self.cfg.settings:  # newer settings are skipped on older gunicorns
                self.cfg.set(key, value)

    def load(self):
        return create_app(self.app_config)


def _cni_daemon_running(path: str) -> bool:
    sock = wire.connect(path)
    if sock is None:
        return False
    sock.close()
    return True


def start_cni_daemon(path: str):
    """The CNI daemon as a child, unless one already listens on `path`."""
    if _cni_daemon_running(path):
        log.info("using the CNI daemon already listening on %s", path)
        return None
    child = subprocess.Popen([sys.executable, "-m", "cnm_shim.cli", "cni-server", "--socket", path])
    deadline = time.monotonic() + 30
    while not _cni_daemon_running(path):
        if child.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the CNI daemon did not start on {path}")
        time.sleep(0.05)
    return child


def sockets(backend: str | None, socket_name: str | None) -> dict:
    """Socket file name -> driver name. All three drivers by default; one when
    a backend is chosen, as in the managed plug-in, whose single socket Docker
    names after the plug-in (any alias), not after the backend."""
    if backend is None:
        return {f"{name}.sock": name for name in DRIVERS}
    driver = f"rancher-{backend}"
    return {socket_name or f"{driver}.sock": driver}


def start_vxlan_agent(vni: str, opts) -> subprocess.Popen:
    if not opts.etcd_endpoints:
        raise SystemExit("a vxlan agent needs --etcd-endpoints (RANCHER_ETCD_ENDPOINTS)")
    argv = [sys.executable, "-m", "cnm_shim.cli", "vxlan-agent", "--vni", vni, "--etcd-endpoints", opts.etcd_endpoints,
            "--state-dir", opts.ipam_data_dir]
    if opts.vtep_dev:
        argv += ["--vtep-dev", opts.vtep_dev]
    for flag, value in (("--etcd-ca", opts.etcd_ca), ("--etcd-cert", opts.etcd_cert), ("--etcd-key", opts.etcd_key)):
        if value:
            argv += [flag, value]
    return subprocess.Popen(argv)


def serve(opts) -> int:
    os.environ[wire.SOCKET_ENV] = opts.cni_socket  # inherited by the executables we run
    os.makedirs(opts.plugin_dir, mode=0o755, exist_ok=True)
    daemon = None if opts.no_cni_daemon else start_cni_daemon(opts.cni_socket)
    app_config = {"state_dir": opts.state_dir, "run_dir": opts.run_dir, "ipam_data_dir": opts.ipam_data_dir,
                  "cni_path": tuple(opts.cni_path.split(os.pathsep)), "cni_conf_dir": opts.cni_conf_dir,
                  "etcd_endpoints": tuple(e for e in opts.etcd_endpoints.split(",") if e),
                  "etcd_tls": {k: v for k, v in (("ca", opts.etcd_ca), ("cert", opts.etcd_cert),
                                                 ("key", opts.etcd_key)) if v} or None}
    app_config["sockets"] = sockets(opts.backend, opts.socket)
    stale = staging.remove_all(os.path.join(opts.run_dir, "staging"))  # before any worker stages anew
    if stale:
        log.warning("removed %d staging namespaces left by a killed worker", len(stale))
    create_app(app_config)  # fail here, loudly, before binding sockets Docker would find
    agents = [start_vxlan_agent(vni, opts) for vni in opts.vxlan_agent_vnis.split(",") if vni]
    gunicorn_options = {
        "bind": [f"unix:{os.path.join(opts.plugin_dir, name)}" for name in app_config["sockets"]],
        "workers": opts.workers,
        "worker_class": "sync",
        "timeout": 300,
        "graceful_timeout": 10,
        "umask": 0o117,  # sockets 0660, root's
        "accesslog": "-" if opts.access_log else None,
        "loglevel": opts.log_level.lower(),
        "proc_name": "cnm-shim",
        "control_socket_disable": True,  # gunicorn >= 25 would open one in $HOME
        "when_ready": lambda arbiter: restart_stranded_later(opts.docker_host, app_config["sockets"].values()),
    }
    try:
        ShimServer(app_config, gunicorn_options).run()
    finally:
        for child in [daemon, *agents]:
            if child is not None:
                child.send_signal(signal.SIGTERM)
                child.wait(timeout=15)
    return 0
