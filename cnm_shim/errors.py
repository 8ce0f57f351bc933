"""The Docker side's errors, and the one place any error becomes Docker's answer.

Code on the Docker side raises `DriverError` for a request it refuses, and lets
the CNI side's `CNIError`, the state database's `sqlite3.Error` and the host's
`OSError` pass through untouched. `docker_answer` (called only by app.py's
error handler) turns each into an HTTP status and the message Docker prints
after `docker network create` / `docker run`. A step that wants its name in
that message wraps itself in `step(...)`: it adds context, it translates nothing.
"""

import contextlib
import sqlite3

from cni_backend import errors as cni

# CNI codes that mean "nothing is wrong with the request, ask again later":
# an etcd member away, the IPAM store locked, a plug-in not ready (STATUS).
TRY_AGAIN_CODES = {cni.TRY_AGAIN_LATER, cni.NOT_AVAILABLE, cni.NOT_AVAILABLE_LIMITED}
# 400: refused (the message says why); 503: try again; 500: the host failed,
# or (app.py, with a traceback in our log) a bug.
BAD_REQUEST, UNAVAILABLE, HOST_FAILURE = 400, 503, 500
# Never 404: moby reads a 404 as "the plug-in lacks this call" and, for
# Program/RevokeExternalConnectivity, goes on as if it had succeeded.


class DriverError(Exception):
    """A request Docker should fail, with a message for the person who typed it."""

    status = BAD_REQUEST


DOMAIN_ERRORS = (DriverError, cni.CNIError, sqlite3.Error, OSError)
_CONTEXT = "_docker_context"  # the attribute step() leaves on an error passing through


@contextlib.contextmanager
def step(context: str):
    """Name what was being done, e.g. "rancher-bridge: CNI DEL on rancher-x
    failed", as the prefix of the message Docker shows for a CNI-side, state
    or host error raised inside. The innermost step names it."""
    try:
        yield
    except DOMAIN_ERRORS as exc:
        if not isinstance(exc, DriverError) and not hasattr(exc, _CONTEXT):
            setattr(exc, _CONTEXT, context)
        raise


def docker_answer(exc: BaseException, driver: str) -> tuple | None:
    """(HTTP status, message) for a domain error; None for anything else,
    which is a bug (app.py answers 500 and logs the traceback). `driver` (the
    socket's driver name) prefixes a message no step() named."""
    if isinstance(exc, DriverError):
        return exc.status, str(exc)
    if not isinstance(exc, DOMAIN_ERRORS):
        return None
    context = getattr(exc, _CONTEXT, driver)
    if isinstance(exc, cni.CNIError):
        # str() is "msg (details)"; the code tells the CNI-side log line apart.
        status = UNAVAILABLE if exc.code in TRY_AGAIN_CODES else BAD_REQUEST
        return status, f"{context}: {exc}"
    if isinstance(exc, sqlite3.OperationalError):  # locked past the busy timeout, or unreadable now
        return UNAVAILABLE, f"{context}: the plug-in's state database failed ({exc}); try again"
    # The host or the state file failed (a full disk, a corrupt database): not
    # the request's fault, and not a bug of ours either.
    return HOST_FAILURE, f"{context}: {exc}"
