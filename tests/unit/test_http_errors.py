"""Where errors become Docker's answers (cnm_shim/errors.py, app.py's handler):
every call that reaches the CNI side, the IPAM store or the state database is
driven into a failure there, and the answer is checked: `Err` (and IPAM's `Error`), a
status that is not 500, a message naming what failed with the CNI error's msg
and details, and no traceback (in the answer or in our log).

What is under test is the HTTP error mapping, so what lies beyond it is
stubbed: the host (no root here), the CNI runtime caller and the IPAM store."""

import contextlib
import logging
import sqlite3

import pytest

from cni_backend import errors as cni
from cni_backend import hostnet
from tests.unit.shim_client import Client, app_in

NET, NEW_NET = "a" * 64, "c" * 64
EP1, EP2, EP3 = "1" * 64, "2" * 64, "3" * 64  # EP1 joined with a published port; EP2 created only
POOL = "RancherLocal/10.61.0.0/24"
PORTS = {"com.docker.network.portmap": [{"Proto": 6, "Port": 80, "HostPort": 8080}]}
RESULT = {"cniVersion": "1.0.0", "interfaces": [{"name": "veth1"}, {"name": "eth0", "sandbox": "/x"}],
          "ips": [{"address": "10.60.0.5/24", "gateway": "10.60.0.1", "interface": 1}],
          "routes": [{"dst": "0.0.0.0/0"}]}



def TRY_AGAIN():  # a new error each time: a step() leaves its context on the error
    return cni.CNIError(cni.TRY_AGAIN_LATER, "etcd is unreachable, addresses cannot be allocated now",
                        "http://10.0.0.1:2379: ConnectionError")


def FAILED():
    return cni.CNIError(cni.PLUGIN_FAILED, "plug-in rancher-bridge failed with exit code 2", "stderr: boom")



class FakeCNI:
    """The runtime-side caller: succeeds, or raises what `failing` says."""

    def __init__(self):
        self.failing = {}  # "add" / "delete" -> the CNIError to raise

    def add(self, conf, raw, att, prev_result=None):
        if "add" in self.failing:
            raise self.failing["add"]
        return RESULT

    def delete(self, conf, raw, att):
        if "delete" in self.failing:
            raise self.failing["delete"]


class FailingStore:
    def __init__(self, error):
        self.error = error

    def run(self, fn):
        raise self.error


class Shim(Client):
    def __init__(self, app, monkeypatch):
        super().__init__(app)
        self.services = app.extensions["rancher"]
        self.monkeypatch = monkeypatch
        self.cni = self.services.translator.cni = FakeCNI()
        self.host_error = None

    def fail(self, where: str, error) -> None:
        """Make the CNI side, the IPAM store, the host or the state database fail with `error`."""
        if where in ("add", "delete"):
            self.cni.failing[where] = error
        elif where == "cni":
            self.cni.failing.update(add=error, delete=error)
        elif where == "store":
            failing = FailingStore(error)
            self.monkeypatch.setattr(self.services.ipam, "store", failing)
            self.monkeypatch.setattr(self.services.translator.settings, "store", lambda: failing)
        elif where == "host":
            self.host_error = error
        elif where == "state":
            def locked(*_args, **_kwargs):
                raise error
            for method in ("get", "put", "delete", "all", "transaction"):
                self.monkeypatch.setattr(self.services.state, method, locked)
        else:
            raise AssertionError(where)


