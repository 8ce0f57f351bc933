"""Property-based fuzzing of every call Docker makes to the shim (issue 8, item 1).

Every NetworkDriver.*, IpamDriver.* call and Plugin.Activate gets malformed
JSON, wrong types, huge strings, unknown and known IDs, invalid CIDRs and MACs,
option values with shell metacharacters, Docker's network flags (internal,
enable_ipv4/6) of any type, bridges that are not the network's own (all,
default, docker0, lo) and clashing CNI names, and each request possibly twice. The
real Flask app answers (test client), with its SQLite state, IPAM store, CNI
cache and conf dir in temp dirs. Properties:

  - the answer is a JSON object, never HTML or a traceback, never a 5xx;
  - a failure is exactly {"Err": msg} (NetworkDriver) / {"Error": msg, "Err": msg} (IpamDriver);
  - a rejected call changes nothing: state.db, the IPAM store, the CNI cache,
    the conf dir, the run dir and the namespace's links are as before;
  - a rejected call, repeated, is rejected again with the same message; an
    idempotent call, repeated, gives the same answer and the same state.

Whatever passes validation really runs, so the whole fuzz runs in a private
network and mount namespace (tests/private_netns.py): a bridge a valid
CreateNetwork makes, or a staging namespace a Join mounts, exists only there.
CNI_PATH is an empty dir, so Join and DeleteEndpoint reach CNI and fail there
(their undo paths are exercised too).
"""

import json
import os
import socket
import sqlite3

import pytest
from hypothesis import given, strategies as st

from tests import private_netns
from tests.fuzz_strategies import (cidrs, fuzz_settings, garbage_bytes, ips_with_len, json_value, macs, mutated,
                                   nasty_text, plain_ips, published_port_entries)

KNOWN_NET = "f" * 64
KNOWN_EP = "e" * 64
KNOWN_POOL_ID = "RancherLocal/10.78.0.0/24"
EXAMPLES = int(os.environ.get("RANCHER_FUZZ_HTTP_EXAMPLES", "320"))

fresh_ids = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
bad_ids = st.one_of(nasty_text, st.sampled_from(["", "../../etc", "a" * 129, "-x", "a b", "a/b", "a\nb"]))
net_ids = st.one_of(st.just(KNOWN_NET), fresh_ids)
ep_ids = st.one_of(st.just(KNOWN_EP), fresh_ids)
OPTION_KEYS = ["bridge", "mtu", "ip_masq", "hairpin", "promisc", "macspoofchk", "vlan", "cni.export", "cni.name",
               "parent", "metadata_ip", "metadata_link_ip", "metadata_bridge", "vni", "vtep_dev", "peers",
               "com.docker.network.driver.mtu", "com.docker.network.bridge.name", "bridge.shared",
               "com.docker.network.enable_ipv6"]
good_option_values = st.sampled_from(["true", "false", "1", "0", "yes", "9000", "68", "1500", "4094", "7",
                                      "rcnitfz0", "lo", "10.77.0.3", "10.0.0.2,10.0.0.3", "169.254.1.1", "rcnit-net",
                                      "all", "default", "docker0", "rcnit-net-ports"])
bad_option_values = st.one_of(st.sampled_from(["65536", "4095", "-1", "67", "maybe", "10.0.0.300", "a" * 16, ""]),
                              nasty_text, json_value)
generic_options = st.dictionaries(st.one_of(st.sampled_from(OPTION_KEYS), st.sampled_from(OPTION_KEYS), nasty_text),
                                  st.one_of(good_option_values, good_option_values, bad_option_values), max_size=3)
POOLS = [("10.%d.0.0/24" % n, "10.%d.0.1/24" % n, "10.%d.0.5/24" % n) for n in range(100, 110)]
pool_triples = st.sampled_from(POOLS)


