"""Putting back the host side of an attachment that CHECK found damaged.

Not a CNI command: `cnm-shim doctor --repair` calls this in-process with the
config and result cached at ADD, like DEL and CHECK get them. The network's
main plug-in (the first of the list) restores only what that result names and
what is the host's (host veth on its bridge, gateway address, firewall rules);
it never touches the sandbox, which is the container's.
"""

from . import plugins, skel
from .errors import CNIError, INVALID_CONFIG
from .invoke import conflist as conflists


def restore_attachment(conf: dict, container_id: str, netns: str, ifname: str, args: list,
                       capability_args: dict, result: dict) -> None:
    plugin = conf["plugins"][0]
    name = plugin.get("type")
    module = plugins.load(name) if name in plugins.PLUGINS else None
    if module is None or not hasattr(module, "repair"):
        raise CNIError(INVALID_CONFIG, f"plug-in {name} cannot repair an attachment")
    config = conflists.plugin_config(conf, plugin, result, capability_args)
    req = skel.Request(command="CHECK", container_id=container_id, netns=netns, ifname=ifname,
                       args=dict(args), path=[], config=config, env={})
    module.repair(req)
