"""Running one plug-in executable: find it in CNI_PATH, pass env and stdin,
read its result or its error JSON. The runner is injectable so tests can record
calls without processes."""

import json
import os
import subprocess

from .. import trace
from ..errors import CNIError, DECODE_FAILURE, PLUGIN_FAILED, PLUGIN_NOT_FOUND

PLUGIN_TIMEOUT_S = 120


def find_plugin(plugin_type: str, paths: list) -> str:
    if "/" in plugin_type or plugin_type in ("", ".", ".."):
        raise CNIError(PLUGIN_NOT_FOUND, f"invalid plug-in type {plugin_type!r}")
    for directory in paths:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CNIError(PLUGIN_NOT_FOUND, f"CNI plug-in {plugin_type!r} not found",
                   "searched CNI_PATH: " + (os.pathsep.join(paths) or "(empty)"))


def run_process(path: str, env: dict, stdin: bytes) -> tuple:
    """(exit code, stdout, stderr) of one plug-in execution."""
    done = subprocess.run([path], input=stdin, env=env, capture_output=True,
                          timeout=PLUGIN_TIMEOUT_S, check=False)
    return done.returncode, done.stdout, done.stderr


def exec_plugin(plugin_type: str, env: dict, config: dict, runner=run_process):
    """Run the plug-in; its parsed stdout (None when empty), or raise its error."""
    paths = [p for p in env.get("CNI_PATH", "").split(os.pathsep) if p]
    path = find_plugin(plugin_type, paths)
    with trace.span("cni.exec", plugin=plugin_type, command=env.get("CNI_COMMAND"),
                    container=env.get("CNI_CONTAINERID", "")[:12]):
        code, stdout, stderr = runner(path, env, json.dumps(config).encode())
    text = stdout.decode(errors="replace").strip()
    if code != 0:
        try:
            error = json.loads(text)
            raise CNIError(int(error["code"]), str(error.get("msg", "")), str(error.get("details", "")))
        except (ValueError, KeyError, TypeError):
            raise CNIError(PLUGIN_FAILED, f"plug-in {plugin_type} failed with exit code {code}",
                           (stderr.decode(errors="replace") or text).strip()[-2000:]) from None
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise CNIError(DECODE_FAILURE, f"plug-in {plugin_type} printed something that is not JSON",
                       text[:2000]) from None
