"""The one way cni_backend runs a host tool (iptables, nft, ebtables): traced
as a `firewall` span, and a missing or failing tool becomes a CNIError with
the firewall code (105), never an uncaught exception (100) or a silently
empty output. Probes use `succeeds`, which never raises."""

import os
import subprocess

from .. import trace
from ..errors import CNIError, FIREWALL_FAILURE

LIST_NOW = object()  # a listing argument's default (see outputs_side_by_side): the callee lists itself
PACKAGES = {"ebtables": "ebtables", "ebtables-save": "ebtables"}  # the rest come with iptables / nftables


def _remedy(tool: str) -> str:
    package = PACKAGES.get(os.path.basename(tool))
    return f"install the {package} package" if package else "install the iptables and nftables packages"


def run(argv: list, stdin: str | None = None, check: bool = True) -> str | None:
    """stdout of the command; with check=False, None when it exited non-zero.
    A tool that is not installed is an error either way."""
    try:
        with trace.span("firewall", tool=os.path.basename(argv[0])):
            done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise CNIError(FIREWALL_FAILURE, f"{argv[0]} not found", _remedy(argv[0])) from None
    if done.returncode != 0:
        if not check:
            return None
        raise CNIError(FIREWALL_FAILURE, f"{argv[0]} failed", done.stderr.strip())
    return done.stdout


def outputs_side_by_side(argvs: list, label: str, stdin: str | None = None) -> list:
    """The commands run side by side, `stdin` (if given) written to the
    first one's: [its stdout, or None when it exited non-zero] for each, in
    their order. A missing tool is an error, as in `run`. `label` names them
    in the trace."""
    started = []
    try:
        with trace.span("firewall", tool=label):
            for n, argv in enumerate(argvs):
                feed = subprocess.PIPE if n == 0 and stdin is not None else subprocess.DEVNULL
                started.append(subprocess.Popen(argv, stdin=feed, stdout=subprocess.PIPE,
                                                stderr=subprocess.DEVNULL, text=True))
            outputs = [process.communicate(stdin if n == 0 else None)[0] for n, process in enumerate(started)]
    except FileNotFoundError as exc:
        tool = exc.filename or argvs[0][0]
        raise CNIError(FIREWALL_FAILURE, f"{tool} not found", _remedy(tool)) from None
    finally:
        for process in started:  # those a failure left running: none is left behind
            if process.poll() is None:
                process.kill()
                process.communicate()
    return [out if process.returncode == 0 else None for process, out in zip(started, outputs)]


def succeeds(argv: list, stdin: str | None = None, timeout: float = 10) -> bool:
    """For probes: True when the command exits 0; False when it fails, is
    missing or hangs. Never raises."""
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
