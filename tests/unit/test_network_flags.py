"""CreateNetwork's options as Docker sends them (issue 15, items 4 and 6),
through the Flask app without root: each flag of `docker network create`
that reaches a driver is honoured in the conflist or refused with a message
naming it, and a name or bridge that is not the network's own is refused.
(A refusal comes before anything is made; without root, a request that got
past it fails later, at the host, with another message.)"""

import hashlib
import itertools
import json

import pytest

from cnm_shim import backends, options
from cnm_shim.app import create_app

NET, OTHER = "a" * 64, "b" * 64
POOL4 = [{"AddressSpace": "LocalDefault", "Pool": "10.90.0.0/24", "Gateway": "10.90.0.1/24"}]
POOL6 = [{"AddressSpace": "LocalDefault", "Pool": "fd00:90::/64", "Gateway": "fd00:90::1/64"}]


@pytest.fixture
def app(tmp_path):
    return create_app({"state_dir": str(tmp_path / "state"), "run_dir": str(tmp_path / "run"),
                       "ipam_data_dir": str(tmp_path / "ipam"), "cni_conf_dir": str(tmp_path / "net.d")})


def create(app, generic=None, ipv4=POOL4, ipv6=None, network_id=NET, **flags):
    options_ = {"com.docker.network.generic": generic or {}, **flags}
    answer = app.test_client().post("/NetworkDriver.CreateNetwork", json={
        "NetworkID": network_id, "Options": options_, "IPv4Data": ipv4, "IPv6Data": ipv6 or []})
    return answer.status_code, answer.get_json()


INTERNAL = {"com.docker.network.internal": True}


@pytest.mark.parametrize("case,generic,flags,ipv6,message", [
    ("internal flat", {"backend": "flat", "parent": "eth9"}, INTERNAL, None,
     "--internal (com.docker.network.internal) is not supported: its containers are on the business network"),
    ("internal with ip_masq", {"ip_masq": "true"}, INTERNAL, None, "ip_masq=true contradicts --internal"),
    ("internal on a shared bridge", {"bridge": "docker0", "bridge.shared": "yes"}, INTERNAL, None,
     "--internal on a shared bridge (bridge.shared=true) is not supported"),
    ("IPv6 pool with IPv6 off", {}, {"com.docker.network.enable_ipv6": False}, POOL6,
     "an IPv6 subnet was given but IPv6 is off (com.docker.network.enable_ipv6=false)"),
    ("IPv6 on without a pool", {}, {"com.docker.network.enable_ipv6": True}, None,
     "IPv6 is on (com.docker.network.enable_ipv6=true) but Docker sent no IPv6 pool"),
    ("a flag we do not know, asking", {}, {"com.docker.network.ingress": True}, None,
     "Docker asked for com.docker.network.ingress=True, which this driver does not support"),
    ("internal not a boolean", {}, {"com.docker.network.internal": "maybe"}, None,
     "Docker sent com.docker.network.internal='maybe', which is not a boolean"),
    ("bridge all", {"bridge": "all"}, {}, None, "option bridge='all' is not usable"),
    ("bridge default", {"bridge": "default"}, {}, None, "option bridge='default' is not usable"),
    ("flat parent all", {"backend": "flat", "parent": "all"}, {}, None, "option parent='all' is not usable"),
])
def test_a_flag_or_name_that_cannot_be_honoured_is_refused_with_its_name(app, case, generic, flags, ipv6, message):
    status, answer = create(app, generic, ipv6=ipv6, **flags)
    assert status == 400 and message in answer["Err"], answer
    assert app.extensions["rancher"].state.all("network") == []


def test_docker_sends_the_enable_flags_in_the_o_map_too_and_they_are_not_unknown_options():
    """`-o com.docker.network.enable_ipv6=true` is read by Docker (as --ipv6)
    and passed on in the -o map as well."""
    parsed = options.parse("rancher-bridge", "bridge", {"com.docker.network.enable_ipv6": "true", "mtu": "1400"})
    assert parsed["mtu"] == 1400 and "com.docker.network.enable_ipv6" not in parsed


def test_flags_that_are_off_are_accepted():
    flags = options.docker_flags("rancher-bridge", {"com.docker.network.enable_ipv4": True,
                                                    "com.docker.network.enable_ipv6": False,
                                                    "com.docker.network.internal": False,
                                                    "com.docker.network.some_future_flag": False}, POOL4, [])
    assert flags == {"internal": False}


@pytest.mark.parametrize("backend", ["bridge", "vxlan"])
def test_internal_renders_no_default_route_no_masquerade(backend):
    entry = backends.get(backend)
    opts = options.parse(entry.driver, backend, {})
    plugin = entry.render("br0", dict(opts, internal=True), {"type": "rancher-ipam", "dataDir": "/x"})
    assert (plugin["internal"], plugin["isDefaultGateway"], plugin["ipMasq"]) == (True, False, False)
    plugin = entry.render("br0", opts, {"type": "rancher-ipam", "dataDir": "/x"})
    assert (plugin.get("internal"), plugin["isDefaultGateway"], plugin["ipMasq"]) == (None, True, True)


def test_a_name_in_the_cni_config_directory_is_refused(app, tmp_path):
    (tmp_path / "net.d").mkdir()
    (tmp_path / "net.d" / "10-theirs.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "theirs-ports", "plugins": [{"type": "bridge"}]}))
    for name in ("theirs-ports", "theirs"):  # the name itself, and the one whose ports list it would be
        status, answer = create(app, {"cni.name": name})
        assert status == 400 and "clashes with" in answer["Err"] and "10-theirs.conflist" in answer["Err"], answer


def _digest_twins() -> tuple:
    """Two names whose rule tags (8 hex of SHA-256) are the same: found in
    about 2^16 tries, so anyone may pick one to match a network's."""
    seen = {}
    for n in itertools.count():
        name = f"n{n}"
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        if digest in seen:
            return seen[digest], name
        seen[digest] = name


def test_a_name_whose_rule_tag_is_another_networks_is_refused(app, monkeypatch):
    first, twin = _digest_twins()
    state = app.extensions["rancher"].state
    state.put("network", OTHER, {"id": OTHER, "cni_name": first, "bridge": "rb-other", "backend": "bridge",
                                 "options": {}})
    status, answer = create(app, {"cni.name": twin})
    assert status == 400 and f"clashes with network {OTHER[:12]} ('{first}')" in answer["Err"], answer
    assert "share the digest" in answer["Err"]
