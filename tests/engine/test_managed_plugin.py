"""The managed plug-in (plugin.json + a debootstrap rootfs): created and enabled
like `make plugin` does, every backend through one driver, Docker's rules for
disabling it, upgrades and restarts that keep containers connected, and an
install from a registry on a second engine, and the ipsec backend's charon
run by the plug-in itself."""

import json
import os
import re
import socket
import time
import urllib.request

import pytest

from cnm_shim import metrics
from tests.conftest import host_state, ping, run, unique
from tests.engine.dockerd import Dockerd
from tests.engine.helpers import address, can_ping, container, network
from tests.engine.managed import ManagedPlugin, Registry, build_bundle, free_port
from tests.engine.test_docker_conflist import reference_bridge  # noqa: F401 (a fixture)
from tests.engine.test_docker_flat import LINK_IP, ROUTER, SUBNET, rig  # noqa: F401 (a fixture)

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build_bundle(tmp_path_factory.mktemp("plugin") / "bundle")


@pytest.fixture(scope="module")
def managed(bundle, tmp_path_factory):
    before = host_state()
    plugin = ManagedPlugin(Dockerd(), tmp_path_factory.mktemp("managed-state"))
    try:
        plugin.create(bundle)
        yield plugin
    finally:
        plugin.close()
    assert plugin.allocations() == [], "IPAM entries left behind"
    after = host_state()
    assert {k: sorted(set(after[k]) - set(before[k])) for k in after if set(after[k]) - set(before[k])} == {}


@pytest.fixture
def docker(managed, leak_guard):
    yield managed
    managed.clean()


def test_every_backend_through_one_managed_driver(docker, rig):  # noqa: F811 (the fixture imported above)
    driver = docker.driver
    bridge_net = network(docker, "--subnet", "10.81.0.0/24", "--ipam-driver", driver, driver=driver)
    vxlan_net = network(docker, "--subnet", "10.82.0.0/24", "-o", "backend=vxlan", "-o", "vni=4242", driver=driver)
    flat_net = network(docker, "--subnet", SUBNET, "--gateway", ROUTER, "-o", "backend=flat",
                       "-o", f"parent={rig['uplink']}", "-o", f"metadata_bridge={rig['md_bridge']}",
                       "-o", f"metadata_link_ip={LINK_IP}", "--aux-address", f"link={LINK_IP}", driver=driver)
    assert run("ip", "link", "show", "vtep4242").returncode == 0, "the VXLAN backend made its VTEP"
    for net in (bridge_net, vxlan_net, flat_net):
        a, b = container(docker, net), container(docker, net)
        assert can_ping(docker, a, address(docker, b, net)), net
    flat_container = docker.made["containers"][-1]
    assert ping(rig["router"], address(docker, flat_container, flat_net)), "flat: reachable from the upstream"


def test_bad_options_fail_in_dockers_output(docker):
    done = docker("network", "create", "-d", docker.driver, "-o", "backend=macvlan", "bad", check=False)
    assert done.returncode != 0 and "backend='macvlan' is not one of: bridge, flat, vxlan" in done.stderr


def test_disable_is_refused_while_in_use_and_an_upgrade_keeps_containers_connected(docker):
    net = network(docker, "--subnet", "10.83.0.0/24", "--ipam-driver", docker.driver, driver=docker.driver)
    first = container(docker, net)
    done = docker("plugin", "disable", docker.name, check=False)
    assert done.returncode != 0 and "in use" in done.stderr, "Docker's own rule"
    # the upgrade path of a plug-in built locally: disable, change settings, enable
    docker("plugin", "disable", "-f", docker.name)
    docker("plugin", "set", docker.name, "CNM_SHIM_LOG_LEVEL=INFO")
    docker("plugin", "enable", docker.name)
    second = container(docker, net)
    assert address(docker, second, net) != address(docker, first, net), "allocations survived the restart"
    assert can_ping(docker, second, address(docker, first, net)), "the running container stayed connected"
    docker.clean()
    docker("plugin", "disable", docker.name)  # allowed once nothing uses it
    docker("plugin", "enable", docker.name)


