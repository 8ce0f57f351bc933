"""rancher-bridge (macspoofchk) + rancher-portmap chained in one cniVersion
1.1.0 list, the shape `cni.export` writes, driven by `cnm-shim cni`: each
plug-in's GC collects only its own kinds of rules (issue 14), and an
attachment the previous version tagged without a kind is deleted, checked,
repaired and collected."""

import json
import re
import subprocess
import sys

import pytest

from cni_backend import repair
from cni_backend.net import firewall, tags
from tests.conftest import run
from tests.rigs import wait_for_http

pytestmark = pytest.mark.netns

PORTS = {"c1": 18281, "c2": 18282, "c3": 18283}


class Chained:
    """A 1.1.0 list rancher-bridge (macspoofchk) + rancher-portmap and the
    runtime-side caller `cnm-shim cni` for it."""

    def __init__(self, env, subnet: str):
        self.env = env
        config = env.bridge_config(subnet=subnet, ipMasq=True, macspoofchk=True)
        self.name = config["name"]
        plugin = {k: v for k, v in config.items() if k not in ("cniVersion", "name")}
        self.conf = {"cniVersion": "1.1.0", "name": self.name,
                     "plugins": [plugin, {"type": "rancher-portmap", "capabilities": {"portMappings": True},
                                          "snat": True}]}
        (env.conf_dir / "10-kinds.conflist").write_text(json.dumps(self.conf))
        self.results = {}

    def cli(self, *argv) -> str:
        base = [sys.executable, "-m", "cnm_shim.cli", "cni", *argv[:3], "--conf-dir", str(self.env.conf_dir),
                "--cache-dir", str(self.env.cache), "--cni-path", str(self.env.bin), *argv[3:]]
        done = subprocess.run(base, capture_output=True, text=True, env=self.env.env)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def add(self, container_id: str, netns: str) -> dict:
        ports = json.dumps({"portMappings": [{"hostPort": PORTS[container_id], "containerPort": 80,
                                              "protocol": "tcp"}]})
        self.results[container_id] = json.loads(
            self.cli("add", self.name, netns, "--container-id", container_id, "--cap-args", ports))
        return self.results[container_id]

    def delete(self, container_id: str, netns: str) -> None:
        self.cli("del", self.name, netns, "--container-id", container_id)

    def check(self, container_id: str, netns: str) -> None:
        self.cli("check", self.name, netns, "--container-id", container_id)

    def gc(self, *valid: str) -> None:
        self.cli("gc", self.name, "", *[a for c in valid for a in ("--valid", f"{c}/eth0")])

    def tags(self, container_id: str) -> dict:
        return {kind: tags.of(kind, self.name, container_id, "eth0") for kind in (tags.BRIDGE, tags.PORTMAP,
                                                                                   tags.SPOOF)}


def our_rules() -> set:
    """Every line of iptables' filter and nat tables that is ours: attachment
    rules, chains' jumps, isolation rules."""
    return {line for table in ("filter", "nat") for line in run("iptables-save", "-t", table).stdout.splitlines()
            if line.startswith("-A ") and ("RANCHER-CNI" in line or "rcni" in line)}


def spoof_chains() -> dict:
    """macspoofchk: chain name -> host veth jumping to it (nftables' own listing)."""
    listing = run("nft", "list", "table", "bridge", firewall.NFT_TABLE, check=False).stdout
    chains = set(re.findall(r"^\s*chain (rcni-\S+) {", listing, re.M))
    ports = dict((chain, port) for port, chain in re.findall(r'"([^"]+)"\s*:\s*jump\s+([\w.-]+)', listing))
    return {chain: ports.get(chain) for chain in chains}


def carrying(rules: set, *names: str) -> set:
    return {r for r in rules if any(re.search(rf"--comment {re.escape(n)}(\s|$)", r) for n in names)}


def serve(netns: str, tmp_path, text: str) -> subprocess.Popen:
    www = tmp_path / netns
    www.mkdir()
    (www / "index.html").write_text(text)
    return subprocess.Popen(["ip", "netns", "exec", netns, "busybox", "httpd", "-f", "-p", "80", "-h", str(www)])


def test_gc_of_a_chained_portmap_keeps_every_rule_of_valid_attachments(cni_daemon_env, make_netns, tmp_path):
    net = Chained(cni_daemon_env, "10.129.0.0/24")
    ns = {"c1": make_netns(), "c2": make_netns()}
    for container_id, netns in ns.items():
        net.add(container_id, netns)
    server = serve(ns["c1"], tmp_path, "hello-from-c1\n")
    try:
        assert wait_for_http(f"http://127.0.0.1:{PORTS['c1']}/") == "hello-from-c1\n"
        rules, chains = our_rules(), spoof_chains()
        for container_id in ns:
            mine = net.tags(container_id)
            assert carrying(rules, str(mine[tags.BRIDGE])) and carrying(rules, str(mine[tags.PORTMAP]))
            assert str(mine[tags.SPOOF]) in chains
        assert any("DNAT" in r for r in carrying(rules, str(net.tags("c2")[tags.PORTMAP])))

        net.gc("c1", "c2")
        assert our_rules() == rules and spoof_chains() == chains
        assert wait_for_http(f"http://127.0.0.1:{PORTS['c1']}/") == "hello-from-c1\n"

        net.gc("c1")  # exactly c2's rules of every kind go
        gone = net.tags("c2")
        assert our_rules() == rules - carrying(rules, *map(str, gone.values()))
        assert carrying(rules, str(gone[tags.BRIDGE])) and carrying(rules, str(gone[tags.PORTMAP]))
        assert spoof_chains() == {c: p for c, p in chains.items() if c != str(gone[tags.SPOOF])}
        assert wait_for_http(f"http://127.0.0.1:{PORTS['c1']}/") == "hello-from-c1\n"
    finally:
        server.kill()
        server.wait()
    net.delete("c2", ns["c2"])  # after its GC: nothing left to do, and fine
    net.delete("c1", ns["c1"])
    assert our_rules() == set() and spoof_chains() == {}


