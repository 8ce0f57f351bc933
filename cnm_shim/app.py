"""The Flask app factory: one app answers every driver socket; which backend a
request is for comes from the socket it arrived on."""

import dataclasses
import logging
import os
import time

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.wsgi import ClosingIterator

from cni_backend import logfmt, runtime

from . import api, backends, metrics
from .errors import DriverError, docker_answer
from .ipam_driver import IpamDriver
from .state import State
from .translate import Settings, Translator

log = logging.getLogger("cnm-shim")

# Driver (socket) name -> backend.
DRIVERS = backends.DRIVERS
# The largest request body read. Docker's calls are small JSON documents: the
# biggest, CreateNetwork and CreateEndpoint, carry options and labels, a few KB
# even with many. 1 MiB is far above any of them and keeps one request from
# making a worker hold (and parse) tens of MB; a larger one is answered 413,
# with `Err`, before it is read.
MAX_BODY_BYTES = 1 << 20
# The calls that change something: one INFO line each (with the request ID the
# plug-in's lines carry too); the others (capabilities, queries) at DEBUG.
CHANGES = frozenset(("NetworkDriver.CreateNetwork", "NetworkDriver.DeleteNetwork", "NetworkDriver.AllocateNetwork",
                     "NetworkDriver.FreeNetwork", "NetworkDriver.CreateEndpoint", "NetworkDriver.DeleteEndpoint",
                     "NetworkDriver.Join", "NetworkDriver.Leave", "NetworkDriver.ProgramExternalConnectivity",
                     "NetworkDriver.RevokeExternalConnectivity", "IpamDriver.RequestPool", "IpamDriver.ReleasePool",
                     "IpamDriver.RequestAddress", "IpamDriver.ReleaseAddress"))


@dataclasses.dataclass
class Services:
    state: State
    translator: Translator
    ipam: IpamDriver
    default_driver: str = "rancher-bridge"

    @staticmethod
    def backend_of(driver: str) -> str:
        return DRIVERS[driver]


class DriverFromSocket:
    """WSGI middleware: the driver is named by the Unix socket the request came
    in on (gunicorn passes the connection as gunicorn.socket)."""

    def __init__(self, app, sockets: dict):
        self.app = app
        self.sockets = sockets  # socket file name -> driver name

    def __call__(self, environ, start_response):
        conn = environ.get("gunicorn.socket")
        if conn is not None:
            try:
                name = os.path.basename(conn.getsockname())
            except (OSError, TypeError, AttributeError):
                name = ""
            if name in self.sockets:
                environ["rancher.driver"] = self.sockets[name]
        return self.app(environ, start_response)


class AfterAnswer:
    """WSGI middleware: the work a handler queued with `api.after_answer`
    runs once the answer has been written, whatever answer Flask ended up
    giving (an error handler's, or a hook's that failed): gunicorn's sync
    worker closes the response iterable after sending the body, before the
    socket is closed and before its next accept."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        queued = environ.setdefault(api.AFTER_ANSWER, [])
        try:
            answer = self.app(environ, start_response)
        except BaseException:
            _run_queued(queued)
            raise
        return ClosingIterator(answer, lambda: _run_queued(queued)) if queued else answer


def _run_queued(queued: list) -> None:
    while queued:
        queued.pop(0)()


def _error(exc: Exception):
    """Every failure as Docker reads it: `Err` for the network driver, `Error`
    for IPAM. The one place an error becomes an answer (errors.docker_answer)."""
    if isinstance(exc, RequestEntityTooLarge):
        size = f"{request.content_length} bytes" if request.content_length else "more than that"
        status, message = exc.code, (f"{request.path}: the request body ({size}) is larger than "
                                     f"the plug-in accepts ({MAX_BODY_BYTES} bytes)")
    elif isinstance(exc, HTTPException):
        status, message = exc.code, f"{request.path}: {exc.description}"
    else:
        answer = docker_answer(exc, api.driver_name())
        if answer is None:  # a bug: the traceback goes to our log, not to the user
            log.exception("%s failed", request.path)
            status, message = 500, f"internal error in {request.path}: {type(exc).__name__}: {exc}"
        else:
            status, message = answer
            if not isinstance(exc, DriverError):
                log.warning("%s: %s", request.path, message)
    if request.path.startswith("/IpamDriver."):
        # IPAM's own key is Error; moby's plug-in client reads only Err from a
        # non-200 answer and otherwise prints the whole body, JSON and all
        # ('IpamDriver.RequestPool: {"Error":"..."}'): so both, the same text.
        return jsonify({"Error": message, "Err": message}), status
    return jsonify({"Err": message}), status


def create_app(config: dict | None = None) -> Flask:
    app = Flask("cnm_shim")
    runtime.set_observer(metrics.CALLS.observe_cni)  # every CNI execution counted (under serve)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    config = dict(config or {})
    sockets = config.pop("sockets", None) or {f"{name}.sock": name for name in DRIVERS}
    settings = Settings(**config)
    state = State(settings.state_dir)
    ipam = IpamDriver(state, settings.store())
    drivers = sorted(set(sockets.values()))
    app.extensions["rancher"] = Services(state, Translator(state, settings, ipam), ipam,
                                         **({"default_driver": drivers[0]} if len(drivers) == 1 else {}))
    for blueprint in (api.plugin_api, api.network_api, api.ipam_api):
        app.register_blueprint(blueprint)
    app.register_error_handler(Exception, _error)
    app.before_request(_started)
    app.after_request(_answered)
    app.teardown_request(_finished)
    app.wsgi_app = DriverFromSocket(AfterAnswer(app.wsgi_app), sockets)
    return app


def _started() -> None:
    request.environ["rancher.started"] = time.monotonic()
    # Docker sends no request ID: one per request, on our lines and in the
    # environment of every CNI call made for it (invoke.api)
    logfmt.bind()


def _finished(_exc) -> None:
    logfmt.unbind()


def _log_call(verb: str, response, ok: bool, seconds: float) -> None:
    """One line per Docker call: which, on what, how it ended, how long."""
    level = logging.INFO if verb in CHANGES else logging.DEBUG
    if not log.isEnabledFor(level):
        return
    body = g.get("body") or {}  # as api.body() parsed it, if it did
    fields = {key: str(body[name])[:64] for key, name in (("endpoint", "EndpointID"), ("network", "NetworkID"),
                                                          ("pool", "PoolID")) if body.get(name)}
    on = " ".join(f"{key}={value!r}" if key == "pool" else f"{key}={value[:12]}" for key, value in fields.items())
    log.log(level, "%s%s -> %s in %.1f ms", verb, f" {on}" if on else "",
            "ok" if ok else f"error (HTTP {response.status_code})", seconds * 1000,
            extra={"verb": verb, "status": response.status_code, "ok": ok, "ms": round(seconds * 1000, 3),
                   **fields})


def _answered(response):
    """Every answer, error handlers' too, counted for `cnm-shim metrics`."""
    started = request.environ.get("rancher.started")
    if started is not None:
        body = response.get_json(silent=True) if response.is_json else None
        ok = response.status_code == 200 and not (isinstance(body, dict) and (body.get("Err") or body.get("Error")))
        try:
            backend = api.backend()
        except KeyError:
            backend = "unknown"
        seconds = time.monotonic() - started
        metrics.CALLS.observe(metrics.verb_of(request.path), backend, ok, seconds)
        _log_call(request.path.lstrip("/")[:80], response, ok, seconds)
    return response
