"""The attachment cache, in libcni's own format and place, so libcni-based
tools and we read each other's entries: the ADD result plus the exact config
and arguments used, replayed on CHECK and DEL."""

import base64
import json
import os

from .. import files, paths

DEFAULT_CACHE_DIR = paths.CNI_CACHE_DIR


def _path(cache_dir: str, network: str, container_id: str, ifname: str) -> str:
    return os.path.join(cache_dir, "results", f"{network}-{container_id}-{ifname}")


def save(cache_dir: str, att, raw_config: bytes, result: dict) -> None:
    entry = {
        "kind": "cniCacheV1",
        "containerId": att.container_id,
        "config": base64.b64encode(raw_config).decode(),
        "ifName": att.ifname,
        "networkName": att.network,
        "netns": att.netns,
        "cniArgs": [list(pair) for pair in att.args],
        "capabilityArgs": att.capability_args,
        "result": result,
    }
    path = _path(cache_dir, att.network, att.container_id, att.ifname)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    # a kill leaves the old entry or the new; not synced: a power loss takes
    # the attachment with it (files.py), and a DEL needs no entry
    files.write_atomic(path, json.dumps(entry), 0o600, durable=False)


def load(cache_dir: str, network: str, container_id: str, ifname: str):
    try:
        with open(_path(cache_dir, network, container_id, ifname)) as f:
            entry = json.load(f)
    except (FileNotFoundError, ValueError):
        return None
    entry["config"] = base64.b64decode(entry.get("config") or b"")
    return entry


def remove(cache_dir: str, network: str, container_id: str, ifname: str) -> None:
    try:
        os.unlink(_path(cache_dir, network, container_id, ifname))
    except FileNotFoundError:
        pass


def entries(cache_dir: str, network: str) -> list:
    """Cached attachments of `network` as (container_id, ifname)."""
    found = []
    directory = os.path.join(cache_dir, "results")
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return found
    for name in names:
        if not name.startswith(network + "-"):
            continue
        try:
            with open(os.path.join(directory, name)) as f:
                entry = json.load(f)
        except (OSError, ValueError):
            continue
        if entry.get("networkName") == network:
            found.append((entry.get("containerId"), entry.get("ifName")))
    return found
