#!/bin/sh
# build-node.sh OUT.tar
# The Docker-in-Docker node image as a root file system tarball for
# `docker import`: a Debian 12 minbase from debootstrap with Debian's docker.io
# (dockerd, containerd, runc) and dind-entry.sh as /usr/local/bin/dind-node.
set -eu
out=$1
here=$(cd "$(dirname "$0")" && pwd)
"$here/debian-rootfs.sh" "$out" $(cat "$here/node-packages")
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/usr/local/bin"
install -m 0755 "$here/dind-entry.sh" "$stage/usr/local/bin/dind-node"
# the managed plug-in's default mount sources (Docker will not enable it without them)
mounts="var/lib/rancher-cni var/lib/rancher-cnm etc/cni/net.d opt/cni/bin"
for path in $mounts; do mkdir -p "$stage/$path"; done
tar -C "$stage" --numeric-owner --owner=0 --group=0 -rf "$out" ./usr/local/bin/dind-node \
    $(for path in $mounts; do echo "./$path"; done)
