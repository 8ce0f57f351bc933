"""Fixtures shared by every layer: per-test CNI environments, namespaces with a
recognisable prefix, and a guard that fails any test leaving state behind."""

import contextlib
import fcntl
import json
import os
import secrets
import shlex
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from cni_backend import install
from tests.isolation import in_private_namespaces
from tests.processes import process_tree, started_processes  # noqa: F401 (process_tree: for other tests)

# The executables start a CNI daemon of their own, detached, on a host where
# none runs (zero set-up, cni_backend/front.py): not in the tests, whose
# every process must end with them (and a daemon left in the sandbox would
# keep its namespaces alive). The runtimes, engines and executables the
# tests start inherit this; tests/netns/test_cni_daemon_autostart.py turns
# it back on for its own calls, and stops what they start.
os.environ["RANCHER_CNI_AUTOSTART"] = "0"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "rcnit"  # every namespace, link and network a test makes starts with it
REFERENCE_PLUGINS = "/usr/lib/cni"


def run(*argv, check=True, **kw):
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kw)


def is_locked(path) -> bool:
    """Whether some process holds an flock on `path` (a missing file: no)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def unique(kind: str) -> str:
    return f"{PREFIX}{kind}{secrets.token_hex(3)}"


def pytest_configure(config):
    """A run stopped with SIGTERM (a CI timeout, `kill`) still tears its
    fixtures down: as on Ctrl-C, pytest then runs every finalizer, so the
    charons, daemons and engines the tests started do not outlive it."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"stopped by signal {signum}")
    signal.signal(signal.SIGTERM, interrupt)


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces, netlink, iptables)")
    for item in items:
        if "netns" in item.keywords or "interop" in item.keywords:
            item.add_marker(skip)


# -- what a test may leave behind: nothing --------------------------------

def _firewall_lines() -> list:
    """Our iptables and ebtables lines, each as "TOOL TABLE LINE" so that a
    leftover can be removed again: rules (-A) and chain declarations (:)."""
    found = []
    for tool, save in (("iptables", "iptables-save"), ("ip6tables", "ip6tables-save"), ("ebtables", "ebtables-save")):
        table = None
        for line in run(save, check=False).stdout.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif table and ("rcni" in line or "RANCHER-CNI" in line or "RCNI-" in line or "RFLAT-" in line):
                found.append(f"{tool} {table} {line}")
    return found


def ipsets() -> list:
    """Our ipsets (the VXLAN guard's peer sets), by name; none where the
    kernel has no ipset."""
    from pyroute2.ipset import IPSet
    try:
        with IPSet() as ipset:
            names = {msg.get_attr("IPSET_ATTR_SETNAME") for msg in ipset.list()}
    except Exception:   # no ip_set module: nothing to leak
        return []
    return sorted(name for name in names if name and name.startswith("rcni"))


def host_state() -> dict:
    links = run("ip", "-o", "link", "show").stdout.splitlines()
    nft = run("nft", "list", "tables", check=False).stdout
    return {
        "namespaces": sorted(run("ip", "netns", "list").stdout.split()),
        "links": sorted(line.split(": ")[1].split("@")[0] for line in links),
        "firewall rules": sorted(_firewall_lines()),
        "nft tables": sorted(line for line in nft.splitlines() if "rancher" in line),
        "ipsets": ipsets(),
        "mounts": mount_points(),
    }


def mount_points() -> list:
    """Mount points of this mount namespace (a test's namespaces, engines and
    containers mount; what they leave mounted holds their files and devices)."""
    with open("/proc/self/mountinfo") as f:
        return sorted({line.split()[4].replace("\\040", " ") for line in f})


def _leaks(before: dict, processes_before: set = frozenset()) -> dict:
    after = host_state()
    leaked = {k: sorted(set(after[k]) - set(before[k])) for k in after if set(after[k]) - set(before[k])}
    processes = started_processes(processes_before)
    return dict(leaked, processes=processes) if processes else leaked


