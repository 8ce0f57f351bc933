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

from cni_backend import wire

from .app import DRIVERS, create_app

log = logging.getLogger("cnm-shim")


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


def serve(opts) -> int:
    os.environ[wire.SOCKET_ENV] = opts.cni_socket  # inherited by the executables we run
    os.makedirs(opts.plugin_dir, mode=0o755, exist_ok=True)
    daemon = None if opts.no_cni_daemon else start_cni_daemon(opts.cni_socket)
    app_config = {"state_dir": opts.state_dir, "run_dir": opts.run_dir, "ipam_data_dir": opts.ipam_data_dir,
                  "cni_path": tuple(opts.cni_path.split(os.pathsep)), "cni_conf_dir": opts.cni_conf_dir,
                  "etcd_endpoints": tuple(e for e in opts.etcd_endpoints.split(",") if e),
                  "etcd_tls": {k: v for k, v in (("ca", opts.etcd_ca), ("cert", opts.etcd_cert),
                                                 ("key", opts.etcd_key)) if v} or None}
    create_app(app_config)  # fail here, loudly, before binding sockets Docker would find
    gunicorn_options = {
        "bind": [f"unix:{os.path.join(opts.plugin_dir, name)}.sock" for name in DRIVERS],
        "workers": opts.workers,
        "worker_class": "sync",
        "timeout": 300,
        "graceful_timeout": 10,
        "umask": 0o117,  # sockets 0660, root's
        "accesslog": "-" if opts.access_log else None,
        "loglevel": opts.log_level.lower(),
        "proc_name": "cnm-shim",
        "control_socket_disable": True,  # gunicorn >= 25 would open one in $HOME
    }
    try:
        ShimServer(app_config, gunicorn_options).run()
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=15)
    return 0
