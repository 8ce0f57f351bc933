"""Property-based fuzzing of the VXLAN registry's input (issue 15, item 5):
random and hostile etcd keys and values, fed to the entry check and to the
agent's whole round of reading (`Agent.view`, through an etcd stand-in that
returns rows the way etcd3gw does). Properties:

  - nothing raises but the check's own BadEntry: no KeyError, TypeError,
    UnicodeError or RecursionError from any value, so one key never stops a
    round;
  - what is programmed is only what an honest host could have written: an
    address inside the subnet, not its network, broadcast or gateway
    address, a unicast non-zero MAC, the VTEP of the host the key lives under,
    no address or MAC held by two hosts or by this host's own containers;
  - the honest hosts' entries are programmed whatever else is in the registry
    when they registered first;
  - every skipped key is warned about once, however many rounds see it.
"""

import ipaddress
import json
import logging
import os

from hypothesis import given, strategies as st

from cni_backend import vxlan_registry as registry
from tests.fuzz_strategies import fuzz_settings, json_value, macs, nasty_text, plain_ips

EXAMPLES = int(os.environ.get("RANCHER_FUZZ_REGISTRY_EXAMPLES", "300"))
ROOT = "/rancher-cni/vxlan/hosts/"
VNI = 1042
SUBNET = ipaddress.ip_network("10.42.0.0/16")
GATEWAY = ipaddress.ip_address("10.42.0.1")
SUBNETS = [registry.Subnet(SUBNET, GATEWAY)]
ME = "10.99.0.1"
LOCAL = {"10.42.1.2": "02:42:0a:2a:01:02"}
# first registered (revision 1-2): the honest host and its container
HONEST = [(f"{ROOT}10.99.0.2/{VNI}/vtep", b'{"vtep": "10.99.0.2"}', "1"),
          (f"{ROOT}10.99.0.2/{VNI}/endpoints/10.42.2.2",
           b'{"ip": "10.42.2.2", "mac": "02:42:0a:2a:02:02", "vtep": "10.99.0.2"}', "2")]

hosts = st.one_of(st.sampled_from(["10.99.0.2", "10.99.0.3", ME, "10.42.0.1", "0.0.0.0", "255.255.255.255",
                                   "8.8.8.8", "fd00::1", "10.99.0.3%2Fx", ""]), plain_ips, nasty_text)
addresses = st.one_of(st.sampled_from(["10.42.2.2", "10.42.1.2", "10.42.0.1", "10.42.0.0", "10.42.255.255",
                                       "8.8.8.8", "10.42.3.3", "10.42.003.3", "::1"]), plain_ips, nasty_text)
hostile_macs = st.one_of(st.sampled_from(["02:42:0a:2a:02:02", "02:42:0a:2a:01:02", "00:00:00:00:00:00",
                                          "FF:FF:FF:FF:FF:FF", "02:00:00:00:00:66"]), macs)
# etcd hands out create revisions, increasing: the honest host's (1, 2) came first
revisions = st.one_of(st.integers(3, 10_000).map(str), st.integers(3, 10_000),
                      st.sampled_from([None, "", "x", "1e3", [], {}, 2.5]))


@st.composite
def hostile_row(draw):
    host, vni = draw(hosts), draw(st.sampled_from([str(VNI), str(VNI), "7", "01042", "-1", "x"]))
    ip = draw(addresses)
    key = draw(st.sampled_from([f"{ROOT}{host}/{vni}/vtep", f"{ROOT}{host}/{vni}/endpoints/{ip}",
                                f"{ROOT}{host}/{vni}", f"{ROOT}{host}/{vni}/endpoints/{ip}/more",
                                f"{ROOT}{host}/{vni}/other/{ip}"]) | nasty_text.map(lambda t: ROOT + t))
    value = draw(st.one_of(
        st.fixed_dictionaries({}, optional={"ip": st.one_of(st.just(ip), addresses, json_value),
                                            "mac": st.one_of(hostile_macs, json_value),
                                            "vtep": st.one_of(st.just(host), hosts, json_value)}),
        json_value))
    raw = draw(st.one_of(st.just(json.dumps(value).encode()), st.binary(max_size=64),
                         st.sampled_from([b"[" * 3000, b"{" * 5000, b"\xff\xfe", b"x" * 5000])))
    return key, raw, draw(revisions)