def remove_leaks(leaked: dict) -> None:
    """Take away what a test left, so that its failure stays its own: the
    next test starts on the machine as it was."""
    for entry in leaked.get("processes", []):
        pid = int(entry.split()[0])
        for member in reversed(process_tree(pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)
    for point in sorted(leaked.get("mounts", []), key=len, reverse=True):  # the deepest first
        run("umount", "-l", point, check=False)
    for name in leaked.get("namespaces", []):
        run("ip", "netns", "del", name, check=False)
    for name in leaked.get("links", []):
        run("ip", "link", "del", name, check=False)
    lines = [line.split(" ", 2) for line in leaked.get("firewall rules", [])]
    for tool, table, line in lines:  # rules first: a chain goes only once nothing jumps to it
        if line.startswith("-A "):
            run(tool, *(["-w"] if tool != "ebtables" else []), "-t", table, "-D", *shlex.split(line)[1:], check=False)
    for tool, table, line in lines:
        if line.startswith(":"):
            chain = line[1:].split()[0]
            wait = ["-w"] if tool != "ebtables" else []
            run(tool, *wait, "-t", table, "-F", chain, check=False)
            run(tool, *wait, "-t", table, "-X", chain, check=False)
    for line in leaked.get("nft tables", []):
        run("nft", "delete", *line.split(), check=False)
    if leaked.get("ipsets"):   # after the rules: a set a rule refers to cannot be destroyed
        from pyroute2.ipset import IPSet
        with IPSet() as ipset:
            for name in leaked["ipsets"]:
                with contextlib.suppress(Exception):
                    ipset.destroy(name)


FORWARDING_SYSCTLS = ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding")


def write_sysctls(values: dict) -> None:
    for path, value in values.items():
        with open(path, "w") as f:
            f.write(value)


@pytest.fixture
def leak_guard():
    before = host_state()
    processes_before = set(process_tree(os.getpid()))
    # isGateway turns forwarding on, as Docker does; the machine gets its own value back
    forwarding = {path: open(path).read() for path in FORWARDING_SYSCTLS if os.path.exists(path)}
    yield
    write_sysctls(forwarding)
    deadline = time.monotonic() + 5
    # the kernel tears a deleted namespace (and its veths) down asynchronously,
    # and a process told to stop may take a moment
    while (leaked := _leaks(before, processes_before)) and time.monotonic() < deadline:
        time.sleep(0.1)
    if leaked:
        remove_leaks(leaked)
    assert not leaked, f"the test left state behind (removed now): {leaked}"


@pytest.fixture
def fresh_host_sysctls(leak_guard):
    """Forwarding off, as on a fresh machine where no dockerd ever ran: what
    a backend needs, it must set itself (the leak guard restores the values)."""
    write_sysctls({path: "0" for path in FORWARDING_SYSCTLS if os.path.exists(path)})


@pytest.fixture(scope="session", autouse=True)
def fresh_machine_in_the_sandbox():
    """In the sandbox (make test), every run starts from a fresh machine:
    forwarding off, whatever the machine or an earlier layer had, and a NIC
    with the default route (a veth whose peer stays unaddressed: nothing
    routed there goes anywhere), which a host has and the sandbox lacks; a
    VXLAN network without vtep_dev sends from the default route's device."""
    if os.geteuid() != 0 or not in_private_namespaces():
        yield
        return
    write_sysctls({path: "0" for path in FORWARDING_SYSCTLS if os.path.exists(path)})
    has_default = run("ip", "route", "show", "default").stdout.strip()
    if not has_default:
        run("ip", "link", "add", SANDBOX_NIC, "type", "veth", "peer", "name", f"{SANDBOX_NIC}p")
        run("ip", "addr", "add", "198.18.0.2/24", "dev", SANDBOX_NIC)
        for name in (SANDBOX_NIC, f"{SANDBOX_NIC}p"):
            run("ip", "link", "set", name, "up")
        run("ip", "route", "add", "default", "via", "198.18.0.1", "dev", SANDBOX_NIC)
    yield
    if not has_default:
        run("ip", "link", "del", SANDBOX_NIC, check=False)


SANDBOX_NIC = "rcnitnic0"  # 198.18.0.0/15 is the benchmarking range (RFC 2544): no one's network


BRIDGE_NF_SYSCTL = "/proc/sys/net/bridge/bridge-nf-call-iptables"


@pytest.fixture
def docker_host_firewall():
    """The host's firewall as Docker leaves it: FORWARD policy DROP, and bridged
    frames handed to iptables (br_netfilter). Tests get this whatever the
    machine had; the machine's own values come back afterwards."""
    policy = run("iptables", "-w", "-S", "FORWARD").stdout.splitlines()[0].split()[-1]
    bridge_nf = open(BRIDGE_NF_SYSCTL).read().strip()
    run("iptables", "-w", "-P", "FORWARD", "DROP")
    with open(BRIDGE_NF_SYSCTL, "w") as f:
        f.write("1")
    yield
    run("iptables", "-w", "-P", "FORWARD", policy)
    with open(BRIDGE_NF_SYSCTL, "w") as f:
        f.write(bridge_nf)


# -- namespaces ----------------------------------------------------------

@pytest.fixture
def make_netns(leak_guard):
    made = []

    def make() -> str:
        name = unique("ns")
        run("ip", "netns", "add", name)
        made.append(name)
        return name

    yield make
    for name in made:
        run("ip", "netns", "del", name, check=False)


def ns_exec(netns: str, *argv, check=True):
    return run("ip", "netns", "exec", netns, *argv, check=check)


def ping(netns: str, address: str, count: int = 1) -> bool:
    return ns_exec(netns, "ping", "-c", str(count), "-W", "2", address, check=False).returncode == 0


# -- a CNI environment: plug-in dir, conf dir, state, optional daemon ------

def ipam_rows(data_dir, columns: str) -> list:
    """Rows of the IPAM store in `data_dir`, read straight from SQLite."""
    path = data_dir / "ipam.db"
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT {columns} FROM allocations").fetchall()


class CNIEnv:
    def __init__(self, root, daemon: bool):
        self.root = root
        self.bin = root / "bin"
        self.conf_dir = root / "net.d"
        self.state = root / "state"
        self.cache = root / "cache"
        self.socket = root / "cni.sock"
        self.conf_dir.mkdir()
        install.write_executables(str(self.bin))
        for name in os.listdir(REFERENCE_PLUGINS) if os.path.isdir(REFERENCE_PLUGINS) else []:
            (self.bin / name).symlink_to(os.path.join(REFERENCE_PLUGINS, name))
        self.bridges = []
        self.daemon = None
        if daemon:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "cnm_shim.cli", "cni-server", "--socket", str(self.socket)],
                stdout=subprocess.DEVNULL, stderr=open(root / "daemon.log", "w"))
            deadline = time.monotonic() + 20
            while not self.socket.exists():
                assert self.daemon.poll() is None, (root / "daemon.log").read_text()
                assert time.monotonic() < deadline, "the CNI daemon did not start"
                time.sleep(0.05)

    def close(self):
        if self.daemon:
            self.daemon.send_signal(signal.SIGTERM)
            self.daemon.wait(timeout=10)
        for name in self.bridges:  # plug-ins never delete a bridge; the network's owner does
            run("ip", "link", "del", name, check=False)

    @property
    def env(self) -> dict:
        return dict(os.environ, CNI_PATH=str(self.bin), RANCHER_CNI_SOCKET=str(self.socket))

    def bridge_config(self, name=None, subnet="10.123.0.0/24", **extra) -> dict:
        bridge = unique("br")
        self.bridges.append(bridge)
        config = {"cniVersion": "1.1.0", "name": name or unique("net"), "type": "rancher-bridge",
                  "bridge": bridge, "isGateway": True,
                  "ipam": {"type": "rancher-ipam", "ranges": [[{"subnet": subnet}]], "dataDir": str(self.state)}}
        config.update(extra)
        return config

    def exec(self, command, config, netns=None, container_id="c1", ifname="eth0", plugin=None,
             stdin=None, env=None, host_netns=None):
        """Run a plug-in executable like a runtime: (exit code, parsed stdout or None)."""
        full_env = dict(self.env, CNI_COMMAND=command, CNI_CONTAINERID=container_id, CNI_IFNAME=ifname)
        if netns:
            full_env["CNI_NETNS"] = netns if "/" in netns else f"/var/run/netns/{netns}"
        full_env.update(env or {})
        full_env = {k: v for k, v in full_env.items() if v is not None}
        raw = stdin if stdin is not None else json.dumps(config).encode()
        argv = [str(self.bin / (plugin or config["type"]))]
        if host_netns:  # run the plug-in as if that namespace were the host
            argv = ["ip", "netns", "exec", host_netns, *argv]
        done = subprocess.run(argv, input=raw, env=full_env, capture_output=True, timeout=120)
        out = done.stdout.decode().strip()
        return done.returncode, (json.loads(out) if out else None)

    def allocations(self):
        return ipam_rows(self.state, "network, container_id, ifname, ip")


