"""Any CNI conflist as a Docker network (rancher-conflist), with the reference
plug-ins of Debian's containernetworking-plugins (/usr/lib/cni): Docker's
address is the container's, Docker's DNS finds it, DEL runs with the cached
config after the file changed or went, and a plug-in's own error reaches
`docker`'s output."""

import json
import os

import pytest

from tests.conftest import run, unique
from tests.engine.test_published_ports import WEB
from tests.rigs import wait_for_http
from tests.engine.helpers import address, container, network
from tests.engine.test_doctor import doctor

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(not os.access("/usr/lib/cni/bridge", os.X_OK), reason="containernetworking-plugins missing"),
]


def write_conflist(docker, name: str, plugins: list, filename: str | None = None) -> str:
    path = os.path.join(docker.shim.export_dir, filename or f"10-{name}.conflist")
    os.makedirs(docker.shim.export_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"cniVersion": "1.0.0", "name": name, "plugins": plugins}, f)
    return path


def host_local(subnet: str, data_dir) -> dict:
    return {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": str(data_dir)}


@pytest.fixture
def reference_bridge():
    """The reference bridge plug-in never deletes its bridge, nor the firewall
    plug-in its base chains (CNI-FORWARD, CNI-ADMIN): the test does."""
    name = unique("cb")[:15]
    yield name
    run("ip", "link", "del", name, check=False)
    rules = run("iptables-save", "-t", "filter").stdout.splitlines()
    for rule in rules:
        if rule.startswith("-A FORWARD") and "-j CNI-FORWARD" in rule:
            run("iptables", "-w", "-t", "filter", *rule.replace("-A", "-D", 1).split(), check=False)
    for chain in ("CNI-FORWARD", "CNI-ADMIN"):
        run("iptables", "-w", "-F", chain, check=False)
        run("iptables", "-w", "-X", chain, check=False)


def inside_address(docker, name: str) -> str:
    shown = docker("exec", name, "ip", "-4", "-o", "addr", "show", "eth0").stdout.split()
    return shown[shown.index("inet") + 1].split("/")[0]


def rules_for(subnet_prefix: str) -> list:
    return [line for line in run("iptables-save").stdout.splitlines() if subnet_prefix in line]


def test_a_bridge_and_host_local_conflist_driven_by_docker(docker, reference_bridge, tmp_path):
    cni_name = unique("lab")
    path = write_conflist(docker, cni_name, [{"type": "bridge", "bridge": reference_bridge, "isGateway": True,
                                              "isDefaultGateway": True, "ipMasq": True,
                                              "ipam": host_local("10.147.0.0/24", tmp_path)},
                                             {"type": "firewall", "backend": "iptables"}])
    net = network(docker, "--subnet", "10.147.0.0/24", "-o", f"cni.conflist={cni_name}", driver="rancher-conflist")
    a = container(docker, net)
    b = container(docker, net, "--ip", "10.147.0.77")
    for name in (a, b):
        assert address(docker, name, net) == inside_address(docker, name), "docker inspect shows the real address"
    assert address(docker, b, net) == "10.147.0.77", "--ip reached host-local"
    assert sorted(os.listdir(tmp_path / cni_name)) == sorted(
        [address(docker, a, net), "10.147.0.77", "last_reserved_ip.0", "lock"]), "host-local holds Docker's addresses"
    assert docker("exec", a, "ping", "-c", "1", "-W", "2", b, check=False).returncode == 0, "Docker's DNS names b"
    assert docker("exec", b, "ping", "-c", "1", "-W", "2", address(docker, a, net), check=False).returncode == 0
    assert rules_for("10.147.0."), "the bridge plug-in's masquerade rules, the firewall plug-in's accepts"
    code, report = doctor(docker)
    assert code == 0, report  # the chain's CHECK in each sandbox
    web = container(docker, net, "-p", "18090:80", command=WEB)
    assert wait_for_http("http://127.0.0.1:18090/").strip() == json.loads(
        docker("inspect", web).stdout)[0]["Config"]["Hostname"], "-p publishes (rancher-portmap after the chain)"
    docker("rm", "-f", web)

    # the file changed, then gone: DEL still runs with the config the containers were attached with
    write_conflist(docker, cni_name, [{"type": "bridge", "bridge": "other0",
                                       "ipam": host_local("10.148.0.0/24", tmp_path)}])
    os.unlink(path)
    for name in (a, b):
        docker("rm", "-f", name)
    docker("network", "rm", net)
    docker.made["networks"].remove(net)
    assert sorted(os.listdir(tmp_path / cni_name)) == ["last_reserved_ip.0", "lock"], "host-local released both"
    assert rules_for("10.147.0.") == [], "the masquerade and firewall rules went with the DELs"
    ports = json.loads(run("ip", "-j", "link", "show", "master", reference_bridge).stdout)
    assert ports == [], "no veth left on the bridge"


def test_a_plugin_the_kernel_cannot_serve_fails_docker_run_with_its_message_and_leaves_nothing(docker, tmp_path):
    run("ip", "link", "add", "rcnitipvl", "type", "veth", "peer", "name", "rcnitipvp")
    try:
        cni_name = unique("ipv")
        write_conflist(docker, cni_name, [{"type": "ipvlan", "master": "rcnitipvl",
                                           "ipam": host_local("10.149.0.0/24", tmp_path)}])
        net = network(docker, "--subnet", "10.149.0.0/24", "-o", f"cni.conflist={cni_name}", driver="rancher-conflist")
        name = unique("c")
        docker.made["containers"].append(name)
        done = docker("run", "-d", "--name", name, "--network", net, docker.dockerd.image, "sleep", "60", check=False)
        assert done.returncode != 0
        assert "ipvlan" in done.stderr and "rancher-conflist: CNI ADD on" in done.stderr, done.stderr
        assert docker.shim.endpoints() == [] or all(not e.get("result") for e in docker.shim.endpoints())
        held = os.listdir(tmp_path / cni_name) if (tmp_path / cni_name).exists() else []
        assert [f for f in held if f[0].isdigit() and f != "last_reserved_ip.0"] == [], "host-local released it"
    finally:
        run("ip", "link", "del", "rcnitipvl", check=False)


@pytest.mark.parametrize("how, message", [
    ("no such network", "no network named"),
    ("a file that does not parse", "files that are no network configuration: 10-broken.conflist"),
    ("a plug-in not installed", "CNI plug-in 'no-such-plugin' not found"),
    ("a path instead of a name", "is not a CNI network name"),
    ("--internal", "rancher-conflist"),
])
def test_a_conflist_network_that_cannot_be_made_fails_network_create(docker, tmp_path, how, message):
    cni_name = unique("bad")
    args = ["--subnet", "10.150.0.0/24", "-o", f"cni.conflist={cni_name}"]
    if how == "a file that does not parse":
        with open(os.path.join(docker.shim.export_dir, "10-broken.conflist"), "w") as f:
            f.write('{"cniVersion": "1.0.0", "name": ')
    if how == "a plug-in not installed":
        write_conflist(docker, cni_name, [{"type": "no-such-plugin"}])
    if how == "a path instead of a name":
        args[-1] = "cni.conflist=/etc/shadow"
    if how == "--internal":
        write_conflist(docker, cni_name, [{"type": "bridge", "bridge": "rcnitcbi",
                                           "ipam": host_local("10.150.0.0/24", tmp_path)}])
        args.append("--internal")
    try:
        done = docker("network", "create", "-d", "rancher-conflist", *args, unique("n"), check=False)
        assert done.returncode != 0 and message in done.stderr, done.stderr
        assert docker.shim.state_entries() == []
    finally:
        for filename in os.listdir(docker.shim.export_dir):
            if filename.startswith("10-"):
                os.unlink(os.path.join(docker.shim.export_dir, filename))


@pytest.fixture
def router(make_netns):
    """A veth whose far end is a router namespace (10.153.0.1): the macvlan parent."""
    netns = make_netns()
    run("ip", "link", "add", "rcnitmvp", "type", "veth", "peer", "name", "r0", "netns", netns)
    run("ip", "link", "set", "rcnitmvp", "up")
    run("ip", "netns", "exec", netns, "ip", "addr", "add", "10.153.0.1/24", "dev", "r0")
    run("ip", "netns", "exec", netns, "ip", "link", "set", "r0", "up")
    yield netns
    run("ip", "link", "del", "rcnitmvp", check=False)


def test_a_macvlan_and_static_conflist_driven_by_docker_reaches_the_router_behind_the_parent(docker, router):
    cni_name = unique("mv")
    write_conflist(docker, cni_name, [{"type": "macvlan", "master": "rcnitmvp", "mode": "bridge",
                                       "ipam": {"type": "static", "routes": [{"dst": "0.0.0.0/0", "gw": "10.153.0.1"}]}}])
    net = network(docker, "--subnet", "10.153.0.0/24", "--gateway", "10.153.0.1", "-o", f"cni.conflist={cni_name}",
                  driver="rancher-conflist")
    a = container(docker, net, "--ip", "10.153.0.21")
    b = container(docker, net)
    assert inside_address(docker, a) == "10.153.0.21" and address(docker, b, net) == inside_address(docker, b)
    assert docker("exec", a, "ping", "-c", "1", "-W", "2", "10.153.0.1", check=False).returncode == 0, "the router"
    assert docker("exec", a, "ping", "-c", "1", "-W", "2", b, check=False).returncode == 0, "b by name, macvlan bridge"
    macs = json.loads(docker("inspect", a).stdout)[0]["NetworkSettings"]["Networks"][net]["MacAddress"]
    assert macs in run("ip", "netns", "exec", router, "ip", "neigh").stdout, "the router learnt Docker's MAC"
    code, report = doctor(docker)
    assert code == 0, report
    for name in (a, b):
        docker("rm", "-f", name)
    assert [l for l in json.loads(run("ip", "-j", "-d", "link", "show").stdout)
            if (l.get("linkinfo") or {}).get("info_kind") == "macvlan"] == [], "no macvlan left"


def test_a_ptp_and_host_local_conflist_driven_by_docker(docker, tmp_path):
    """ptp routes each container through its own veth; Docker gives the
    container its pool's mask, so the host answers ARP on those veths."""
    cni_name = unique("ptp")
    write_conflist(docker, cni_name, [{"type": "ptp", "ipMasq": True,
                                       "ipam": dict(host_local("10.151.0.0/24", tmp_path),
                                                    routes=[{"dst": "0.0.0.0/0"}])},
                                      {"type": "firewall", "backend": "iptables"}])
    net = network(docker, "--subnet", "10.151.0.0/24", "-o", f"cni.conflist={cni_name}", driver="rancher-conflist")
    a, b = container(docker, net), container(docker, net)
    for name in (a, b):
        assert address(docker, name, net) == inside_address(docker, name), "docker inspect shows the real address"
    assert docker("exec", a, "ping", "-c", "1", "-W", "2", b, check=False).returncode == 0, "b by name, routed"
    code, report = doctor(docker)
    assert code == 0, report
    for name in (a, b):
        docker("rm", "-f", name)
    assert rules_for("10.151.0.") == [], "the masquerade and firewall rules went with the DELs"
    assert [f for f in os.listdir(tmp_path / cni_name) if f.startswith("10.")] == []


def test_connect_and_disconnect_a_running_container_to_a_conflist_network(docker, reference_bridge, tmp_path):
    cni_name = unique("lab")
    write_conflist(docker, cni_name, [{"type": "bridge", "bridge": reference_bridge, "isGateway": True,
                                       "isDefaultGateway": True, "ipMasq": True,
                                       "ipam": host_local("10.154.0.0/24", tmp_path)},
                                      {"type": "firewall", "backend": "iptables"}])
    lab = network(docker, "--subnet", "10.154.0.0/24", "-o", f"cni.conflist={cni_name}", driver="rancher-conflist")
    home = network(docker, "--subnet", "10.155.0.0/24")
    peer = container(docker, lab)
    a = container(docker, home)
    docker("network", "connect", lab, a)
    assert address(docker, a, lab).startswith("10.154.0.")
    shown = docker("exec", a, "ip", "-4", "-o", "addr", "show", "eth1").stdout
    assert address(docker, a, lab) in shown, "the second interface has Docker's address"
    assert docker("exec", a, "ping", "-c", "1", "-W", "2", peer, check=False).returncode == 0
    code, report = doctor(docker)
    assert code == 0, report  # the chain's CHECK on eth1
    docker("network", "disconnect", lab, a)
    assert lab not in json.loads(docker("inspect", a).stdout)[0]["NetworkSettings"]["Networks"]
    assert "10.154.0." not in docker("exec", a, "ip", "addr").stdout
    held = [f for f in os.listdir(tmp_path / cni_name) if f.startswith("10.")]
    assert held == [address(docker, peer, lab)], "host-local released the disconnected address"


def test_with_dockers_null_ipam_the_address_the_conflists_ipam_chose_is_dockers(docker, reference_bridge, tmp_path):
    """An IPAM that chooses for itself: the ADD runs at CreateEndpoint, and
    Docker is told the address, which it then shows and resolves."""
    cni_name = unique("own")
    write_conflist(docker, cni_name, [{"type": "bridge", "bridge": reference_bridge, "isGateway": True,
                                       "isDefaultGateway": True, "ipMasq": True,
                                       "ipam": dict(host_local("10.156.0.0/24", tmp_path), rangeStart="10.156.0.200")},
                                      {"type": "firewall", "backend": "iptables"}])
    net = network(docker, "--ipam-driver", "null", "-o", f"cni.conflist={cni_name}", driver="rancher-conflist")
    a, b = container(docker, net), container(docker, net)
    for name in (a, b):
        assert address(docker, name, net).startswith("10.156.0."), "host-local's choice, shown by docker inspect"
        assert address(docker, name, net) == inside_address(docker, name)
    assert docker("exec", a, "ping", "-c", "1", "-W", "2", b, check=False).returncode == 0, "b by name"
    code, report = doctor(docker)
    assert code == 0, report
    for name in (a, b):
        docker("rm", "-f", name)
    assert [f for f in os.listdir(tmp_path / cni_name) if f.startswith("10.")] == []
    assert rules_for("10.156.0.") == []
