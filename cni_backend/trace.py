"""Per-request phase timings for `cnm-shim compare`; off unless asked for.

Tracing is on while either
- the `RANCHER_TRACE` environment variable (of the process, or of the CNI call
  a daemon worker serves) names a file, or
- the control file `/run/rancher-cni/trace` (`RANCHER_TRACE_CONTROL` overrides
  the path) holds a file's path: `cnm-shim compare` writes it so that an already
  running shim and CNI daemon trace without a restart, and removes it after.

Each span is one JSON line appended with a single write(2), so the shim's
workers, the daemon's workers and the caller can share one file:
`{"span", "t0" (epoch seconds), "ms", "pid", ...fields}`. Spans:
`shim` (one Docker request, field `path`), `cni.exec` (one plug-in execution
seen by the runtime side: `plugin`, `command`), `plugin` (the plug-in's own
work: `plugin`, `command`), `netlink` (one request or dump: `op`), `firewall`
(one iptables/nft/ebtables run: `tool`). Off, a span costs an environment
lookup and a failed open(2).

Standard library only: the executables' front imports nothing heavy.
"""

import contextlib
import json
import os
import time

from . import paths

ENV = "RANCHER_TRACE"
CONTROL_ENV = "RANCHER_TRACE_CONTROL"
DEFAULT_CONTROL = paths.TRACE_CONTROL

_bound = None  # the file a daemon worker traces to, from the call's environment


def control_path() -> str:
    return os.environ.get(CONTROL_ENV) or DEFAULT_CONTROL


def target(env=None) -> str | None:
    """The JSONL file to append spans to, or None when tracing is off."""
    path = (env or {}).get(ENV) or _bound or os.environ.get(ENV)
    if path:
        return path
    try:
        with open(control_path()) as f:
            return f.read().strip() or None
    except OSError:
        return None


def record(trace_file: str, span: str, t0: float, seconds: float, **fields) -> None:
    line = json.dumps({"span": span, "t0": t0, "ms": round(seconds * 1000, 3), "pid": os.getpid(), **fields})
    try:
        fd = os.open(trace_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    except OSError:
        pass  # a trace must never fail the call it measures


def begin(env=None):
    """A span started now, for `end`; None while tracing is off. For a span
    whose start and end are in two places (a web framework's request hooks)."""
    path = target(env)
    return None if path is None else (path, time.time(), time.perf_counter())


def end(started, name: str, **fields) -> None:
    """Record the span `begin` started, as `name`; nothing when it gave None."""
    if started is not None:
        path, t0, start = started
        record(path, name, t0, time.perf_counter() - start, **fields)


@contextlib.contextmanager
def span(name: str, env=None, **fields):
    started = begin(env)
    try:
        yield
    finally:
        end(started, name, **fields)


@contextlib.contextmanager
def bound(env):
    """Within a CNI call: nested spans (netlink, firewall) follow the call's env."""
    global _bound
    previous, _bound = _bound, (env or {}).get(ENV) or _bound
    try:
        yield
    finally:
        _bound = previous


class CountingNetlink:
    """An IPRoute whose every public method call (one request or dump) is a
    `netlink` span; handed out by net.netlink.socket_in only while tracing."""

    def __init__(self, ipr, path: str):
        self._ipr, self._path = ipr, path

    def __getattr__(self, name):
        attr = getattr(self._ipr, name)
        if name.startswith("_") or name == "close" or not callable(attr):
            return attr

        def call(*args, **kwargs):
            t0, start = time.time(), time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                op = f"{name} {args[0]}" if args and isinstance(args[0], str) else name
                record(self._path, "netlink", t0, time.perf_counter() - start, op=op)
        return call


def spans(path: str) -> list:
    """Every span in a trace file (a torn last line is skipped)."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    except FileNotFoundError:
        pass
    return out
