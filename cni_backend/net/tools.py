"""The one way cni_backend runs a host tool (iptables, nft, ebtables): traced
as a `firewall` span, and a missing or failing tool becomes a CNIError with
the firewall code (105), never an uncaught exception (100) or a silently
empty output. Probes use `succeeds`, which never raises. nft commands are
given to its library in this process when it is there (`libnft`), and
iptables-restore scripts to a process kept running, in a long-lived process
(`kept_restore`)."""

import os
import subprocess

from .. import trace
from ..errors import CNIError, FIREWALL_FAILURE
from . import kept_restore, libnft

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
            code, stdout, stderr = _in_process(argv, stdin) or _executed(argv, stdin)
    except FileNotFoundError:
        raise CNIError(FIREWALL_FAILURE, f"{argv[0]} not found", _remedy(argv[0])) from None
    if code != 0:
        if not check:
            return None
        raise CNIError(FIREWALL_FAILURE, f"{argv[0]} failed", stderr.strip())
    return stdout


def _in_process(argv: list, stdin: str | None) -> tuple | None:
    """(exit code, stdout, stderr) of an nft command run by its library, or
    of a restore by a kept process; None otherwise."""
    return libnft.run(argv[1:], stdin) if argv[0] == "nft" else kept_restore.run(argv, stdin)


def _served_here(argv: list, stdin: str | None) -> bool:
    """Whether _in_process answers the command."""
    return libnft.serves(argv[1:], stdin) if argv[0] == "nft" else kept_restore.serves(argv, stdin)


def _executed(argv: list, stdin: str | None) -> tuple:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    return done.returncode, done.stdout, done.stderr


def outputs_side_by_side(argvs: list, label: str, stdin: str | None = None) -> list:
    """The commands run side by side, `stdin` (if given) written to the
    first one's: [its stdout, or None when it exited non-zero] for each, in
    their order. A missing tool is an error, as in `run`. `label` names them
    in the trace. The commands served in this process (_in_process) run
    here, in turn, while the others' processes run."""
    started, answers = {}, {}
    try:
        with trace.span("firewall", tool=label):
            for n, argv in enumerate(argvs):
                feed = stdin if n == 0 else None
                if _served_here(argv, feed):
                    continue
                started[n] = subprocess.Popen(argv, stdin=subprocess.DEVNULL if feed is None else subprocess.PIPE,
                                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            for n, argv in enumerate(argvs):
                if n not in started:
                    feed = stdin if n == 0 else None
                    code, out, _ = _in_process(argv, feed) or _executed(argv, feed)
                    answers[n] = out if code == 0 else None
            for n, process in started.items():
                out = process.communicate(stdin if n == 0 else None)[0]
                answers[n] = out if process.returncode == 0 else None
    except FileNotFoundError as exc:
        tool = exc.filename or argvs[0][0]
        raise CNIError(FIREWALL_FAILURE, f"{tool} not found", _remedy(tool)) from None
    finally:
        for process in started.values():  # those a failure left running: none is left behind
            if process.poll() is None:
                process.kill()
                process.communicate()
    return [answers[n] for n in range(len(argvs))]


def succeeds(argv: list, stdin: str | None = None, timeout: float = 10) -> bool:
    """For probes: True when the command exits 0; False when it fails, is
    missing or hangs. Never raises."""
    try:
        answer = _in_process(argv, stdin)
        if answer is not None:
            return answer[0] == 0
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
