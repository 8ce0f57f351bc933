"""The runtime-side caller with a recording exec layer (no processes, no root)."""

import json

import pytest

from cni_backend.errors import CNIError
from cni_backend.invoke import api, cache, conflist

CONFLIST = {
    "cniVersion": "1.1.0", "name": "net1",
    "plugins": [{"type": "first", "capabilities": {"portMappings": True}},
                {"type": "second"}],
}


class Recorder:
    """Stands in for the plug-in processes: records every call, answers ADD."""

    def __init__(self, fail_on=None):
        self.calls = []
        self.fail_on = fail_on

    def __call__(self, path, env, stdin):
        config = json.loads(stdin)
        self.calls.append((env["CNI_COMMAND"], config["type"], config, env))
        if (env["CNI_COMMAND"], config["type"]) == self.fail_on:
            return 1, json.dumps({"cniVersion": "1.1.0", "code": 7, "msg": "bad config"}).encode(), b""
        if env["CNI_COMMAND"] != "ADD":
            return 0, b"", b""
        prev = config.get("prevResult") or {"cniVersion": config["cniVersion"], "ips": []}
        ips = prev.get("ips", []) + [{"address": f"10.0.{len(prev.get('ips', []))}.2/24"}]
        return 0, json.dumps(dict(prev, ips=ips)).encode(), b""


