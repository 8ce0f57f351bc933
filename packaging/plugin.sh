#!/bin/sh
# plugin.sh install NAME DIR [KEY=VALUE...]   (re)create NAME from DIR, set KEY=VALUE, enable it
# plugin.sh push REF DIR                      create REF (registry/name[:tag]) from DIR and push it
# DIR is what build-plugin.sh made. $DOCKER is the client (default: docker).
set -eu
mode=$1 name=$2 dir=$3
shift 3
docker=${DOCKER:-docker}
if $docker plugin inspect "$name" >/dev/null 2>&1; then
    $docker plugin disable "$name" >/dev/null 2>&1 || true
    $docker plugin rm "$name" || { echo "$name is in use: remove its networks first" >&2; exit 1; }
fi
$docker plugin create "$name" "$dir"
case $mode in
install)
    if [ $# -gt 0 ]; then $docker plugin set "$name" "$@"; fi
    # Docker refuses to enable a plug-in whose mount source is missing: make them
    $docker plugin inspect "$name" | python3 -c '
import json, os, sys
for mount in json.load(sys.stdin)[0]["Settings"]["Mounts"]:
    os.makedirs(mount["Source"], exist_ok=True)'
    $docker plugin enable "$name" ;;
push)
    $docker plugin push "$name"
    $docker plugin rm "$name" ;;
*)
    echo "usage: $0 install|push NAME DIR [KEY=VALUE...]" >&2; exit 2 ;;
esac