@st.composite
def ipam_data(draw):
    pool, gateway, aux = draw(pool_triples)
    return draw(mutated({
        "AddressSpace": (st.sampled_from(["LocalDefault", "RancherLocal"]), json_value, False),
        "Pool": (st.just(pool), cidrs, True),
        "Gateway": (st.just(gateway), ips_with_len, False),
        "AuxAddresses": (st.just({"link": aux}), st.one_of(st.dictionaries(nasty_text, ips_with_len, max_size=2),
                                                           json_value), False)}, 1))


port_entry = mutated({"Proto": (st.sampled_from([6, 17, 132]), st.one_of(st.sampled_from([0, 1, -6, "tcp"]), json_value), True),
                      "Port": (st.integers(1, 65535), st.one_of(st.integers(-5, 0), st.integers(65536), json_value), True),
                      "HostPort": (st.integers(1, 65535), st.one_of(st.integers(-5, 0), st.integers(65536), json_value), True),
                      "HostPortEnd": (st.integers(0, 65535), st.one_of(st.integers(min_value=10 ** 9), json_value), False),
                      "HostIP": (st.sampled_from(["", "0.0.0.0", "127.0.0.1"]), plain_ips, False),
                      "IP": (st.just(""), plain_ips, False)}, 1)
endpoint_options = mutated({"com.docker.network.portmap": (st.lists(port_entry, max_size=3), json_value, False),
                            "com.docker.network.endpoint.exposedports": (st.just([{"Proto": 6, "Port": 80}]), json_value, False),
                            "com.docker.network.endpoint.macaddress": (st.just("AkIKTQAJ"), json_value, False)}, 1)

NETWORK_IDS = {"NetworkID": (net_ids, bad_ids, True)}
ENDPOINT_IDS = {"NetworkID": (net_ids, bad_ids, True), "EndpointID": (ep_ids, bad_ids, True)}


def call(fields: dict):
    return mutated(fields)


