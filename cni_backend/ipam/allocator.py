"""Choosing addresses: one per range set, sticky per container and interface.

Pure logic over a store `Transaction`; the caller owns the transaction, so a
whole ADD's allocations commit together or not at all.
"""

import ipaddress

from .. import addresses
from ..errors import ADDRESS_IN_USE, CNIError, INVALID_CONFIG, POOL_EXHAUSTED
from .store import Allocation


def requested_ips(cni_args: dict, args_cni: dict, runtime_config: dict) -> list:
    """Addresses asked for by CNI_ARGS IP=, args.cni.ips and runtimeConfig.ips."""
    raw = [ip for ip in cni_args.get("IP", "").split(",") if ip]
    for source, name in ((args_cni.get("ips"), "args.cni.ips"),
                         (runtime_config.get("ips"), "runtimeConfig.ips")):
        if source is None:
            continue
        if not isinstance(source, list):
            raise CNIError(INVALID_CONFIG, f"{name} must be a list of addresses")
        raw.extend(str(ip) for ip in source)
    wanted = []
    for text in raw:
        try:
            ip = addresses.address(text.strip().split("/")[0], "requested address")
        except ValueError as exc:
            raise CNIError(INVALID_CONFIG, str(exc)) from None
        if ip not in wanted:
            wanted.append(ip)
    return wanted


def _range_of(range_set, ip):
    return next((r for r in range_set if r.in_subnet(ip)), None)


def _reserve_requested(txn, conf, range_set, ip, owner):
    rng = _range_of(range_set, ip)
    if rng.is_reserved_by_subnet(ip) or conf.is_excluded(ip):
        raise CNIError(ADDRESS_IN_USE, f"requested address {ip} is reserved in {rng.subnet}",
                       "the network address, broadcast, gateway and 'exclude' entries are never assigned")
    holder = txn.allocated(rng.pool).get(str(ip))
    if holder is not None:
        raise CNIError(ADDRESS_IN_USE, f"requested address {ip} is already in use",
                       f"held by container {holder.container_id} interface {holder.ifname}")
    return Allocation(rng.pool, str(ip), *owner)


def _next_free(txn, conf, rng, taken):
    """Scan the range round-robin from after the last address handed out."""
    size = int(rng.end) - int(rng.start) + 1
    cursor = txn.cursor(rng.pool)
    offset = 0
    if cursor is not None:
        last = ipaddress.ip_address(cursor)
        if last.version == rng.start.version and rng.start <= last <= rng.end:
            offset = int(last) - int(rng.start) + 1
    for step in range(size):
        ip = rng.start + (offset + step) % size
        if str(ip) in taken or rng.is_reserved_by_subnet(ip) or conf.is_excluded(ip):
            continue
        return ip
    return None


def _reserve_dynamic(txn, conf, range_set, owner):
    for rng in range_set:
        ip = _next_free(txn, conf, rng, txn.allocated(rng.pool))
        if ip is not None:
            txn.set_cursor(rng.pool, str(ip))
            return Allocation(rng.pool, str(ip), *owner)
    pools = ", ".join(f"{r.start}-{r.end}" for r in range_set)
    raise CNIError(POOL_EXHAUSTED, f"no free address left in {pools}")


def allocate(txn, conf, owner: tuple, wanted: list) -> list:
    """Allocations for `owner` = (network, container_id, ifname): existing ones
    are returned again; otherwise one per range set, honouring `wanted`."""
    held = txn.held_by(*owner)
    leftover = list(wanted)
    result = []
    for range_set in conf.range_sets:
        pools = {r.pool for r in range_set}
        mine = [a for a in held if a.pool in pools]
        asked = [ip for ip in leftover if _range_of(range_set, ip)]
        for ip in asked:
            leftover.remove(ip)
        if len(asked) > 1:
            raise CNIError(INVALID_CONFIG, "more than one requested address for one range set: "
                           + ", ".join(map(str, asked)))
        if mine:
            if asked and str(asked[0]) != mine[0].ip:
                raise CNIError(ADDRESS_IN_USE, f"requested address {asked[0]} differs from {mine[0].ip}",
                               "this container and interface already hold an address")
            result.append(mine[0])
            continue
        if asked:
            allocation = _reserve_requested(txn, conf, range_set, asked[0], owner)
        else:
            allocation = _reserve_dynamic(txn, conf, range_set, owner)
        txn.add(allocation)
        result.append(allocation)
    if leftover:
        raise CNIError(INVALID_CONFIG, "requested address not in any configured range: "
                       + ", ".join(map(str, leftover)))
    return result


def reserve(txn, conf, owner: tuple, requested=None):
    """One address from the first range set for an owner that may hold many
    (Docker's IpamDriver: one owner per pool). Not sticky: every call reserves."""
    range_set = conf.range_sets[0]
    if requested is not None:
        if _range_of(range_set, requested) is None:
            raise CNIError(INVALID_CONFIG, f"address {requested} is not in {range_set[0].subnet}")
        allocation = _reserve_requested(txn, conf, range_set, requested, owner)
    else:
        allocation = _reserve_dynamic(txn, conf, range_set, owner)
    txn.add(allocation)
    return allocation


def release(txn, owner: tuple) -> list:
    released = txn.held_by(*owner)
    for allocation in released:
        txn.remove(allocation)
    return released


def collect_garbage(txn, network: str, valid: set) -> list:
    """Release every allocation of `network` whose (container, ifname) is not valid."""
    stale = [a for a in txn.all(network) if (a.container_id, a.ifname) not in valid]
    for allocation in stale:
        txn.remove(allocation)
    return stale