def plugin_log(dockerd) -> list:
    """The plug-in's lines in dockerd's log (Docker logs a plug-in's stdout
    and stderr as `msg="..." plugin=ID`), each parsed as our JSON."""
    entries = []
    with open(os.path.join(dockerd.root, "dockerd.log")) as f:
        for line in f:
            match = re.search(r'msg="((?:[^"\\]|\\.)*)" plugin=', line)
            if match:
                text = json.loads(f'"{match.group(1)}"')
                if text.startswith("{"):
                    entries.append(json.loads(text))
    return entries


def test_json_logs_from_the_plugins_env_with_one_request_id_from_create_endpoint_to_add(docker):
    """CNM_SHIM_LOG_FORMAT=json set on the plug-in: its lines reach dockerd's
    log as JSON, and a docker run's CreateEndpoint and the ADD it made right
    after its answer (translate.attach_ahead) share one ID."""
    docker("plugin", "disable", docker.name)
    docker("plugin", "set", docker.name, "CNM_SHIM_LOG_FORMAT=json")
    docker("plugin", "enable", docker.name)
    try:
        net = network(docker, "--subnet", "10.86.0.0/24", driver=docker.driver)
        name = container(docker, net)
        endpoint = json.loads(docker("inspect", name).stdout)[0]["NetworkSettings"]["Networks"][net]["EndpointID"]
        entries = plugin_log(docker.dockerd)
        creates = [e for e in entries
                   if e.get("verb") == "NetworkDriver.CreateEndpoint" and e.get("endpoint") == endpoint]
        assert len(creates) == 1, docker.dockerd.log_tail()
        adds = [e for e in entries if e.get("command") == "ADD" and e["request_id"] == creates[0]["request_id"]]
        assert [(e["plugin"], e["ok"]) for e in adds] == [("rancher-bridge", True)], entries[-20:]
    finally:
        docker.clean()
        docker("plugin", "disable", docker.name)
        docker("plugin", "set", docker.name, "CNM_SHIM_LOG_FORMAT=text")
        docker("plugin", "enable", docker.name)


