"""Any CNI network as a Docker network (`rancher-conflist`): the conflist
`-o cni.conflist=NAME` names in the CNI config directory, with the plug-ins
of the CNI path (the reference ones from containernetworking-plugins, or
anyone's), chained as libcni chains them.

Nothing of the host side is ours: the conflist's plug-ins make and remove it.
The network's conflist is copied into the driver's state at `network create`,
and each attachment's into the CNI cache at ADD, so DEL runs with the config
the container was attached with even after the file is changed or deleted.

Docker's address (its IPAM's, or ours) is the container's: it is handed to
the conflist's IPAM as `IP=` in CNI_ARGS and as the `ips` capability, which
host-local and static take; an IPAM that assigns another address fails the
`docker run` saying so (`translate.Translator.join`)."""

import re

from ..errors import DriverError
from ..options import Option
from .base import Backend, HostSide

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}\Z")


def conflist_name(driver, key, value):
    """A network name, never a path: the file is looked up by the name in the
    CNI config directory, so an option cannot make the driver read any file."""
    if not _NAME.match(str(value)):
        raise DriverError(f"{driver}: option {key}={value!r} is not a CNI network name: the \"name\" of a "
                          "conflist in the CNI config directory (letters, digits, '_', '.', '-'), not a path")
    return str(value)


OPTIONS = (
    Option("cni.conflist", conflist_name, None,
           "the CNI network (its \"name\") in the CNI config directory whose plug-ins attach the containers"),
)


class ForeignHost(HostSide):
    """Nothing: the conflist's plug-ins make the host side at ADD and remove it at DEL."""

    def create(self, net, undo) -> None:
        net.bridge_created = False

    def remove(self, net) -> None:
        pass

    def ensure(self, net) -> None:
        pass

    def made_by_us(self, net) -> bool:
        return False

    def datapath(self, net) -> dict:
        chain = [plugin.get("type") for plugin in net.conflist["plugins"]]
        return {"path": "conflist", "chain": chain, "summary": "CNI chain " + " -> ".join(chain)}


BACKEND = Backend(name="conflist", driver="rancher-conflist", options=OPTIONS, render=None,
                  bridge_prefix="", cni_type="", host=ForeignHost(), takes_conflist=True,
                  required={"cni.conflist": "the name of a network in the CNI config directory, "
                                            "e.g. -o cni.conflist=mynet (from /etc/cni/net.d/10-mynet.conflist)"},
                  internal_refused="where its containers' traffic may go is the conflist's plug-ins' to say")
