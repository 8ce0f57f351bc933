"""rancher-ipsec across two hosts (namespaces that run the real executable,
in-process and through the daemon) joined by an underlay veth: one subnet,
each host its own block of it, the hosts' charons joined by ESP in UDP."""

import json
import os
import subprocess
import sys
import time

import pytest

from cni_backend import ipsec_tunnels
from cni_backend.plugins import ipsec
from tests.conftest import CNIEnv, ns_exec, ping

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not os.access(ipsec_tunnels.CHARON, os.X_OK),
                       reason="strongSwan's charon is not installed (make deps)"),
    pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun for kernel-libipsec"),
]

UNDERLAY = ("10.99.9.1", "10.99.9.2")
# what fits ESP in UDP on a 1500 underlay is 1422 (ipsecnet.container_mtu), but
# kernel-libipsec's ipsec0 takes 1400 at most (ipsecnet.LIBIPSEC_TUN_MTU)
MTU = 1400


def ipsec_config(env, n: int, psk: str) -> dict:
    return {"cniVersion": "1.0.0", "name": "secure", "type": "rancher-ipsec", "bridge": "rcnitipsbr",
            "isGateway": True, "peers": [UNDERLAY[1 - n]], "pskFile": psk, "stateDir": str(env.state),
            "ipam": {"type": "rancher-ipam", "dataDir": str(env.state),
                     "ranges": [[{"subnet": "10.43.0.0/16", "gateway": f"10.43.{n + 1}.1",
                                  "rangeStart": f"10.43.{n + 1}.2", "rangeEnd": f"10.43.{n + 1}.254"}]]}}


def drop_counter(host: str, port: int = 4500) -> int:
    """Packets the IPsec guard dropped on `port` (one DROP rule a port)."""
    for line in ns_exec(host, "iptables", "-w", "-L", "INPUT", "-v", "-x", "-n").stdout.splitlines():
        if "rcni-" in line and "-ipsec" in line and line.split()[2] == "DROP" and f"dpt:{port} " in line + " ":
            return int(line.split()[0])
    raise AssertionError(f"no DROP rule of the IPsec guard for UDP {port}")


def remove_network(host: str, config: dict) -> None:
    code = ("import json, sys; from cni_backend import ipsecnet; from cni_backend.plugins import ipsec; "
            "ipsecnet.remove(ipsec.load_network(json.loads(sys.argv[1])))")
    ns_exec(host, sys.executable, "-c", code, json.dumps(config))


def wait_child(charon, child: str, timeout: float = 30) -> None:
    """Until the network's CHILD_SA `child` is INSTALLED in an ESTABLISHED IKE_SA."""
    deadline = time.monotonic() + timeout
    while not any(sa["ike"] == "ESTABLISHED" and sa["children"].get(child) == "INSTALLED"
                  for sa in charon.sas().values()):
        assert time.monotonic() < deadline, f"{child} not installed: {charon.sas()}"
        time.sleep(0.2)


def children(charon) -> dict:
    return {child: state for sa in charon.sas().values() for child, state in sa["children"].items()}