def test_metrics_on_the_hosts_socket_and_on_tcp_when_set(docker):
    """The plug-in's metrics socket is in the directory Docker shares with the
    host for the plug-in's socket (/run/docker/plugins/<id>/); CNM_SHIM_METRICS_LISTEN adds a TCP
    listener on the host's network; a wildcard address is refused, with the
    reason in the plug-in's log, and the plug-in does not run."""
    plugin_id = docker("plugin", "inspect", "-f", "{{.Id}}", docker.name).stdout.strip()
    folder = os.path.join("/run/docker/plugins", plugin_id)  # dockerd's plug-in exec root, whatever --exec-root
    net = network(docker, "--subnet", "10.87.0.0/24", driver=docker.driver)
    container(docker, net)
    assert os.path.exists(os.path.join(folder, metrics.SOCKET_NAME)), (os.listdir(folder), docker.dockerd.log_tail())
    text = metrics.scrape(os.path.join(folder, metrics.SOCKET_NAME))
    assert 'cnm_cni_calls_total{command="ADD",plugin="rancher-bridge",result="ok"} 1.0' in text, text
    assert "cnm_cni_daemon_workers_limit 16.0" in text
    docker.clean()
    port = free_port()
    docker("plugin", "disable", docker.name)
    try:
        docker("plugin", "set", docker.name, f"CNM_SHIM_METRICS_LISTEN=127.0.0.1:{port}")
        docker("plugin", "enable", docker.name)
        deadline = time.monotonic() + 30
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:  # the exporter starts beside gunicorn
            assert time.monotonic() < deadline, docker.dockerd.log_tail()
            time.sleep(0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
            assert answer.status == 200 and "cnm_docker_calls_total" in answer.read().decode()
        docker("plugin", "disable", docker.name)
        docker("plugin", "set", docker.name, "CNM_SHIM_METRICS_LISTEN=0.0.0.0:9614")
        refused = docker("plugin", "enable", docker.name, check=False)
        with open(os.path.join(docker.dockerd.root, "dockerd.log")) as f:
            assert "name the address to listen on" in f.read(), docker.dockerd.log_tail()
        assert not socket.socket().connect_ex(("127.0.0.1", 9614)) == 0
    finally:
        docker("plugin", "disable", "-f", docker.name, check=False)
        docker("plugin", "set", docker.name, "CNM_SHIM_METRICS_LISTEN=")
        deadline = time.monotonic() + 60
        while (again := docker("plugin", "enable", docker.name, check=False)).returncode != 0 \
                and "already enabled" not in again.stderr:
            # dockerd keeps the exited plug-in's containerd container a while ("id already in use")
            assert time.monotonic() < deadline, again.stderr
            time.sleep(1)
    assert refused.returncode != 0, refused.stdout


def test_containers_come_back_after_a_daemon_restart(docker):
    net = network(docker, "--subnet", "10.84.0.0/24", driver=docker.driver)
    steady = container(docker, net, "--restart", "always")
    docker.dockerd.restart()
    deadline = time.monotonic() + 60
    while json.loads(docker("inspect", steady).stdout)[0]["State"]["Status"] != "running":
        assert time.monotonic() < deadline, docker.dockerd.log_tail()
        time.sleep(0.2)
    probe = container(docker, net)
    assert can_ping(docker, probe, address(docker, steady, net))


def test_install_from_a_registry_on_a_second_engine(bundle, tmp_path, leak_guard):
    registry = Registry(tmp_path / "registry")
    reference = f"{registry.address}/rancher-cni:latest"
    second = None
    try:
        # `make plugin-push` on a build host (an engine holds one plug-in per rootfs digest,
        # so the build host is an engine of its own here)
        with Dockerd() as builder:
            for argv in (("plugin", "create", reference, bundle), ("plugin", "push", reference)):
                done = builder.cli(*argv, timeout=300)
                assert done.returncode == 0, done.stderr
        second = ManagedPlugin(Dockerd(), tmp_path / "second", name="rancher-vxlan")
        second.install(reference, backend="vxlan")
        net = network(second, "--subnet", "10.85.0.0/24", driver=second.driver)
        a, b = container(second, net), container(second, net)
        assert can_ping(second, a, address(second, b, net))
        bridge = json.loads(second("network", "inspect", net).stdout)[0]["Id"][:12]
        assert run("ip", "link", "show", f"rv-{bridge}").returncode == 0, "the alias serves the vxlan backend"
    finally:
        if second is not None:
            second.close()
            assert second.allocations() == []
        registry.close()


def charons_here() -> list:
    """charon processes in this (the sandbox's) network namespace: the
    plug-in's, whatever PID namespace it has."""
    here, found = os.readlink("/proc/self/ns/net"), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "charon" and os.readlink(f"/proc/{pid}/ns/net") == here:
                    found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.fixture
def ipsec_alias(docker):
    """The plug-in serving ipsec by default (RANCHER_BACKEND=ipsec), this host's
    underlay address on a veth, and a key under the ipam-state mount;
    bridge again at the end."""
    link = unique("ul")
    run("ip", "link", "add", link, "type", "veth", "peer", "name", link + "p")  # no dummy module here
    run("ip", "addr", "add", "10.98.0.1/24", "dev", link)
    for name in (link, link + "p"):
        run("ip", "link", "set", name, "up")
    key = os.path.join(docker.state, "ipam", "ipsec.psk")
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, os.urandom(24).hex().encode())
    os.close(fd)
    try:
        for argv in (("disable", docker.name), ("set", docker.name, "RANCHER_BACKEND=ipsec"), ("enable", docker.name)):
            docker("plugin", *argv)
        yield {"underlay": "10.98.0.1", "key": key}
    finally:
        docker.clean()
        for argv in (("disable", docker.name), ("set", docker.name, "RANCHER_BACKEND=bridge"), ("enable", docker.name)):
            docker("plugin", *argv, check=False)
        run("ip", "link", "del", link, check=False)
        os.unlink(key)