anything = (json_value, json_value, False)
BODIES = {
    "/Plugin.Activate": call({"x": anything}),
    "/NetworkDriver.GetCapabilities": call({"x": anything}),
    "/NetworkDriver.CreateNetwork": call({
        "NetworkID": (fresh_ids, bad_ids, True),
        "Options": (mutated({"com.docker.network.generic": (generic_options, json_value, True),
                             "com.docker.network.enable_ipv6": (st.booleans(), json_value, False),
                             "com.docker.network.enable_ipv4": (st.booleans(), json_value, False),
                             "com.docker.network.internal": (st.booleans(), json_value, False)}, 1), json_value, True),
        "IPv4Data": (st.lists(ipam_data(), min_size=1, max_size=2), json_value, True),
        "IPv6Data": (st.just([]), st.lists(ipam_data(), max_size=1), False)}),
    "/NetworkDriver.DeleteNetwork": call(NETWORK_IDS),
    "/NetworkDriver.AllocateNetwork": call(dict(NETWORK_IDS, Options=anything)),
    "/NetworkDriver.FreeNetwork": call(NETWORK_IDS),
    "/NetworkDriver.CreateEndpoint": call(dict(ENDPOINT_IDS, Interface=(mutated({
        "Address": (st.sampled_from(["10.77.0.9/24", "10.77.0.10/24", "10.77.0.5/24"]), ips_with_len, True),
        "AddressIPv6": (st.sampled_from(["", "fd00:77::9/64"]), ips_with_len, False),
        "MacAddress": (st.sampled_from(["", "02:42:0a:4d:00:09"]), macs, False)}, 1), json_value, True),
        Options=(endpoint_options, json_value, False))),
    "/NetworkDriver.EndpointOperInfo": call(ENDPOINT_IDS),
    "/NetworkDriver.DeleteEndpoint": call(ENDPOINT_IDS),
    "/NetworkDriver.Join": call(dict(ENDPOINT_IDS, SandboxKey=(st.just("/var/run/docker/netns/0123456789ab"),
                                                               nasty_text, True),
                                     Options=(endpoint_options, json_value, False))),
    "/NetworkDriver.Leave": call(ENDPOINT_IDS),
    "/NetworkDriver.ProgramExternalConnectivity": call(dict(ENDPOINT_IDS, Options=(endpoint_options, json_value, True))),
    "/NetworkDriver.RevokeExternalConnectivity": call(dict(ENDPOINT_IDS, Options=(endpoint_options, json_value, False))),
    "/NetworkDriver.DiscoverNew": call({"DiscoveryType": anything, "DiscoveryData": anything}),
    "/NetworkDriver.DiscoverDelete": call({"DiscoveryType": anything, "DiscoveryData": anything}),
    "/IpamDriver.GetCapabilities": call({"x": anything}),
    "/IpamDriver.GetDefaultAddressSpaces": call({"x": anything}),
    "/IpamDriver.RequestPool": call({
        "AddressSpace": (st.sampled_from(["RancherLocal", "RancherGlobal", ""]), st.one_of(st.just("LocalDefault"), json_value), False),
        "Pool": (st.sampled_from([p for p, _, _ in POOLS] + ["", "fd00:78::/64"]), cidrs, False),
        "SubPool": (st.sampled_from(["", "10.100.0.128/25"]), cidrs, False),
        "Options": (st.just({}), json_value, False), "V6": (st.booleans(), json_value, False)}),
    "/IpamDriver.ReleasePool": call({"PoolID": (st.sampled_from([KNOWN_POOL_ID, "RancherLocal/10.100.0.0/24"]),
                                                nasty_text, True)}),
    "/IpamDriver.RequestAddress": call({
        "PoolID": (st.just(KNOWN_POOL_ID), nasty_text, True),
        "Address": (st.sampled_from(["", "10.78.0.9", "10.78.0.9/24", "10.78.0.1"]),
                    st.one_of(plain_ips, ips_with_len, st.sampled_from(["10.78.0.0", "10.78.0.255", "fd00::1"])), False),
        "Options": (st.one_of(st.none(), st.just({"RequestAddressType": "com.docker.network.gateway"})),
                    json_value, False)}),
    "/IpamDriver.ReleaseAddress": call({"PoolID": (st.just(KNOWN_POOL_ID), nasty_text, True),
                                        "Address": (st.sampled_from(["10.78.0.9", "10.78.0.9/24"]), plain_ips, True)}),
}
# Calls whose repetition, once accepted, must answer the same and change nothing more.
# (Not RequestPool/ReleasePool: a pool counts its holders, each call adds or takes one.)
IDEMPOTENT = {"/NetworkDriver.CreateNetwork", "/NetworkDriver.DeleteNetwork", "/NetworkDriver.CreateEndpoint",
              "/NetworkDriver.DeleteEndpoint", "/NetworkDriver.Leave", "/NetworkDriver.EndpointOperInfo",
              "/NetworkDriver.RevokeExternalConnectivity", "/IpamDriver.ReleaseAddress",
              "/Plugin.Activate", "/NetworkDriver.GetCapabilities", "/IpamDriver.GetCapabilities",
              "/IpamDriver.GetDefaultAddressSpaces", "/NetworkDriver.Join"}
DRIVERS = ["rancher-bridge", "rancher-flat", "rancher-vxlan"]