@pytest.fixture
def cni(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("first", "second"):
        (bindir / name).write_text("#!/bin/sh\n")
        (bindir / name).chmod(0o755)
    recorder = Recorder()
    return api.CNI([str(bindir)], cache_dir=str(tmp_path / "cache"), runner=recorder), recorder


def raw_conf(conf=CONFLIST):
    raw = json.dumps(conf).encode()
    return conflist.parse(raw), raw


def test_add_chains_prev_result_and_filters_capabilities(cni):
    client, rec = cni
    conf, raw = raw_conf()
    att = api.Attachment("c1", "/run/netns/x", "eth0",
                         capability_args={"portMappings": [{"hostPort": 80}], "mac": "x"})
    result = client.add(conf, raw, att)
    assert [ip["address"] for ip in result["ips"]] == ["10.0.0.2/24", "10.0.1.2/24"]
    first, second = rec.calls
    assert first[2]["runtimeConfig"] == {"portMappings": [{"hostPort": 80}]}
    assert "runtimeConfig" not in second[2] and second[2]["prevResult"]["ips"][0]["address"] == "10.0.0.2/24"
    assert first[3]["CNI_CONTAINERID"] == "c1" and first[3]["CNI_NETNS"] == "/run/netns/x"


def test_del_runs_in_reverse_with_the_cached_config_and_result(cni):
    client, rec = cni
    conf, raw = raw_conf()
    client.add(conf, raw, api.Attachment("c1", "/run/netns/x"))
    changed, changed_raw = raw_conf(dict(CONFLIST, plugins=[{"type": "second"}]))
    rec.calls.clear()
    client.delete(changed, changed_raw, api.Attachment("c1", ""))
    assert [c[1] for c in rec.calls] == ["second", "first"]  # the config used at ADD
    assert all(len(c[2]["prevResult"]["ips"]) == 2 for c in rec.calls)
    assert cache.load(client.cache_dir, "net1", "c1", "eth0") is None


def test_del_without_cache_still_runs_every_plugin(cni):
    client, rec = cni
    conf, raw = raw_conf()
    client.delete(conf, raw, api.Attachment("never-added", ""))
    assert [c[0] for c in rec.calls] == ["DEL", "DEL"] and "CNI_NETNS" not in rec.calls[0][3]


def test_check_replays_the_cached_result_and_honours_disable_check(cni):
    client, rec = cni
    conf, raw = raw_conf()
    client.add(conf, raw, api.Attachment("c1", "/run/netns/x"))
    rec.calls.clear()
    client.check(conf, raw, api.Attachment("c1", "/run/netns/x"))
    assert [c[:2] for c in rec.calls] == [("CHECK", "first"), ("CHECK", "second")]
    with pytest.raises(CNIError):
        client.check(conf, raw, api.Attachment("c2", "/run/netns/y"))  # nothing cached for c2
    off, off_raw = raw_conf(dict(CONFLIST, disableCheck=True))
    client.add(off, off_raw, api.Attachment("c3", "/run/netns/z"))
    rec.calls.clear()
    client.check(off, off_raw, api.Attachment("c3", "/run/netns/z"))
    assert rec.calls == []


def test_gc_deletes_stale_cached_attachments_then_calls_plugin_gc(cni):
    client, rec = cni
    conf, raw = raw_conf()
    for cid in ("keep", "stale"):
        client.add(conf, raw, api.Attachment(cid, f"/run/netns/{cid}"))
    rec.calls.clear()
    assert client.gc(conf, raw, [("keep", "eth0")]) == [("stale", "eth0")]
    assert [c[:2] for c in rec.calls] == [("DEL", "second"), ("DEL", "first"), ("GC", "first"), ("GC", "second")]
    assert rec.calls[-1][2]["cni.dev/valid-attachments"] == [{"containerID": "keep", "ifname": "eth0"}]


def test_plugin_errors_surface_with_their_code(cni):
    client, rec = cni
    rec.fail_on = ("ADD", "second")
    conf, raw = raw_conf()
    with pytest.raises(CNIError) as err:
        client.add(conf, raw, api.Attachment("c1", "/run/netns/x"))
    assert err.value.code == 7 and err.value.msg == "second: bad config", "a chained plug-in's error names it"
    rec.fail_on = ("ADD", "first")
    with pytest.raises(CNIError) as err:
        client.add(conf, raw, api.Attachment("c2", "/run/netns/x"))
    assert err.value.code == 7 and err.value.msg == "bad config", "the network's own plug-in speaks for itself"


def test_missing_plugin_names_the_search_path(cni):
    client, _ = cni
    conf, raw = raw_conf(dict(CONFLIST, plugins=[{"type": "nope"}]))
    with pytest.raises(CNIError) as err:
        client.add(conf, raw, api.Attachment("c1", "/run/netns/x"))
    assert "nope" in err.value.msg and "CNI_PATH" in err.value.details


def test_conflist_picks_the_highest_supported_of_cniVersions():
    conf = conflist.parse(json.dumps(dict(CONFLIST, cniVersions=["0.4.0", "1.0.0", "7.0.0"])).encode())
    assert conf["cniVersion"] == "1.0.0"


def test_a_single_plugin_conf_is_wrapped_as_a_list():
    conf = conflist.parse(b'{"cniVersion": "0.4.0", "name": "n", "type": "bridge"}')
    assert [p["type"] for p in conf["plugins"]] == ["bridge"]


def test_a_capability_given_after_add_reaches_only_its_plugins_and_the_cached_del(cni):
    """Docker names published ports after the ADD: the plug-ins that declare
    portMappings run ADD again with the cached result and arguments, and the
    cache keeps the mappings, so the final DEL hands them to those plug-ins."""
    client, rec = cni
    conf, raw = raw_conf()
    client.add(conf, raw, api.Attachment("c1", "/run/netns/x", args=[("IP", "10.0.0.9")],
                                         capability_args={"mac": "x"}))
    rec.calls.clear()
    mappings = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    result = client.add_capability(conf, raw, api.Attachment("c1", "/run/netns/x"), "portMappings", mappings)
    assert [c[:2] for c in rec.calls] == [("ADD", "first")], "only the plug-in that declares the capability"
    config, env = rec.calls[0][2], rec.calls[0][3]
    assert config["runtimeConfig"] == {"portMappings": mappings} and len(config["prevResult"]["ips"]) == 2
    assert env["CNI_ARGS"] == "IP=10.0.0.9", "the ADD's own CNI_ARGS, from the cache"
    entry = cache.load(client.cache_dir, "net1", "c1", "eth0")
    assert entry["capabilityArgs"] == {"mac": "x", "portMappings": mappings} and entry["result"] == result

    rec.calls.clear()
    client.delete(conf, raw, api.Attachment("c1", "", capability_args={"mac": "x"}))
    assert [(c[1], c[2].get("runtimeConfig")) for c in rec.calls] == [
        ("second", None), ("first", {"portMappings": mappings})], "the cached mappings reach DEL"


def test_a_capability_withdrawn_is_deleted_from_its_plugins_and_the_cache(cni):
    client, rec = cni
    conf, raw = raw_conf()
    client.add(conf, raw, api.Attachment("c1", "/run/netns/x"))
    mappings = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    client.add_capability(conf, raw, api.Attachment("c1", "/run/netns/x"), "portMappings", mappings)
    rec.calls.clear()
    client.del_capability(conf, raw, api.Attachment("c1", ""), "portMappings")
    assert [(c[0], c[1], c[2]["runtimeConfig"]) for c in rec.calls] == [("DEL", "first", {"portMappings": mappings})]
    assert "portMappings" not in cache.load(client.cache_dir, "net1", "c1", "eth0")["capabilityArgs"]
    rec.calls.clear()
    client.del_capability(conf, raw, api.Attachment("c1", ""), "portMappings")
    assert rec.calls == [], "nothing given, nothing cached: nothing to delete"
    with pytest.raises(CNIError):
        client.add_capability(conf, raw, api.Attachment("c9", "/run/netns/x"), "portMappings", mappings)


def test_a_capability_is_cached_before_its_add_so_a_failed_one_is_deleted_with_it(cni):
    client, rec = cni
    conf, raw = raw_conf()
    client.add(conf, raw, api.Attachment("c1", "/run/netns/x"))
    rec.fail_on = ("ADD", "first")
    mappings = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    with pytest.raises(CNIError):
        client.add_capability(conf, raw, api.Attachment("c1", "/run/netns/x"), "portMappings", mappings)
    assert cache.load(client.cache_dir, "net1", "c1", "eth0")["capabilityArgs"] == {"portMappings": mappings}
    rec.calls.clear()
    client.delete(conf, raw, api.Attachment("c1", ""))
    assert [(c[1], c[2].get("runtimeConfig")) for c in rec.calls] == [
        ("second", None), ("first", {"portMappings": mappings})], "what the failed ADD made is deleted"


def test_every_plugin_of_a_call_gets_the_request_id_it_serves(cni, monkeypatch):
    """The shim's request ID (cni_backend.logfmt) reaches each plug-in's
    environment, so their log lines carry it; outside a request, none is made."""
    from cni_backend import logfmt
    monkeypatch.delenv(logfmt.REQUEST_ENV, raising=False)
    client, rec = cni
    conf, raw = raw_conf()
    with logfmt.request("9f3a1c0de2b47a61"):
        client.add(conf, raw, api.Attachment("c1", "/run/netns/x", "eth0"))
    with logfmt.request("00ff00ff00ff00ff"):
        client.delete(conf, raw, api.Attachment("c1", "/run/netns/x", "eth0"))
    client.add(conf, raw, api.Attachment("c2", "/run/netns/x", "eth0"))
    assert [(command, env.get(logfmt.REQUEST_ENV)) for command, _, _, env in rec.calls] == \
        [("ADD", "9f3a1c0de2b47a61")] * 2 + [("DEL", "00ff00ff00ff00ff")] * 2 + [("ADD", None)] * 2
