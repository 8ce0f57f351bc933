#!/bin/sh
# debian-rootfs.sh OUT.tar PACKAGE...
# A minimal Debian 12 root file system with PACKAGE... installed, as a tarball,
# made by debootstrap from Debian's archive (no image registry). The result is
# cached under $ROOTFS_CACHE by package list, so a second build is a copy.
set -eu
out=$1; shift
cache=${ROOTFS_CACHE:-/var/cache/rancher-cni}
suite=${DEBIAN_SUITE:-bookworm}
packages=$(echo "$@" | tr ' ' '\n' | sort -u | tr '\n' ',' | sed 's/,$//')
key=$(echo "$suite $packages" | sha256sum | cut -c1-16)
cached="$cache/rootfs-$suite-$key.tar"
if [ ! -s "$cached" ]; then
    mkdir -p "$cache"
    work=$(mktemp -d "$cache/build.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    echo "debootstrap $suite with $packages (cached in $cached)"
    debootstrap --variant=minbase --include="$packages" "$suite" "$work/rootfs" >"$work/log" 2>&1 \
        || { tail -20 "$work/log"; exit 1; }
    # what a container never needs: package caches and lists, docs, locales
    rm -rf "$work"/rootfs/var/cache/apt/* "$work"/rootfs/var/lib/apt/lists/* \
        "$work"/rootfs/usr/share/doc "$work"/rootfs/usr/share/man "$work"/rootfs/usr/share/info \
        "$work"/rootfs/usr/share/locale
    tar -C "$work/rootfs" --numeric-owner -cf "$work/rootfs.tar" .
    mv "$work/rootfs.tar" "$cached"
fi
cp "$cached" "$out"
