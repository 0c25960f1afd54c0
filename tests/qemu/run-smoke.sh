#!/bin/bash
# tests/qemu/run-smoke.sh [GUEST_SCRIPT]  -- the whole QEMU test in one command (what CI runs):
#   prepare.sh -> cargo build --release -> mkinitrd.sh -> run.sh
# GUEST_SCRIPT defaults to tests/qemu/smoke.sh. Environment:
#   INTXD_QEMU_CACHE    cache dir (default <repo>/target/qemu-cache)
#   INTXD_BINARY        use this intxd binary instead of building one
#   INTXD_QEMU_TIMEOUT  guest timeout in seconds (default 150)
# plus everything run.sh reads (INTXD_QEMU_APPEND, INTXD_QEMU_ARGS, ...).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${INTXD_QEMU_CACHE:-$REPO/target/qemu-cache}
SCRIPT=${1:-$HERE/smoke.sh}
NAME=$(basename "$SCRIPT" .sh)

t() { date +%s.%N; }
T0=$(t)
"$HERE/prepare.sh" "$CACHE" >/dev/null
T1=$(t)
if [ -n "${INTXD_BINARY:-}" ]; then
    BIN=$INTXD_BINARY
else
    (cd "$REPO" && cargo build --release --bin intxd)
    BIN=$REPO/target/release/intxd
fi
T2=$(t)
"$HERE/mkinitrd.sh" "$CACHE" "$BIN" "$SCRIPT" "$CACHE/$NAME.cpio.gz"
T3=$(t)
rc=0
"$HERE/run.sh" "$CACHE" "$CACHE/$NAME.cpio.gz" "${INTXD_QEMU_TIMEOUT:-150}" || rc=$?
T4=$(t)
awk -v a="$T0" -v b="$T1" -v c="$T2" -v d="$T3" -v e="$T4" -v rc="$rc" 'BEGIN {
    printf "run-smoke: prepare %.1fs, build %.1fs, mkinitrd %.1fs, qemu %.1fs, total %.1fs; result %d\n",
           b - a, c - b, d - c, e - d, e - a, rc }' >&2
exit "$rc"
