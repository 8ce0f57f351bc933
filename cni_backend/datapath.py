"""Which data path a network's traffic really takes, read from the kernel's
counters rather than from the configuration (`cnm-shim doctor` and `status`
show it).

  flat    fast path: the netdev table's rule counters (flat_fastpath.packets),
          frames moved device to device before the bridge; bridge path: the
          counters at the head of the containers' macspoofchk chains, every
          frame the bridge got from them (firewall.bridge_path_frames);
          metadata link: both veth ends up and enslaved, and the frames its
          ebtables chains let across
  bridge  the bridge path, with the frames its containers sent (the rx
          counters of the bridge's veth ports: no fast path can take them)
  vxlan   the same, plus the VTEP: present, up, enslaved, its flood (FDB)
          peers and its packet counters
  ipsec   the same, plus which IPsec data path runs (kernel XFRM or charon's
          user-space kernel-libipsec, probed), charon's pid, and each peer's
          IKE_SA and CHILD_SA states as charon reports them; a peer without
          an SA whose last authentication failed gets the reason, in words
          made from charon's log (never a line of it, never a key)

A configured fast path that no packet took is said so: the configuration
alone proves nothing (issue 13: a fast path that made no difference).
"""

from . import flatnet, ipsec_tunnels, ipsecnet, vxlannet
from .errors import CNIError
from .net import features, firewall, flat_fastpath, netlink, sysctls

IFF_UP, IFF_LOWER_UP = 0x1, 0x10000
BR_NETFILTER = "net/bridge/bridge-nf-call-iptables"


def br_netfilter_on() -> bool:
    """Bridged IPv4 walks iptables (Docker switches it on; absent = module not loaded)."""
    return sysctls.read(BR_NETFILTER) == "1"


def _bridge_path(frames: int) -> dict:
    return {"frames_from_containers": frames, "br_netfilter": br_netfilter_on()}


def _port_frames(host, bridge_msg) -> int:
    """Frames the bridge's veth ports received from their containers."""
    if bridge_msg is None:
        return 0
    return sum((port.get("stats64") or {}).get("rx_packets", 0) for port in host.get_links()
               if port.get("master") == bridge_msg["index"] and netlink.kind(port) == "veth")


def bridge(bridge_name: str) -> dict:
    with netlink.socket_in() as host:
        found = netlink.link(host, bridge_name)
        path = _bridge_path(_port_frames(host, found))
    state = "present" if found is not None else "missing"
    return {"path": "bridge", "bridge": {"name": bridge_name, "state": state}, "bridge_path": path,
            "summary": f"bridge path ({path['frames_from_containers']} frames from containers); bridge {state}"}


def flat(cni_name: str, net: flatnet.FlatNetwork) -> dict:
    # Not the veths' rx counters: those count the fast path's frames too.
    path = _bridge_path(firewall.bridge_path_frames(cni_name) or 0)
    fast = _fast_path(net)
    link = _metadata_link(net)
    if fast["state"] == "carrying traffic":
        summary = f"fast path: carrying traffic ({fast['packets']} packets)"
    elif fast["state"] == "off":
        summary = "bridge path (fast path off)"
    else:
        summary = f"fast path: {fast['state']}; traffic takes the bridge path"
    summary += f"; bridge path: {path['frames_from_containers']} frames from containers"
    summary += f"; metadata link: {link['state']}"
    return {"path": "fast" if fast["state"] == "carrying traffic" else "bridge", "fast_path": fast,
            "bridge_path": path, "metadata_link": link, "summary": summary}


def _fast_path(net: flatnet.FlatNetwork) -> dict:
    if not net.fast_path:
        return {"configured": False, "state": "off", "packets": 0}
    if not flatnet.fast_path_usable(net):
        return {"configured": True, "state": "unavailable (this kernel lacks nft netdev fwd)", "packets": 0}
    counted = flat_fastpath.packets(net.suffix)
    if counted is None:
        return {"configured": True, "state": "configured but its nft table is missing", "packets": 0}
    total = counted["from_uplink"] + counted["to_uplink"]
    state = "carrying traffic" if total else "configured but no packets took it"
    return {"configured": True, "state": state, "packets": total, **counted}


def _up(msg) -> bool:
    return msg is not None and (msg["flags"] & (IFF_UP | IFF_LOWER_UP)) == (IFF_UP | IFF_LOWER_UP)


