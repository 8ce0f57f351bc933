"""Property-based fuzzing of the CNI plug-ins (issue 8, item 2): the
environment (CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS,
CNI_PATH) and stdin (malformed and wrong-typed network configs for each
plug-in type).

Properties: the answer on stdout is the spec's error JSON (`cniVersion`,
`code`, `msg`, optional `details`) with a non-zero exit, never a traceback and
never our internal-error code 100; bad env is code 4, stdin that is not a JSON
object 6, an unsupported cniVersion 1; a failed ADD leaves no interface, no
address allocation and no firewall rule; an ADD that succeeds is undone by its
DEL, and at the end nothing is left.

Everything runs in a private network and mount namespace made by the test
(tests/private_netns.py): the "host" the plug-ins see is that namespace, the
container is another one inside it, IPAM dataDir and stateDir are temp dirs.
Values that could point outside (CNI_NETNS, CNI_PATH, ipam type, dataDir) are
drawn from curated lists, never from arbitrary text.

Two runs: a large one in-process through the dispatcher (`skel.dispatch`, what
both the executables and the daemon's workers call), and a smaller one through
the real executables, directly and through the daemon (`cnm-shim cni-server`).
"""

import contextlib
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time

import pytest
from hypothesis import given, strategies as st

from tests import private_netns
from tests.fuzz_strategies import fuzz_settings, json_value, mutated, nasty_text

pytestmark = pytest.mark.netns

IN_PROCESS_EXAMPLES = int(os.environ.get("RANCHER_FUZZ_CNI_EXAMPLES", "640"))
EXEC_EXAMPLES = int(os.environ.get("RANCHER_FUZZ_CNI_EXEC_EXAMPLES", "60"))
PLUGINS = ["rancher-bridge", "rancher-ipam", "rancher-portmap", "rancher-flat", "rancher-vxlan"]
BRIDGE = "rcnitfzb0"
SUBNET = "10.120.0.0/24"
COMMANDS = ["ADD", "ADD", "ADD", "DEL", "DEL", "CHECK", "GC", "STATUS", "VERSION"]
VERSIONS = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]


class World:
    """The private namespace's fixtures: a container namespace, temp dirs, executables."""

    def __init__(self, root: str):
        from cni_backend import install
        self.root = root
        self.data_dir = os.path.join(root, "ipam")
        self.bin = os.path.join(root, "bin")
        install.write_executables(self.bin)
        self.holder = subprocess.Popen(["unshare", "--net", "sleep", "3600"])
        self.netns = f"/proc/{self.holder.pid}/ns/net"
        deadline = time.monotonic() + 10
        while os.readlink(self.netns) == os.readlink("/proc/self/ns/net"):
            assert time.monotonic() < deadline, "the container namespace was not made"
            time.sleep(0.01)
        self.host_links = private_netns.links()

    def close(self):
        self.holder.kill()
        self.holder.wait()

    def container_links(self) -> list:
        from cni_backend.net import netns
        with netns.entered(self.netns):
            return sorted(name for _, name in socket.if_nameindex())

    def allocations(self) -> list:
        path = os.path.join(self.data_dir, "ipam.db")
        if not os.path.exists(path):
            return []
        with sqlite3.connect(path) as db:
            return db.execute("SELECT * FROM allocations").fetchall()

    def stray_host_links(self) -> list:
        """Host links beyond the start's and the bridges/VTEPs configs name (plug-ins never delete a bridge)."""
        return [n for n in private_netns.links() if n not in self.host_links and not n.startswith(("rcnitfz", "vtep", "vxbr", "cni0", "rflat0"))]


def firewall_rules() -> list:
    """Attachment rules left behind (a VXLAN network's guard of its port, tag
    kind `vtep`, stays with the network like its VTEP: not an attachment's)."""
    rules = []
    for tool in ("iptables-save", "ip6tables-save"):
        out = subprocess.run([tool], capture_output=True, text=True).stdout
        rules += [line for line in out.splitlines() if line.startswith("-A") and ("rcni" in line or "RANCHER" in line)
                  and not re.search(r"--comment rcni-[0-9a-f]{8}-[0-9a-f]{16}-vtep ", line)]
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    return rules + [line for line in out.splitlines() if "rancher" in line]


# -- what is fuzzed -------------------------------------------------------------

