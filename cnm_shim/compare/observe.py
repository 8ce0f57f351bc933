"""What an attachment looks like from outside, read back from the kernel with
`ip -j`, `iptables-save` and `nft` (never from our own results), normalised so
that two containers of the same network compare equal: the container's own
addresses, MACs, interface names and tags become placeholders.
And the data plane between two containers: ping and iperf3."""

import ipaddress
import json
import re
import shutil
import subprocess
import time

from .models import run

HEX_ID = re.compile(r"\b[0-9a-f]{8,}\b")
# the reference plug-ins' rule comments carry the container ID, which is a
# runtime's own name (ctr's, ours) rather than hex outside Docker
COMMENT_ID = re.compile(r'(id: \\")[^\\"]+(\\")')
BRPORT_KEYS = ("hairpin", "learning", "flood", "mcast_flood", "proxy_arp", "guard", "isolated", "neigh_suppress",
               "bpdu_guard", "root_block", "fastleave", "mcast_to_unicast")


def ip_json(netns: str | None, *argv):
    prefix = ["nsenter", f"--net={netns}"] if netns else []
    done = subprocess.run([*prefix, "ip", "-j", *argv], capture_output=True, text=True, check=True)
    return json.loads(done.stdout or "[]")


class Normaliser:
    """Replaces one container's identity (addresses, MAC, host veth) with placeholders."""

    def __init__(self):
        self.names = {}

    def learn(self, value: str, placeholder: str) -> None:
        if value:
            self.names[value] = placeholder

    def __call__(self, text):
        if isinstance(text, list):
            return [self(t) for t in text]
        if not isinstance(text, str):
            return text
        for value in sorted(self.names, key=len, reverse=True):
            text = text.replace(value, self.names[value])
        return HEX_ID.sub("<id>", COMMENT_ID.sub(r"\1<id>\2", text))


def container_topology(netns: str) -> dict:
    """Flat dict: what the container sees and what its bridge port looks like on the host."""
    norm = Normaliser()
    links = ip_json(netns, "-d", "link", "show")
    eth0 = next(link for link in links if link["ifname"] == "eth0")
    norm.learn(eth0.get("address", ""), "<mac>")
    addresses = ip_json(netns, "addr", "show")
    for link in addresses:
        for a in link.get("addr_info", []):
            placeholder = "<ll6>" if a["local"].startswith("fe80") else f"<ip{'6' if a['family'] == 'inet6' else ''}>"
            if link["ifname"] != "lo":
                norm.learn(a["local"], placeholder)
    out = {}
    for link in links:
        name = link["ifname"]
        out[f"ctr.{name}.kind"] = (link.get("linkinfo") or {}).get("info_kind", "-")
        out[f"ctr.{name}.mtu"] = link.get("mtu")
        out[f"ctr.{name}.mac"] = norm(link.get("address"))
        out[f"ctr.{name}.state"] = link.get("operstate")
        out[f"ctr.{name}.flags"] = ",".join(sorted(link.get("flags", [])))
        out[f"ctr.{name}.txqlen"] = link.get("txqlen")
    for link in addresses:
        out[f"ctr.{link['ifname']}.addresses"] = sorted(
            norm(f"{a['local']}/{a['prefixlen']}") for a in link.get("addr_info", []))
    for family in ("-4", "-6"):
        routes = ip_json(netns, family, "route", "show", "table", "main")
        out[f"ctr.routes{family}"] = sorted(
            norm(" ".join(f"{k}={r[k]}" for k in ("dst", "gateway", "dev", "protocol", "scope", "prefsrc", "metric")
                          if k in r)) for r in routes)
    peer = eth0.get("link_index")
    host_links = ip_json(None, "-d", "link", "show")
    port = next((link for link in host_links if link["ifindex"] == peer), None)
    if port is not None:
        norm.learn(port["ifname"], "<veth>")
        norm.learn(port.get("address", ""), "<host-mac>")
        master = port.get("master")  # iproute2's JSON names the master link
        out["host.port.master"] = master or "-"
        out["host.port.mtu"] = port.get("mtu")
        out["host.port.state"] = port.get("operstate")
        slave = (port.get("linkinfo") or {}).get("info_slave_data") or {}
        for key in BRPORT_KEYS:
            if key in slave:
                out[f"host.port.{key}"] = slave[key]
        bridge = next((link for link in host_links if link["ifname"] == master), None)
        if bridge:
            out["host.bridge.mtu"] = bridge.get("mtu")
            bridge_addresses = ip_json(None, "addr", "show", "dev", master)
            out["host.bridge.addresses"] = sorted(
                f"{a['local']}/{a['prefixlen']}" for link in bridge_addresses for a in link.get("addr_info", [])
                if not a["local"].startswith("fe80"))
    return {key: value for key, value in out.items()}, norm


