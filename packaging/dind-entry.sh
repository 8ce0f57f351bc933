#!/bin/sh
# A Docker-in-Docker node's entry point (/usr/local/bin/dind-node in the node
# image): dockerd, which starts its own containerd, with this container's
# namespaces as its "host". Run the container --privileged; ARGS go to dockerd
# (e.g. --insecure-registry 10.251.0.1:5000 for a plain-HTTP registry).
set -e
# a privileged container has /sys and its cgroups writable already; one run
# with explicit capabilities instead (where the host cannot grant them all)
# gets them writable here (Docker mounts them read-only, the cgroups as binds)
mount -o remount,rw /sys 2>/dev/null || true
awk '$2 ~ "^/sys/fs/cgroup" {print $2}' /proc/self/mounts | while read -r dir; do
    mount -o remount,bind,rw "$dir" 2>/dev/null || mount -o remount,rw "$dir" 2>/dev/null || true
done
mkdir -p /var/run/docker/netns  # the managed plug-in mounts it
exec dockerd --host unix:///var/run/docker.sock --log-level warn "$@"
