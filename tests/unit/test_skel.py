"""The dispatcher's validation and error JSON, without processes or root."""

import json

import pytest

from cni_backend import skel
from cni_backend.errors import CNIError

CONFIG = {"cniVersion": "1.0.0", "name": "net1", "type": "recorder"}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}


class Recorder:
    """A plug-in that records what it was asked."""

    def __init__(self, fail=None):
        self.calls = []
        self.fail = fail

    def _record(self, req):
        self.calls.append(req)
        if self.fail:
            raise self.fail

    def add(self, req):
        self._record(req)
        return {"cniVersion": "1.1.0", "ips": [{"address": "10.0.0.2/24"}], "dns": {}}

    delete = check = gc = status = _record


def call(plugin, env=None, config=CONFIG, stdin=None):
    raw = stdin if stdin is not None else json.dumps(config).encode()
    out, code, _ = skel.dispatch(plugin, dict(ENV, **(env or {})), raw)
    return (json.loads(out) if out else None), code


def test_add_result_is_converted_to_the_config_version():
    out, code = call(Recorder(), config=dict(CONFIG, cniVersion="0.4.0"))
    assert code == 0
    assert out["cniVersion"] == "0.4.0" and out["ips"][0]["version"] == "4"


def test_garbage_stdin_is_code_6():
    out, code = call(Recorder(), stdin=b"{not json")
    assert code != 0 and out["code"] == 6 and "not valid JSON" in out["msg"]


def test_missing_container_id_is_code_4():
    plugin = Recorder()
    out, code = call(plugin, env={"CNI_CONTAINERID": ""})
    assert code != 0 and out["code"] == 4 and "CNI_CONTAINERID" in out["msg"]
    assert plugin.calls == []


@pytest.mark.parametrize("command", ["", "add", "ATTACH"])
def test_unknown_command_is_code_4(command):
    out, _ = call(Recorder(), env={"CNI_COMMAND": command})
    assert out["code"] == 4


def test_unknown_version_is_code_1():
    out, _ = call(Recorder(), config=dict(CONFIG, cniVersion="0.2.0"))
    assert out["code"] == 1 and "0.2.0" in out["msg"] and "1.1.0" in out["details"]


def test_missing_version_is_code_1():
    config = {k: v for k, v in CONFIG.items() if k != "cniVersion"}
    out, _ = call(Recorder(), config=config)
    assert out["code"] == 1


@pytest.mark.parametrize("name", ["", "-leading-dash", "has space", "a/b", 7])
def test_bad_network_name_is_code_7(name):
    out, _ = call(Recorder(), config=dict(CONFIG, name=name))
    assert out["code"] == 7


@pytest.mark.parametrize("ifname", ["a" * 16, "eth/0", "eth:0", ".."])
def test_bad_ifname_is_code_4(ifname):
    out, _ = call(Recorder(), env={"CNI_IFNAME": ifname})
    assert out["code"] == 4


def test_del_does_not_need_a_netns():
    plugin = Recorder()
    out, code = call(plugin, env={"CNI_COMMAND": "DEL", "CNI_NETNS": ""})
    assert (out, code) == (None, 0) and plugin.calls[0].netns == ""


@pytest.mark.parametrize("command,version", [("CHECK", "0.3.1"), ("GC", "1.0.0"), ("STATUS", "0.4.0")])
def test_commands_newer_than_the_config_are_code_1(command, version):
    out, _ = call(Recorder(), env={"CNI_COMMAND": command}, config=dict(CONFIG, cniVersion=version))
    assert out["code"] == 1 and command in out["msg"]


def test_version_needs_no_config():
    out, code = call(Recorder(), env={"CNI_COMMAND": "VERSION"}, stdin=b"")
    assert code == 0 and out["supportedVersions"] == ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def test_cni_args_are_parsed_and_bad_pairs_are_code_4():
    plugin = Recorder()
    call(plugin, env={"CNI_ARGS": "IgnoreUnknown=1;IP=10.0.0.9"})
    assert plugin.calls[0].args == {"IgnoreUnknown": "1", "IP": "10.0.0.9"}
    out, _ = call(Recorder(), env={"CNI_ARGS": "IP"})
    assert out["code"] == 4


def test_plugin_errors_keep_their_code_and_the_config_version():
    out, code = call(Recorder(fail=CNIError(101, "address in use", "held by c2")),
                     config=dict(CONFIG, cniVersion="0.4.0"))
    assert code == 1 and out == {"cniVersion": "0.4.0", "code": 101, "msg": "address in use",
                                 "details": "held by c2"}


def test_unexpected_exceptions_become_code_100_not_a_traceback():
    out, code = call(Recorder(fail=KeyError("boom")))
    assert code == 1 and out["code"] == 100 and "boom" in out["msg"]


# Regressions found by the fuzz (tests/netns/test_fuzz_cni.py): code 100 with a traceback before.

def test_stdin_nested_too_deeply_is_code_6():
    out, code = call(Recorder(), stdin=b"[" * 5000 + b"]" * 5000)
    assert code != 0 and out["code"] == 6


@pytest.mark.parametrize("ipam", ["x", {"ranges": True}, {"ranges": [["10.0.0.0/24"]]}, {"subnet": 5},
                                  {"type": 5, "subnet": "10.0.0.0/24"}])
def test_flat_with_a_malformed_ipam_section_is_code_7(ipam):
    from cni_backend.plugins import flat
    config = {"cniVersion": "1.0.0", "name": "net1", "type": "rancher-flat", "parent": "eth1", "ipam": ipam}
    out, code = call(flat, env={"CNI_COMMAND": "DEL"}, config=config)
    assert code != 0 and out["code"] == 7 and "ipam" in out["msg"]