@pytest.fixture(params=["daemon", "direct"])
def cni_env(request, tmp_path, leak_guard):
    env = CNIEnv(tmp_path, daemon=request.param == "daemon")
    yield env
    env.close()
    assert env.allocations() == [], "IPAM entries left behind"


@pytest.fixture
def direct_env(tmp_path, leak_guard):
    """The executables run in the namespace they are started in (no daemon,
    which would run them in its own)."""
    env = CNIEnv(tmp_path, daemon=False)
    yield env
    env.close()
    assert env.allocations() == [], "IPAM entries left behind"


@pytest.fixture
def cni_daemon_env(tmp_path, leak_guard):
    env = CNIEnv(tmp_path, daemon=True)
    yield env
    env.close()
    assert env.allocations() == [], "IPAM entries left behind"


# -- the VXLAN UDP guard, read from the kernel ----------------------------

_GUARD_VIEW = r'''
import json, re, subprocess, sys
from pyroute2.ipset import IPSet
vni = sys.argv[1]
lines = [l for l in subprocess.run(["iptables", "-w", "-S", "INPUT"], capture_output=True, text=True,
                                   check=True).stdout.splitlines() if "-vtep" in l and f"=0x{int(vni):x}\"" in l]
peers, shape = set(), []
for line in lines:
    source = re.search(r" -s (\S+?)/32 ", line + " ")
    match_set = re.search(r" --match-set (\S+) src ", line + " ")
    target = line.rsplit(" -j ", 1)[-1]
    shape.append(target)
    if target == "ACCEPT" and source:
        peers.add(source.group(1))
    elif target == "ACCEPT" and match_set:
        with IPSet() as ipset:
            for msg in ipset.list(match_set.group(1)):
                adt = msg.get_attr("IPSET_ATTR_ADT")
                for data in adt.get_attrs("IPSET_ATTR_DATA") if adt else ():
                    peers.add(data.get_attr("IPSET_ATTR_IP_FROM").get_attr("IPSET_ATTR_IPADDR_IPV4"))
print(json.dumps({"peers": sorted(peers), "shape": shape}))
'''


def vxlan_guard(netns: str, vni: int) -> tuple:
    """(the addresses host `netns` accepts VNI `vni`'s VXLAN from, whether
    the rules end in the DROP of everyone else): per-peer ACCEPT rules or
    the elements of the set an ACCEPT rule matches, read with iptables and
    netlink, not with the code under test."""
    found = json.loads(ns_exec(netns, sys.executable, "-c", _GUARD_VIEW, str(vni)).stdout)
    return set(found["peers"]), bool(found["shape"]) and found["shape"][-1] == "DROP"


@pytest.fixture(params=["ipset", "rules"])
def guard_path(request):
    """Each VXLAN guard path in turn: the ipset where the kernel has it, and
    one rule per peer with the feature cached as missing (as on a kernel
    without ip_set) for every process of the test."""
    from cni_backend.net import features
    features.forget()
    if request.param == "ipset":
        if not features.has("ipset"):
            pytest.skip("this kernel has no ipset")
    else:
        features._memo["ipset"] = False
        features._write_cache(dict(features._memo))
    yield request.param
    features.forget()
