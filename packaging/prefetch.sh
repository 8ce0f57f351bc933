#!/bin/sh
# prefetch.sh PIP
# Fill the caches that let the bundle and the Docker-in-Docker node image be
# built with no network: the two Debian root file systems (debian-rootfs.sh
# caches them by package list) and a wheelhouse with the project's
# dependencies and build requirements. `make test` runs this before it starts
# the tests in their private network namespace (tests/sandbox.sh), where only
# loopback exists. Both caches are reused; a second run costs seconds.
set -eu
pip=$1
here=$(cd "$(dirname "$0")" && pwd)
project=$(dirname "$here")
cache=${ROOTFS_CACHE:-/var/cache/rancher-cni}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$here/debian-rootfs.sh" "$scratch/plugin.tar" $(cat "$here/plugin-packages")
"$here/debian-rootfs.sh" "$scratch/node.tar" $(cat "$here/node-packages")
rm -f "$scratch"/*.tar
# dependencies and build requirements, so that `pip wheel --no-index` can
# build the project itself (which changes) inside the sandbox
"$pip" wheel -q --wheel-dir "$cache/wheels" "$project" setuptools wheel
rm -f "$cache"/wheels/rancher_cnm_cni-*.whl