class Shim:
    """The real app on temp dirs, with a known network, endpoint and pool."""

    def __init__(self, root: str):
        from cnm_shim.app import create_app
        self.dirs = {name: os.path.join(root, name) for name in ("state", "run", "ipam", "net.d", "no-plugins")}
        os.makedirs(self.dirs["no-plugins"])
        self.app = create_app({"state_dir": self.dirs["state"], "run_dir": self.dirs["run"],
                               "ipam_data_dir": self.dirs["ipam"], "cni_conf_dir": self.dirs["net.d"],
                               "cni_path": (self.dirs["no-plugins"],)})
        self.client = self.app.test_client()
        self.services = self.app.extensions["rancher"]

    def post(self, path: str, raw: bytes, driver: str = "rancher-bridge"):
        reply = self.client.post(path, data=raw, headers={"Accept": "application/vnd.docker.plugins.v1.2+json"},
                                 environ_overrides={"rancher.driver": driver})
        with reply:  # closed, as gunicorn's worker closes it: the work after the answer runs
            return reply.status_code, reply.mimetype, reply.get_data()

    def seed(self) -> None:
        """The known network (with one endpoint) and pool, made again if a fuzzed call removed them."""
        from cnm_shim.state import NETWORK, POOL
        if self.services.state.get(NETWORK, KNOWN_NET) is None:
            ok = self.post("/NetworkDriver.CreateNetwork", json.dumps({
                "NetworkID": KNOWN_NET, "Options": {"com.docker.network.generic": {"bridge": "rcnitfzbr"}},
                "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.77.0.0/24", "Gateway": "10.77.0.1/24"}]
            }).encode())
            assert ok[0] == 200, ok
        if not self.services.state.get("endpoint", f"{KNOWN_NET}/{KNOWN_EP}"):
            ok = self.post("/NetworkDriver.CreateEndpoint", json.dumps({
                "NetworkID": KNOWN_NET, "EndpointID": KNOWN_EP, "Interface": {"Address": "10.77.0.5/24"}}).encode())
            assert ok[0] == 200, ok
        if self.services.state.get(POOL, KNOWN_POOL_ID) is None:
            ok = self.post("/IpamDriver.RequestPool", json.dumps({"AddressSpace": "RancherLocal",
                                                                  "Pool": "10.78.0.0/24"}).encode())
            assert ok[0] == 200, ok

    def snapshot(self) -> dict:
        """Everything a call could change on disk and in the namespace."""
        snap = {"links": sorted(name for _, name in socket.if_nameindex())}
        for name, path in (("state", os.path.join(self.dirs["state"], "state.db")),
                           ("ipam", os.path.join(self.dirs["ipam"], "ipam.db"))):
            snap[name] = _dump(path)
        for name in ("net.d", "run"):
            snap[name] = _tree(self.dirs[name])
        snap["cni cache"] = _tree(os.path.join(self.dirs["state"], "cni"))
        return snap


def _dump(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = {t: sorted(map(repr, db.execute(f"SELECT * FROM {t}").fetchall())) for t in tables}
    return {t: r for t, r in rows.items() if r}  # an empty store is no store


def _tree(top: str) -> dict:
    found = {}
    for folder, _, files in os.walk(top):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, top)] = f.read()
    return found


def check_answer(path: str, status: int, mimetype: str, data: bytes) -> tuple:
    """(accepted, message) after checking the answer's shape."""
    assert mimetype == "application/json", f"{path} answered {status} {mimetype}: {data[:300]!r}"
    answer = json.loads(data)
    assert isinstance(answer, dict), answer
    key = "Error" if path.startswith("/IpamDriver.") else "Err"
    assert status < 500, f"{path} answered {status}: {answer}"
    if status == 200:
        assert key not in answer, answer
        return True, answer
    assert set(answer) == {key, "Err"} and answer["Err"] == answer[key], answer
    message = answer[key]
    assert isinstance(message, str) and message.strip(), answer
    assert "Traceback" not in message and "internal error" not in message, message
    return False, message


