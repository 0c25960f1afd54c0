#!/bin/bash
# Runs a command in the test systemd's namespaces: ctl.sh systemctl status intxd
: "${H:?state dir}"
here=$(cd "$(dirname "$0")" && pwd)
p1=$(cat "$H/pid1") || exit 1
exec nsenter -t "$p1" -m -p -u -i -- env SYSTEMD_UNIT_PATH="${UNITS:-}:$here/base-units" SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
