"""Docker's wire quirks, through the Flask app (no root, no Docker): no
Content-Type, empty bodies, `Err` vs `Error`, unknown IDs, IPAM bookkeeping."""

import json

import pytest

from cnm_shim.app import create_app

NET = "a" * 64


@pytest.fixture
def client(tmp_path):
    app = create_app({"state_dir": str(tmp_path / "state"), "run_dir": str(tmp_path / "run"),
                      "ipam_data_dir": str(tmp_path / "ipam"), "cni_conf_dir": str(tmp_path / "net.d")})
    return app.test_client()


def post(client, path, body=None, raw=None):
    """As Docker posts: no Content-Type header, maybe no body at all."""
    data = raw if raw is not None else (json.dumps(body) if body is not None else b"")
    reply = client.post(path, data=data, headers={"Accept": "application/vnd.docker.plugins.v1.2+json"})
    with reply:  # closed, as gunicorn's worker closes it: the work after the answer runs
        return reply.status_code, reply.get_json()


@pytest.mark.parametrize("path,answer", [
    ("/Plugin.Activate", {"Implements": ["NetworkDriver", "IpamDriver"]}),
    ("/NetworkDriver.GetCapabilities", {"Scope": "local", "ConnectivityScope": "local"}),
    ("/IpamDriver.GetCapabilities", {"RequiresMACAddress": False, "RequiresRequestReplay": False}),
    ("/IpamDriver.GetDefaultAddressSpaces", {"LocalDefaultAddressSpace": "RancherLocal",
                                             "GlobalDefaultAddressSpace": "RancherGlobal"}),
])
def test_empty_body_calls(client, path, answer):
    assert post(client, path) == (200, answer)


def test_network_errors_use_err_and_ipam_errors_use_error(client):
    status, body = post(client, "/NetworkDriver.CreateNetwork", raw=b"{broken")
    assert status == 400 and set(body) == {"Err"} and "not valid JSON" in body["Err"]
    status, body = post(client, "/IpamDriver.RequestPool", raw=b"[1, 2]")
    assert status == 400 and set(body) == {"Error", "Err"} and body["Error"] == body["Err"], \
        "IpamDriver's Error, and Err: the one key moby reads from a failed call"