def fuzz(path: str, root: str, examples: int) -> dict:
    """The fuzz of one endpoint; runs inside the private namespace."""
    shim = Shim(root)
    counts = {"accepted": 0, "rejected": 0}

    @fuzz_settings(examples)
    @given(raw=st.one_of(*[BODIES[path].map(lambda d: json.dumps(d).encode())] * 5, garbage_bytes()),
           driver=st.sampled_from(DRIVERS), repeat=st.booleans())
    def one_call(raw, driver, repeat):
        shim.seed()
        before = shim.snapshot()
        accepted, answer = check_answer(path, *shim.post(path, raw, driver))
        counts["accepted" if accepted else "rejected"] += 1
        after = shim.snapshot()
        if not accepted:
            assert after == before, f"{path} rejected ({answer}) but changed state"
        if repeat:
            again_accepted, again = check_answer(path, *shim.post(path, raw, driver))
            if not accepted:
                assert (again_accepted, again) == (False, answer), "a rejected call, repeated, answered differently"
            if not again_accepted or (accepted and path in IDEMPOTENT):
                assert shim.snapshot() == after, f"{path} repeated changed state"
            if accepted and path in IDEMPOTENT:
                assert (again_accepted, again) == (True, answer), f"{path} repeated answered differently"

    one_call()
    return counts


# Calls that ignore their body: every input is accepted.
BODY_IGNORED = {"/Plugin.Activate", "/NetworkDriver.GetCapabilities", "/IpamDriver.GetCapabilities",
                "/IpamDriver.GetDefaultAddressSpaces", "/NetworkDriver.AllocateNetwork"}


@pytest.fixture(scope="module")
def private_namespaces():
    reason = private_netns.available()
    if reason:
        pytest.skip(reason)


@pytest.mark.parametrize("path", sorted(BODIES))
def test_fuzz_docker_call(path, tmp_path, private_namespaces):
    counts = private_netns.run(fuzz, path, str(tmp_path), EXAMPLES)
    print(f"{path}: {counts}")
    assert sum(counts.values()) >= EXAMPLES
    if path not in BODY_IGNORED:
        assert counts["rejected"] > 0, "the fuzz never produced a rejected call"


# -- issue 15: scoped and whitespace-bearing addresses in every address field ----

def _with_address(path: str, field: str, value: str) -> dict:
    """A body for `path` that is valid but for `field`, which holds `value`."""
    ipv4 = [{"AddressSpace": "LocalDefault", "Pool": "10.101.0.0/24", "Gateway": "10.101.0.1/24"}]
    ports = lambda key: {"com.docker.network.portmap": [{"Proto": 6, "Port": 80, "HostPort": 8080, key: value}]}  # noqa: E731
    return {
        "IPv6Data[0].Pool": {"NetworkID": "1" * 64, "IPv4Data": ipv4, "IPv6Data": [{"Pool": value}]},
        "IPv6Data[0].Gateway": {"NetworkID": "1" * 64, "IPv4Data": ipv4,
                                "IPv6Data": [{"Pool": "fd00:77::/64", "Gateway": value}]},
        "IPv4Data[0].AuxAddresses": {"NetworkID": "1" * 64, "IPv4Data": [dict(ipv4[0], AuxAddresses={"x": value})]},
        "Interface.AddressIPv6": {"NetworkID": KNOWN_NET, "EndpointID": "2" * 64,
                                  "Interface": {"Address": "10.77.0.9/24", "AddressIPv6": value}},
        "portmap[0].HostIP": {"NetworkID": KNOWN_NET, "EndpointID": KNOWN_EP, "SandboxKey": "", "Options": ports("HostIP")},
        "portmap[0].IP": {"NetworkID": KNOWN_NET, "EndpointID": KNOWN_EP, "SandboxKey": "", "Options": ports("IP")},
        "pool": {"AddressSpace": "RancherLocal", "Pool": value, "V6": True},
        "ip-range": {"AddressSpace": "RancherLocal", "Pool": "fd00:77::/64", "SubPool": value, "V6": True},
        "requested address": {"PoolID": KNOWN_POOL_ID, "Address": value},
    }[field]


