#!/bin/sh
# The managed plug-in's entry point (installed as /usr/local/bin/rancher-plugin).
# runc mounts /proc/sys read-only in every container, plug-ins included; the
# backends set forwarding and bridge sysctls of the host namespace the plug-in
# shares, so take write access back (CAP_SYS_ADMIN, granted in config.json).
set -e
mount -o remount,rw /proc/sys 2>/dev/null || mount -o remount,rw,bind /proc/sys
exec /opt/rancher-cni/venv/bin/cnm-shim serve "$@"
