"""The line between the tests and the machine: harnesses that start a plug-in
or an engine (Shim, Dockerd) and every benchmark run only inside a private
network and mount namespace (tests/sandbox.sh), where /run/docker/plugins,
the plug-in's state and CNI config directories and the firewall are their
own. Outside, they refuse before touching anything: a plug-in serving this
machine's Docker (make run) keeps its sockets, state and rules."""

import os

SANDBOX_HINT = "run it in the sandbox: tests/sandbox.sh COMMAND (make test and make bench do)"


SANDBOX_ENV = "RANCHER_SANDBOX_NS"  # set by tests/sandbox.sh to the namespaces it made


def current_namespaces() -> str:
    return " ".join(os.readlink(f"/proc/self/ns/{kind}") for kind in ("net", "mnt"))


def in_private_namespaces() -> bool:
    """This process is in the network and mount namespaces tests/sandbox.sh
    made (init's namespaces cannot be read from here to compare with: the
    sandbox names its own, and a process that left them no longer matches)."""
    try:
        return os.environ.get(SANDBOX_ENV) == current_namespaces()
    except OSError:
        return False


class NotSandboxed(RuntimeError):
    pass


def require_sandbox(what: str) -> None:
    if not in_private_namespaces():
        raise NotSandboxed(f"{what} refuses to run in the machine's own namespaces, where it could replace or "
                           f"remove a running plug-in's sockets, state or rules; {SANDBOX_HINT}")


def bench_main_guard(what: str) -> None:
    """For a benchmark's main(): a clear message and a non-zero exit outside the sandbox."""
    try:
        require_sandbox(os.path.basename(what))
    except NotSandboxed as exc:
        raise SystemExit(str(exc)) from None
