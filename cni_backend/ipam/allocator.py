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
    holder = txn.holder(rng.pool, str(ip))
    if holder is not None:
        raise CNIError(ADDRESS_IN_USE, f"requested address {ip} is already in use",
                       f"held by container {holder.container_id} interface {holder.ifname}")
    return Allocation(rng.pool, str(ip), *owner)


def _blocked(conf, rng, taken) -> list:
    """Sorted, merged [first, last] integer intervals of `rng` that are never
    handed out: 'exclude' entries (each one interval, whatever its size), the
    subnet's own addresses (network, broadcast, gateway) and those `taken`."""
    start, end = int(rng.start), int(rng.end)
    spans = [(int(net.network_address), int(net.broadcast_address)) for net in conf.exclude
             if net.version == rng.start.version]
    singles = [rng.subnet.network_address, rng.gateway]
    if rng.subnet.version == 4:
        singles.append(rng.subnet.broadcast_address)
    for ip in singles:
        if ip is not None:
            spans.append((int(ip), int(ip)))
    for text in taken:
        ip = ipaddress.ip_address(text)
        if ip.version == rng.start.version:
            spans.append((int(ip), int(ip)))
    merged = []
    for first, last in sorted((max(a, start), min(b, end)) for a, b in spans if b >= start and a <= end):
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return merged


def _first_free(low: int, high: int, blocked: list) -> int | None:
    """The lowest integer in [low, high] outside every `blocked` interval."""
    candidate = low
    for first, last in blocked:
        if last < candidate:
            continue
        if first > candidate:
            break
        candidate = last + 1
    return candidate if candidate <= high else None


# How many taken addresses the round-robin steps over by point lookups
# before it reads the whole pool: right after the cursor, an address is
# usually free (the cursor only moves forward), so an ADD's cost does not
# grow with the allocations the pool holds.
_PROBES = 8


def _probe(txn, rng, low: int, high: int, static: list):
    """The first address in [low, high] that is neither blocked by `static`
    nor held, if one of the first _PROBES candidates is; else None."""
    for _ in range(_PROBES):
        found = _first_free(low, high, static)
        if found is None:
            return None
        ip = type(rng.start)(found)
        if txn.holder(rng.pool, str(ip)) is None:
            return ip
        low = found + 1
    return None


def _next_free(txn, conf, rng):
    """Round-robin from after the last address handed out, jumping over
    blocked intervals: the work grows with the allocations and 'exclude'
    entries, never with the size of the range (a /8 excluded is one step).
    A few point lookups after the cursor answer first (`_probe`); the whole
    pool is read only when they do not."""
    start, end = int(rng.start), int(rng.end)
    resume = start
    cursor = txn.cursor(rng.pool)
    if cursor is not None:
        last = ipaddress.ip_address(cursor)
        if last.version == rng.start.version and rng.start <= last < rng.end:
            resume = int(last) + 1
    quick = _probe(txn, rng, resume, end, _blocked(conf, rng, ()))
    if quick is not None:
        return quick
    blocked = _blocked(conf, rng, txn.allocated(rng.pool))
    found = _first_free(resume, end, blocked)
    if found is None and resume > start:
        found = _first_free(start, resume - 1, blocked)
    return None if found is None else type(rng.start)(found)


def _reserve_dynamic(txn, conf, range_set, owner):
    for rng in range_set:
        ip = _next_free(txn, conf, rng)
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