def firewall_snapshot() -> list:
    """Every rule line: iptables, ip6tables, ebtables, our nftables bridge table."""
    lines = []
    for tool in ("iptables-save", "ip6tables-save", "ebtables-save"):
        if shutil.which(tool):
            table = ""
            for line in run(tool, check=False).stdout.splitlines():
                if line.startswith("*"):
                    table = line[1:]
                elif line.startswith("-A"):
                    lines.append(f"{tool.split('-')[0]} {table} {line}")
    nft = run("nft", "list", "table", "bridge", "rancher_cni", check=False)
    if nft.returncode == 0:
        lines += [f"nft bridge {line.strip()}" for line in nft.stdout.splitlines()
                  if line.strip() and not line.strip().startswith(("table", "chain", "}", "type", "map", "elements"))]
    return lines


def firewall_added(before: list, after: list, norm: Normaliser) -> list:
    counted = {}
    for line in before:
        counted[line] = counted.get(line, 0) + 1
    added = []
    for line in after:
        if counted.get(line):
            counted[line] -= 1
        else:
            added.append(norm(line))
    return sorted(added)


def differences(topologies: dict) -> list:
    """[(key, {model: value})] for every key on which the models disagree."""
    keys = sorted({k for t in topologies.values() for k in t})
    diffs = []
    for key in keys:
        values = {model: t.get(key, "(absent)") for model, t in topologies.items()}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            diffs.append((key, values))
    return diffs


# -- the data plane -------------------------------------------------------------

def ping(source: str, address: str, count: int = 10) -> dict:
    done = run("nsenter", f"--net={source}", "ping", "-n", "-q", "-c", str(count), "-i", "0.05", "-W", "2",
               address, check=False)
    stats = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)", done.stdout)
    loss = re.search(r"([\d.]+)% packet loss", done.stdout)
    return {"rtt_avg_ms": float(stats.group(2)) if stats else None,
            "rtt_max_ms": float(stats.group(3)) if stats else None,
            "loss_pct": float(loss.group(1)) if loss else 100.0}


def iperf3(server_ns: str, server_ip: str, client_ns: str, seconds: int) -> dict:
    """TCP throughput client -> server, the first second omitted; bounded in time."""
    server = subprocess.Popen(["nsenter", f"--net={server_ns}", "iperf3", "-s", "-1", "-B", server_ip],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            done = run("nsenter", f"--net={client_ns}", "iperf3", "-c", server_ip, "-t", str(seconds), "-O", "1",
                       "-J", check=False, timeout=seconds + 30)
            try:
                answer = json.loads(done.stdout)
            except ValueError:
                answer = {"error": done.stdout[-300:] or done.stderr[-300:]}
            end = answer.get("end") or {}
            if "sum_received" in end:
                return {"gbit_s": round(end["sum_received"]["bits_per_second"] / 1e9, 2),
                        "retransmits": end.get("sum_sent", {}).get("retransmits")}
            if "unable to connect" not in str(answer.get("error", "")):
                return {"gbit_s": None, "error": str(answer.get("error", "no result"))[-300:]}
            time.sleep(0.1)  # the server is not listening yet
        return {"gbit_s": None, "error": str(answer.get("error"))[-300:]}
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()


def is_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False
