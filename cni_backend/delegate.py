"""Calling a main plug-in's IPAM plug-in.

rancher-ipam runs in-process (no second interpreter start per call); any other
IPAM type is executed from CNI_PATH with the same config, as the spec says."""

from . import version
from .errors import CNIError, INVALID_CONFIG
from .invoke.execute import exec_plugin

IN_PROCESS = "rancher-ipam"


def _ipam_type(req) -> str:
    ipam = req.config.get("ipam")
    if not isinstance(ipam, dict) or not isinstance(ipam.get("type"), str) or not ipam["type"]:
        raise CNIError(INVALID_CONFIG, "the 'ipam' section with a 'type' (a plug-in name) is required")
    return ipam["type"]


def _call(req, command: str):
    if _ipam_type(req) == IN_PROCESS:
        from .plugins import ipam
        handler = {"ADD": ipam.add, "DEL": ipam.delete, "CHECK": ipam.check,
                   "GC": ipam.gc, "STATUS": ipam.status}[command]
        return handler(req)
    env = dict(req.env, CNI_COMMAND=command)
    return exec_plugin(_ipam_type(req), env, req.config)


def add(req) -> dict:
    return version.normalize_result(_call(req, "ADD"))


def delete(req) -> None:
    _call(req, "DEL")


def check(req) -> None:
    _call(req, "CHECK")


def gc(req) -> None:
    _call(req, "GC")


def status(req) -> None:
    _call(req, "STATUS")
