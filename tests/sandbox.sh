#!/bin/bash
# Run a command (e.g. pytest, cnm-shim compare) in a private network and mount
# namespace, so that engine and netns tests can run while others use the machine:
#
#     tests/sandbox.sh .venv/bin/python -m pytest tests/engine
#     tests/sandbox.sh .venv/bin/cnm-shim compare --backend bridge ...
#
# Inside: a new network namespace (only `lo`, brought up; iptables, nftables and
# sysctls of its own), a private mount namespace with a tmpfs over each directory
# that Docker, containerd, `ip netns` and the shim share machine-wide (so e.g.
# /run/docker/plugins/rancher-bridge.sock of another engine is not seen, and ours
# is not seen by it), and /sys remounted so that it shows the new namespace's
# links, with the machine's cgroup mounts moved back on top (dockerd needs them).
# Everything made in the sandbox goes away with its last process; the only trace
# on the machine is the empty mount points, created when missing.
set -euo pipefail
[ "$#" -gt 0 ] || { echo "usage: $0 COMMAND [ARG...]" >&2; exit 2; }
# the machine's plug-in (make run) keeps its sockets, state and CNI config: in
# here, these are empty and ours
PRIVATE_DIRS="/run/docker /run/containerd /run/netns /run/rancher-cni /run/rancher-cnm /etc/cni/net.d /var/lib/cni"
PRIVATE_DIRS="$PRIVATE_DIRS /var/lib/rancher-cni /var/lib/rancher-cnm /var/lib/rancher-cni-registry"
exec unshare --net --mount --propagation private -- bash -euc '
  for dir in '"$PRIVATE_DIRS"'; do
    mkdir -p "$dir"
    mount -t tmpfs -o mode=0755 tmpfs "$dir"
  done
  cgroups=$(mktemp -d /tmp/sandbox-cgroup.XXXXXX)
  mount --rbind /sys/fs/cgroup "$cgroups"
  mount -t sysfs sysfs /sys
  mount --move "$cgroups" /sys/fs/cgroup
  rmdir "$cgroups"
  ip link set lo up
  export RANCHER_SANDBOX_NS="$(readlink /proc/self/ns/net) $(readlink /proc/self/ns/mnt)"
  exec "$@"' sandbox "$@"
