"""route_localnet on a bridge, and never without its guard.

Published ports answer on the host's 127.0.0.1 (as Docker's do): the DNAT'ed
packet leaves through the bridge with source 127.0.0.1, which the kernel
allows only with net.ipv4.conf.<bridge>.route_localnet=1. That setting also
lets the bridge's side reach the host's loopback services, so:

- it is set only after the guard rule (firewall.localnet_guard, one per
  attachment with published ports, tagged as its port rules) is in place;
- it goes back to 0 before the last guard on the bridge goes (DEL, GC,
  network removal), so no moment has it on without a guard; done under the
  firewall lock, so an ADD adding a guard meanwhile is seen, or comes after;
- it goes back to 0 only on a bridge where we turned it on (a mark under
  RUN_DIR, made before the sysctl is written): dockerd sets it on docker0
  when its userland proxy is off, and a reused docker0 keeps Docker's value.
"""

import os

from .. import paths
from . import firewall, iptables, sysctls

MARKS_DIR = f"{paths.RUN_DIR}/localnet"


def _path(bridge: str) -> str:
    return sysctls.interface_path("ipv4", bridge, "route_localnet")


def _mark(bridge: str) -> str:
    return os.path.join(MARKS_DIR, bridge)  # a checked interface name: no '/', not '.' or '..'


def turn_on(bridge: str) -> None:
    """route_localnet=1 on `bridge`, whose guard the caller has added."""
    path = _path(bridge)
    if sysctls.read(path) != "1":
        os.makedirs(MARKS_DIR, mode=0o755, exist_ok=True)
        with open(_mark(bridge), "w"):
            pass
    sysctls.ensure(path, "1", f"published ports answer on 127.0.0.1: DNAT'ed packets leave through {bridge} "
                              "(packets from it to 127.0.0.0/8 are dropped in raw RANCHER-CNI-LOCALNET)")


def release(is_leaving) -> None:
    """Before guards whose tags `is_leaving` are removed: route_localnet back
    to 0 on each bridge we turned it on where no other guard stays."""
    with iptables.host_lock():
        for bridge, guard_tags in firewall.localnet_guards().items():
            if not all(map(is_leaving, guard_tags)) or not os.path.exists(_mark(bridge)):
                continue
            if sysctls.read(_path(bridge)) is not None:  # the bridge may be gone, and its setting with it
                sysctls.ensure(_path(bridge), "0", f"no published port needs it on {bridge} any more")
            os.unlink(_mark(bridge))
