#!/bin/sh
# tests/qemu/vfio-e2e.sh: the real vfio-pci path end to end, inside the QEMU guest (runs as
# /test.sh under busybox sh; tests/qemu_vfio.rs builds the initramfs with /edu.toml beside it).
#
# In order, each a hard check:
#   1. `intxd run --config edu.toml` binds edu (1234:11e8) to vfio-pci through the real sysfs
#      (the driver link before is recorded: none, since no host driver claims edu);
#   2. `intxd soak --connect` attaches it over the control socket, with nested KVM (kvm_amd on
#      TCG's SVM) and the in-kernel irqchip, in direct mode;
#   3. the soak maps edu's BAR0 page into its guest, and
#   4. the guest's ISR acks edu (and raises the next interrupt) through that page: 0 lost,
#      0 spurious, every cycle delivered;
#   then the same in relay mode;
#   5. with a config that has no exerciser table, the soak drives edu by vfio-pci's loopback
#      trigger (VFIO_IRQ_SET_DATA_NONE|ACTION_TRIGGER on the attach's device fd), direct and relay:
#      host triggers, guest deliveries and KVM's EOIs each exactly the cycles asked for;
#   then SIGTERM to the daemon, and the device must be given back
#   (driver link as before, driver_override cleared), read from sysfs.
# VFIO_E2E_IRQCHIPS (default "kernel") lists the soak's irqchips; each one past the first soaks
# direct and relay too, and its lines read `soak MODE IRQCHIP:` (the arm64 lane adds `user`).
# On arm64 edu may have no IOMMU group before the daemon's vfio-pci probe gives it one.
# Every figure is printed on a `vfio-e2e:` line; the Rust test asserts on those lines.
# Exit 0 only if every check passed.

CYCLES=${VFIO_E2E_CYCLES:-3000}
IRQCHIPS=${VFIO_E2E_IRQCHIPS:-kernel}
SOCK=/run/intxd/control.sock
FAILS=0
say() { echo "vfio-e2e: $*"; }
pass() { say "PASS: $*"; }
fail() { say "FAIL: $*"; FAILS=$((FAILS + 1)); }
rd() { cat "$1" 2>/dev/null || echo '?'; }
drv() { [ -e "$1/driver" ] && basename "$(readlink "$1/driver")" || echo none; }
up() { cut -d' ' -f1 /proc/uptime; }
# json_num FILE KEY: the first "KEY": number in a pretty-printed JSON file
json_num() { sed -n "s/^ *\"$2\": \\([0-9.e+-]*\\),\\{0,1\\}$/\\1/p" "$1" | head -1; }
json_str() { sed -n "s/^ *\"$2\": \"\\([^\"]*\\)\",\\{0,1\\}$/\\1/p" "$1" | head -1; }
finish() {
    if [ -n "${DPID:-}" ] && kill -0 "$DPID" 2>/dev/null; then kill -TERM "$DPID"; wait "$DPID"; fi
    echo "---- daemon log ----"; cat /tmp/daemon.log 2>/dev/null; echo "---- end of daemon log ----"
    if [ "$FAILS" = 0 ]; then say "ALL PASSED"; exit 0; fi
    say "$FAILS check(s) FAILED"; exit 1
}

# ---- the device and its state before -----------------------------------------------------------
EDU=
for d in /sys/bus/pci/devices/*; do
    if [ "$(rd "$d/vendor")" = 0x1234 ] && [ "$(rd "$d/device")" = 0x11e8 ]; then EDU=${d##*/}; fi
done
[ -n "$EDU" ] || { fail "no edu device (1234:11e8): QEMU needs -device edu"; finish; }
D=/sys/bus/pci/devices/$EDU
BEFORE_DRV=$(drv "$D") BEFORE_OVR=$(rd "$D/driver_override")
grp() { [ -e "$D/iommu_group" ] && basename "$(readlink "$D/iommu_group")" || echo none; }
say "edu at $EDU, iommu_group $(grp), irq pin $(od -An -tu1 -j 0x3d -N1 "$D/config" | tr -d ' ')"
say "sysfs before: driver=$BEFORE_DRV driver_override=$BEFORE_OVR"
[ "$BEFORE_DRV" = none ] || fail "edu should start without a driver (it has $BEFORE_DRV)"
# The config names edu by address; -nodefaults puts it at 00:01.0, but follow the guest.
sed "s/^pci = \"0000:00:01.0\"/pci = \"$EDU\"/" /edu.toml > /tmp/edu.toml
chmod 0644 /tmp/edu.toml
# The same device without its exerciser table (the last table of the file): a loopback soak.
sed '/^\[device.exerciser\]/,$d' /tmp/edu.toml > /tmp/edu-loopback.toml

