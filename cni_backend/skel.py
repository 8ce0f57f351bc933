"""The dispatcher every plug-in runs: env + stdin in, spec-shaped JSON out.

Input is validated here, once: the environment variables, the config's JSON and
its `cniVersion` and `name`. Plug-ins receive a `Request` that is known good and
raise `CNIError` for anything else; this module turns every failure into the
spec's error JSON and a non-zero exit, never into a traceback on stdout.
"""

import dataclasses
import json
import logging
import os
import re
import time
import traceback

from . import logfmt, trace, version
from .errors import (CNIError, DECODE_FAILURE, INCOMPATIBLE_VERSION, INTERNAL,
                     INVALID_CONFIG, INVALID_ENV, UNKNOWN_CONTAINER)
from .ifnames import RULE, is_ifname
from .net.netns import NetnsGone

COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")

# Which variables each command needs (as libcni's skel requires them).
REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
    "VERSION": (),
}
# The first spec version that knows each command.
MINIMUM_VERSION = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")

log = logging.getLogger("rancher-cni")


@dataclasses.dataclass
class Request:
    """One validated CNI call."""

    command: str
    container_id: str
    netns: str              # the path as the runtime gave it; reported in results
    ifname: str
    args: dict              # CNI_ARGS as a dict
    path: list
    config: dict            # the network config from stdin
    env: dict
    netns_fd: int | None = None  # an fd the thick front already opened on `netns`

    @property
    def cni_version(self) -> str:
        return self.config["cniVersion"]

    @property
    def network(self) -> str:
        return self.config["name"]

    @property
    def runtime_config(self) -> dict:
        value = self.config.get("runtimeConfig") or {}
        if not isinstance(value, dict):
            raise CNIError(INVALID_CONFIG, "runtimeConfig must be a JSON object")
        return value

    @property
    def args_cni(self) -> dict:
        value = (self.config.get("args") or {})
        if not isinstance(value, dict) or not isinstance(value.get("cni", {}), dict):
            raise CNIError(INVALID_CONFIG, "args.cni must be a JSON object")
        return value.get("cni") or {}

    @property
    def prev_result(self) -> dict | None:
        raw = self.config.get("prevResult")
        return version.normalize_result(raw, "prevResult") if raw else None

    def netns_path_for_use(self) -> str:
        """A path that opens the sandbox, even from another mount namespace."""
        if self.netns_fd is not None:
            return f"/proc/{os.getpid()}/fd/{self.netns_fd}"
        return self.netns