# -- an attachment made by the previous version ----------------------------

def downgrade(net: Chained, container_id: str) -> None:
    """Tag the attachment's rules the way the previous version did: the same
    rules, the bridge's and its macspoofchk chain `rcni-<N>-<A>`, portmap's
    `rcni-<N>-<A>p`."""
    mine = net.tags(container_id)
    for table in ("filter", "nat"):
        lines = []
        for rule in run("iptables-save", "-t", table).stdout.splitlines():
            for kind in (tags.BRIDGE, tags.PORTMAP):
                new = f"--comment {mine[kind]}"
                if rule.startswith("-A ") and (rule.endswith(new) or f"{new} " in rule):
                    lines += ["-D" + rule[2:], rule.replace(new, f"--comment {mine[kind].legacy}")]
        if lines:
            run("iptables-restore", "-w", "--noflush", input="\n".join([f"*{table}", *lines, "COMMIT", ""]))
    result = net.results[container_id]
    host_veth = next(i["name"] for i in result["interfaces"] if i["name"].startswith("veth"))
    mac = next(i["mac"] for i in result["interfaces"] if i.get("sandbox"))
    firewall.remove_mac_filter(mine[tags.SPOOF])
    firewall.add_mac_filter(mine[tags.SPOOF].legacy, host_veth, mac)  # the old code, with the old tag


def test_an_attachment_tagged_by_the_previous_version_is_checked_repaired_collected_and_deleted(
        cni_daemon_env, make_netns, tmp_path):
    net = Chained(cni_daemon_env, "10.130.0.0/24")
    ns = {c: make_netns() for c in ("c1", "c2", "c3")}
    for container_id, netns in ns.items():
        net.add(container_id, netns)
    current = our_rules()
    for container_id in ns:
        downgrade(net, container_id)
    legacy = our_rules()
    assert not any(re.search(r"rcni-\w+-\w+-(bridge|portmap|spoof)", r) for r in legacy), legacy
    assert len(legacy) == len(current)
    assert set(spoof_chains()) == {net.tags(c)[tags.SPOOF].legacy for c in ns}

    server = serve(ns["c1"], tmp_path, "hello-from-c1\n")
    try:
        assert wait_for_http(f"http://127.0.0.1:{PORTS['c1']}/") == "hello-from-c1\n"
        net.check("c1", ns["c1"])  # legacy-tagged rules count as present

        net.gc("c1", "c2", "c3")
        assert our_rules() == legacy

        net.gc("c1", "c2")  # c3's legacy rules of every kind go, the others' stay
        old3 = [t.legacy for t in net.tags("c3").values()]
        assert carrying(legacy, *old3) and our_rules() == legacy - carrying(legacy, *old3)
        assert set(spoof_chains()) == {net.tags(c)[tags.SPOOF].legacy for c in ("c1", "c2")}

        # doctor --repair's path: c1's bridge rules replaced by new-tagged ones, none doubled
        mine = net.tags("c1")
        repair.restore_attachment(net.conf, "c1", f"/var/run/netns/{ns['c1']}", "eth0", [], {}, net.results["c1"])
        after = our_rules()
        assert not carrying(after, mine[tags.BRIDGE].legacy)
        assert carrying(after, str(mine[tags.BRIDGE])) == carrying(current, str(mine[tags.BRIDGE]))
        assert after - carrying(after, str(mine[tags.BRIDGE])) == \
            our_rules_without(legacy - carrying(legacy, *old3), mine[tags.BRIDGE].legacy)
        net.check("c1", ns["c1"])
        assert wait_for_http(f"http://127.0.0.1:{PORTS['c1']}/") == "hello-from-c1\n"
    finally:
        server.kill()
        server.wait()

    net.delete("c2", ns["c2"])  # all legacy: every kind goes
    old2 = [t.legacy for t in net.tags("c2").values()]
    assert not carrying(our_rules(), *old2) and set(spoof_chains()) == {net.tags("c1")[tags.SPOOF].legacy}
    net.delete("c1", ns["c1"])  # new bridge rules, legacy port rules and macspoofchk chain
    net.delete("c3", ns["c3"])
    assert our_rules() == set() and spoof_chains() == {}


def our_rules_without(rules: set, tag: str) -> set:
    return rules - carrying(rules, tag)