ADDRESS_FIELDS = [  # (path, field named in the message, the value's suffix)
    ("/NetworkDriver.CreateNetwork", "IPv6Data[0].Pool", "/64"),
    ("/NetworkDriver.CreateNetwork", "IPv6Data[0].Gateway", "/64"),
    ("/NetworkDriver.CreateNetwork", "IPv4Data[0].AuxAddresses", "/24"),
    ("/NetworkDriver.CreateEndpoint", "Interface.AddressIPv6", "/64"),
    ("/NetworkDriver.Join", "portmap[0].HostIP", ""),
    ("/NetworkDriver.ProgramExternalConnectivity", "portmap[0].HostIP", ""),
    ("/NetworkDriver.ProgramExternalConnectivity", "portmap[0].IP", ""),
    ("/IpamDriver.RequestPool", "pool", "/64"),
    ("/IpamDriver.RequestPool", "ip-range", "/80"),
    ("/IpamDriver.RequestAddress", "requested address", ""),
]


def fuzz_scoped(root: str, examples: int) -> int:
    """Each address field gets scoped and whitespace-bearing addresses: each
    call is refused, naming the field (and the scope ID, where there is one),
    and changes nothing. Runs inside the private namespace."""
    from tests.fuzz_strategies import scoped_addresses
    shim = Shim(root)
    seen = []

    @fuzz_settings(examples)
    @given(data=st.data(), where=st.sampled_from(ADDRESS_FIELDS), driver=st.sampled_from(DRIVERS))
    def one_call(data, where, driver):
        path, field, suffix = where
        value = data.draw(scoped_addresses(suffix))
        shim.seed()
        before = shim.snapshot()
        accepted, message = check_answer(path, *shim.post(path, json.dumps(_with_address(path, field, value)).encode(),
                                                         driver))
        assert not accepted, f"{path} accepted {field}={value!r}: {message}"
        assert field in message, message
        if "%" in value:
            assert "scope ID" in message, message
        assert shim.snapshot() == before, f"{path} refused {field}={value!r} but changed state"
        seen.append(field)

    one_call()
    return len(seen)


def test_fuzz_scoped_and_whitespace_addresses_are_refused_in_every_field(tmp_path, private_namespaces):
    refused = private_netns.run(fuzz_scoped, str(tmp_path), EXAMPLES)
    assert refused >= EXAMPLES


# -- published ports: host-port ranges and HostPort 0 (issue 15, item 3) -------------
#
# Sequences of ProgramExternalConnectivity / RevokeExternalConnectivity /
# DeleteEndpoint on three joined endpoints, with ranges (1-65535 included),
# HostPort 0, wildcard, specific, scoped and foreign host addresses. The real
# app and allocator on a state file of their own; only the CNI runtime caller
# records instead of running plug-ins. Properties, after every call: the answer
# is well formed; a rejection changes nothing; an accepted publish asked CNI
# for exactly one mapping per entry, inside the entry's range (the ephemeral
# range for HostPort 0); no two held ports clash (protocol, port, overlapping
# address); what is held is exactly what the endpoints' records published.

PORT_EPS = ["1" * 64, "2" * 64, "3" * 64]
PORT_EXAMPLES = int(os.environ.get("RANCHER_FUZZ_PORT_EXAMPLES", "100"))
port_steps = st.lists(st.tuples(st.sampled_from(["publish"] * 4 + ["revoke", "delete"]), st.integers(0, 2),
                                st.lists(published_port_entries(), max_size=3)), min_size=1, max_size=6)


class RecordingCNI:
    def __init__(self):
        self.added = []

    def add(self, conf, raw, att, prev_result=None):
        self.added.append(att.capability_args.get("portMappings"))
        return {}

    def delete(self, conf, raw, att):
        pass


