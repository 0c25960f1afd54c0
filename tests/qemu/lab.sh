#!/bin/sh
# tests/qemu/lab.sh: the hardware lab's scenarios on real vfio-pci, inside the QEMU guest (runs as
# /test.sh under busybox sh; tests/qemu_lab.rs boots it with `-device edu -device e1000` beside
# run.sh's own edu, and /lab.toml in the initramfs).
#
#   1. Two edu and one e1000 at once: one daemon with all three; `intxd soak --connect --device
#      all` with each device's exerciser profile, direct, then relay; then a loopback soak of all
#      three (no exerciser: vfio-pci's loopback trigger), direct and relay. Each soak's JSON goes
#      on one `lab: json NAME rc=N:` line; the Rust test checks every count of it.
#   2. The host takes a device back while attached:
#      unbind: a relay soak holds edu1; the host writes edu1's driver/unbind. The soak must end
#      at once with its figures and the real cause; the write returns (the unbind completes)
#      once every VFIO fd is closed; driver_override cleared and the bind record gone; the
#      daemon serves the others (status, a short soak of edu0). A reload finds edu1 again.
#      remove: `intxd attach --hold` holds edu1; the host writes 1 to its remove; the same
#      checks; then `echo 1 > /sys/bus/pci/rescan` brings the function back, and the daemon must
#      offer it again (not leave it `failed`): a soak of edu1 then cycles exactly.
#   The time each unbind/remove took is printed as `took_ms=` (guest clock) between two lines
#   the host timestamps (run.sh's prefix), so the test reads it both ways.
# Exit 0 only if every check passed; every figure is on a `lab:` line.

CYCLES=${LAB_CYCLES:-1000}
SOCK=/run/intxd/control.sock
STATE=/var/lib/intxd
FAILS=0
say() { echo "lab: $*"; }
pass() { say "PASS: $*"; }
fail() { say "FAIL: $*"; FAILS=$((FAILS + 1)); }
rd() { cat "$1" 2>/dev/null || echo '?'; }
drv() { [ -e "$1/driver" ] && basename "$(readlink "$1/driver")" || echo none; }
# milliseconds of guest uptime
ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }
finish() {
    if [ -n "${DPID:-}" ] && kill -0 "$DPID" 2>/dev/null; then kill -TERM "$DPID"; wait "$DPID"; fi
    echo "---- daemon log ----"; cat /tmp/daemon.log 2>/dev/null; echo "---- end of daemon log ----"
    if [ "$FAILS" = 0 ]; then say "ALL PASSED"; exit 0; fi
    say "$FAILS check(s) FAILED"; exit 1
}
# state NAME: the device's STATE column in `intxd status`
state() { /bin/intxd status --socket "$SOCK" 2>/dev/null | awk -v n="$1" '$1 == n { print $3 }'; }
# relayed NAME: its RELAYED column
relayed() { /bin/intxd status --socket "$SOCK" 2>/dev/null | awk -v n="$1" '$1 == n { print $7 }'; }
# wait_for SECS CMD...: polls CMD every 50 ms until it succeeds or SECS of guest time have passed
wait_for() {
    end=$(($(ms) + $1 * 1000)); shift
    while :; do
        "$@" && return 0
        [ "$(ms)" -lt "$end" ] || return 1
        sleep 0.05
    done
}
is_state() { [ "$(state "$1")" = "$2" ]; }
# usable NAME: open for an attach (opened, or detached by its last VMM)
usable() { case $(state "$1") in opened|detached) return 0 ;; esac; return 1; }
status_line() { say "status $1: $(/bin/intxd status --socket "$SOCK" --json 2>&1 | tr -s ' \n' ' ')"; }
# soak NAME CONFIG ARGS...: one `intxd soak --connect --json`, its JSON on one line
soak() {
    name=$1 cfg=$2; shift 2
    RUST_LOG=warn,intxd::soak=info /bin/intxd soak --connect "$SOCK" --config "$cfg" --irqchip kernel \
        --json "$@" > "/tmp/$name.json" 2> "/tmp/$name.err"
    rc=$?
    sed "s/^/lab: soak $name stderr: /" "/tmp/$name.err"
    say "json $name rc=$rc: $(tr -s ' \n' ' ' < "/tmp/$name.json")"
    return $rc
}

