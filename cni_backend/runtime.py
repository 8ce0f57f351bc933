"""The runtime-side door: what the Docker side (cnm_shim) may use of the CNI
side to run CNI as a runtime does (ADD / CHECK / DEL / GC of a conflist, and
the cache libcni keeps of each attachment).

`cnm_shim`'s Translator and Doctor reach the CNI side through this module and
`hostnet` (the host-network façade) only; a unit test
(tests/unit/test_doors.py) keeps it so. What is re-exported here is the CNI
side's own API, unchanged: one place to see what the Docker side depends on.
"""

from . import errors
from .errors import CHECK_FAILED, IO_FAILURE, CNIError
from .files import write_atomic
from .invoke import cache
from .invoke.api import CNI, Attachment, set_observer
from .invoke.conflist import named as named_conflist, parse as parse_conflist
from .invoke.execute import find_plugin
from .invoke.own import own_plugin, runner as own_runner, set_on_stuck, warm as warm_own_plugins
from .plugins.bridge import HANDOVER_ARG, HOLD_ARG, SANDBOX_IFNAME_ARG
from .plugins.ipam import RESERVED_ARG

__all__ = ["CNI", "Attachment", "CNIError", "CHECK_FAILED", "IO_FAILURE", "errors", "parse_conflist",
           "cached", "cached_attachments", "HANDOVER_ARG", "HOLD_ARG", "RESERVED_ARG", "SANDBOX_IFNAME_ARG", "write_atomic",
           "find_plugin", "named_conflist", "own_runner", "own_plugin", "warm_own_plugins",
           "set_observer", "set_on_stuck"]
# set_observer(f): f(command, plugin type, ok, seconds) after every plug-in execution
# (the shim's metrics count them; cnm_shim/metrics.py)
# own_runner: the runner the Docker side gives CNI: our own executables run in the
# caller (which has them loaded), on a thread of their own; anything else executed
# (invoke/own.py); set_on_stuck(f): f(plug-in name) when such a call outlives its
# timeout (the thread cannot be stopped: the shim's worker retires)
# write_atomic(path, data, mode): how a conflist is exported where CNI runtimes
# read it (temp file, fsync, rename): a runtime never reads half a file

# CNI_ARGS our plug-ins read besides the standard ones:
#   RESERVED_ARG        rancher-ipam: the addresses in runtimeConfig.ips are
#                       Docker's reservations (its IPAM driver holds them)
#   SANDBOX_IFNAME_ARG  rancher-bridge CHECK: the name the container's
#                       interface has in the sandbox (Docker renamed it)
#   HANDOVER_ARG        rancher-bridge ADD (and the backends built on it):
#                       the container's interface is made, unconfigured,
#                       under this name in the caller's namespace, for Docker
#                       to move into the sandbox at Join


def cached(cache_dir: str, network: str, container_id: str, ifname: str) -> dict | None:
    """The cache entry of one attachment (config, cniArgs, capabilityArgs, result), or None."""
    return cache.load(cache_dir, network, container_id, ifname)


def cached_attachments(cache_dir: str, network: str) -> list:
    """(container_id, ifname) of every attachment of `network` cached in `cache_dir`."""
    return cache.entries(cache_dir, network)
