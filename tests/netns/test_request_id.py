"""A CNI call's request ID on the CNI daemon worker's log lines (issue 19,
item 2), as a CNI runtime calls our executable:
- the ID the caller gives (RANCHER_REQUEST_ID, what the shim sets) is on the
  worker's line for the call;
- a call without one (a runtime's) gets one made by the daemon, a new one
  for each call;
- an ID that is not 8-32 hex digits (a newline and a forged line in it) is
  never written: the call gets a fresh ID, and the log keeps one line per call;
- nothing of this reaches stdout, which is the CNI result.

The daemon (`cnm-shim cni-server`) runs on a socket of the test's own, once in
text and once in json (`--log-format json`); the calls are rancher-ipam ADD
and DEL on a temp dataDir, which touch no link.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from cni_backend import install, logfmt

pytestmark = pytest.mark.netns

FORGED = "2026-01-01T00:00:00.000Z ERROR rancher-cni[1] req=0000000000000000 forged"


@pytest.fixture(params=["text", "json"])
def daemon(request, leak_guard):
    if os.geteuid() != 0:
        pytest.skip("needs root (the daemon serves root only)")
    root = tempfile.mkdtemp(prefix="rcni-reqid.")
    install.write_executables(os.path.join(root, "bin"))
    sock, log_path = os.path.join(root, "cni.sock"), os.path.join(root, "daemon.log")
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "cnm_shim.cli", "--log-level", "INFO", "cni-server",
                                    "--socket", sock, "--log-format", request.param],
                                   stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 30
    while not os.path.exists(sock):
        assert process.poll() is None, open(log_path).read()
        assert time.monotonic() < deadline, "the CNI daemon did not start"
        time.sleep(0.05)

    def call(command, request_id=None, container="c1"):
        config = {"cniVersion": "1.1.0", "name": "reqid", "type": "rancher-ipam",
                  "ipam": {"type": "rancher-ipam", "ranges": [[{"subnet": "10.198.0.0/24"}]],
                           "dataDir": os.path.join(root, "ipam")}}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RANCHER_CNI_SOCKET": sock, "CNI_COMMAND": command,
               "CNI_CONTAINERID": container, "CNI_IFNAME": "eth0", "CNI_NETNS": "/proc/self/ns/net",
               "CNI_PATH": os.path.join(root, "bin")}
        if request_id is not None:
            env[logfmt.REQUEST_ENV] = request_id
        done = subprocess.run([os.path.join(root, "bin", "rancher-ipam")], input=json.dumps(config).encode(),
                              env=env, capture_output=True, timeout=60, cwd="/")
        assert done.returncode == 0, done.stdout + done.stderr
        if command == "ADD":
            assert json.loads(done.stdout)["ips"], "stdout is the result, and only that"
        else:
            assert done.stdout.strip() == b""
        return done

    def lines():
        text = open(log_path).read()
        if request.param == "json":
            return [json.loads(line) for line in text.splitlines()]
        parsed = []
        for line in text.splitlines():
            match = re.match(r"\S+Z (\w+) ([\w.-]+)\[(\d+)\] req=(\S+) (.*)$", line)
            assert match, f"not our text line: {line!r}"
            level, logger, pid, rid, message = match.groups()
            parsed.append({"level": level, "logger": logger, "pid": int(pid),
                           "request_id": None if rid == "-" else rid, "message": message})
        return parsed

    call.lines, call.daemon, call.kind = lines, process, request.param
    yield call
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    shutil.rmtree(root, ignore_errors=True)


def calls(lines: list, command: str) -> list:
    """The worker's line for each call of `command`."""
    return [e for e in lines if e["logger"] == "rancher-cni" and f"rancher-ipam {command} c" in e["message"]]


def test_the_callers_request_id_is_on_the_daemon_workers_line(daemon):
    daemon("ADD", request_id="9f3a1c0de2b47a61")
    daemon("DEL", request_id="00ff00ff00ff00ff00ff00ff00ff00ff")
    add, delete = calls(daemon.lines(), "ADD"), calls(daemon.lines(), "DEL")
    assert [e["request_id"] for e in add] == ["9f3a1c0de2b47a61"]
    assert [e["request_id"] for e in delete] == ["00ff00ff00ff00ff00ff00ff00ff00ff"]
    assert add[0]["pid"] != daemon.daemon.pid, "logged by the worker the daemon forked"
    assert "-> ok" in add[0]["message"] and add[0]["level"] == "INFO"
    if daemon.kind == "json":
        assert (add[0]["plugin"], add[0]["command"], add[0]["network"], add[0]["ok"]) == \
            ("rancher-ipam", "ADD", "reqid", True)


def test_a_call_without_an_id_gets_its_own(daemon):
    daemon("ADD", container="c2")
    daemon("DEL", container="c2")
    made = [e["request_id"] for e in calls(daemon.lines(), "ADD") + calls(daemon.lines(), "DEL")]
    assert len(made) == 2 and all(logfmt.valid_id(rid) for rid in made) and made[0] != made[1], made


@pytest.mark.parametrize("bad", [f"abcdef12\n{FORGED}", "ABCDEF12", "abc", "a" * 33, "abcdef12 x", "../../etc"])
def test_an_id_that_is_not_hex_never_reaches_a_line(daemon, bad):
    daemon("ADD", request_id=bad, container="c3")
    daemon("DEL", request_id=bad, container="c3")
    lines = daemon.lines()
    logged = calls(lines, "ADD") + calls(lines, "DEL")
    assert len(logged) == 2, lines
    assert all(logfmt.valid_id(e["request_id"]) and e["request_id"] != bad for e in logged), logged
    assert not any("forged" in e["message"] for e in lines), "no line came from the caller's ID"