@pytest.fixture
def shim(tmp_path, monkeypatch):
    """A bridge network with EP1 joined (a port published) and EP2 created, a
    pool with an address, all made through the real calls; the host side is a
    stub that fails when told to."""
    shim = Shim(app_in(tmp_path), monkeypatch)

    def host(*_args, **_kwargs):
        if shim.host_error is not None:
            raise shim.host_error

    monkeypatch.setattr(hostnet.networks, "bridge_exists", lambda name: False)
    monkeypatch.setattr(hostnet.networks, "link_kind", lambda name: None)
    monkeypatch.setattr(hostnet.networks, "ensure_bridge", host)
    monkeypatch.setattr(hostnet.networks, "remove_bridge", host)
    monkeypatch.setattr(hostnet.networks.firewall, "collect_garbage", host)
    for name in ("create", "remove", "move_to_host"):
        monkeypatch.setattr(hostnet.staging, name, host)
    monkeypatch.setattr(hostnet.netlink, "socket_in", contextlib.nullcontext)
    monkeypatch.setattr(hostnet.netlink, "delete_link", lambda *_: False)

    shim.ok("/NetworkDriver.CreateNetwork", {"NetworkID": NET, "IPv4Data": [
        {"AddressSpace": "LocalDefault", "Pool": "10.60.0.0/24", "Gateway": "10.60.0.1/24"}]})
    for ep, address in ((EP1, "10.60.0.5/24"), (EP2, "10.60.0.6/24")):
        shim.ok("/NetworkDriver.CreateEndpoint", {"NetworkID": NET, "EndpointID": ep, "Interface": {"Address": address}})
    shim.ok("/NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP1, "SandboxKey": "/x", "Options": PORTS})
    shim.ok("/NetworkDriver.ProgramExternalConnectivity", {"NetworkID": NET, "EndpointID": EP1, "Options": PORTS})
    shim.ok("/IpamDriver.RequestPool", {"AddressSpace": "RancherLocal", "Pool": "10.61.0.0/24"})
    shim.ok("/IpamDriver.RequestAddress", {"PoolID": POOL, "Address": "10.61.0.9"})
    return shim


CNI_NAME = "rancher-" + NET[:12]
# (call, body, what fails, the start of the message)
CNI_SIDE_FAILURES = [
    ("/NetworkDriver.CreateNetwork", {"NetworkID": NEW_NET, "IPv4Data": [{"Pool": "10.62.0.0/24"}]},
     "host", "rancher-bridge: "),
    ("/NetworkDriver.DeleteNetwork", {"NetworkID": NET}, "cni", f"rancher-bridge: CNI DEL on {CNI_NAME} failed: "),
    ("/NetworkDriver.DeleteNetwork", {"NetworkID": NET}, "store", "rancher-bridge: "),  # releasing what is left
    ("/NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP2}, "add",
     f"rancher-bridge: CNI ADD on {CNI_NAME} failed: "),
    ("/NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP2}, "store", "rancher-bridge: "),  # stale holders
    ("/NetworkDriver.ProgramExternalConnectivity", {"NetworkID": NET, "EndpointID": EP1, "Options": {
        "com.docker.network.portmap": [{"Proto": 6, "Port": 80, "HostPort": 8081}]}}, "add",
     "rancher-bridge: publishing ports failed: "),
    ("/NetworkDriver.ProgramExternalConnectivity", {"NetworkID": NET, "EndpointID": EP1, "Options": {
        "com.docker.network.portmap": [{"Proto": 6, "Port": 80, "HostPort": 8081}]}}, "cni",
     "rancher-bridge: removing published ports failed: "),  # the old ports, before the new ones
    ("/NetworkDriver.RevokeExternalConnectivity", {"NetworkID": NET, "EndpointID": EP1}, "delete",
     "rancher-bridge: removing published ports failed: "),
    ("/IpamDriver.ReleasePool", {"PoolID": POOL}, "store", "rancher-bridge: "),
    ("/IpamDriver.RequestAddress", {"PoolID": POOL}, "store", "rancher-bridge: "),
    ("/IpamDriver.ReleaseAddress", {"PoolID": POOL, "Address": "10.61.0.9/24"}, "store", "rancher-bridge: "),
]


def _checked(status, answer, path, caplog) -> str:
    key = "Error" if path.startswith("/IpamDriver.") else "Err"
    assert set(answer) == {key, "Err"} and answer["Err"] == answer[key], answer
    message = answer[key]
    assert status != 500 and "Traceback" not in message and "internal error" not in message, (status, message)
    assert not any(record.exc_info for record in caplog.records), "a domain error logged a traceback"
    return message


@pytest.mark.parametrize("error,status", [(TRY_AGAIN, 503), (FAILED, 400)], ids=["try-again", "failed"])
@pytest.mark.parametrize("path,body,where,prefix", CNI_SIDE_FAILURES,
                         ids=[f"{c[0].split('.')[1]}-{c[2]}-{n}" for n, c in enumerate(CNI_SIDE_FAILURES)])
def test_a_cni_side_failure_reaches_docker_as_its_message(shim, caplog, path, body, where, prefix, error, status):
    error = error()
    shim.fail(where, error)
    with caplog.at_level(logging.WARNING, logger="cnm-shim"):
        got, answer = shim.post(path, body)
    message = _checked(got, answer, path, caplog)
    assert got == status
    assert message == f"{prefix}{error.msg} ({error.details})"


# DeleteEndpoint's teardown runs after its answer (translate.endpoint_teardown): (endpoint, what fails, message)
TEARDOWN_FAILURES = [
    (EP2, "delete", f"rancher-bridge: CNI DEL on {CNI_NAME} failed: "),
    (EP1, "delete", "rancher-bridge: removing published ports failed: "),
    (EP2, "host", "rancher-bridge: "),
]


@pytest.mark.parametrize("error", [TRY_AGAIN, FAILED], ids=["try-again", "failed"])
@pytest.mark.parametrize("endpoint,where,prefix", TEARDOWN_FAILURES,
                         ids=[f"{c[1]}-{n}" for n, c in enumerate(TEARDOWN_FAILURES)])
def test_a_failed_teardown_after_delete_endpoint_is_logged_with_its_message(shim, caplog, endpoint, where,
                                                                              prefix, error):
    """Docker forgets the endpoint whatever DeleteEndpoint answers: it has its
    answer at once, and the teardown's failure, after it, is logged with the
    message it would have had (no traceback: not a bug). The endpoint stays
    in the state, where doctor finds it."""
    error = error()
    shim.fail(where, error)
    with caplog.at_level(logging.WARNING, logger="cnm-shim"):
        assert shim.post("/NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": endpoint}) == (200, {})
    failures = [r.getMessage() for r in caplog.records if "teardown after DeleteEndpoint failed" in r.getMessage()]
    assert failures == [f"the endpoint's teardown after DeleteEndpoint failed: {prefix}{error.msg} ({error.details}); "
                        "`cnm-shim doctor` reports what is left"], caplog.text
    assert not any(record.exc_info for record in caplog.records), "a domain error logged a traceback"
    assert shim.services.state.endpoint(NET, endpoint) is not None


@pytest.mark.parametrize("path,body", [
    ("/NetworkDriver.CreateEndpoint", {"NetworkID": NET, "EndpointID": EP3, "Interface": {"Address": "10.60.0.7/24"}}),
    ("/NetworkDriver.EndpointOperInfo", {"NetworkID": NET, "EndpointID": EP1}),
    ("/NetworkDriver.DeleteNetwork", {"NetworkID": NET}),
    ("/IpamDriver.RequestPool", {"AddressSpace": "RancherLocal", "Pool": "10.63.0.0/24"}),
])
def test_a_locked_state_database_is_a_try_again(shim, caplog, path, body):
    """Calls that only touch the plug-in's own state fail there instead."""
    shim.fail("state", sqlite3.OperationalError("database is locked"))
    with caplog.at_level(logging.WARNING, logger="cnm-shim"):
        status, answer = shim.post(path, body)
    message = _checked(status, answer, path, caplog)
    assert status == 503
    assert message == "rancher-bridge: the plug-in's state database failed (database is locked); try again"


def test_leave_reaches_nothing_so_nothing_can_fail_it(shim):
    for where, error in (("cni", FAILED), ("store", TRY_AGAIN), ("host", FAILED)):
        shim.fail(where, error())
    assert shim.post("/NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": EP1}) == (200, {})


def test_a_host_error_is_named_without_a_traceback(shim, caplog):
    shim.fail("host", PermissionError(13, "Permission denied", "/run/rancher-cnm/staging"))
    with caplog.at_level(logging.WARNING, logger="cnm-shim"):
        status, answer = shim.post("/NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP2})
    assert status == 500 and not any(record.exc_info for record in caplog.records)
    assert answer == {"Err": "rancher-bridge: [Errno 13] Permission denied: '/run/rancher-cnm/staging'"}


def test_a_bug_is_a_short_500_and_its_traceback_goes_to_the_log(shim, caplog):
    shim.fail("host", KeyError("bridge"))
    with caplog.at_level(logging.WARNING, logger="cnm-shim"):
        status, answer = shim.post("/NetworkDriver.CreateNetwork", {"NetworkID": NEW_NET, "IPv4Data": [
            {"Pool": "10.62.0.0/24"}]})
    assert status == 500
    assert answer == {"Err": "internal error in /NetworkDriver.CreateNetwork: KeyError: 'bridge'"}
    assert [record.exc_info[0] for record in caplog.records if record.exc_info] == [KeyError]
