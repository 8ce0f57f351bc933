#!/bin/sh
# build-plugin.sh DIR PIP
# The managed plug-in's bundle for `docker plugin create NAME DIR`: DIR/config.json
# (plugin.json) and DIR/rootfs, a Debian 12 minbase from debootstrap with the
# tools our backends run (ip, iptables, nft, ebtables) and the project in a
# virtualenv at /opt/rancher-cni/venv. PIP (any pip on this machine) builds the
# project's wheels; inside the rootfs they install with no index, so the build
# needs Debian's archive and PyPI once, and no image registry ever.
set -eu
dir=$1
pip=$2
here=$(cd "$(dirname "$0")" && pwd)
project=$(dirname "$here")
rm -rf "$dir"
mkdir -p "$dir/rootfs"
"$here/debian-rootfs.sh" "$dir/base.tar" $(cat "$here/plugin-packages")
tar -C "$dir/rootfs" -xf "$dir/base.tar"
rm "$dir/base.tar"
# offline when prefetch.sh filled the wheelhouse (the tests' sandbox has no network)
wheels=${ROOTFS_CACHE:-/var/cache/rancher-cni}/wheels
"$pip" wheel -q --no-index --find-links "$wheels" --wheel-dir "$dir/rootfs/tmp/wheels" "$project" 2>/dev/null \
    || "$pip" wheel -q --wheel-dir "$dir/rootfs/tmp/wheels" "$project"
# a clean environment: nothing of this machine's pip settings applies in there
in_rootfs() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$dir/rootfs" "$@"; }
in_rootfs /usr/bin/python3 -m venv /opt/rancher-cni/venv
in_rootfs /opt/rancher-cni/venv/bin/pip install -q --no-index --find-links /tmp/wheels rancher-cnm-cni
in_rootfs /opt/rancher-cni/venv/bin/cnm-shim install-cni --dir /opt/rancher-cni/bin >/dev/null
rm -rf "$dir/rootfs/tmp/wheels"
install -m 0755 "$here/plugin-entry.sh" "$dir/rootfs/usr/local/bin/rancher-plugin"
# mount points of plugin.json, and the socket directory Docker binds
for path in run/docker/plugins run/docker/netns var/lib/rancher-cni var/lib/rancher-cnm etc/cni/net.d host/opt/cni/bin; do
    mkdir -p "$dir/rootfs/$path"
done
cp "$project/plugin.json" "$dir/config.json"
echo "$dir: $(du -sh "$dir/rootfs" | cut -f1) rootfs"
