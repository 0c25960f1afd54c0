#!/bin/sh
# tests/qemu/systemd.sh: kill -9 of intxd mid-soak of a real vfio-pci device under a real systemd,
# inside the QEMU guest (runs as /test.sh under busybox sh; tests/qemu_systemd.rs builds the
# initramfs with Debian's systemd, journald, systemctl and journalctl copied from the host, the
# shipped units at /etc/systemd/system, tests/systemd/base-units at /usr/lib/systemd/system,
# intxd at /usr/local/bin/intxd (the units' path) and config/examples/edu.toml at /edu.toml).
#
#   1. systemd 252 runs as PID 1 of a new pid+mount namespace (container mode, only our units);
#      intxd.socket listens on /run/intxd/control.sock (the guest's /run, shared with the ns);
#   2. `intxd soak --connect … --device edu0` activates intxd.service by its first connection;
#      the daemon binds edu to vfio-pci, the soak drives it from a nested KVM guest;
#   3. once the soak cycles, `kill -9` of the service's main pid (the one process in its cgroup,
#      read from here: our pid for it); systemd restarts it (Restart=on-failure) with the fd
#      store, the new daemon takes the route back;
#   4. the soak finishes on its old connection with exact counts: direct mode kept cycling
#      while no daemon ran, relay mode waited and delivered everything after;
#   then `systemctl stop intxd.service` gives edu back and empties the fd store.
# A sampler reads the soak VM's KVM counter of injected interrupts (debugfs irq_injections,
# counted by the guest kernel, independent of the soak and the daemon) every ~10 ms and logs
# each change; the gap line gives the longest stall and the count around the restart (guest
# centiseconds). Figures go on `qsysd:` lines; the Rust test asserts them.
# QSYSD_CYCLES (default 2000) cycles per phase; the kill comes after QSYSD_KILL_AT (default 300)
# injections (about half as many cycles).
CYCLES=${QSYSD_CYCLES:-2000}
KILL_AT=${QSYSD_KILL_AT:-300}
# A relay route waits while the daemon restarts, and under TCG on a loaded host a restart took up
# to 30 guest seconds (the new process's start, systemd's exec of the hardened unit and the
# daemon up to the adoption, is 6-7 s of it at best): the soak's stall bound (10 s) must be longer.
STALL=${QSYSD_STALL:-120}
SOCK=/run/intxd/control.sock
U=intxd.service
CG=/sys/fs/cgroup/system.slice/$U/cgroup.procs
rd() { cat "$1" 2>/dev/null || echo '?'; }
drv() { [ -e "$1/driver" ] && basename "$(readlink "$1/driver")" || echo none; }
say() { echo "qsysd: $*"; }
FAILS=0
pass() { say "PASS: $*"; }
fail() { say "FAIL: $*"; FAILS=$((FAILS + 1)); }
# now: centiseconds of guest uptime in $now; pause SECS: a read with a timeout on a fifo nobody
# writes (no fork: busybox's sleep is a process, and a fork costs milliseconds under TCG)
now() { read -r u _ < /proc/uptime; now=$((${u%.*} * 100 + 1${u#*.} - 100)); }
mkfifo /tmp/tick
exec 3<> /tmp/tick
pause() { read -r -t "$1" -u 3 _; }
json_num() { sed -n "s/^ *\"$2\": \\([0-9.e+-]*\\),\\{0,1\\}$/\\1/p" "$1" | head -1; }
json_str() { sed -n "s/^ *\"$2\": \"\\([^\"]*\\)\",\\{0,1\\}$/\\1/p" "$1" | head -1; }
# systemctl/journalctl inside systemd's namespaces (its pids; our /run is its /run)
ns() { nsenter -t "$SDPID" -m -p -- "$@"; }
show() { ns systemctl show -P "$1" "$U" 2>/dev/null; }
finish() {
    if [ -n "${SDPID:-}" ]; then
        echo "---- journal of intxd.service ----"
        ns journalctl --no-pager -o short-monotonic -u "$U" -u intxd.socket 2>&1 | tail -80
        echo "---- end of journal ----"
        kill -KILL "$SDPID" 2>/dev/null
    fi
    [ "$FAILS" != 0 ] || { say "ALL PASSED"; exit 0; }
    say "$FAILS check(s) FAILED"
    exit 1
}

# ---- the device, the config, the system -------------------------------------------------------
D=
for x in $(grep -l '^0x11e8$' /sys/bus/pci/devices/*/device); do
    [ "$(rd "${x%/device}/vendor")" = 0x1234 ] && D=${x%/device}
done
[ -n "$D" ] || { fail "no edu device (1234:11e8): QEMU needs -device edu"; finish; }
EDU=${D##*/}
say "edu at $EDU; sysfs before: driver=$(drv "$D") driver_override=$(rd "$D/driver_override")"
mkdir -p /etc/intxd /var/tmp /var/lib /sys/kernel/debug
chmod 1777 /var/tmp
sed "s/^pci = \"0000:00:01.0\"/pci = \"$EDU\"/" /edu.toml > /etc/intxd/intxd.toml
echo 'kvm:x:104:' >> /etc/group                   # intxd.socket's SocketGroup=
echo 0123456789abcdef0123456789abcdef > /etc/machine-id
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t debugfs debugfs /sys/kernel/debug

# ---- 1. systemd as PID 1 of a pid+mount namespace ------------------------------------------------
now; T0=$now
unshare --pid --fork --mount-proc --propagation private -- env -i container=intxd-qemu \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    SYSTEMD_UNIT_PATH=/etc/systemd/system:/usr/lib/systemd/system \
    /lib/systemd/systemd --system --unit=intxd-test.target --show-status=false \
    --log-target=journal-or-kmsg < /dev/null > /tmp/systemd.log 2>&1 &
UPID=$!
SDPID=
i=0
while [ -z "$SDPID" ] && [ $i -lt 200 ]; do
    SDPID=$(cat "/proc/$UPID/task/$UPID/children" 2>/dev/null | cut -d' ' -f1); i=$((i + 1)); sleep 0.05
done
[ -n "$SDPID" ] || { fail "systemd did not start: $(cat /tmp/systemd.log)"; finish; }
i=0
while [ ! -S /run/systemd/private ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i + 1)); done
st=$(ns timeout 60 systemctl is-system-running --wait 2>&1)
now
say "systemd: $(ns systemctl --version | head -1) pid $SDPID (1 in its namespace) state=$st boot_cs=$((now - T0))"
case $st in running|degraded) pass "systemd is up ($st)" ;; *) fail "systemd is '$st': $(cat /tmp/systemd.log)"; finish ;; esac
ns systemctl --no-ask-password start intxd.socket || fail "systemctl start intxd.socket"
[ -S "$SOCK" ] && pass "intxd.socket listens on $SOCK" || fail "no $SOCK"
say "before: service=$(show ActiveState) socket=$(ns systemctl show -P ActiveState intxd.socket)"

# ---- the sampler: the soak VM's injected interrupts, longest stall -------------------------------
# Builtins only in its loop (a fork costs milliseconds here, and the soak's vCPU shares the one
# CPU). The guest's timers run late while the soak's vCPU runs (tests/qemu/README.md): the
# test sends QEMU's serial breaks every 0.2 s (INTXD_QEMU_BREAK_SECS) to keep them near time.
# vm_count SOAKPID: the soak VM's injected interrupts so far in $c (its debugfs file in $vm,
# found once: the VM directory is named TID-FD by the thread that created it, a thread of the
# soak); empty before the VM and after it is gone (the soak's last moments, its VM dropped): then
# $vm is looked for again, quietly
vm_count() {
    c=
    if [ -z "$vm" ]; then
        for x in /sys/kernel/debug/kvm/*-*/irq_injections; do
            t=${x#/sys/kernel/debug/kvm/}; t=${t%%-*}
            [ -r "$x" ] && [ -d "/proc/$1/task/$t" ] && vm=$x
        done
    fi
    [ -n "$vm" ] && { read -r c < "$vm"; } 2>/dev/null
    [ -n "$c" ] || vm=
}
# sampler SOAKPID OUT: appends "CS COUNT" to OUT at each change of vm_count (CS: centiseconds of
# guest uptime) until the soak has exited
sampler() {
    last= vm=
    while kill -0 "$1" 2>/dev/null; do
        vm_count "$1"
        if [ -n "$c" ] && [ "$c" != "$last" ]; then
            now; echo "$now $c" >> "$2"; last=$c
        fi
        pause 0.01
    done
}
# gap SAMPLES T0 T1: from the sampler's changes, the longest stall between two changes over the
# whole soak, the count at T0 and at T1 (the last change before each), and the injections the
# guest took between them
gap() {
    awk -v t0="$2" -v t1="$3" '
        { if (NR > 1 && $1 - t > stall) stall = $1 - t; t = $1
          if ($1 <= t0) c0 = $2; if ($1 <= t1) c1 = $2; n = NR; last = $2 }
        END { printf "changes=%d injections=%d stall_cs=%d at_kill=%d at_restart=%d during_restart=%d\n",
              n, last, stall, c0, c1, c1 - c0 }' "$1"
}

# ---- 2-4. a soak per mode, kill -9 of the daemon in the middle -----------------------------------
phase() { # mode
    m=$1 f=/tmp/soak-$1 vm=
    rm -f "$f".*
    RUST_LOG=warn,intxd::soak=info intxd soak --connect "$SOCK" --device edu0 --config /etc/intxd/intxd.toml \
        --mode "$m" --irqchip kernel --cycles "$CYCLES" --stall "$STALL" --json > "$f.json" 2> "$f.err" &
    spid=$!
    sampler "$spid" "$f.samples" &
    smp=$!
    i=0 c=
    while kill -0 "$spid" 2>/dev/null && [ "${c:-0}" -lt "$KILL_AT" ] && [ $i -lt 6000 ]; do
        pause 0.01; vm_count "$spid"; i=$((i + 1))
    done
    # The service's cgroup holds its main process only (intxd never forks); read in our pid
    # namespace, it gives the pid that kill -9 needs here, without a fork.
    pid=; read -r pid < "$CG" 2>/dev/null
    if [ "${c:-0}" -lt "$KILL_AT" ] || [ -z "$pid" ]; then
        fail "$m: the soak did not reach $KILL_AT interrupts: $(cat "$f.err")"; wait "$spid"; wait "$smp"; return
    fi
    now; t0=$now
    kill -9 "$pid"
    say "$m: killed: pid=$pid injections=$c fd_store=$(show NFileDescriptorStore)"
    # Restarted: a new process in the cgroup (no fork to see it), then systemd's word that it
    # is running (Type=notify: READY=1 came).
    i=0 new=
    while [ $i -lt 6000 ]; do
        new=; read -r new < "$CG" 2>/dev/null
        [ -n "$new" ] && [ "$new" != "$pid" ] && [ "$(show SubState)" = running ] && break
        pause 0.05; i=$((i + 1))
    done
    now; t1=$now
    say "$m: restarted: old_pid=$pid new_pid=$new restarts=$(show NRestarts) fd_store=$(show NFileDescriptorStore) restart_cs=$((t1 - t0))"
    wait "$spid"; rc=$?
    wait "$smp"
    sed "s/^/qsysd: soak $m stderr: /" "$f.err"
    j=$f.json
    say "soak $m: rc=$rc mode=$(json_str "$j" mode) cycles=$(json_num "$j" cycles) delivered=$(json_num "$j" delivered) lost=$(json_num "$j" lost) spurious=$(json_num "$j" spurious) triggered=$(json_num "$j" triggered) eois=$(json_num "$j" eois) rate=$(json_num "$j" rate_per_s) elapsed=$(json_num "$j" elapsed_s)"
    say "$m: journal: $(ns journalctl --no-pager -o cat -u "$U" | grep -m1 "restart: $m route taken back")"
    say "gap $m: restart_cs=$((t1 - t0)) $(gap "$f.samples" "$t0" "$t1")"
    [ "$rc" = 0 ] && [ "$(json_num "$j" delivered)" = "$CYCLES" ] && [ "$(json_num "$j" lost)" = 0 ] &&
        pass "soak $m: $CYCLES of $CYCLES through a kill -9 and restart, 0 lost" ||
        fail "soak $m (rc $rc): $(tr -s ' \n' ' ' < "$j")"
}
phase direct
phase relay

# ---- 5. a clean stop gives the device back -------------------------------------------------------
say "sysfs attached: driver=$(drv "$D")"
ns systemctl --no-ask-password stop "$U"
say "stopped: service=$(show ActiveState) fd_store=$(show NFileDescriptorStore) restarts=$(show NRestarts) result=$(show Result)"
say "sysfs after: driver=$(drv "$D") driver_override=$(rd "$D/driver_override")"
finish
