#!/bin/sh
# registry.sh [HOST:PORT]
# Debian's docker-registry on HOST:PORT (default localhost:5000, which Docker
# trusts without TLS), storing under $REGISTRY_ROOT; does nothing if one answers.
set -eu
addr=${1:-localhost:5000}
root=${REGISTRY_ROOT:-/var/lib/rancher-cni-registry}
answers() { python3 -c 'import sys, urllib.request; urllib.request.urlopen(f"http://{sys.argv[1]}/v2/", timeout=2)' "$addr" 2>/dev/null; }
answers && exit 0
mkdir -p "$root/data"
cat >"$root/config.yml" <<YML
version: 0.1
storage:
  filesystem:
    rootdirectory: $root/data
  delete:
    enabled: true
http:
  addr: $addr
YML
nohup docker-registry serve "$root/config.yml" >"$root/registry.log" 2>&1 &
echo $! >"$root/registry.pid"
for _ in $(seq 50); do answers && exit 0; sleep 0.2; done
echo "docker-registry did not start on $addr; see $root/registry.log" >&2
exit 1