def charon_pid(env) -> int:
    with open(env.state / "ipsec" / "charon" / "charon.owner") as f:
        return int(f.read())


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def write_key(path, mode=0o600) -> str:
    """A pre-shared key file: 48 hex characters, `mode`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    os.write(fd, os.urandom(24).hex().encode())
    os.close(fd)
    os.chmod(path, mode)
    return str(path)


@pytest.fixture
def hosts(tmp_path, make_netns):
    """Two hosts on an underlay, a key for them; the charons killed if a test leaves one."""
    host_a, host_b = make_netns(), make_netns()
    ns_exec(host_a, "ip", "link", "add", "underlay", "type", "veth", "peer", "name", "underlay", "netns", host_b)
    for host, address in zip((host_a, host_b), UNDERLAY):
        ns_exec(host, "ip", "addr", "add", f"{address}/24", "dev", "underlay")
        ns_exec(host, "ip", "link", "set", "underlay", "mtu", "1500", "up")
    psk = write_key(tmp_path / "psk")
    envs = []
    for n in range(2):
        (tmp_path / f"h{n}").mkdir()
        envs.append(CNIEnv(tmp_path / f"h{n}", daemon=False))
    yield (host_a, host_b), envs, psk
    for env in envs:
        if (env.state / "ipsec" / "charon" / "charon.owner").exists() and alive(charon_pid(env)):
            os.kill(charon_pid(env), 9)
        env.close()


def test_containers_on_two_hosts_talk_through_ipsec(hosts, make_netns):
    (host_a, host_b), envs, psk = hosts
    attached = []
    for n, host in reversed(list(enumerate((host_a, host_b)))):  # B (the responder) first
        config = ipsec_config(envs[n], n, psk)
        container = make_netns()
        code, result = envs[n].exec("ADD", config, container, container_id=f"c{n}", host_netns=host)
        assert code == 0, result
        attached.insert(0, (envs[n], config, container, host, f"c{n}", result))
    charon_a = ipsec_tunnels.Charon(str(envs[0].state / "ipsec" / "charon"))
    wait_child(charon_a, ipsec.load_network(attached[0][1]).connection(UNDERLAY[1]))
    (_, _, a, _, _, ra), (_, _, b, _, _, rb) = attached
    ip_a, ip_b = (r["ips"][0]["address"].split("/")[0] for r in (ra, rb))
    assert ip_a.startswith("10.43.1.") and ip_b.startswith("10.43.2.")
    assert ping(a, ip_b, count=3), "a container reaches the other host's container through the tunnel"
    assert ping(b, ip_a), "and back"

    sas = charon_a.sas()
    (name, sa), = sas.items()
    assert sa["ike"] == "ESTABLISHED" and list(sa["udp_encap"].values()) == [True], sas
    routes = ns_exec(host_a, "ip", "route", "show", "table", "220").stdout
    assert "10.43.2.0/24" in routes and "ipsec0" in routes, f"the peer's block, narrowed by IKE: {routes}"
    assert "10.43.1.0/24" not in routes, routes

    # a second ADD on host A ensures again: the same charon, still one IKE_SA, the tunnel kept
    pid_a = charon_pid(envs[0])
    second = make_netns()
    code, result = envs[0].exec("ADD", attached[0][1], second, container_id="c2", host_netns=host_a)
    assert code == 0, result
    attached.append((envs[0], attached[0][1], second, host_a, "c2", result))
    assert charon_pid(envs[0]) == pid_a and alive(pid_a)
    assert len(charon_a.sas()) == 1 and ping(second, ip_b), charon_a.sas()
    listed = subprocess.run(["swanctl", "--list-sas", "--uri", f"unix://{charon_a.vici_socket}"],
                            capture_output=True, text=True, check=True).stdout
    assert listed.count("ESTABLISHED") == 1 and listed.count("INSTALLED") == 1, listed

    # charon killed with -9: the next ADD starts it again, with the tunnels
    os.kill(pid_a, 9)
    while alive(pid_a):
        time.sleep(0.05)
    third = make_netns()
    code, result = envs[0].exec("ADD", attached[0][1], third, container_id="c3", host_netns=host_a)
    assert code == 0, result
    attached.append((envs[0], attached[0][1], third, host_a, "c3", result))
    assert charon_pid(envs[0]) != pid_a and alive(charon_pid(envs[0]))
    wait_child(charon_a, ipsec.load_network(attached[0][1]).connection(UNDERLAY[1]))
    assert ping(a, ip_b, count=3), "traffic resumes over the new charon's tunnel"

    # the MTU: a full-size packet with DF set crosses, one byte more is refused at the container
    for container in (a, b):
        assert json.loads(ns_exec(container, "ip", "-j", "link", "show", "eth0").stdout)[0]["mtu"] == MTU
    assert json.loads(ns_exec(host_a, "ip", "-j", "link", "show", "ipsec0").stdout)[0]["mtu"] == MTU
    full = ns_exec(a, "ping", "-c", "1", "-W", "3", "-M", "do", "-s", str(MTU - 28), ip_b, check=False)
    assert full.returncode == 0, full.stdout + full.stderr
    over = ns_exec(a, "ping", "-c", "1", "-W", "3", "-M", "do", "-s", str(MTU - 27), ip_b, check=False)
    assert over.returncode != 0 and "message too long" in (over.stdout + over.stderr).lower(), over

    # only the peer reaches charon's ports: a stranger's UDP 4500 is dropped
    stranger = make_netns()
    ns_exec(host_a, "ip", "link", "add", "rcnitstr", "type", "veth", "peer", "name", "eth0", "netns", stranger)
    ns_exec(host_a, "ip", "addr", "add", "10.99.10.1/24", "dev", "rcnitstr")
    ns_exec(host_a, "ip", "link", "set", "rcnitstr", "up")
    ns_exec(stranger, "ip", "addr", "add", "10.99.10.2/24", "dev", "eth0")
    ns_exec(stranger, "ip", "link", "set", "eth0", "up")
    for port in (4500, 500):  # NAT-T and IKE, each its own rule
        before = drop_counter(host_a, port)
        ns_exec(stranger, "bash", "-c", f"for i in 1 2 3; do echo probe > /dev/udp/10.99.10.1/{port}; done")
        assert drop_counter(host_a, port) >= before + 3, f"the non-peer's UDP {port} packets were dropped by the guard"
    assert ping(a, ip_b), "the peer still gets through"

    for env, config, container, host, container_id, result in attached:
        code, out = env.exec("CHECK", dict(config, prevResult=result), container, container_id=container_id,
                             host_netns=host)
        assert code == 0, out

    pids = [charon_pid(env) for env in envs]
    for env, config, container, host, container_id, result in attached:
        code, _ = env.exec("DEL", dict(config, prevResult=result), container, container_id=container_id,
                           host_netns=host)
        assert code == 0
    for env, config, host in ((envs[0], attached[0][1], host_a), (envs[1], attached[1][1], host_b)):
        assert env.allocations() == []
        remove_network(host, config)
        remove_network(host, config)  # idempotent
    for pid, host in zip(pids, (host_a, host_b)):
        assert not alive(pid), "the last network's removal stopped charon"
        links = ns_exec(host, "ip", "-o", "link", "show").stdout
        assert "ipsec0" not in links and "rcnitipsbr" not in links, links
        assert "rcni-" not in ns_exec(host, "iptables-save").stdout, "the guard's rules are gone"
        assert ns_exec(host, "ip", "route", "show", "table", "220").stdout.strip() == ""


def test_two_networks_share_the_hosts_charon_until_the_last_goes(hosts, make_netns):
    (host_a, host_b), envs, psk = hosts
    attached = {}
    for name, net in (("secure", 43), ("secure2", 44)):
        for n, host in reversed(list(enumerate((host_a, host_b)))):
            config = ipsec_config(envs[n], n, psk)
            config.update(name=name, bridge=f"rcnitipsbr{net - 43}")
            config["ipam"]["ranges"] = [[{"subnet": f"10.{net}.0.0/16", "gateway": f"10.{net}.{n + 1}.1",
                                          "rangeStart": f"10.{net}.{n + 1}.2", "rangeEnd": f"10.{net}.{n + 1}.254"}]]
            container = make_netns()
            code, result = envs[n].exec("ADD", config, container, container_id=f"{name}{n}", host_netns=host)
            assert code == 0, result
            attached[name, n] = (config, container, result)
    charon_a = ipsec_tunnels.Charon(str(envs[0].state / "ipsec" / "charon"))
    child = {name: ipsec.load_network(attached[name, 0][0]).connection(UNDERLAY[1]) for name in ("secure", "secure2")}
    for name in child:
        wait_child(charon_a, child[name])
    assert len(charon_a.sas()) == 1, f"one IKE_SA to the peer, a CHILD_SA per network: {charon_a.sas()}"
    ip_b1 = attached["secure", 1][2]["ips"][0]["address"].split("/")[0]
    assert ping(attached["secure", 0][1], ip_b1)
    ip_b2 = attached["secure2", 1][2]["ips"][0]["address"].split("/")[0]
    assert ping(attached["secure2", 0][1], ip_b2)
    pid_a = charon_pid(envs[0])

    for n, host in enumerate((host_a, host_b)):  # the first network goes from both hosts
        config, container, result = attached["secure", n]
        assert envs[n].exec("DEL", dict(config, prevResult=result), container, container_id=f"secure{n}",
                            host_netns=host)[0] == 0
        remove_network(host, config)
    assert alive(pid_a), "charon stays for the other network"
    assert children(charon_a) == {child["secure2"]: "INSTALLED"}, "only the removed network's CHILD_SA went"
    assert ping(attached["secure2", 0][1], ip_b2), "the other network's tunnel still carries traffic"
    assert "rcnitipsbr0" not in ns_exec(host_a, "ip", "-o", "link", "show").stdout

    for n, host in enumerate((host_a, host_b)):
        config, container, result = attached["secure2", n]
        assert envs[n].exec("DEL", dict(config, prevResult=result), container, container_id=f"secure2{n}",
                            host_netns=host)[0] == 0
        remove_network(host, config)
    assert not alive(pid_a), "the last network's removal stopped charon"
    assert "ipsec0" not in ns_exec(host_a, "ip", "-o", "link", "show").stdout


def test_a_key_file_others_can_read_is_refused_and_nothing_is_made(hosts, make_netns, tmp_path):
    (host_a, _), envs, psk = hosts
    os.chmod(psk, 0o644)
    container = make_netns()
    code, result = envs[0].exec("ADD", ipsec_config(envs[0], 0, psk), container, host_netns=host_a)
    assert code == 1 and result["code"] == 7, result
    assert "mode 0600" in result["msg"] and open(psk).read() not in json.dumps(result), result
    links = ns_exec(host_a, "ip", "-o", "link", "show").stdout
    assert "rcnitipsbr" not in links and "ipsec0" not in links, links
    assert not (envs[0].state / "ipsec" / "charon" / "charon.owner").exists(), "no charon was started"
    assert "rcni-" not in ns_exec(host_a, "iptables-save").stdout


def test_charon_started_by_one_process_and_stopped_by_another_is_no_zombie_of_the_first(hosts):
    """The host's charon is started by whichever process needs it first (a
    shim worker, the CNI daemon) and stopped by another; the starter, still
    alive, must not be left holding an unreaped charon."""
    (host_a, _), envs, psk = hosts
    config = ipsec_config(envs[0], 0, psk)
    code = ("import json, sys; from cni_backend import ipsecnet; from cni_backend.plugins import ipsec; "
            "ipsecnet.ensure(ipsec.load_network(json.loads(sys.argv[1]))); print('ready', flush=True); "
            "sys.stdin.read()")
    starter = subprocess.Popen(["ip", "netns", "exec", host_a, sys.executable, "-c", code, json.dumps(config)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert starter.stdout.readline().strip() == "ready"
        pid = charon_pid(envs[0])
        remove_network(host_a, config)  # another process stops it
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not os.path.exists(f"/proc/{pid}"), "charon was reaped, though its starter still runs"
    finally:
        starter.stdin.close()
        starter.wait(10)