def _port_shim(root: str):
    from cnm_shim.app import create_app
    from cnm_shim.state import ENDPOINT, State
    app = create_app({"state_dir": os.path.join(root, "state"), "run_dir": os.path.join(root, "run"),
                      "ipam_data_dir": os.path.join(root, "ipam"), "cni_conf_dir": os.path.join(root, "net.d")})
    services = app.extensions["rancher"]
    services.translator.cni = RecordingCNI()
    client = app.test_client()

    def post(path, body):
        reply = client.post(path, data=json.dumps(body))
        with reply:
            return reply.status_code, reply.mimetype, reply.get_data()

    assert post("/NetworkDriver.CreateNetwork", {"NetworkID": KNOWN_NET, "Options": {"com.docker.network.generic": {
        "bridge": "rcnitfzpt"}}, "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.79.0.0/24",
                                               "Gateway": "10.79.0.1/24"}]})[0] == 200
    for n, ep in enumerate(PORT_EPS):
        assert post("/NetworkDriver.CreateEndpoint", {"NetworkID": KNOWN_NET, "EndpointID": ep,
                                                      "Interface": {"Address": f"10.79.0.{5 + n}/24"}})[0] == 200
        key = State.endpoint_key(KNOWN_NET, ep)
        services.state.put(ENDPOINT, key, dict(services.state.get(ENDPOINT, key), result={"ips": []}))
    return services, post


def _clash(a, b) -> bool:
    return a[0] == b[0] and a[2] == b[2] and (a[1] == "" or b[1] == "" or a[1] == b[1])


def _check_held(services) -> None:
    held = services.translator.ports.held()  # (protocol, host_ip, host_port, container_port, owner)
    for i, a in enumerate(held):
        assert not any(_clash(a, b) for b in held[i + 1:]), f"two endpoints hold one port: {held}"
    published = sorted((m["protocol"], m.get("hostIP", ""), m["hostPort"], m["containerPort"],
                        f"{ep['network_id']}/{ep['endpoint_id']}")
                       for ep in services.state.all("endpoint") for m in ep.get("port_mappings") or [])
    assert sorted(held) == published, "held ports differ from what the endpoints published"


def _check_published(entries, mappings) -> None:
    from cnm_shim import ports
    low, high = ports.ephemeral_range()
    assert len(mappings) == len(entries), (entries, mappings)
    for entry, mapping in zip(entries, mappings):
        first, last = (entry["HostPort"], entry["HostPortEnd"] or entry["HostPort"]) if entry["HostPort"] \
            else (low, high)
        assert first <= mapping["hostPort"] <= last, (entry, mapping)
        assert mapping["containerPort"] == entry["Port"] and mapping["protocol"] == ports.PROTOCOLS[entry["Proto"]]


def fuzz_ports(root: str, examples: int) -> dict:
    import tempfile
    counts = {"accepted": 0, "rejected": 0}

    @fuzz_settings(examples)
    @given(steps=port_steps)
    def sequence(steps):
        services, post = _port_shim(tempfile.mkdtemp(dir=root))
        try:
            for action, n, entries in steps:
                ids = {"NetworkID": KNOWN_NET, "EndpointID": PORT_EPS[n]}
                path, body = {"publish": ("/NetworkDriver.ProgramExternalConnectivity",
                                          dict(ids, Options={"com.docker.network.portmap": entries})),
                              "revoke": ("/NetworkDriver.RevokeExternalConnectivity", ids),
                              "delete": ("/NetworkDriver.DeleteEndpoint", ids)}[action]
                before, calls = _dump(services.state.path), len(services.translator.cni.added)
                accepted, answer = check_answer(path, *post(path, body))
                counts["accepted" if accepted else "rejected"] += 1
                if not accepted:
                    assert _dump(services.state.path) == before, f"{path} rejected ({answer}) but changed state"
                elif action == "publish" and len(services.translator.cni.added) > calls:
                    _check_published(entries, services.translator.cni.added[-1])
                _check_held(services)
        finally:
            post("/NetworkDriver.DeleteNetwork", {"NetworkID": KNOWN_NET})  # its bridge, in the private namespace

    sequence()
    return counts


def test_fuzz_published_port_ranges_and_host_port_zero(tmp_path, private_namespaces):
    counts = private_netns.run(fuzz_ports, str(tmp_path), PORT_EXAMPLES)
    print(f"published ports: {counts}")
    assert counts["accepted"] > 0 and counts["rejected"] > 0, counts