def test_an_ipsec_alias_runs_charon_in_the_plugin_with_the_gateway_in_its_block(docker, ipsec_alias, tmp_path):
    args = ["--ipam-driver", docker.driver, "--subnet", "10.86.0.0/16", "--ip-range", "10.86.1.0/24",
            "-o", f"underlay={ipsec_alias['underlay']}"]
    # a key file the host has but the plug-in does not see (no mount shows it)
    outside = tmp_path / "ipsec.psk"
    outside.write_bytes(open(ipsec_alias["key"], "rb").read())
    outside.chmod(0o600)
    done = docker("network", "create", "-d", docker.driver, *args, "-o", f"ipsec.psk_file={outside}",
                  unique("ips"), check=False)
    assert done.returncode != 0 and f"cannot open the PSK file {outside}" in done.stderr, done.stderr
    assert charons_here() == [], "nothing made"
    # under the ipam-state mount: /var/lib/rancher-cni inside the plug-in
    net = network(docker, *args, "-o", "ipsec.psk_file=/var/lib/rancher-cni/ipsec.psk", driver=docker.driver)
    a, b = container(docker, net), container(docker, net)
    gateway = json.loads(docker("inspect", a).stdout)[0]["NetworkSettings"]["Networks"][net]["Gateway"]
    assert gateway == "10.86.1.1", "RANCHER_BACKEND=ipsec: the plug-in's IPAM put the gateway in the --ip-range"
    assert address(docker, a, net).startswith("10.86.1.")
    assert can_ping(docker, a, address(docker, b, net))
    assert len(charons_here()) == 1, "the plug-in runs this host's charon"
    assert run("ip", "link", "show", "ipsec0", check=False).returncode == 0, \
        "kernel-libipsec's TUN device, through /dev/net/tun"
    docker.clean()
    assert charons_here() == [], "the last IPsec network's removal stopped charon"
    assert run("ip", "link", "show", "ipsec0", check=False).returncode != 0


def test_a_conflist_of_the_cni_config_directory_through_the_managed_driver(docker, reference_bridge, tmp_path):  # noqa: F811
    """-o backend=conflist on the managed plug-in: the conflist from its
    cni-conf mount, the reference plug-ins from its cni-bin mount."""
    cni_name = unique("mlab")
    with open(os.path.join(docker.state, "net.d", f"10-{cni_name}.conflist"), "w") as f:
        json.dump({"cniVersion": "1.0.0", "name": cni_name, "plugins": [
            {"type": "bridge", "bridge": reference_bridge, "isGateway": True, "isDefaultGateway": True,
             "ipMasq": True, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.83.0.0/24"}]],
                                      "dataDir": "/var/lib/rancher-cni/host-local"}},
            {"type": "firewall", "backend": "iptables"}]}, f)
    net = network(docker, "--subnet", "10.83.0.0/24", "-o", "backend=conflist", "-o", f"cni.conflist={cni_name}",
                  driver=docker.driver)
    a, b = container(docker, net), container(docker, net)
    assert docker("exec", a, "ping", "-c", "1", "-W", "2", b, check=False).returncode == 0, "b by name"
    held = os.listdir(os.path.join(docker.state, "ipam", "host-local", cni_name))
    assert address(docker, a, net) in held and address(docker, b, net) in held, "host-local took Docker's addresses"
    docker.clean()
    held = os.listdir(os.path.join(docker.state, "ipam", "host-local", cni_name))
    assert [f for f in held if f.startswith("10.")] == [], "released at removal"
