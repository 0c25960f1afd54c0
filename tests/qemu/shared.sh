#!/bin/sh
# tests/qemu/shared.sh: a shared host INTx line, inside the QEMU guest (runs as /test.sh under
# busybox sh; tests/qemu_shared.rs builds the initramfs with /edu.toml beside it and boots QEMU
# with `-device virtio-rng-pci,addr=05.0,vectors=0`: on q35 slot 5 pin A and edu's slot 1 pin A
# both route to PIRQF, GSI 21, and vectors=0 keeps virtio on INTx; virtio_pci and virtio_rng are
# loaded, so a guest driver holds the line).
#
# In order, each a hard check:
#   0. once the daemon opened edu (the PCI core routes its pin at the first enable), edu and the
#      virtio function report the same legacy IRQ in sysfs, and virtio0 holds it;
#   a. with PCI 2.3 masking (vfio-pci as loaded): the daemon opens edu with the shared-line
#      warning (masking not known yet) in status; RNG reads alone raise the line's count; a
#      direct exerciser soak through the daemon passes with exact counts while /dev/hwrng is read
#      beside it (every virtio-rng read is completed by the driver's interrupt handler on the
#      shared line; the line's hard IRQ count is only a figure: vfio-pci re-fires a line still
#      high at unmask without one); the warning is cleared once INTx shared the line;
#   b. SIGTERM, `rmmod vfio_pci; insmod vfio_pci.ko nointxmask=1`, the daemon again: its open
#      warning says the INTx set-up will fail, `intxd doctor` predicts it (FAIL, naming the
#      virtio function and virtio-pci), the attach is refused with that same diagnosis, the
#      kernel logs "Flags mismatch irq 21", and the daemon serves on; then the fix doctor names
#      (unbind the other driver) and the attach works, exact counts.
# Every figure is printed on a `shared:` line; the Rust test asserts on those lines.
# Exit 0 only if every check passed.

CYCLES=1000   # tests/qemu_shared.rs asserts this count
SOCK=/run/intxd/control.sock
O=/lib/modules/intxd-qemu
FAILS=0
say() { echo "shared: $*"; }
pass() { say "PASS: $*"; }
fail() { say "FAIL: $*"; FAILS=$((FAILS + 1)); }
rd() { cat "$1" 2>/dev/null || echo '?'; }
drv() { [ -e "$1/driver" ] && basename "$(readlink "$1/driver")" || echo none; }
json_num() { sed -n "s/^ *\"$2\": \\([0-9.e+-]*\\),\\{0,1\\}$/\\1/p" "$1" | head -1; }
json_str() { sed -n "s/^ *\"$2\": \"\\([^\"]*\\)\",\\{0,1\\}$/\\1/p" "$1" | head -1; }
# the whole string value (it may hold escaped quotes)
json_long() { sed -n "s/^ *\"$2\": \"\\(.*\\)\",\\{0,1\\}$/\\1/p" "$1" | head -1; }
irq_total() { awk -v n="$1:" '$1 == n { s = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i; print s }' /proc/interrupts; }
irq_row() { awk -v n="$1:" '$1 == n' /proc/interrupts | tr -s ' '; }
DPID=
stop_daemon() {
    [ -n "$DPID" ] || return 0
    kill -TERM "$DPID"
    i=0
    while kill -0 "$DPID" 2>/dev/null && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
    wait "$DPID" 2>/dev/null
    echo "---- daemon log $1 ----"; cat "/tmp/daemon-$1.log"; echo "---- end of daemon log $1 ----"
    DPID=
}
start_daemon() { # tag
    /bin/intxd run --config /tmp/edu.toml > "/tmp/daemon-$1.log" 2>&1 &
    DPID=$!
    i=0
    while [ ! -S "$SOCK" ] && [ $i -lt 200 ] && kill -0 "$DPID" 2>/dev/null; do sleep 0.05; i=$((i + 1)); done
    [ -S "$SOCK" ] || { fail "intxd run ($1) did not create $SOCK"; return 1; }
    /bin/intxd status --socket "$SOCK" --json > "/tmp/status-$1.json" 2>&1
}
finish() {
    stop_daemon end
    if [ "$FAILS" = 0 ]; then say "ALL PASSED"; exit 0; fi
    say "$FAILS check(s) FAILED"; exit 1
}
soak() { # tag cycles -> rc in $RC, json in /tmp/soak-TAG.json
    RUST_LOG=warn,intxd::soak=info /bin/intxd soak --connect "$SOCK" --device edu0 --config /tmp/edu.toml \
        --mode direct --irqchip kernel --cycles "$2" --json > "/tmp/soak-$1.json" 2> "/tmp/soak-$1.err"
    RC=$?
    sed "s/^/shared: soak $1 stderr: /" "/tmp/soak-$1.err"
    f=/tmp/soak-$1.json
    say "soak $1: rc=$RC cycles=$(json_num "$f" cycles) delivered=$(json_num "$f" delivered) lost=$(json_num "$f" lost) spurious=$(json_num "$f" spurious) eois=$(json_num "$f" eois) rate=$(json_num "$f" rate_per_s)"
}
soak_exact() { # tag cycles
    f=/tmp/soak-$1.json
    if [ "$RC" = 0 ] && [ "$(json_num "$f" delivered)" = "$2" ] && [ "$(json_num "$f" lost)" = 0 ] &&
        [ "$(json_num "$f" spurious)" = 0 ] && [ "$(json_num "$f" eois)" = "$2" ]; then
        pass "soak $1: $2 of $2 delivered, $2 EOIs, 0 lost, 0 spurious"
    else
        fail "soak $1 (rc $RC): $(tr -s ' \n' ' ' < "$f")"
    fi
}