def _metadata_link(net: flatnet.FlatNetwork) -> dict:
    if net.metadata is None:
        return {"configured": False, "state": "none configured"}
    cni_end, doc_end = net.link_names
    with netlink.socket_in() as host:
        ends = [netlink.link(host, name) for name in (cni_end, doc_end)]
        masters = [netlink.link(host, name) for name in (net.bridge, net.metadata.bridge)]
    problems = [f"{name} missing" for name, msg in zip((cni_end, doc_end), ends) if msg is None]
    problems += [f"{name} not up" for name, msg in zip((cni_end, doc_end), ends) if msg is not None and not _up(msg)]
    problems += [f"{end} not on {master_name}" for end, msg, master, master_name
                 in zip((cni_end, doc_end), ends, masters, (net.bridge, net.metadata.bridge))
                 if msg is not None and (master is None or msg.get("master") != master["index"])]
    frames = flatnet.metadata_link_frames(net)
    if frames is None:
        problems.append("its ebtables chains are missing")
    up = not problems
    state = f"up ({frames or 0} frames crossed)" if up else "down: " + ", ".join(problems)
    return {"configured": True, "up": up, "frames": frames or 0, "state": state}


def vxlan(net: vxlannet.VxlanNetwork) -> dict:
    with netlink.socket_in() as host:
        vtep, br = netlink.link(host, net.vtep, full=True), netlink.link(host, net.bridge)  # the VTEP's counters
        path = _bridge_path(_port_frames(host, br))
        peers = sorted(netlink.flood_peers(host, vtep["index"])) if vtep is not None else []
        learned = len(netlink.fdb_entries(host, vtep["index"])) if vtep is not None else 0
    if vtep is None:
        state = "missing"
    else:
        state = "up" if _up(vtep) else "down"
        if br is None or vtep.get("master") != br["index"]:
            state += f", not on {net.bridge}"
    stats = (vtep.get("stats64") if vtep is not None else None) or {}
    counted = {key: stats.get(key, 0) for key in ("rx_packets", "tx_packets")}
    summary = (f"bridge path ({path['frames_from_containers']} frames from containers); VTEP {net.vtep} {state}, "
               f"flood peers {', '.join(peers) or 'none'}, {counted['tx_packets']} packets out, "
               f"{counted['rx_packets']} in")
    return {"path": "bridge", "bridge_path": path,
            "vtep": {"name": net.vtep, "state": state, "flood_peers": peers, "fdb_entries": learned, **counted},
            "summary": summary}


IPSEC_DATAPATHS = {"xfrm": "kernel XFRM, kernel-netlink",
                   "libipsec": "user-space ESP: charon's kernel-libipsec, ipsec0"}


def ipsec(net: ipsecnet.IpsecNetwork) -> dict:
    """The bridge path, which IPsec data path carries the tunnels (probed),
    charon's pid, and each peer's IKE_SA and CHILD_SA states (with the reason
    when its authentication failed)."""
    found = bridge(net.bridge)
    try:
        kind = ipsec_tunnels.probe_datapath()
    except CNIError as exc:
        kind, tunnels = None, f"none ({exc.msg})"
    else:
        tunnels = f"{kind} ({IPSEC_DATAPATHS[kind]})"
    pid = ipsecnet.charon_pid(net.state_dir)
    charon = ipsec_tunnels.Charon(ipsecnet.charon_dir(net.state_dir), datapath=kind or "libipsec")
    sas, charon_problem = {}, None
    if pid is not None:
        try:
            sas = charon.sas()
        except Exception as exc:  # noqa: BLE001 - status never fails on a charon that does not answer
            charon_problem = f"its VICI socket does not answer ({type(exc).__name__})"
    failures = charon.auth_failures()
    peers, described = {}, []
    for peer in net.peers:
        connection = ipsecnet.peer_connection(peer)
        sa = sas.get(connection)
        entry = {"ike_sa": sa["ike"] if sa else None,
                 "child_sa": sa["children"].get(net.connection(peer)) if sa else None}
        text = f"IKE_SA {entry['ike_sa']}, CHILD_SA {entry['child_sa'] or 'none'}" if sa else "no IKE_SA"
        if (sa is None or sa["ike"] != "ESTABLISHED") and connection in failures:
            entry["auth_failure"] = failures[connection]
            text += f"; {entry['auth_failure']}"
        peers[peer] = entry
        described.append(f"peer {peer}: {text}")
    state = (f"charon pid {pid}" if pid is not None else "charon not running") + \
        (f" ({charon_problem})" if charon_problem else "")
    found["ipsec"] = {"datapath": kind or tunnels, "charon_pid": pid, "peers": peers}
    found["summary"] += f"; IPsec data path {tunnels}; {state}; " + ("; ".join(described) or "no peers")
    return found


HOST_SYSCTLS = (*sysctls.FORWARDING.values(), BR_NETFILTER)


def host() -> dict:
    """The host settings and kernel features the backends rely on, as the
    kernel has them now (docs/host-requirements.md says who needs which)."""
    return {"sysctls": {path.replace("/", "."): sysctls.read(path) for path in HOST_SYSCTLS},
            "features": features.report()}


def host_summary(found: dict) -> str:
    settings = ", ".join(f"{k}={'-' if v is None else v}" for k, v in found["sysctls"].items())
    have = ", ".join(f"{name} {'yes' if ok else 'MISSING'}" for name, ok in found["features"].items())
    return f"{settings}; kernel: {have}"

