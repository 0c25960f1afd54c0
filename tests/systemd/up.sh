#!/bin/bash
# Starts a private systemd as PID 1 of new pid/mount/uts/ipc/cgroup
# namespaces, for intxd's unit tests. Prints systemd's host pid; exits 0 once
# the manager is running.
#   env: H (required) = state directory for this instance (created, wiped)
#        UNITS (required) = directory with the unit files under test
set -eu
here=$(cd "$(dirname "$0")" && pwd)
: "${H:?state dir}" "${UNITS:?unit dir}"
rm -rf "$H"; mkdir -p "$H"
fail() { echo "up.sh: $*" >&2; tail -n 40 "$H/ns.log" "$H/console.log" >&2 2>/dev/null || true; H=$H "$here/down.sh"; exit 1; }

# systemd needs a cgroup2 hierarchy it may own: a child of ours.
if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then root=/sys/fs/cgroup
elif [ "$(stat -fc %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ]; then root=/sys/fs/cgroup/unified
else fail "no cgroup2 hierarchy on this host"; fi
mine=$(sed -n 's/^0:://p' /proc/self/cgroup)
cg=$root${mine%/}/intxd-test.$$
mkdir "$cg"; echo "$cg" > "$H/cgroup"; echo "$root$mine" > "$H/parent-cgroup"

# A pty becomes /dev/console inside; everything written there lands in console.log.
python3 "$here/ptylog.py" "$H/console.log" "$H/console.pty" </dev/null >/dev/null 2>&1 &
echo $! > "$H/ptylog.pid"
for _ in $(seq 100); do [ -s "$H/console.pty" ] && break; sleep 0.05; done
[ -s "$H/console.pty" ] || fail "no console pty"

console=$(cat "$H/console.pty")
# (No command substitution inside the subshell: its child would be taken for
# the namespace's init below.)
( echo $BASHPID > "$cg/cgroup.procs"
  exec env H="$H" UNITS="$UNITS" BASE="$here/base-units" CONSOLE="$console" \
    unshare --pid --fork --mount --mount-proc --uts --ipc --cgroup --propagation private "$here/ns-init.sh"
) >"$H/ns.log" 2>&1 </dev/null &
upid=$!; echo $upid > "$H/unshare.pid"

p1=
for _ in $(seq 250); do
  p1=$(awk '{print $1}' /proc/$upid/task/$upid/children 2>/dev/null || true)
  [ -n "$p1" ] && break; sleep 0.02
done
[ -n "$p1" ] || fail "the namespace's init did not appear"
# unshare itself must leave the delegated cgroup before systemd takes it over.
echo $upid > "$(cat "$H/parent-cgroup")/cgroup.procs"
echo $p1 > "$H/pid1"; touch "$H/go"
for _ in $(seq 500); do [ -S /proc/$p1/root/run/systemd/private ] && break; sleep 0.02; done
st=$(timeout 30 "$here/ctl.sh" systemctl is-system-running --wait 2>&1) || true
case "$st" in running|degraded) echo $p1 ;; *) fail "systemd is '$st'" ;; esac
