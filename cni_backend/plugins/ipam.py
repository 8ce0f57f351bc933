"""rancher-ipam: host-local's config, backed by the shared allocation store."""

import ipaddress

from ..errors import CHECK_FAILED, CNIError, INVALID_CONFIG, NOT_AVAILABLE
from ..ipam import allocator, config as ipam_config
from ..ipam.store import DOCKER_OWNER, open_store
from ..version import CURRENT


def load_conf(req):
    return ipam_config.load(req.config.get("ipam"), req.runtime_config)


def _store(conf):
    return open_store(conf.data_dir, conf.etcd_endpoints, conf.etcd_prefix, conf.etcd_tls)


def _owner(req) -> tuple:
    return (req.network, req.container_id, req.ifname)


def _prefix_of(conf, ip: str) -> tuple:
    address = ipaddress.ip_address(ip)
    for range_set in conf.range_sets:
        for rng in range_set:
            if rng.in_subnet(address):
                return rng.subnet.prefixlen, rng.gateway
    raise CNIError(INVALID_CONFIG, f"address {ip} is outside the configured ranges")


# CNI_ARGS key set by the Docker side when its IpamDriver already reserved the
# requested addresses: ADD then only checks and reports them, DEL frees nothing.
RESERVED_ARG = "RANCHER_IPAM_RESERVED"


def _reserved_by_docker(req) -> bool:
    return req.args.get(RESERVED_ARG, "").lower() in ("1", "true")


def _docker_reservations(txn, conf, wanted) -> list:
    if not wanted:
        raise CNIError(INVALID_CONFIG, f"{RESERVED_ARG} needs the requested addresses (runtimeConfig.ips)")
    found = []
    for ip in wanted:
        _prefix_of(conf, str(ip))
        holder = next((txn.holder(r.pool, str(ip)) for s in conf.range_sets for r in s
                       if r.in_subnet(ip)), None)
        if holder is None or holder.network != DOCKER_OWNER:
            raise CNIError(CHECK_FAILED, f"address {ip} is not reserved by the Docker IPAM driver")
        found.append(holder)
    return found


def add(req) -> dict:
    conf = load_conf(req)
    wanted = allocator.requested_ips(req.args, req.args_cni, req.runtime_config)
    if _reserved_by_docker(req):
        allocations = _store(conf).run(lambda txn: _docker_reservations(txn, conf, wanted))
    else:  # one container's address: a power loss that rolls it back takes the container too
        allocations = _store(conf).run(lambda txn: allocator.allocate(txn, conf, _owner(req), wanted), synced=False)
    ips = []
    for allocation in allocations:
        prefix, gateway = _prefix_of(conf, allocation.ip)
        entry = {"address": f"{allocation.ip}/{prefix}"}
        if gateway is not None:
            entry["gateway"] = str(gateway)
        ips.append(entry)
    return {"cniVersion": CURRENT, "ips": ips, "routes": list(conf.routes), "dns": dict(conf.dns)}


def delete(req) -> None:
    conf = load_conf(req)
    if _reserved_by_docker(req):
        return  # Docker's ReleaseAddress frees it
    _store(conf).run(lambda txn: allocator.release(txn, _owner(req)))


def check(req) -> None:
    conf = load_conf(req)
    if _reserved_by_docker(req):
        wanted = allocator.requested_ips(req.args, req.args_cni, req.runtime_config)
        held = {a.ip for a in _store(conf).run(lambda txn: _docker_reservations(txn, conf, wanted))}
    else:
        held = {a.ip for a in _store(conf).run(lambda txn: txn.held_by(*_owner(req)))}
    expected = {ip["address"].split("/")[0] for ip in (req.prev_result or {}).get("ips", [])}
    if not held:
        raise CNIError(CHECK_FAILED, f"no address is allocated to {req.container_id}/{req.ifname}")
    if expected and not expected <= held:
        raise CNIError(CHECK_FAILED, "allocated addresses differ from the previous result",
                       f"allocated {sorted(held)}, previous result {sorted(expected)}")


def valid_attachments(req) -> set:
    raw = req.config.get("cni.dev/valid-attachments")
    if not isinstance(raw, list):
        raise CNIError(INVALID_CONFIG, "GC needs cni.dev/valid-attachments, a list")
    try:
        return {(a["containerID"], a["ifname"]) for a in raw}
    except (TypeError, KeyError):
        raise CNIError(INVALID_CONFIG, "each valid attachment needs containerID and ifname") from None


def gc(req) -> None:
    conf = load_conf(req)
    valid = valid_attachments(req)
    _store(conf).run(lambda txn: allocator.collect_garbage(txn, req.network, valid))


def status(req) -> None:
    conf = load_conf(req)
    try:
        _store(conf).run(lambda txn: txn.all(req.network))
    except CNIError as exc:
        raise CNIError(NOT_AVAILABLE, "the IPAM store cannot be used", str(exc)) from None