def parse_cni_args(raw: str) -> dict:
    """'IgnoreUnknown=1;IP=10.0.0.5' -> {'IgnoreUnknown': '1', 'IP': '10.0.0.5'}."""
    args = {}
    for pair in filter(None, raw.split(";")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CNIError(INVALID_ENV, f"CNI_ARGS: {pair!r} is not KEY=VALUE",
                           "CNI_ARGS is a list of KEY=VALUE pairs separated by ';'")
        args[key] = value
    return args


def validate_container_id(container_id: str) -> None:
    if not NAME_PATTERN.match(container_id):
        raise CNIError(INVALID_ENV, f"CNI_CONTAINERID {container_id!r} is invalid",
                       "it must match [A-Za-z0-9][A-Za-z0-9_.-]*")


def validate_ifname(ifname: str) -> None:
    if not is_ifname(ifname):
        raise CNIError(INVALID_ENV, f"CNI_IFNAME {ifname!r} is not a valid interface name", RULE)


def decode_config(stdin: bytes) -> dict:
    try:
        config = json.loads(stdin)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CNIError(DECODE_FAILURE, "the network configuration on stdin is not valid JSON",
                       str(exc)) from None
    if not isinstance(config, dict):
        raise CNIError(DECODE_FAILURE, "the network configuration must be a JSON object")
    return config


def validate_config(config: dict) -> None:
    if "cniVersion" not in config:
        raise CNIError(INCOMPATIBLE_VERSION, "the network configuration has no cniVersion",
                       "supported versions: " + ", ".join(version.SUPPORTED_VERSIONS))
    version.require_supported(config["cniVersion"])
    name = config.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise CNIError(INVALID_CONFIG, f"invalid network name {name!r}",
                       "a name matches [A-Za-z0-9][A-Za-z0-9_.-]*")
    if not isinstance(config.get("type"), str) or not config["type"]:
        raise CNIError(INVALID_CONFIG, "the plug-in config has no 'type'")


def build_request(env, stdin: bytes, netns_fd=None) -> Request:
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CNIError(INVALID_ENV, f"CNI_COMMAND {command!r} is not valid",
                       "expected one of " + ", ".join(COMMANDS))
    missing = [name for name in REQUIRED_ENV[command] if not env.get(name)]
    if missing:
        raise CNIError(INVALID_ENV, "required environment variables missing: " + ", ".join(missing))
    config = decode_config(stdin)
    validate_config(config)
    minimum = MINIMUM_VERSION.get(command)
    if minimum and not version.at_least(config["cniVersion"], minimum):
        raise CNIError(INCOMPATIBLE_VERSION,
                       f"{command} needs cniVersion {minimum} or later, the config has {config['cniVersion']}")
    if env.get("CNI_CONTAINERID"):
        validate_container_id(env["CNI_CONTAINERID"])
    if env.get("CNI_IFNAME"):
        validate_ifname(env["CNI_IFNAME"])
    return Request(
        command=command,
        container_id=env.get("CNI_CONTAINERID", ""),
        netns=env.get("CNI_NETNS", ""),
        ifname=env.get("CNI_IFNAME", ""),
        args=parse_cni_args(env.get("CNI_ARGS", "")),
        path=[p for p in env.get("CNI_PATH", "").split(os.pathsep) if p],
        config=config,
        env=dict(env),
        netns_fd=netns_fd,
    )


def version_info(stdin: bytes) -> dict:
    """The VERSION answer; the config on stdin is optional."""
    asked = version.CURRENT
    try:
        asked = json.loads(stdin).get("cniVersion", asked) if stdin.strip() else asked
    except (ValueError, AttributeError, RecursionError):
        pass
    return {"cniVersion": asked, "supportedVersions": list(version.SUPPORTED_VERSIONS)}


def _error_version(stdin: bytes) -> str:
    """The cniVersion to write an error in: the config's if we can read it."""
    try:
        asked = json.loads(stdin).get("cniVersion")
    except (ValueError, AttributeError, RecursionError, TypeError):
        return version.CURRENT
    return asked if asked in version.SUPPORTED_VERSIONS else version.CURRENT


def run(plugin, req: Request):
    """Call the plug-in's handler; returns the result to print, or None."""
    if req.command == "ADD":
        return version.convert_result(plugin.add(req), req.cni_version)
    handler = {"DEL": plugin.delete, "CHECK": plugin.check,
               "GC": plugin.gc, "STATUS": plugin.status}[req.command]
    handler(req)
    return None


def dispatch(plugin, env, stdin: bytes, netns_fd=None) -> tuple:
    """Run one CNI call; returns (stdout text, exit code, stderr text).

    Under the call's request ID (RANCHER_REQUEST_ID from the caller, the shim's
    for a Docker request; one made here when it has none): one log line per
    call (never on stdout, which is the result), with the ID, as the caller's
    lines have it."""
    if env.get("CNI_COMMAND") == "VERSION":
        return json.dumps(version_info(stdin)), 0, ""
    with logfmt.request(env.get(logfmt.REQUEST_ENV)) as request_id:
        if env.get(logfmt.REQUEST_ENV) != request_id:  # delegated calls (IPAM) carry it on
            env = dict(env, **{logfmt.REQUEST_ENV: request_id})
        start, built = time.perf_counter(), []
        answer = _dispatch(plugin, env, stdin, netns_fd, built)
        _log_call(_name(plugin), env, built[0].config if built else {}, answer, time.perf_counter() - start)
        return answer


def _name(plugin) -> str | None:
    """rancher-ipam, say, for the module that serves it (None for another object)."""
    from .plugins import PLUGINS
    module = getattr(plugin, "__name__", None)
    return next((name for name, path in PLUGINS.items() if path == module), None)


def _log_call(name, env, config: dict, answer: tuple, seconds: float) -> None:
    command = env.get("CNI_COMMAND", "")
    failed = answer[1] != 0
    level = logging.WARNING if failed else logging.DEBUG if command == "STATUS" else logging.INFO
    if not log.isEnabledFor(level):
        return
    plugin, network = name or str(config.get("type", "?"))[:64], str(config.get("name", "?"))[:64]
    outcome = "ok"
    if failed:
        try:
            error = json.loads(answer[0])
            outcome = f"error {error.get('code')}: {error.get('msg')}"
        except (ValueError, AttributeError, RecursionError, TypeError):
            outcome = f"exit code {answer[1]}"
    container, ifname = env.get("CNI_CONTAINERID", "")[:12], env.get("CNI_IFNAME", "")[:15]
    log.log(level, "%s %s %s/%s on %s -> %s in %.1f ms", plugin, command[:8], container, ifname, network, outcome,
            seconds * 1000, extra={"plugin": plugin, "command": command[:8], "container": container,
                                   "ifname": ifname, "network": network, "ok": not failed,
                                   "ms": round(seconds * 1000, 3)})


def _dispatch(plugin, env, stdin: bytes, netns_fd, built: list) -> tuple:
    try:
        req = build_request(env, stdin, netns_fd)
        built.append(req)
        with trace.bound(env), trace.span("plugin", env, plugin=req.config["type"], command=req.command,
                                          container=req.container_id[:12]):
            output = run(plugin, req)
        return (json.dumps(output) if output is not None else ""), 0, ""
    except CNIError as exc:
        return json.dumps(exc.to_json(_error_version(stdin))), 1, ""
    except NetnsGone as exc:  # CNI_NETNS went away, or never was a network namespace (/dev/null)
        error = CNIError(UNKNOWN_CONTAINER, f"{exc} does not exist or is not a network namespace")
        return json.dumps(error.to_json(_error_version(stdin))), 1, ""
    except Exception as exc:  # noqa: BLE001 - a runtime must always get the spec's JSON
        error = CNIError(INTERNAL, f"internal error: {exc}", type(exc).__name__)
        return json.dumps(error.to_json(_error_version(stdin))), 1, traceback.format_exc()

