"""The Docker side's runner (cni_backend/invoke/own.py): our own executables run
in the caller, on a thread of their own (rancher-ipsec in a fork of it),
anything else is executed; a call that crashes or hangs becomes a CNI error
for the caller, never a dead or stuck caller."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from cni_backend import install, skel
from cni_backend.errors import CNIError
from cni_backend.invoke import execute, own

# a socket nobody listens on: the executables never reach a CNI daemon of this machine
VERSION_ENV = {"CNI_COMMAND": "VERSION", "PATH": os.environ.get("PATH", ""),
               "RANCHER_CNI_SOCKET": "/nonexistent/cni.sock"}
STDIN = json.dumps({"cniVersion": "1.0.0"}).encode()


@pytest.fixture
def bindir(tmp_path):
    install.write_executables(str(tmp_path))
    return tmp_path


def test_only_our_wrappers_running_this_package_are_run_in_the_caller(bindir, tmp_path):
    assert own.own_plugin(str(bindir / "rancher-bridge")) == "rancher-bridge"
    assert own.own_plugin(str(bindir / "rancher-ipam")) == "rancher-ipam"
    other = tmp_path / "elsewhere"
    install.write_executables(str(other))
    text = (other / "rancher-bridge").read_text()
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(own.__file__))))
    (other / "rancher-bridge").write_text(text.replace(repr(here), repr("/opt/another/install")))
    assert own.own_plugin(str(other / "rancher-bridge")) is None, "another installation's code is executed"
    (other / "rancher-vxlan").write_text("#!/bin/sh\necho '{}'\n")
    assert own.own_plugin(str(other / "rancher-vxlan")) is None, "a third-party file under our name is executed"
    renamed = other / "bridge"
    renamed.write_text(text)
    assert own.own_plugin(str(renamed)) is None, "a name outside plugins.PLUGINS is executed"
    assert own.own_plugin(str(other / "missing")) is None


# one plug-in of each way the runner takes: on a thread of the caller, in a forked child
WAYS = ["rancher-bridge", "rancher-ipsec"]


@pytest.mark.parametrize("plugin", WAYS)
def test_a_call_answers_as_the_executable_does(bindir, plugin):
    code, stdout, stderr = own.runner(str(bindir / plugin), VERSION_ENV, STDIN)
    done = subprocess.run([str(bindir / plugin)], input=STDIN, env=VERSION_ENV, capture_output=True, check=False)
    assert (code, json.loads(stdout)) == (done.returncode, json.loads(done.stdout))


@pytest.mark.parametrize("plugin", WAYS)
def test_a_plugin_error_comes_back_as_the_executables_error_json(bindir, plugin):
    env = dict(VERSION_ENV, CNI_COMMAND="ADD", CNI_PATH=str(bindir))  # no CNI_CONTAINERID: the skel refuses
    config = {"cniVersion": "1.0.0", "name": "n", "type": plugin}
    with pytest.raises(CNIError) as ran:
        execute.exec_plugin(plugin, env, config, own.runner)
    with pytest.raises(CNIError) as executed:
        execute.exec_plugin(plugin, env, config)
    assert (ran.value.code, ran.value.msg) == (executed.value.code, executed.value.msg)


def test_our_plugins_run_in_the_caller_but_ipsec_in_a_fork(bindir, monkeypatch):
    ran_in = {}

    def where(plugin, *_args):
        ran_in[plugin.__name__.rsplit(".", 1)[1]] = os.getpid()
        return '{"cniVersion": "1.0.0"}', 0, ""
    monkeypatch.setattr(skel, "dispatch", where)
    for plugin in WAYS:
        assert own.runner(str(bindir / plugin), VERSION_ENV, STDIN)[0] == 0
    assert ran_in["bridge"] == os.getpid()
    assert "ipsec" not in ran_in, "recorded in the fork, not here"


def _children() -> set:
    me = os.getpid()
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == me:
                    found.add(int(pid))
        except (OSError, IndexError, ValueError):
            pass
    return found


def test_a_child_killed_mid_call_is_a_plugin_error_for_the_caller(bindir, monkeypatch):
    monkeypatch.setattr(skel, "dispatch", lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL))
    before = _children()
    with pytest.raises(CNIError) as failed:
        execute.exec_plugin("rancher-ipsec", dict(VERSION_ENV, CNI_PATH=str(bindir)), {}, own.runner)
    assert "killed by signal 9" in failed.value.details
    # no child of this call is left (an earlier test's forked child may still be ending: it may go meanwhile)
    assert not _children() - before, "the child was reaped"


@pytest.mark.parametrize("plugin", WAYS)
def test_a_call_that_raises_out_of_dispatch_is_a_plugin_error(bindir, monkeypatch, plugin):
    def boom(*_a, **_k):
        raise SystemExit(3)  # what no plug-in may do, and the caller must survive
    monkeypatch.setattr(skel, "dispatch", boom)
    with pytest.raises(CNIError) as failed:
        execute.exec_plugin(plugin, dict(VERSION_ENV, CNI_PATH=str(bindir)), {}, own.runner)
    assert "exit code 70" in failed.value.msg + failed.value.details


def test_a_hanging_child_is_killed_at_the_timeout(monkeypatch):
    monkeypatch.setattr(skel, "dispatch", lambda *a, **k: time.sleep(60))
    before = _children()
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        own.run_forked("rancher-bridge", VERSION_ENV, STDIN, timeout=0.5)
    assert time.monotonic() - started < 30
    assert not _children() - before, "the child was killed and reaped"


def test_a_hanging_call_in_the_caller_is_a_timeout_and_its_process_is_told(monkeypatch):
    """A thread cannot be killed: the caller gets the timeout, as from a
    child, and the on_stuck hook (the shim's worker retires) the plug-in."""
    release = threading.Event()
    monkeypatch.setattr(skel, "dispatch", lambda *a, **k: release.wait(60))
    told = []
    monkeypatch.setattr(own, "_on_stuck", told.append)
    started = time.monotonic()
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            own.run_in_thread("rancher-bridge", VERSION_ENV, STDIN, timeout=0.5)
        assert time.monotonic() - started < 30
        assert told == ["rancher-bridge"]
    finally:
        release.set()


def test_a_call_that_answers_in_time_tells_nobody(monkeypatch):
    told = []
    monkeypatch.setattr(own, "_on_stuck", told.append)
    assert own.run_in_thread("rancher-bridge", VERSION_ENV, STDIN)[0] == 0
    assert told == []


def test_third_party_plugins_are_executed(tmp_path):
    script = tmp_path / "other"
    script.write_text(f"#!{sys.executable}\nimport os, sys; print(os.getpid())\n")
    script.chmod(0o755)
    code, stdout, _ = own.runner(str(script), VERSION_ENV, b"")
    assert code == 0 and int(stdout) != os.getpid()


def test_the_caller_has_the_answer_before_the_child_has_exited_and_the_child_is_reaped(monkeypatch):
    """The child's teardown is off the caller's path: the answer comes back
    while the child is still exiting (here, held up on purpose), and the
    child is reaped once it has."""
    real_exit = os._exit

    def slow_exit(code):
        time.sleep(2)
        real_exit(code)
    monkeypatch.setattr(skel, "dispatch", lambda *a, **k: ('{"ok": 1}', 0, ""))
    monkeypatch.setattr(os, "_exit", slow_exit)  # inherited by the fork
    before = _children()
    code, stdout, _ = own.run_forked("rancher-bridge", VERSION_ENV, STDIN)
    monkeypatch.setattr(os, "_exit", real_exit)
    assert (code, json.loads(stdout)) == (0, {"ok": 1})
    assert _children() - before, "the call waited for the child's exit"
    deadline = time.monotonic() + 20
    while _children() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _children() - before, "the child was never reaped (a zombie stays)"
