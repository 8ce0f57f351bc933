"""Our plug-ins run in the calling process, on a thread of their own
(cni_backend/invoke/own.py), as the shim's workers run them for Docker: a
process that makes many calls keeps no fd, thread or namespace of theirs, and
the caller's thread stays in its own namespace whatever the plug-in's does.

The caller here is a thread of the test that entered a namespace the test
made, which stands for the host: the bridge, the veths' host ends and the
firewall rules are made there, and go with it."""

import ctypes
import os
import threading
import time

import pytest

from cni_backend import skel
from cni_backend.invoke import execute, own
from tests.conftest import ns_exec

pytestmark = pytest.mark.netns

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _enter(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        assert _libc.setns(fd, CLONE_NEWNET) == 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(fd)


def _netns_of_this_thread() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def in_namespace(netns: str, work):
    """work() on a new thread that entered `netns` first; its return value (or its exception)."""
    out = {}

    def run():
        try:
            _enter(f"/var/run/netns/{netns}")
            out["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            out["error"] = exc
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def _process_state() -> dict:
    # a joined thread's task may linger for a moment after Python let go of it
    deadline = time.monotonic() + 5
    while len(os.listdir("/proc/self/task")) > threading.active_count() and time.monotonic() < deadline:
        time.sleep(0.01)
    return {"fds": sorted(os.listdir("/proc/self/fd")), "threads": len(os.listdir("/proc/self/task")),
            "python threads": sorted(t.name for t in threading.enumerate()), "netns": _netns_of_this_thread()}


def test_many_calls_leave_no_fd_thread_or_namespace_of_theirs(direct_env, make_netns):
    host = make_netns()
    config = direct_env.bridge_config(ipMasq=True)  # firewall rules too: iptables runs from the plug-in's thread
    containers = [make_netns() for _ in range(12)]

    def call(command: str, container: str):
        env = dict(direct_env.env, CNI_COMMAND=command, CNI_CONTAINERID=container, CNI_IFNAME="eth0",
                   CNI_NETNS=f"/var/run/netns/{container}")
        return execute.exec_plugin("rancher-bridge", env, config, own.runner)

    def rules() -> list:
        return [line for line in ns_exec(host, "iptables-save").stdout.splitlines() if line.startswith("-A")]

    def cycles():
        home = _netns_of_this_thread()
        rules_before = rules()
        call("ADD", containers[0])  # the first call's one-time work (the bridge, the shared rules) out of the count
        before = _process_state()
        results = [call("ADD", c) for c in containers[1:]]
        addresses = [r["ips"][0]["address"] for r in results]
        inside = ns_exec(containers[1], "ip", "-o", "addr", "show", "dev", "eth0").stdout
        for c in containers:
            call("DEL", c)
        after = _process_state()
        assert _netns_of_this_thread() == home
        assert rules() == rules_before, "the DELs left firewall rules behind"
        return before, after, addresses, inside

    main_netns = _netns_of_this_thread()
    before, after, addresses, inside = in_namespace(host, cycles)
    assert len(set(addresses)) == len(containers) - 1 and all(a.startswith("10.123.0.") for a in addresses)
    assert addresses[0].split("/")[0] in inside, "the container got its address"
    assert after == before, "the calls left fds, threads or a namespace behind in the caller"
    assert _netns_of_this_thread() == main_netns
    host_links = ns_exec(host, "ip", "-o", "link", "show").stdout
    assert "veth" not in host_links, host_links


def test_a_plugin_that_does_not_come_back_leaves_the_caller_in_its_namespace(make_netns, monkeypatch):
    """Whatever namespace the plug-in's thread is left in ends with that thread."""
    elsewhere = make_netns()

    def stray(*_a, **_k):
        _enter(f"/var/run/netns/{elsewhere}")  # and never back
        return '{"cniVersion": "1.0.0"}', 0, ""
    monkeypatch.setattr(skel, "dispatch", stray)
    home = _netns_of_this_thread()
    code, stdout, _ = own.run_in_thread("rancher-bridge", {"CNI_COMMAND": "VERSION"}, b"{}")
    assert (code, stdout) == (0, b'{"cniVersion": "1.0.0"}')
    assert _netns_of_this_thread() == home