def env_strategy(world: World):
    return mutated({
        "CNI_COMMAND": (st.sampled_from(COMMANDS), st.one_of(st.sampled_from(["", "add", "ATTACH", "ADD ", "DEL;ADD"]),
                                                            nasty_text), True),
        "CNI_CONTAINERID": (st.sampled_from(["ctr1", "ctr2", "a" * 64]),
                            st.one_of(st.sampled_from(["", "-x", "a/b", "a b", "$(reboot)", ".."]), nasty_text), True),
        "CNI_NETNS": (st.just(world.netns), st.sampled_from(["", "/nonexistent/netns", "relative/ns", "/dev/null",
                                                             "/proc/self/ns/net", world.root]), True),
        "CNI_IFNAME": (st.sampled_from(["eth0", "net1"]),
                       st.one_of(st.sampled_from(["", "a" * 16, "a/b", "a:b", "a b", ".", "..", "eth0\n", "lo"]),
                                 nasty_text), True),
        "CNI_ARGS": (st.sampled_from(["", "IgnoreUnknown=1", "IP=10.120.0.9", "MAC=02:42:0a:78:00:09", "K8S_POD_NAME=x"]),
                     st.one_of(st.sampled_from(["a", "=x", ";;=", "IP=garbage", "IP=10.99.0.9", "MAC=zz",
                                                "MAC=01:00:5e:00:00:01", "IP=10.120.0.0"]), nasty_text), False),
        "CNI_PATH": (st.just(world.bin), st.sampled_from(["", "/nonexistent", os.path.join(world.root, "ipam")]), True),
    }, 2).map(_as_environment)


def _as_environment(env: dict) -> dict:
    """What an environment can hold: strings without NUL, encodable."""
    return {k: v.encode("utf-8", "ignore").decode().replace("\x00", "") for k, v in env.items() if isinstance(v, str)}


def ipam_strategy(world: World):
    return mutated({
        "type": (st.just("rancher-ipam"), st.sampled_from(["", "host-local", "no-such-ipam", "../rancher-ipam", 5]), True),
        "ranges": (st.just([[{"subnet": SUBNET}]]),
                   st.one_of(st.sampled_from([[], [[]], [{"subnet": SUBNET}], [[{"subnet": "10.120.0.0/33"}]],
                                              [[{"subnet": "10.120.0.0/31"}]], [[{"subnet": SUBNET, "gateway": "10.9.0.1"}]],
                                              [[{"subnet": SUBNET, "rangeStart": "10.120.0.50", "rangeEnd": "10.120.0.40"}]],
                                              [[{"subnet": SUBNET}, {"subnet": SUBNET}]],
                                              # pools no network may have (ipam/config.py check_pool)
                                              [[{"subnet": "0.0.0.0/0"}]], [[{"subnet": "::/0"}]],
                                              [[{"subnet": "127.0.0.0/8"}]], [[{"subnet": "224.0.0.0/4"}]],
                                              [[{"subnet": "169.254.0.0/16"}]], [[{"subnet": "fe80::/64"}]],
                                              [[{"subnet": "8.0.0.0/7"}]]]), json_value), True),
        "routes": (st.just([{"dst": "0.0.0.0/0"}]), st.one_of(st.just([{"dst": "garbage"}]), st.just([{"gw": "1.2.3.4"}]),
                                                               json_value), False),
        "exclude": (st.just(["10.120.0.9"]), st.one_of(st.just(["x"]), st.just(["10.0.0.0/8"]),
                                                       st.just(["10.120.0.0/25", "10.120.0.128/26"]), json_value), False),
        "dns": (st.just({"nameservers": ["10.120.0.53"]}), json_value, False),
    }, 2)


