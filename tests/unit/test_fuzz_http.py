"""Property-based fuzzing of every call Docker makes to the shim (issue 8, item 1).

Every NetworkDriver.*, IpamDriver.* call and Plugin.Activate gets malformed
JSON, wrong types, huge strings, unknown and known IDs, invalid CIDRs and MACs,
option values with shell metacharacters, and each request possibly twice. The
real Flask app answers (test client), with its SQLite state, IPAM store, CNI
cache and conf dir in temp dirs. Properties:

  - the answer is a JSON object, never HTML or a traceback, never a 5xx;
  - a failure is exactly {"Err": msg} (NetworkDriver) / {"Error": msg} (IpamDriver);
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
from tests.fuzz_strategies import (cidrs, document, fuzz_settings, garbage_bytes, ips_with_len, json_value, macs,
                                   nasty_text, plain_ips)

KNOWN_NET = "f" * 64
KNOWN_EP = "e" * 64
KNOWN_POOL_ID = "RancherLocal/10.78.0.0/24"
EXAMPLES = int(os.environ.get("RANCHER_FUZZ_HTTP_EXAMPLES", "350"))

ids = st.one_of(st.sampled_from([KNOWN_NET, KNOWN_EP, "0" * 64, "a1b2c3"]),
                st.text(alphabet="0123456789abcdef", min_size=1, max_size=64), nasty_text)
net_ids = st.one_of(st.just(KNOWN_NET), ids)
ep_ids = st.one_of(st.just(KNOWN_EP), ids)
OPTION_KEYS = ["bridge", "mtu", "ip_masq", "hairpin", "promisc", "macspoofchk", "vlan", "cni.export", "cni.name",
               "parent", "metadata_ip", "metadata_link_ip", "metadata_bridge", "vni", "vtep_dev", "peers",
               "com.docker.network.driver.mtu", "com.docker.network.bridge.name"]
option_values = st.one_of(st.sampled_from(["true", "false", "1", "0", "yes", "9000", "68", "65536", "4094", "4095",
                                           "-1", "rcnitfz0", "lo", "10.77.0.3", "10.0.0.2,10.0.0.3", "169.254.1.1"]),
                          nasty_text)
generic_options = st.dictionaries(st.one_of(st.sampled_from(OPTION_KEYS), nasty_text), option_values, max_size=4)
ipam_data = document({"Pool": cidrs}, {"AddressSpace": st.sampled_from(["LocalDefault", "RancherLocal", "RancherGlobal"]),
                                       "Gateway": ips_with_len,
                                       "AuxAddresses": st.dictionaries(nasty_text, st.one_of(plain_ips, ips_with_len),
                                                                       max_size=3)})
port_entry = document({"Proto": st.sampled_from([6, 17, 132, 0, 1, -6]), "Port": st.integers(-5, 70000),
                       "HostPort": st.integers(-5, 70000)},
                      {"HostPortEnd": st.one_of(st.integers(-5, 70000), st.integers(min_value=10 ** 9)),
                       "HostIP": st.one_of(plain_ips, st.just(""), st.just("0.0.0.0")), "IP": plain_ips})
endpoint_options = document({}, {"com.docker.network.portmap": st.one_of(st.lists(port_entry, max_size=3), json_value),
                                 "com.docker.network.endpoint.exposedports": json_value,
                                 "com.docker.network.endpoint.macaddress": json_value})

NETWORK_IDS = {"NetworkID": net_ids}
ENDPOINT_IDS = {"NetworkID": net_ids, "EndpointID": ep_ids}
BODIES = {
    "/Plugin.Activate": document({}),
    "/NetworkDriver.GetCapabilities": document({}),
    "/NetworkDriver.CreateNetwork": document(NETWORK_IDS, {
        "Options": document({}, {"com.docker.network.generic": generic_options,
                                 "com.docker.network.enable_ipv6": json_value}),
        "IPv4Data": st.lists(ipam_data, max_size=2), "IPv6Data": st.lists(ipam_data, max_size=2)}),
    "/NetworkDriver.DeleteNetwork": document(NETWORK_IDS),
    "/NetworkDriver.AllocateNetwork": document(NETWORK_IDS, {"Options": json_value}),
    "/NetworkDriver.FreeNetwork": document(NETWORK_IDS),
    "/NetworkDriver.CreateEndpoint": document(ENDPOINT_IDS, {
        "Interface": document({}, {"Address": ips_with_len, "AddressIPv6": ips_with_len, "MacAddress": macs}),
        "Options": endpoint_options}),
    "/NetworkDriver.EndpointOperInfo": document(ENDPOINT_IDS),
    "/NetworkDriver.DeleteEndpoint": document(ENDPOINT_IDS),
    "/NetworkDriver.Join": document(ENDPOINT_IDS, {"SandboxKey": st.one_of(nasty_text, st.just("/var/run/docker/netns/x")),
                                                   "Options": endpoint_options}),
    "/NetworkDriver.Leave": document(ENDPOINT_IDS),
    "/NetworkDriver.ProgramExternalConnectivity": document(ENDPOINT_IDS, {"Options": endpoint_options}),
    "/NetworkDriver.RevokeExternalConnectivity": document(ENDPOINT_IDS, {"Options": endpoint_options}),
    "/NetworkDriver.DiscoverNew": document({"DiscoveryType": json_value, "DiscoveryData": json_value}),
    "/NetworkDriver.DiscoverDelete": document({"DiscoveryType": json_value, "DiscoveryData": json_value}),
    "/IpamDriver.GetCapabilities": document({}),
    "/IpamDriver.GetDefaultAddressSpaces": document({}),
    "/IpamDriver.RequestPool": document({}, {
        "AddressSpace": st.sampled_from(["RancherLocal", "RancherGlobal", "LocalDefault", ""]),
        "Pool": cidrs, "SubPool": cidrs, "Options": json_value, "V6": json_value}),
    "/IpamDriver.ReleasePool": document({"PoolID": st.one_of(st.just(KNOWN_POOL_ID), nasty_text)}),
    "/IpamDriver.RequestAddress": document({"PoolID": st.one_of(st.just(KNOWN_POOL_ID), nasty_text)}, {
        "Address": st.one_of(plain_ips, ips_with_len, st.sampled_from(["10.78.0.9", "10.78.0.1", "10.78.0.255"])),
        "Options": document({}, {"RequestAddressType": st.sampled_from(["com.docker.network.gateway", ""])})}),
    "/IpamDriver.ReleaseAddress": document({"PoolID": st.one_of(st.just(KNOWN_POOL_ID), nasty_text)},
                                           {"Address": st.one_of(plain_ips, ips_with_len)}),
}
# Calls whose repetition, once accepted, must answer the same and change nothing more.
IDEMPOTENT = {"/NetworkDriver.CreateNetwork", "/NetworkDriver.DeleteNetwork", "/NetworkDriver.CreateEndpoint",
              "/NetworkDriver.DeleteEndpoint", "/NetworkDriver.Leave", "/NetworkDriver.EndpointOperInfo",
              "/NetworkDriver.RevokeExternalConnectivity", "/IpamDriver.ReleasePool", "/IpamDriver.ReleaseAddress",
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
    assert set(answer) == {key}, answer
    message = answer[key]
    assert isinstance(message, str) and message.strip(), answer
    assert "Traceback" not in message and "internal error" not in message, message
    return False, message


def fuzz(path: str, root: str, examples: int) -> dict:
    """The fuzz of one endpoint; runs inside the private namespace."""
    shim = Shim(root)
    counts = {"accepted": 0, "rejected": 0}

    @fuzz_settings(examples)
    @given(raw=st.one_of(BODIES[path].map(lambda d: json.dumps(d).encode()), garbage_bytes()),
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