# ---- 0. the line ----------------------------------------------------------------------------------
EDU= VIO=
for d in /sys/bus/pci/devices/*; do
    [ "$(rd "$d/vendor")" = 0x1234 ] && [ "$(rd "$d/device")" = 0x11e8 ] && EDU=${d##*/}
    [ "$(rd "$d/vendor")" = 0x1af4 ] && VIO=${d##*/}
done
[ -n "$EDU" ] && [ -n "$VIO" ] || { fail "edu ($EDU) or the virtio function ($VIO) missing"; finish; }
DE=/sys/bus/pci/devices/$EDU DV=/sys/bus/pci/devices/$VIO
sed "s/^pci = \"0000:00:01.0\"/pci = \"$EDU\"/" /edu.toml > /tmp/edu.toml
chmod 0644 /tmp/edu.toml

# ---- a. with masking: both keep working ---------------------------------------------------------------
start_daemon masking || finish
# the line once edu is enabled (vfio-pci's open): before, sysfs `irq` is the firmware's PIC line,
# the PCI core routes the pin through ACPI (GSI) at the first enable
IRQ=$(rd "$DE/irq")
say "line: edu=$EDU edu_irq=$IRQ virtio=$VIO virtio_irq=$(rd "$DV/irq") virtio_driver=$(drv "$DV") row=$(irq_row "$IRQ")"
[ "$(rd "$DV/irq")" = "$IRQ" ] && pass "edu and $VIO share host IRQ $IRQ" || fail "edu is on IRQ $IRQ, $VIO on $(rd "$DV/irq")"
irq_row "$IRQ" | grep -q virtio0 && pass "virtio0 holds IRQ $IRQ" || fail "no virtio0 handler on IRQ $IRQ: $(irq_row "$IRQ")"
say "a status: state=$(json_str /tmp/status-masking.json state) warning=$(json_long /tmp/status-masking.json warning)"
[ "$(json_str /tmp/status-masking.json state)" = opened ] || fail "edu is $(json_str /tmp/status-masking.json state), not opened"
# virtio's own interrupts on the line: 16 RNG reads, each completed by its handler
R0=$(irq_total "$IRQ")
dd if=/dev/hwrng of=/dev/null bs=64 count=16 2>/dev/null
R1=$(irq_total "$IRQ")
say "a rng alone: reads=16 irq_delta=$((R1 - R0))"
[ $((R1 - R0)) -gt 0 ] && pass "virtio-rng's reads raise IRQ $IRQ (+$((R1 - R0)))" || fail "virtio-rng's reads raised no interrupt on IRQ $IRQ"
I0=$(irq_total "$IRQ")
# the other driver's job beside the soak: read the hardware RNG until the soak is done
( n=0; while [ ! -e /tmp/soak-done ]; do dd if=/dev/hwrng of=/dev/null bs=64 count=8 2>/dev/null && n=$((n + 512)); done; echo "$n" > /tmp/rng-bytes ) &
RNG=$!
soak masking "$CYCLES"
: > /tmp/soak-done
wait "$RNG"
I1=$(irq_total "$IRQ")
RNGB=$(cat /tmp/rng-bytes)
say "a figures: irq_delta=$((I1 - I0)) cycles=$CYCLES rng_bytes=$RNGB row=$(irq_row "$IRQ")"
soak_exact masking "$CYCLES"
[ "${RNGB:-0}" -gt 0 ] && pass "virtio-rng served $RNGB bytes beside the soak" || fail "virtio-rng served nothing beside the soak"
/bin/intxd status --socket "$SOCK" --json > /tmp/status-masking2.json 2>&1
W=$(json_long /tmp/status-masking2.json warning)
say "a status after: warning=${W:-none}"
[ -z "$W" ] && pass "the warning is cleared once INTx shared the line" || fail "the warning stays after a shared attach: $W"
stop_daemon masking

# ---- b. nointxmask: predicted, refused with the same message, the daemon serving on -------------------
rmmod vfio_pci || fail "rmmod vfio_pci"
insmod "$O/vfio_pci.ko" nointxmask=1 || fail "insmod vfio_pci.ko nointxmask=1"
say "b vfio-pci nointxmask=$(rd /sys/module/vfio_pci/parameters/nointxmask)"
start_daemon nomask || finish
WARN=$(json_long /tmp/status-nomask.json warning)
say "b status: state=$(json_str /tmp/status-nomask.json state) warning=$WARN"
/bin/intxd doctor --config /tmp/edu.toml > /tmp/doctor.txt 2>&1
say "b doctor rc=$?"
sed 's/^/shared: doctor: /' /tmp/doctor.txt
/bin/intxd doctor --config /tmp/edu.toml --json > /tmp/doctor.json 2>&1
# the shared-line finding's status, from the JSON
DST=$(tr -d '\n' < /tmp/doctor.json | sed -n 's/.*"check": *"shared line", *"status": *"\([a-z]*\)".*/\1/p')
say "b doctor shared line: status=${DST:-none}"
[ "$DST" = fail ] && pass "doctor predicts the failure" || fail "doctor's shared line status is '${DST:-none}'"
grep -q "$VIO (virtio-pci: virtio0)" /tmp/doctor.txt && pass "doctor names $VIO and virtio-pci" || fail "doctor does not name $VIO (virtio-pci: virtio0)"
dmesg -c > /dev/null
soak refused 10
KLOG=$(dmesg | grep -m1 'Flags mismatch irq')
say "b kernel: $KLOG"
[ "$RC" != 0 ] && pass "the attach is refused" || fail "the attach was not refused"
grep -q "is shared with $VIO (virtio-pci: virtio0)" "/tmp/soak-refused.err" && pass "the refusal names $VIO and virtio-pci" || fail "the refusal does not name $VIO (virtio-pci: virtio0)"
grep -q "attach failed at step .enable INTx with its trigger eventfd. with EBUSY" "/tmp/soak-refused.err" && pass "the refusal names the step and EBUSY" || fail "no step/EBUSY in the refusal"
# the open warning is the diagnosis the refusal starts with
HEAD=$(printf '%s' "$WARN" | sed 's/\\"/"/g')
grep -qF "$HEAD" "/tmp/soak-refused.err" && pass "the refusal is the open's warning, word for word" || fail "the refusal is not the open's warning"
case $KLOG in *"Flags mismatch irq $IRQ"*vfio-intx*virtio0*) pass "the kernel logged the flags mismatch on IRQ $IRQ" ;; *) fail "no flags mismatch in dmesg" ;; esac
/bin/intxd status --socket "$SOCK" --json > /tmp/status-refused.json 2>&1 && kill -0 "$DPID" 2>/dev/null &&
    [ "$(json_str /tmp/status-refused.json state)" = opened ] &&
    pass "the daemon serves on; edu is $(json_str /tmp/status-refused.json state)" || fail "the daemon or edu is not as before after the refusal"
# the fix: the other driver lets go of the line
echo "$VIO" > /sys/bus/pci/drivers/virtio-pci/unbind
say "b fixed: virtio_driver=$(drv "$DV") row=$(irq_row "$IRQ")"
soak fixed 300
soak_exact fixed 300
finish