def config_strategy(world: World, plugin: str):
    fields = {
        "cniVersion": (st.sampled_from(VERSIONS), st.one_of(st.sampled_from(["0.2.0", "2.0.0", "1.0", "", "x.y.z"]),
                                                            json_value), True),
        "name": (st.sampled_from(["fuzznet", "fuzz-net.2"]), st.one_of(st.sampled_from(["", "-x", "a b", "a/b"]),
                                                                      json_value), True),
        "type": (st.just(plugin), json_value, True),
        "ipam": (ipam_strategy(world), json_value, plugin != "rancher-portmap"),
        "runtimeConfig": (st.fixed_dictionaries({}, optional={
            "mac": st.sampled_from(["02:42:0a:78:00:07", "zz", "01:00:5e:00:00:01"]),
            "ips": st.sampled_from([["10.120.0.7"], ["garbage"], "10.120.0.7", ["10.99.0.1"]]),
            "portMappings": st.sampled_from([[{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
                                             [{"hostPort": 0, "containerPort": 80}], [{"hostPort": 80, "containerPort": 80,
                                                                                      "protocol": "icmp"}], "x"])}),
                          json_value, False),
        "args": (st.just({"cni": {"ips": ["10.120.0.8"]}}), json_value, False),
    }
    if plugin in ("rancher-bridge", "rancher-vxlan", "rancher-flat"):
        fields.update({
            "bridge": (st.just(BRIDGE), st.one_of(st.sampled_from(["", "a" * 16, "a/b", "a b", "lo"]), json_value), False),
            "mtu": (st.sampled_from([1400, 1500]), st.one_of(st.sampled_from([0, 67, 65536, "1500", True]), json_value), False),
            "isGateway": (st.booleans(), json_value, False),
            "ipMasq": (st.booleans(), json_value, False),
            "hairpinMode": (st.booleans(), json_value, False),
            "macspoofchk": (st.booleans(), json_value, False),
            "vlan": (st.just(0), st.one_of(st.sampled_from([-1, 4095, 5, "5"]), json_value), False),
        })
    if plugin == "rancher-flat":
        fields["parent"] = (st.just("rcnitfzup"), st.one_of(st.sampled_from(["", "lo", "a" * 16]), json_value), True)
        fields["metadata"] = (st.just({"linkIP": "10.120.0.2"}), st.one_of(st.just({"linkIP": "10.99.0.2"}), json_value), False)
    if plugin == "rancher-vxlan":
        fields["vni"] = (st.sampled_from([42, 1042]), st.one_of(st.sampled_from([0, 2 ** 24, "42"]), json_value), False)
        fields["peers"] = (st.just(["10.0.0.2"]), st.one_of(st.just(["garbage"]), json_value), False)
    if plugin == "rancher-portmap":
        fields["snat"] = (st.booleans(), json_value, False)
        fields["prevResult"] = (st.sampled_from(["1.0.0", "1.1.0"]).map(lambda v: {
            "cniVersion": v, "interfaces": [{"name": BRIDGE}, {"name": "eth0", "sandbox": world.netns}],
            "ips": [{"address": "10.120.0.7/24", "interface": 1}]}), json_value, False)
    return mutated(fields, 2).map(lambda c: _kept_inside(world, c))


def _kept_inside(world: World, config: dict) -> dict:
    """Whatever the mutation did, state stays in the temp dirs."""
    if isinstance(config.get("ipam"), dict):
        config["ipam"]["dataDir"] = world.data_dir
        config["ipam"].pop("etcdEndpoints", None)
    config["stateDir"] = world.data_dir
    config.pop("etcdEndpoints", None)
    return config


def stdin_strategy(world: World, plugin: str):
    config = config_strategy(world, plugin).map(lambda c: json.dumps(c).encode())
    garbage = st.one_of(st.binary(max_size=100), st.sampled_from([b"", b"{", b"[1]", b'"x"', b"null", b"\xff",
                                                                  b"[" * 3000 + b"]" * 3000]),
                        json_value.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode()))
    return st.one_of(*[config] * 6, garbage)


# -- the properties -------------------------------------------------------------

def _parse_json_object(raw: bytes):
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def expected_code(env: dict, stdin: bytes) -> int | None:
    """The code the spec's validation order gives, where it is certain."""
    if env.get("CNI_COMMAND") not in ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"):
        return 4
    if env["CNI_COMMAND"] == "VERSION":
        return None
    required = {"ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
                "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
                "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH")}.get(env["CNI_COMMAND"], ("CNI_PATH",))
    if any(not env.get(k) for k in required):
        return 4
    config = _parse_json_object(stdin)
    if config is None:
        return 6
    if config.get("cniVersion") not in VERSIONS:
        return 1
    return None


def check_answer(env: dict, stdin: bytes, stdout: str, code: int, stderr: str) -> dict | None:
    """The result on success (None for no output), after checking the error shape on failure."""
    assert "Traceback" not in stdout
    if code == 0:
        assert expected_code(env, stdin) is None, (env, stdout)
        return json.loads(stdout) if stdout.strip() else None
    error = json.loads(stdout)
    assert isinstance(error, dict) and {"cniVersion", "code", "msg"} <= set(error) <= {"cniVersion", "code", "msg", "details"}, error
    assert isinstance(error["code"], int) and isinstance(error["msg"], str) and error["msg"], error
    assert isinstance(error["cniVersion"], str) and isinstance(error.get("details", ""), str), error
    assert error["code"] != 100, f"internal error: {error} {stderr[-2000:]}"
    assert "Traceback" not in stderr, stderr
    wanted = expected_code(env, stdin)
    if wanted is not None:
        assert error["code"] == wanted, (wanted, error, env)
    return None


