"""One log format for every process of ours, and the request ID on each line.

Every process (`cnm-shim serve`'s master and gunicorn workers, gunicorn's own
error log, the CNI daemon and its workers, the plug-ins forked by the shim,
the agents) logs through `setup`, in one of two forms:

- text (the default), one line per record, continuation lines indented so
  that nothing a message carries can start a line of its own:
  `2026-11-30T22:13:44.123Z INFO rancher-cni[4242] req=9f3a1c0de2b47a61 rancher-bridge ADD ...`
- json (`--log-format json`, or `CNM_SHIM_LOG_FORMAT=json`), one object per
  line for log shippers: `time`, `level`, `logger`, `pid`, `request_id`,
  `message`, the record's extra fields, and `exc` for a traceback.

The request ID: the shim makes one per Docker request and puts it in the
environment of every CNI call it makes for it (`RANCHER_REQUEST_ID`), so the
plug-in's lines (a forked child, or the daemon's worker behind our
executable) carry the same ID. A call that comes without one (a CNI runtime's)
gets one made where it is served. An ID from outside is used only when it is
8 to 32 lowercase hex digits: it reaches log lines, and must not forge one.

Under systemd (stderr is the journal's stream, `JOURNAL_STREAM`), each line
starts with the syslog priority `<N>`, which journald strips and records as
the entry's priority.

Standard library only: the CNI executables' front imports it.
"""

import contextlib
import contextvars
import json
import logging
import os
import re
import sys
import time

REQUEST_ENV = "RANCHER_REQUEST_ID"
FORMAT_ENV = "CNM_SHIM_LOG_FORMAT"
FORMATS = ("text", "json")
_ID = re.compile(r"[0-9a-f]{8,32}\Z")
_request_id = contextvars.ContextVar("rancher_request_id", default=None)

# logging level -> syslog priority (sd-daemon(3) prefixes)
_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
# a LogRecord's own attributes; anything else on it came as `extra` and is a field
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "request_id"}


def valid_id(value) -> str | None:
    """`value` when it is a request ID we put on a log line, else None."""
    return value if isinstance(value, str) and _ID.match(value) else None


def new_id() -> str:
    return os.urandom(8).hex()


def current() -> str | None:
    """The request ID of the work this process does now, if any."""
    return _request_id.get()


def bind(value=None) -> str:
    """Make `value` (when valid, else a new ID) the current request ID; returns it."""
    request_id = valid_id(value) or new_id()
    _request_id.set(request_id)
    return request_id


def unbind() -> None:
    _request_id.set(None)


@contextlib.contextmanager
def request(value=None):
    """`bind` for a block; the ID before it comes back after it."""
    token = _request_id.set(valid_id(value) or new_id())
    try:
        yield _request_id.get()
    finally:
        _request_id.reset(token)


def check_format(value: str) -> str:
    value = (value or "text").strip().lower()
    if value not in FORMATS:
        raise ValueError(f"log format {value!r} is not valid: text or json")
    return value


def priority(levelno: int) -> int:
    for level, prio in _PRIORITY:
        if levelno >= level:
            return prio
    return 7


def _timestamp(record) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + ".%03dZ" % record.msecs


class Formatter(logging.Formatter):
    """Our line, text or json; with `journal`, each line behind its `<N>` priority."""

    def __init__(self, kind: str = "text", journal: bool = False):
        super().__init__()
        self.kind = check_format(kind)
        self.journal = journal

    def format(self, record) -> str:
        message = record.getMessage()
        request_id = valid_id(record.__dict__.get("request_id")) or _request_id.get()
        exc = None
        if record.exc_info:
            exc = self.formatException(record.exc_info)
        elif record.exc_text:
            exc = record.exc_text
        if self.kind == "json":
            entry = {"time": _timestamp(record), "level": record.levelname, "logger": record.name,
                     "pid": record.process, "request_id": request_id, "message": message}
            for key, value in record.__dict__.items():
                if key not in _STANDARD and key not in entry:
                    entry[key] = value
            if exc:
                entry["exc"] = exc
            lines = [json.dumps(entry, default=str)]
        else:
            text = message + ("\n" + exc if exc else "")
            first, *rest = text.splitlines() or [""]
            head = f"{_timestamp(record)} {record.levelname} {record.name}[{record.process}] req={request_id or '-'} "
            lines = [head + first] + ["    " + line for line in rest]
        if self.journal:
            prefix = f"<{priority(record.levelno)}>"
            lines = [prefix + line for line in lines]
        return "\n".join(lines)


def writes_to_journal(stream) -> bool:
    """True when `stream` is the journal's stream systemd gave this service
    (`JOURNAL_STREAM` is its device:inode; a child whose stderr went
    elsewhere inherits the variable, not the stream)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def formatter(kind: str | None = None, stream=None) -> Formatter:
    stream = stream if stream is not None else sys.stderr
    return Formatter(kind or os.environ.get(FORMAT_ENV) or "text", journal=writes_to_journal(stream))


def setup(level="INFO", kind: str | None = None, stream=None) -> None:
    """The root logger writes our lines to `stream` (stderr) from `level` up;
    `kind` text or json (default: CNM_SHIM_LOG_FORMAT, else text)."""
    stream = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(kind, stream))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
