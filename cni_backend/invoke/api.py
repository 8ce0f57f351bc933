"""ADD / CHECK / DEL / GC / STATUS of a whole conflist, as libcni runs them.

Per-call data (container, netns, ifname, arguments) is an `Attachment`; the
network is a parsed conflist plus its raw bytes, which the cache keeps so DEL
and CHECK run against the config the attachment was made with.
"""

import dataclasses
import os
import time

from .. import logfmt, version
from ..errors import CHECK_FAILED, CNIError
from . import cache, conflist as conflists
from .execute import exec_plugin, run_process

# Who is told of every plug-in execution: observer(command, plugin type, ok,
# seconds), called in the calling process once the plug-in has answered. None
# by default; the Docker side sets it to count the calls (cnm_shim/metrics.py),
# so this package never imports a metrics library. An observer that fails
# changes nothing for the call.
_observer = None


def set_observer(observer) -> None:
    global _observer
    _observer = observer


@dataclasses.dataclass
class Attachment:
    container_id: str
    netns: str
    ifname: str = "eth0"
    network: str = ""
    args: list = dataclasses.field(default_factory=list)          # CNI_ARGS pairs
    capability_args: dict = dataclasses.field(default_factory=dict)  # runtimeConfig


class CNI:
    def __init__(self, path: list, cache_dir: str = cache.DEFAULT_CACHE_DIR, runner=run_process):
        self.path = list(path)
        self.cache_dir = cache_dir
        self.runner = runner

    def _env(self, command: str, att: Attachment | None) -> dict:
        env = dict(os.environ, CNI_COMMAND=command, CNI_PATH=os.pathsep.join(self.path))
        for key in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS"):
            env.pop(key, None)
        if att is not None:
            env.update(CNI_CONTAINERID=att.container_id, CNI_IFNAME=att.ifname)
            if att.netns:
                env["CNI_NETNS"] = att.netns
            if att.args:
                env["CNI_ARGS"] = ";".join(f"{k}={v}" for k, v in att.args)
        request_id = logfmt.current()
        if request_id:  # the Docker request this call serves: the plug-in's log lines carry it too
            env[logfmt.REQUEST_ENV] = request_id
        return env

    def _run(self, command, conf, plugin, att, prev=None, extra=None):
        runtime = att.capability_args if att else {}
        config = conflists.plugin_config(conf, plugin, prev, runtime)
        if extra:
            config.update(extra)
        observer, started, ok = _observer, time.monotonic(), False
        try:
            output = exec_plugin(plugin["type"], self._env(command, att), config, self.runner)
            ok = True
            return output
        except CNIError as exc:
            if plugin is conf["plugins"][0] or exc.msg.startswith(plugin["type"]):
                raise
            # a plug-in chained after the first says what went wrong, not who
            # said it ("Rate doesn't match"): name it
            raise CNIError(exc.code, f"{plugin['type']}: {exc.msg}", exc.details) from None
        finally:
            if observer is not None:
                try:
                    observer(command, str(plugin["type"]), ok, time.monotonic() - started)
                except Exception:  # noqa: BLE001 - counting never fails a call
                    pass

    def add(self, conf: dict, raw: bytes, att: Attachment, prev_result: dict | None = None) -> dict:
        """ADD through the whole list; `prev_result` seeds the chain (a list that
        only adds to an existing attachment, such as port mappings)."""
        att.network = conf["name"]
        result = self._add_chain(conf, conf["plugins"], att, prev_result)
        cache.save(self.cache_dir, att, raw, result)
        return result

    def _add_chain(self, conf: dict, plugins: list, att: Attachment, result: dict | None) -> dict:
        """ADD on `plugins` in order, each given the one before's result."""
        for plugin in plugins:
            output = self._run("ADD", conf, plugin, att, result)
            if output is None:
                raise CNIError(CHECK_FAILED, f"plug-in {plugin['type']} returned no result on ADD")
            result = version.normalize_result(output)
        return result

    def _cached(self, conf: dict, raw: bytes, att: Attachment) -> tuple:
        """The config, raw bytes and result the attachment was made with, if cached."""
        att.network = conf["name"]
        entry = cache.load(self.cache_dir, att.network, att.container_id, att.ifname)
        if entry is None:
            return conf, raw, None
        if entry.get("config"):
            raw = entry["config"]
            conf = conflists.parse(raw, "cached config")
        if not att.args and entry.get("cniArgs"):
            att.args = [tuple(pair) for pair in entry["cniArgs"]]
        # the arguments the caller gives win; what only the cache holds (a
        # capability given after ADD, see add_capability) is kept for DEL
        att.capability_args = dict(entry.get("capabilityArgs") or {}, **att.capability_args)
        result = version.normalize_result(entry["result"]) if entry.get("result") else None
        return conf, raw, result

    def delete(self, conf: dict, raw: bytes, att: Attachment) -> None:
        conf, raw, result = self._cached(conf, raw, att)
        prev = result if version.at_least(conf["cniVersion"], "0.4.0") else None
        for plugin in reversed(conf["plugins"]):
            self._run("DEL", conf, plugin, att, prev)
        cache.remove(self.cache_dir, att.network, att.container_id, att.ifname)

    @staticmethod
    def declaring(conf: dict, capability: str) -> list:
        """The plug-ins of a list that declare `capability` (libcni hands a
        capability argument to those only)."""
        return [p for p in conf["plugins"] if (p.get("capabilities") or {}).get(capability) is True]

    def add_capability(self, conf: dict, raw: bytes, att: Attachment, capability: str, value) -> dict:
        """A capability argument that was not known at ADD, given to an existing
        attachment: ADD on the plug-ins of its cached list that declare it, in
        list order, with the cached result as prevResult; then the cache entry
        holds the argument (so the final DEL hands it to them again, as libcni's
        DEL hands the cached runtime config) and the new result.

        This is the one departure from one ADD per attachment, for runtimes
        that learn an argument late: Docker <= 27 names published ports at
        ProgramExternalConnectivity, after Join's ADD. A plug-in that declares
        the capability got nothing for it at the first ADD (for portmap: no
        rules), so its second ADD makes exactly what it would have made then."""
        conf, raw, result = self._cached(conf, raw, att)
        if result is None:
            raise CNIError(CHECK_FAILED, f"no cached result for {att.container_id}/{att.ifname} on {conf['name']}")
        att.capability_args = dict(att.capability_args, **{capability: value})
        # the argument is cached first: whatever a plug-in made before a crash
        # or a failure is torn down by the next DEL, which hands it over again
        cache.save(self.cache_dir, att, raw, result)
        result = self._add_chain(conf, self.declaring(conf, capability), att, result)
        cache.save(self.cache_dir, att, raw, result)
        return result

    def del_capability(self, conf: dict, raw: bytes, att: Attachment, capability: str, value=None) -> None:
        """Undo add_capability: DEL on the plug-ins that declare `capability`, in
        reverse order, with `value` (else the cached argument); then the cache
        entry without it. Nothing cached: nothing to undo."""
        conf, raw, result = self._cached(conf, raw, att)
        if result is None:
            return
        if value is not None:
            att.capability_args = dict(att.capability_args, **{capability: value})
        if not att.capability_args.get(capability):
            return
        prev = result if version.at_least(conf["cniVersion"], "0.4.0") else None
        for plugin in reversed(self.declaring(conf, capability)):
            self._run("DEL", conf, plugin, att, prev)
        att.capability_args = {k: v for k, v in att.capability_args.items() if k != capability}
        cache.save(self.cache_dir, att, raw, result)

    def check(self, conf: dict, raw: bytes, att: Attachment, view=None) -> None:
        """`view(result)`, if given, adapts the cached result to what the runtime
        did after ADD (Docker picks one endpoint's gateway as the default route)."""
        conf, raw, result = self._cached(conf, raw, att)
        if view is not None and result is not None:
            result = view(result)
        if not version.at_least(conf["cniVersion"], "0.4.0"):
            raise CNIError(1, f"CHECK needs cniVersion 0.4.0 or later, {conf['name']} has {conf['cniVersion']}")
        if conf.get("disableCheck"):
            return
        if result is None:
            raise CNIError(CHECK_FAILED, f"no cached result for {att.container_id}/{att.ifname} on {conf['name']}")
        for plugin in conf["plugins"]:
            self._run("CHECK", conf, plugin, att, result)

    def gc(self, conf: dict, raw: bytes, valid: list) -> list:
        """DEL every cached attachment not in `valid` [(container, ifname)],
        then let each plug-in collect what it still holds (spec 1.1.0)."""
        keep = {tuple(v) for v in valid}
        removed = []
        for container_id, ifname in cache.entries(self.cache_dir, conf["name"]):
            if (container_id, ifname) not in keep:
                self.delete(conf, raw, Attachment(container_id, "", ifname))
                removed.append((container_id, ifname))
        if version.at_least(conf["cniVersion"], "1.1.0") and not conf.get("disableGC"):
            listed = [{"containerID": c, "ifname": i} for c, i in sorted(keep)]
            for plugin in conf["plugins"]:
                self._run("GC", conf, plugin, None, extra={"cni.dev/valid-attachments": listed})
        return removed

    def status(self, conf: dict) -> None:
        if not version.at_least(conf["cniVersion"], "1.1.0"):
            return
        for plugin in conf["plugins"]:
            self._run("STATUS", conf, plugin, None)