def cleanup_after_add(world, call, env, stdin):
    """A successful ADD is undone by DEL with the same env and config."""
    out, code, err = call(dict(env, CNI_COMMAND="DEL"), stdin)
    assert code == 0, (out, err)


def fuzz_dispatch(plugin: str, root: str, examples: int) -> dict:
    """The in-process run; inside the private namespace."""
    from cni_backend import skel
    from cni_backend.plugins import load
    world = World(root)
    module = load(plugin)
    counts = {"ok": 0, "error": 0, "added": 0}

    def call(env, stdin):
        return skel.dispatch(module, env, stdin)

    try:
        @fuzz_settings(examples)
        @given(env=env_strategy(world), stdin=stdin_strategy(world, plugin))
        def one_call(env, stdin):
            allocations = world.allocations()
            out, code, err = call(env, stdin)
            result = check_answer(env, stdin, out, code, err)
            counts["ok" if code == 0 else "error"] += 1
            if code == 0 and env.get("CNI_COMMAND") == "ADD":
                counts["added"] += 1
                cleanup_after_add(world, call, env, stdin)
                assert result and result.get("cniVersion"), result
            if env.get("CNI_COMMAND") == "ADD":
                assert world.allocations() == allocations, "an ADD left an allocation behind"
                assert world.container_links() == ["lo"], "an ADD left an interface in the container"
                assert world.stray_host_links() == [], f"an ADD left host interfaces {world.stray_host_links()}"

        one_call()
        # a rejected or undone call leaves nothing at all
        assert world.allocations() == []
        assert world.container_links() == ["lo"]
        assert world.stray_host_links() == []
        assert firewall_rules() == [], firewall_rules()
    finally:
        world.close()
    return counts


@pytest.fixture(scope="module")
def private_namespaces():
    reason = private_netns.available()
    if reason:
        pytest.skip(reason)


@pytest.mark.parametrize("plugin", PLUGINS)
def test_fuzz_dispatcher(plugin, tmp_path, private_namespaces, leak_guard):
    counts = private_netns.run(fuzz_dispatch, plugin, str(tmp_path), IN_PROCESS_EXAMPLES)
    print(plugin, counts)
    assert counts["error"] > 0 and counts["ok"] > 0


# -- the real executables, direct and through the daemon ---------------------

def fuzz_executables(root: str, examples: int, daemon: bool) -> dict:
    world = World(root)
    counts = {"ok": 0, "error": 0, "added": 0}
    socket_path = os.path.join(root, "cni.sock")
    server = None
    if daemon:
        server = subprocess.Popen([sys.executable, "-m", "cnm_shim.cli", "cni-server", "--socket", socket_path],
                                  stdout=subprocess.DEVNULL, stderr=open(os.path.join(root, "daemon.log"), "w"))
        deadline = time.monotonic() + 30
        while not os.path.exists(socket_path):
            assert server.poll() is None and time.monotonic() < deadline, "the CNI daemon did not start"
            time.sleep(0.05)

    def call(plugin):
        def run(env, stdin):
            full = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                    "RANCHER_CNI_SOCKET": socket_path if daemon else os.path.join(root, "no-daemon.sock"), **env}
            done = subprocess.run([os.path.join(world.bin, plugin)], input=stdin, env=full, capture_output=True,
                                  timeout=120)
            return done.stdout.decode(), done.returncode, done.stderr.decode()
        return run

    try:
        @fuzz_settings(examples)
        @given(plugin=st.sampled_from(PLUGINS), data=st.data())
        def one_call(plugin, data):
            env = data.draw(env_strategy(world))
            stdin = data.draw(stdin_strategy(world, plugin))
            out, code, err = call(plugin)(env, stdin)
            check_answer(env, stdin, out, code, err)
            counts["ok" if code == 0 else "error"] += 1
            if code == 0 and env.get("CNI_COMMAND") == "ADD":
                counts["added"] += 1
                cleanup_after_add(world, call(plugin), env, stdin)
            if env.get("CNI_COMMAND") == "ADD":
                assert world.allocations() == [] and world.container_links() == ["lo"]

        one_call()
        assert world.allocations() == []
        assert world.container_links() == ["lo"]
        assert world.stray_host_links() == []
        assert firewall_rules() == [], firewall_rules()
    finally:
        if server is not None:
            server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=10)
        world.close()
    return counts


@pytest.mark.parametrize("mode", ["direct", "daemon"])
def test_fuzz_executables(mode, tmp_path, private_namespaces, leak_guard):
    counts = private_netns.run(fuzz_executables, str(tmp_path), EXEC_EXAMPLES, mode == "daemon")
    print(mode, counts)
    assert counts["error"] > 0 and counts["ok"] > 0


