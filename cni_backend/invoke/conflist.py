"""Network configuration lists: loading from files or a directory, validation."""

import json
import os

from .. import paths, version
from ..errors import CNIError, DECODE_FAILURE, INCOMPATIBLE_VERSION, INVALID_CONFIG
from ..skel import NAME_PATTERN
from .execute import find_plugin

DEFAULT_CONF_DIR = paths.CNI_CONF_DIR


def parse(raw: bytes, source: str = "<config>") -> dict:
    """A conflist (or a single plug-in .conf, wrapped) from JSON bytes."""
    try:
        conf = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CNIError(DECODE_FAILURE, f"{source} is not valid JSON", str(exc)) from None
    if not isinstance(conf, dict):
        raise CNIError(DECODE_FAILURE, f"{source} must hold a JSON object")
    if "plugins" not in conf and "type" in conf:  # a single-plug-in .conf
        conf = {"cniVersion": conf.get("cniVersion"), "name": conf.get("name"), "plugins": [conf]}
    name = conf.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise CNIError(INVALID_CONFIG, f"{source}: invalid network name {name!r}")
    if conf.get("cniVersions"):
        picked = version.highest_supported(conf["cniVersions"])
        if picked is None:
            raise CNIError(INCOMPATIBLE_VERSION, f"{source}: none of cniVersions {conf['cniVersions']} is supported")
        conf["cniVersion"] = picked
    version.require_supported(conf.get("cniVersion", ""))
    plugins = conf.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise CNIError(INVALID_CONFIG, f"{source}: 'plugins' must be a non-empty list")
    for plugin in plugins:
        if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str):
            raise CNIError(INVALID_CONFIG, f"{source}: every plug-in needs a 'type'")
    return conf


def find(name_or_path: str, conf_dir: str = DEFAULT_CONF_DIR) -> tuple:
    """(conflist, raw bytes) for a file path, or the network `name` in conf_dir."""
    if os.path.sep in name_or_path and os.path.isfile(name_or_path):
        with open(name_or_path, "rb") as f:
            raw = f.read()
        return parse(raw, name_or_path), raw
    try:
        files = sorted(os.listdir(conf_dir))
    except FileNotFoundError:
        files = []
    for filename in files:
        if not filename.endswith((".conflist", ".conf", ".json")):
            continue
        path = os.path.join(conf_dir, filename)
        with open(path, "rb") as f:
            raw = f.read()
        try:
            conf = parse(raw, path)
        except CNIError:
            continue  # a broken neighbour must not hide the network we want
        if conf["name"] == name_or_path:
            return conf, raw
    raise CNIError(INVALID_CONFIG, f"no network named {name_or_path!r} in {conf_dir}")


def named(name: str, conf_dir: str, cni_path: list) -> tuple:
    """(conflist, raw bytes) of the network `name` in conf_dir, its plug-ins
    found in cni_path; refused with what is wrong: no such network (naming the
    files that do not parse, with their reason), or a plug-in not installed."""
    try:
        return _checked(find(name, conf_dir)[0:2], cni_path)
    except CNIError as exc:
        if not exc.msg.startswith("no network named"):
            raise
        broken = []
        for filename in sorted(os.listdir(conf_dir)) if os.path.isdir(conf_dir) else []:
            if filename.endswith((".conflist", ".conf", ".json")):
                try:
                    with open(os.path.join(conf_dir, filename), "rb") as f:
                        parse(f.read(), filename)
                except (OSError, CNIError) as bad:
                    broken.append(f"{filename}: {getattr(bad, 'msg', bad)}")
        raise CNIError(INVALID_CONFIG, exc.msg + (("; files that are no network configuration: " +
                                                   "; ".join(broken)) if broken else "")) from None


def _checked(found: tuple, cni_path: list) -> tuple:
    conf, raw = found
    for plugin in conf["plugins"]:
        find_plugin(plugin["type"], cni_path)
    return conf, raw


def plugin_config(conflist: dict, plugin: dict, prev_result, runtime_config: dict) -> dict:
    """The config one plug-in of the list receives on stdin."""
    config = dict(plugin, cniVersion=conflist["cniVersion"], name=conflist["name"])
    capabilities = plugin.get("capabilities") or {}
    wanted = {k: v for k, v in runtime_config.items() if capabilities.get(k)}
    if wanted:
        config["runtimeConfig"] = wanted
    else:
        config.pop("runtimeConfig", None)
    if prev_result is not None:
        config["prevResult"] = version.convert_result(prev_result, conflist["cniVersion"])
    return config