# ---- the devices -------------------------------------------------------------------------------
EDUS= NIC=
for d in /sys/bus/pci/devices/*; do
    id="$(rd "$d/vendor"):$(rd "$d/device")"
    case $id in
        0x1234:0x11e8) EDUS="$EDUS ${d##*/}" ;;
        0x8086:0x100e) NIC=${d##*/} ;;
    esac
done
set -- $EDUS
EDU0=${1:-} EDU1=${2:-}
say "devices: edu0=$EDU0 edu1=$EDU1 nic0=$NIC"
[ -n "$EDU1" ] && [ -n "$NIC" ] || { fail "want two edu (1234:11e8) and one e1000 (8086:100e): QEMU needs -device edu -device edu -device e1000"; finish; }
for b in $EDU0 $EDU1 $NIC; do
    D=/sys/bus/pci/devices/$b
    say "sysfs before $b: driver=$(drv "$D") driver_override=$(rd "$D/driver_override") irq=$(rd "$D/irq") iommu_group=$(basename "$(readlink "$D/iommu_group")")"
done
sed -e "s/@edu0@/$EDU0/" -e "s/@edu1@/$EDU1/" -e "s/@nic0@/$NIC/" /lab.toml > /tmp/lab.toml
grep -v '^exerciser' /tmp/lab.toml > /tmp/lab-loopback.toml
chmod 0644 /tmp/lab.toml /tmp/lab-loopback.toml
D1=/sys/bus/pci/devices/$EDU1

# ---- the daemon ----------------------------------------------------------------------------------
/bin/intxd run --config /tmp/lab.toml > /tmp/daemon.log 2>&1 &
DPID=$!
wait_for 10 test -S "$SOCK" || { fail "intxd run did not create $SOCK"; finish; }
for n in edu0 edu1 nic0; do
    s=$(state $n)
    [ "$s" = opened ] && pass "$n opened" || fail "$n is $s, not opened"
done
status_line start

# ---- 1. three devices at once --------------------------------------------------------------------
soak exerciser-direct /tmp/lab.toml --device all --mode direct --cycles "$CYCLES" && pass "exerciser soak, direct" || fail "exerciser soak, direct"
soak exerciser-relay /tmp/lab.toml --device edu0,edu1,nic0 --mode relay --cycles "$CYCLES" && pass "exerciser soak, relay" || fail "exerciser soak, relay"
soak loopback /tmp/lab-loopback.toml --device all --mode all --cycles "$CYCLES" && pass "loopback soak, direct and relay" || fail "loopback soak"

# ---- 2a. the host unbinds edu1 under a soak ----------------------------------------------------
RUST_LOG=warn /bin/intxd soak --connect "$SOCK" --config /tmp/lab.toml --device edu1 --mode relay \
    --irqchip kernel --duration 600 --json > /tmp/gone-unbind.json 2> /tmp/gone-unbind.err &
SPID=$!
cycling() { r=$(relayed edu1); [ "${r:-0}" != - ] && [ "${r:-0}" -ge 200 ] 2>/dev/null; }
wait_for 30 cycling && pass "edu1 soak cycling (relayed $(relayed edu1))" || fail "edu1 soak never got going: $(state edu1) relayed $(relayed edu1)"
say "unbind edu1: writing $EDU1 to driver/unbind"
t=$(ms)
echo "$EDU1" > "$D1/driver/unbind"
took=$(($(ms) - t))
say "unbind edu1: done took_ms=$took"
wait "$SPID"; rc=$?
sed "s/^/lab: soak gone-unbind stderr: /" /tmp/gone-unbind.err
say "json gone-unbind rc=$rc: $(tr -s ' \n' ' ' < /tmp/gone-unbind.json)"
[ "$rc" = 1 ] && pass "the soak failed (rc 1) with its figures" || fail "the soak of edu1 exited $rc"
[ "$took" -le 2000 ] && pass "unbind took ${took} ms" || fail "unbind took ${took} ms (> 2000)"
override_clear() { [ "$(rd "$D1/driver_override")" = "(null)" ]; }
after_gone() { # what
    if [ -e "$D1" ]; then
        wait_for 5 override_clear && pass "$1: driver_override cleared" || fail "$1: driver_override is $(rd "$D1/driver_override")"
    fi
    wait_for 5 test ! -e "$STATE/bind/edu1.json" && pass "$1: bind record dropped" || fail "$1: $STATE/bind/edu1.json still there"
    say "sysfs $1: present=$([ -e "$D1" ] && echo yes || echo no) driver=$(drv "$D1") driver_override=$(rd "$D1/driver_override") record=$([ -e "$STATE/bind/edu1.json" ] && echo yes || echo no)"
    for n in edu0 nic0; do usable $n && pass "$1: $n still served ($(state $n))" || fail "$1: $n is $(state $n)"; done
    s=$(state edu1)
    [ "$s" = failed ] && pass "$1: edu1 failed (gone)" || fail "$1: edu1 is $s"
    status_line "$1"
    soak "after-$1" /tmp/lab.toml --device edu0 --mode direct --cycles "$CYCLES" && pass "$1: edu0 soaks on" || fail "$1: edu0 soak"
}
after_gone unbind

# A reload looks for edu1 again (status said so).
kill -HUP "$DPID"
wait_for 10 usable edu1 && pass "a reload bound edu1 again" || fail "after a reload edu1 is $(state edu1)"
say "sysfs reload: driver=$(drv "$D1") driver_override=$(rd "$D1/driver_override")"

# ---- 2b. the host removes edu1 under `intxd attach --hold` -------------------------------------
/bin/intxd attach edu1 --socket "$SOCK" --hold 600 > /tmp/gone-remove.out 2>&1 &
APID=$!
wait_for 30 is_state edu1 attached && pass "edu1 held by intxd attach" || fail "edu1 not attached: $(state edu1)"
say "remove edu1: writing 1 to remove"
t=$(ms)
echo 1 > "$D1/remove"
took=$(($(ms) - t))
say "remove edu1: done took_ms=$took"
wait "$APID"; rc=$?
sed "s/^/lab: attach gone-remove: /" /tmp/gone-remove.out
[ "$rc" = 1 ] && pass "intxd attach failed (rc 1) with the cause" || fail "intxd attach exited $rc"
[ "$took" -le 2000 ] && pass "remove took ${took} ms" || fail "remove took ${took} ms (> 2000)"
[ ! -e "$D1" ] && pass "remove: $EDU1 is gone from sysfs" || fail "remove: $D1 still there"
after_gone remove

# ---- 2c. a rescan brings it back --------------------------------------------------------------
echo 1 > /sys/bus/pci/rescan
wait_for 10 test -e "$D1" && pass "rescan: $EDU1 is back" || fail "rescan: no $D1"
t=$(ms)
if wait_for 10 usable edu1; then
    pass "rescan: the daemon offers edu1 again after $(($(ms) - t)) ms"
else
    fail "rescan: edu1 stays $(state edu1)"
fi
status_line rescan
say "sysfs rescan: driver=$(drv "$D1") driver_override=$(rd "$D1/driver_override") record=$([ -e "$STATE/bind/edu1.json" ] && echo yes || echo no)"
soak after-rescan /tmp/lab.toml --device edu1 --mode direct --cycles "$CYCLES" && pass "rescan: edu1 soaks again" || fail "rescan: edu1 soak"
finish