def test_unknown_option_names_it_and_lists_the_valid_ones(client):
    status, body = post(client, "/NetworkDriver.CreateNetwork", {
        "NetworkID": NET, "Options": {"com.docker.network.generic": {"bridgename": "x"}},
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.9.0.0/24", "Gateway": "10.9.0.1/24"}]})
    assert status == 400 and "unknown option 'bridgename'" in body["Err"] and "bridge, bridge.shared, cni.export" in body["Err"]


@pytest.mark.parametrize("options,fragment", [
    ({"mtu": "9999999"}, "mtu='9999999' must be an integer from 68 to 65535"),
    ({"ip_masq": "maybe"}, "is not a boolean"),
    ({"bridge": "a-name-longer-than-15"}, "not a valid interface name"),
    ({"vlan": "-1"}, "from 0 to 4094"),
])
def test_bad_option_values_are_refused_before_anything_is_made(client, options, fragment):
    status, body = post(client, "/NetworkDriver.CreateNetwork", {
        "NetworkID": NET, "Options": {"com.docker.network.generic": options},
        "IPv4Data": [{"Pool": "10.9.0.0/24", "Gateway": "10.9.0.1/24"}]})
    assert status == 400 and fragment in body["Err"]


@pytest.mark.parametrize("options,fragment", [
    ({"backend": "flat"}, "option parent is required"),  # flat's own rules now apply
    ({"backend": "vxlan", "parent": "eth1"}, "unknown option 'parent'"),
    ({"backend": "macvlan"}, "backend='macvlan' is not one of: bridge, flat, vxlan"),
])
def test_the_backend_option_chooses_whose_rules_apply(client, options, fragment):
    status, body = post(client, "/NetworkDriver.CreateNetwork", {
        "NetworkID": NET, "Options": {"com.docker.network.generic": options},
        "IPv4Data": [{"Pool": "10.9.0.0/24", "Gateway": "10.9.0.1/24"}]})
    assert status == 400 and fragment in body["Err"]


def test_a_single_backend_app_serves_that_backend_by_default(tmp_path):
    app = create_app({"state_dir": str(tmp_path / "state"), "run_dir": str(tmp_path / "run"),
                      "ipam_data_dir": str(tmp_path / "ipam"), "sockets": {"rancher.sock": "rancher-flat"}})
    status, body = post(app.test_client(), "/NetworkDriver.CreateNetwork", {
        "NetworkID": NET, "IPv4Data": [{"Pool": "10.9.0.0/24", "Gateway": "10.9.0.1/24"}]})
    assert status == 400 and body["Err"] == "rancher-flat: option parent is required: " \
        "the host interface facing the business network, e.g. -o parent=eth1"


@pytest.mark.parametrize("path", ["/NetworkDriver.Leave", "/NetworkDriver.DeleteEndpoint",
                                  "/NetworkDriver.DeleteNetwork", "/NetworkDriver.RevokeExternalConnectivity"])
def test_unknown_ids_on_teardown_calls_succeed(client, path):
    assert post(client, path, {"NetworkID": NET, "EndpointID": "b" * 64}) == (200, {})


@pytest.mark.parametrize("body", [{}, {"NetworkID": ""}, {"NetworkID": "../../etc"}, {"NetworkID": 7}])
def test_invalid_ids_are_refused(client, body):
    status, answer = post(client, "/NetworkDriver.CreateNetwork", body)
    assert status == 400 and "NetworkID" in answer["Err"]


def test_ipam_pool_and_addresses(client):
    status, pool = post(client, "/IpamDriver.RequestPool", {"AddressSpace": "RancherLocal", "Pool": "10.40.0.0/24",
                                                            "SubPool": "10.40.0.128/25", "V6": False})
    assert status == 200 and pool["Pool"] == "10.40.0.0/24"
    _, gateway = post(client, "/IpamDriver.RequestAddress", {
        "PoolID": pool["PoolID"], "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}})
    assert gateway["Address"] == "10.40.0.1/24"
    _, first = post(client, "/IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "", "Options": None})
    _, second = post(client, "/IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "", "Options": None})
    assert first["Address"] == "10.40.0.128/24" and second["Address"] == "10.40.0.129/24"
    status, clash = post(client, "/IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "10.40.0.129"})
    assert status == 400 and "already in use" in clash["Error"]
    assert post(client, "/IpamDriver.ReleaseAddress", {"PoolID": pool["PoolID"], "Address": "10.40.0.128/24"}) == (200, {})
    assert post(client, "/IpamDriver.ReleasePool", {"PoolID": pool["PoolID"]}) == (200, {})
    assert post(client, "/IpamDriver.ReleasePool", {"PoolID": pool["PoolID"]}) == (200, {})


def test_pools_without_a_subnet_are_new_each_time(client):
    pools = {post(client, "/IpamDriver.RequestPool", {"AddressSpace": "RancherLocal"})[1]["Pool"] for _ in range(3)}
    assert len(pools) == 3


def test_a_pool_shared_through_one_store_is_released_per_host(tmp_path):
    """Two hosts' IPAM drivers on one store (as with etcd): releasing the pool
    on one host frees its addresses only; the gateway stays while another host
    uses the pool."""
    from cni_backend.ipam.store import SQLiteStore
    from cnm_shim.ipam_driver import IpamDriver
    from cnm_shim.state import State
    store = SQLiteStore(str(tmp_path / "shared"))
    hosts = [IpamDriver(State(str(tmp_path / f"h{n}")), store, host=f"h{n}") for n in range(2)]
    for driver in hosts:
        pool = driver.request_pool({"AddressSpace": "RancherLocal", "Pool": "10.70.0.0/24"})
        driver.request_address({"PoolID": pool["PoolID"], "Address": "10.70.0.1",
                                "Options": {"RequestAddressType": "com.docker.network.gateway"}})
    a = hosts[0].request_address({"PoolID": pool["PoolID"]})["Address"]
    b = hosts[1].request_address({"PoolID": pool["PoolID"]})["Address"]
    assert a != b
    hosts[0].release_pool({"PoolID": pool["PoolID"]})
    held = store.run(lambda txn: sorted(txn.allocated("10.70.0.0/24")))
    assert held == ["10.70.0.1", b.split("/")[0]]
    hosts[1].release_pool({"PoolID": pool["PoolID"]})
    assert store.run(lambda txn: txn.allocated("10.70.0.0/24")) == {}


# -- calls Docker re-sends without a body -------------------------------------
# After a connection error Docker retries with the body already drained
# (PROTOCOLS.md section 1): zero bytes, not `{}`.

@pytest.mark.parametrize("path,answer", [
    ("/NetworkDriver.EndpointOperInfo", {"Value": {}}),
    ("/NetworkDriver.Leave", {}),
    ("/NetworkDriver.DeleteEndpoint", {}),
    ("/NetworkDriver.DeleteNetwork", {}),
    ("/NetworkDriver.RevokeExternalConnectivity", {}),
    ("/NetworkDriver.ProgramExternalConnectivity", {}),
    ("/NetworkDriver.AllocateNetwork", {"Options": {}}),
    ("/NetworkDriver.FreeNetwork", {}),
    ("/NetworkDriver.DiscoverNew", {}),
    ("/NetworkDriver.DiscoverDelete", {}),
    ("/IpamDriver.ReleasePool", {}),
    ("/IpamDriver.ReleaseAddress", {}),
])
def test_a_call_resent_without_a_body_is_answered_without_failing(client, path, answer):
    assert post(client, path) == (200, answer)


@pytest.mark.parametrize("path,key", [
    ("/NetworkDriver.CreateNetwork", "Err"),
    ("/NetworkDriver.CreateEndpoint", "Err"),
    ("/NetworkDriver.Join", "Err"),
    ("/IpamDriver.RequestPool", "Error"),
    ("/IpamDriver.RequestAddress", "Error"),
])
def test_a_creation_resent_without_a_body_fails_saying_why(client, path, key):
    status, answer = post(client, path)
    assert status == 400 and set(answer) == {key, "Err"}
    assert "arrived without a body" in answer[key] and "connection error" in answer[key]
    assert client.application.extensions["rancher"].state.all("pool") == [], "nothing reserved"


def test_an_empty_body_is_a_retry_but_an_empty_object_is_a_bad_request(client):
    """`{}` is a client's mistake, not Docker's retry: still refused."""
    status, answer = post(client, "/NetworkDriver.Leave", {})
    assert status == 400 and "NetworkID" in answer["Err"]
    status, answer = post(client, "/NetworkDriver.EndpointOperInfo", {})
    assert status == 400 and "NetworkID" in answer["Err"]


def test_program_external_connectivity_resent_while_an_endpoint_waits_for_its_ports_fails(client):
    """An endpoint that joined with published ports and got no
    ProgramExternalConnectivity yet: an empty retry cannot say whose ports,
    so it fails rather than start a container without them; once the call
    with a body came, an empty retry succeeds."""
    from cnm_shim.state import ENDPOINT, NETWORK, State
    state = client.application.extensions["rancher"].state
    ports = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    state.put(NETWORK, NET, {"id": NET, "driver": "rancher-bridge"})
    ep = {"network_id": NET, "endpoint_id": "e" * 64, "result": {"ips": []}, "ports_at_join": ports}
    state.put(ENDPOINT, State.endpoint_key(NET, "e" * 64), ep)
    status, answer = post(client, "/NetworkDriver.ProgramExternalConnectivity")
    assert status == 400 and "eeeeeeeeeeee still wait" in answer["Err"]
    state.put(ENDPOINT, State.endpoint_key(NET, "e" * 64), dict(ep, ports_at_join=None, port_mappings=ports))
    assert post(client, "/NetworkDriver.ProgramExternalConnectivity") == (200, {})