# ---- 1. the daemon binds edu through sysfs --------------------------------------------------------
T0=$(up)
/bin/intxd run --config /tmp/edu.toml > /tmp/daemon.log 2>&1 &
DPID=$!
i=0
while [ ! -S "$SOCK" ] && [ $i -lt 200 ] && kill -0 "$DPID" 2>/dev/null; do sleep 0.05; i=$((i + 1)); done
if [ -S "$SOCK" ]; then pass "intxd run is up (socket after $i polls, guest uptime $T0 -> $(up))"; else fail "intxd run did not create $SOCK"; finish; fi
# The socket is bound before the devices come up; a client waits in its backlog
# until bring-up is done, so the first status answer comes after the bind.
/bin/intxd status --socket "$SOCK" --json > /tmp/status0.json 2>&1
BOUND_DRV=$(drv "$D")
say "sysfs bound: driver=$BOUND_DRV driver_override=$(rd "$D/driver_override") iommu_group=$(grp)"
if [ "$BOUND_DRV" = vfio-pci ]; then pass "the daemon bound $EDU to vfio-pci through sysfs"; else fail "driver is $BOUND_DRV, not vfio-pci"; fi
say "status: state=$(json_str /tmp/status0.json state) pci=$(json_str /tmp/status0.json pci) vendor=$(json_num /tmp/status0.json vendor) device=$(json_num /tmp/status0.json device) pin=$(json_num /tmp/status0.json pin) shared_line=$(sed -n 's/^ *"shared_line": \([a-z]*\),\{0,1\}$/\1/p' /tmp/status0.json | head -1) pci_2_3=$(sed -n 's/^ *"pci_2_3": \([a-z]*\),\{0,1\}$/\1/p' /tmp/status0.json | head -1)"
[ "$(json_str /tmp/status0.json state)" = opened ] || fail "the device is $(json_str /tmp/status0.json state), not opened: $(json_str /tmp/status0.json failure)"

# ---- 2-4. the soak, direct and relay --------------------------------------------------------------
soak() { # mode irqchip [loopback]
    m=$1 c=$2 lb=${3:-} cfg=/tmp/edu.toml
    [ -n "$lb" ] && cfg=/tmp/edu-loopback.toml
    l=$m$lb; [ "$c" = "${IRQCHIPS%% *}" ] || l="$l $c"
    k=$m$lb-$c
    t=$(up)
    RUST_LOG=warn,intxd::soak=info /bin/intxd soak --connect "$SOCK" --device edu0 --config "$cfg" \
        --mode "$m" --irqchip "$c" --cycles "$CYCLES" --json > "/tmp/soak-$k.json" 2> "/tmp/soak-$k.err"
    rc=$?
    sed "s/^/vfio-e2e: soak $l stderr: /" "/tmp/soak-$k.err"
    f=/tmp/soak-$k.json
    cyc=$(json_num "$f" cycles) del=$(json_num "$f" delivered) lost=$(json_num "$f" lost)
    spur=$(json_num "$f" spurious) trig=$(json_num "$f" triggered) eois=$(json_num "$f" eois)
    rate=$(json_num "$f" rate_per_s) el=$(json_num "$f" elapsed_s) wk=$(json_num "$f" loop_wakeups_per_irq)
    got=$(json_str "$f" mode)$lb
    say "soak $l: rc=$rc mode=$got irqchip=$(json_str "$f" irqchip) cycles=$cyc delivered=$del lost=$lost spurious=$spur triggered=$trig eois=$eois rate=${rate%%.*}/s elapsed=${el}s wakeups_per_irq=$wk guest_uptime=$t->$(up)"
    if [ "$rc" = 0 ] && [ "$got" = "$m$lb" ] && [ "$cyc" = "$CYCLES" ] && [ "$del" = "$CYCLES" ] && [ "$lost" = 0 ] && [ "$spur" = 0 ] && [ "$eois" = "$CYCLES" ]; then
        pass "soak $l: $del of $CYCLES interrupts through vfio-pci, $eois EOIs, 0 lost, 0 spurious"
    else
        fail "soak $l (rc $rc): $(tr -s ' \n' ' ' < "$f")"
    fi
    if [ -n "$lb" ]; then
        [ "$trig" = "$CYCLES" ] && pass "soak $l: $trig loopback triggers" || fail "soak $l: $trig loopback triggers, not $CYCLES"
        grep -q "delivered by vfio-pci's loopback and EOId by the guest" "/tmp/soak-$k.err" && pass "soak $l: driven by loopback" || fail "soak $l: no loopback line"
        return
    fi
    grep -q "BAR 0 page mapped into the guest" "/tmp/soak-$k.err" && pass "soak $l: edu's BAR0 page is in the soak guest" || fail "soak $l: no BAR mapping line"
    grep -q "acked and re-raised by the guest's ISR through the BAR" "/tmp/soak-$k.err" && pass "soak $l: the guest ISR acked edu through its BAR" || fail "soak $l: no ISR line"
}
for c in $IRQCHIPS; do
    soak direct "$c"
    soak relay "$c"
done
# Loopback (no exerciser: any INTx function) with the first irqchip.
soak direct "${IRQCHIPS%% *}" loopback
soak relay "${IRQCHIPS%% *}" loopback
/bin/intxd status --socket "$SOCK" --json > /tmp/status1.json 2>&1
say "status after: state=$(json_str /tmp/status1.json state) host_interrupts=$(json_num /tmp/status1.json host_interrupts) attaches=$(json_num /tmp/status1.json attaches)"

# ---- 6. SIGTERM gives the device back --------------------------------------------------------------
kill -TERM "$DPID"
i=0
while kill -0 "$DPID" 2>/dev/null && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
if kill -0 "$DPID" 2>/dev/null; then fail "intxd run did not stop within 10 s of SIGTERM"; else wait "$DPID"; say "intxd run exited with $? after SIGTERM"; fi
DPID=
AFTER_DRV=$(drv "$D") AFTER_OVR=$(rd "$D/driver_override")
say "sysfs after: driver=$AFTER_DRV driver_override=$AFTER_OVR"
if [ "$AFTER_DRV" = "$BEFORE_DRV" ]; then pass "driver link as before ($AFTER_DRV)"; else fail "driver link is $AFTER_DRV, was $BEFORE_DRV"; fi
if [ "$AFTER_OVR" = "(null)" ]; then pass "driver_override cleared"; else fail "driver_override is '$AFTER_OVR'"; fi
finish