# -- issue 15: hostile prevResults and port maps for rancher-portmap -------------

LOCALNET_WATCHED = ("all", "default", "lo", BRIDGE)
HOSTILE_PLACES = ["interface", "interface", "mac", "address", "gateway", "route", "hostIP", "hostIP"]


def _route_localnet() -> dict:
    from cni_backend.net import sysctls
    return {name: sysctls.read(f"net/ipv4/conf/{name}/route_localnet") for name in LOCALNET_WATCHED}


def hostile_value(where: str):
    """What goes in `where`: a hostile interface name, a bad MAC, or a scoped
    or whitespace-bearing address."""
    from tests.fuzz_strategies import hostile_ifnames, scoped_addresses
    if where == "interface":
        return hostile_ifnames().filter(lambda name: name != BRIDGE)
    if where == "mac":
        return st.one_of(st.sampled_from(["02:42:0a:78:00:07 } accept", "zz", "02:42:0a:78:00:07\n"]),
                         nasty_text.filter(lambda text: text != ""))
    return scoped_addresses("" if where in ("gateway", "hostIP", "route") else "/64")


def portmap_config(world: World, where: str, value, version: str) -> dict:
    """A rancher-portmap ADD, good but for `value` in `where` ("none": all good)."""
    prev = {"cniVersion": version, "interfaces": [{"name": BRIDGE}, {"name": "eth0", "sandbox": world.netns}],
            "ips": [{"address": "fd00:120::7/64", "interface": 1}, {"address": "10.120.0.7/24", "interface": 1,
                                                                    "gateway": "10.120.0.1"}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.120.0.1"}]}
    mapping = {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}
    if where == "hostIP":
        mapping["hostIP"] = value
    elif where == "interface":
        prev["interfaces"][0]["name"] = value
    elif where == "mac":
        prev["interfaces"][0]["mac"] = value
    elif where == "route":
        prev["routes"][0]["gw"] = value
    elif where in ("address", "gateway"):
        prev["ips"][0][where] = value
    return {"cniVersion": version, "name": "fuzznet", "type": "rancher-portmap", "prevResult": prev,
            "runtimeConfig": {"portMappings": [mapping]}}


def fuzz_hostile_prev_results(root: str, examples: int) -> dict:
    """Inside the private namespace, which holds the bridge prevResult names:
    every hostile ADD is refused with code 7 (never an internal error), adds
    no rule and changes no route_localnet; a good one afterwards still works
    and its DEL puts route_localnet back."""
    from cni_backend import skel
    from cni_backend.plugins import load
    world = World(root)
    module = load("rancher-portmap")
    subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ctr1", "CNI_NETNS": world.netns, "CNI_IFNAME": "eth0",
           "CNI_PATH": world.bin}
    counts = {"refused": 0}
    try:
        before = _route_localnet()

        @fuzz_settings(examples)
        @given(where=st.sampled_from(HOSTILE_PLACES), version=st.sampled_from(["1.0.0", "1.1.0"]), data=st.data())
        def one_call(where, version, data):
            value = data.draw(hostile_value(where))
            stdin = json.dumps(portmap_config(world, where, value, version)).encode()
            out, code, err = skel.dispatch(module, env, stdin)
            error = json.loads(out)
            assert code != 0 and error["code"] == 7, (where, value, error, err[-2000:])
            counts["refused"] += 1
            assert firewall_rules() == [], (where, value, firewall_rules())
            assert _route_localnet() == before, (where, value)
            assert not os.path.exists("/tmp/rcnitx")

        one_call()
        good = json.dumps(portmap_config(world, "none", None, "1.1.0")).encode()
        out, code, err = skel.dispatch(module, env, good)
        assert code == 0, (out, err)
        assert _route_localnet()[BRIDGE] == "1" and any("RANCHER-CNI-LOCALNET" in r for r in firewall_rules())
        out, code, err = skel.dispatch(module, dict(env, CNI_COMMAND="DEL"), good)
        assert code == 0, (out, err)
        assert _route_localnet() == before and firewall_rules() == []
    finally:
        subprocess.run(["ip", "link", "del", BRIDGE], check=False)
        world.close()
    return counts


def test_fuzz_hostile_prev_results_and_scoped_host_ips(tmp_path, private_namespaces, leak_guard):
    counts = private_netns.run(fuzz_hostile_prev_results, str(tmp_path), EXEC_EXAMPLES * 4)
    print(counts)
    assert counts["refused"] >= EXEC_EXAMPLES * 4