def honest_could_have_written(entry: registry.Endpoint) -> bool:
    ip = ipaddress.ip_address(entry.ip)
    mac = bytes(int(p, 16) for p in entry.mac.split(":"))
    return (ip in SUBNET and ip not in (SUBNET.network_address, SUBNET.broadcast_address, GATEWAY)
            and not mac[0] & 1 and any(mac) and entry.vtep != ME and entry.ip not in LOCAL
            and entry.mac not in LOCAL.values())


@fuzz_settings(EXAMPLES)
@given(row=hostile_row())
def test_a_hostile_entry_is_either_valid_or_refused_with_a_reason(row):
    key, value, revision = row
    try:
        entry = registry.parse_entry(ROOT, key, value, revision, VNI, SUBNETS)
    except registry.BadEntry as exc:
        assert str(exc)
        return
    if isinstance(entry, registry.Endpoint):
        assert f"/{entry.vtep}/" in key and ipaddress.ip_address(entry.ip) in SUBNET
        assert ipaddress.ip_address(entry.ip) not in (SUBNET.network_address, SUBNET.broadcast_address, GATEWAY)
        assert entry.mac == entry.mac.lower() and not int(entry.mac[:2], 16) & 1 and entry.mac != "00:00:00:00:00:00"
    elif isinstance(entry, registry.Vtep):
        assert key == f"{ROOT}{entry.host}/{VNI}/vtep" and ipaddress.IPv4Address(entry.host).is_unspecified is False
    else:
        assert entry is None and key.removeprefix(ROOT).split("/")[1] != str(VNI)  # another VNI's


@fuzz_settings(EXAMPLES)
@given(rows=st.lists(hostile_row(), max_size=8), shuffle=st.randoms(use_true_random=False))
def test_the_agents_round_programs_only_honest_looking_entries_and_never_loses_the_honest_host(rows, shuffle):
    everything = HONEST + rows
    shuffle.shuffle(everything)
    result = registry.select(ROOT, everything, VNI, SUBNETS, ME, LOCAL)
    assert all(honest_could_have_written(e) and e.ip == ip for ip, e in result.endpoints.items())
    assert len({e.mac: e.vtep for e in result.endpoints.values()}) == len({(e.mac, e.vtep) for e in
                                                                             result.endpoints.values()})
    assert "10.99.0.2" in result.vteps and ME not in result.vteps
    honest = result.endpoints["10.42.2.2"]
    assert (honest.mac, honest.vtep) == ("02:42:0a:2a:02:02", "10.99.0.2")
    assert all(ipaddress.IPv4Address(v) for v in result.vteps)


class Rows:
    """etcd3gw's get_prefix shape: (value, {"key": bytes, "create_revision": str})."""

    def __init__(self, rows):
        self.rows = rows

    def get_prefix(self, prefix):
        return [(value, {"key": key.encode("utf-8", "surrogatepass"), "create_revision": revision})
                for key, value, revision in self.rows]


@fuzz_settings(max(EXAMPLES // 3, 20))
@given(rows=st.lists(hostile_row(), max_size=6))
def test_the_agent_warns_once_per_bad_key_over_rounds(tmp_path_factory, rows):
    etcd = Rows(HONEST + rows)
    agent = registry.Agent(lambda: etcd, "/rancher-cni", VNI, ME, str(tmp_path_factory.mktemp("state")))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("rancher-cni")
    logger.addHandler(handler)
    try:
        views = [agent.view(SUBNETS) for _ in range(3)]
    finally:
        logger.removeHandler(handler)
    assert all(v.endpoints["10.42.2.2"].vtep == "10.99.0.2" for v in views)
    assert len(records) == len(views[0].bad)
