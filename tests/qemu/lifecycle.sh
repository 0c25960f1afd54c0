#!/bin/sh
# tests/qemu/lifecycle.sh: the guest lifecycle on real vfio-pci, inside the QEMU guest (runs as
# /test.sh under busybox sh; tests/qemu_lifecycle.rs builds the initramfs with /edu.toml beside it
# and boots QEMU with a second edu behind a PCIe root port, INTXD_QEMU_ARGS).
#
# The edu behind the root port is the one soaked: vfio-pci can reset it (reset_method "bus", a
# secondary bus reset of its port), which the edu on the root bus cannot. In order:
#   1. `intxd run` binds it to vfio-pci through sysfs;
#   2. `intxd soak --connect --lifecycle`, direct then relay (in-kernel irqchip, nested KVM): in one
#      VM and one attach per mode, INTx soak, suspend_intx, MSI on the attach's device fd (an
#      eventfd that is a KVM irqfd on an MSI route to the soak guest's local APIC) and an MSI soak,
#      MSI off, resume_intx, INTx soak, reset, INTx soak, the guest line moved from GSI 10 to 11 with
#      one held level, INTx soak on GSI 11; every phase's counts exact, nothing pending;
#   3. SIGTERM gives the device back.
# The soak prints one `lifecycle:` line per phase and one per mode; this script passes them on and
# adds its own `lifecycle-sh:` lines. Exit 0 only if every check passed.

CYCLES=${LIFECYCLE_CYCLES:-1000}
SOCK=/run/intxd/control.sock
FAILS=0
say() { echo "lifecycle-sh: $*"; }
fail() { say "FAIL: $*"; FAILS=$((FAILS + 1)); }
rd() { cat "$1" 2>/dev/null || echo '?'; }
drv() { [ -e "$1/driver" ] && basename "$(readlink "$1/driver")" || echo none; }
finish() { # the daemon's log only when something failed
    [ -z "${DPID:-}" ] || { kill -TERM "$DPID" 2>/dev/null; wait "$DPID"; }
    [ "$FAILS" = 0 ] && { say "ALL PASSED"; exit 0; }
    sed 's/^/lifecycle-sh: daemon: /' /tmp/daemon.log 2>/dev/null
    say "$FAILS check(s) FAILED"; exit 1
}

EDU=
for d in /sys/bus/pci/devices/*; do
    if [ "$(rd "$d/vendor")" = 0x1234 ] && [ "$(rd "$d/device")" = 0x11e8 ] && [ -e "$d/reset_method" ]; then
        EDU=${d##*/}
    fi
done
[ -n "$EDU" ] || { fail "no edu (1234:11e8) with a reset method: QEMU needs -device pcie-root-port,id=rp1 -device edu,bus=rp1"; finish; }
D=/sys/bus/pci/devices/$EDU
BEFORE_DRV=$(drv "$D")
say "edu at $EDU reset_method=$(rd "$D/reset_method") irq=$(rd "$D/irq") driver=$BEFORE_DRV"
sed "s/^pci = \"0000:00:01.0\"/pci = \"$EDU\"/" /edu.toml > /tmp/edu.toml
chmod 0644 /tmp/edu.toml

/bin/intxd run --config /tmp/edu.toml > /tmp/daemon.log 2>&1 &
DPID=$!
i=0
while [ ! -S "$SOCK" ] && [ $i -lt 200 ] && kill -0 "$DPID" 2>/dev/null; do sleep 0.05; i=$((i + 1)); done
[ -S "$SOCK" ] || { fail "intxd run did not create $SOCK"; finish; }
/bin/intxd status --socket "$SOCK" > /dev/null 2>&1
[ "$(drv "$D")" = vfio-pci ] || fail "driver is $(drv "$D"), not vfio-pci"

T=$(cut -d" " -f1 /proc/uptime)
RUST_LOG=warn,intxd::soak=info /bin/intxd soak --connect "$SOCK" --device edu0 --config /tmp/edu.toml \
    --lifecycle --mode all --cycles "$CYCLES" > /tmp/lifecycle.out 2> /tmp/lifecycle.err
RC=$?
sed 's/^/lifecycle-sh: stderr: /' /tmp/lifecycle.err
cat /tmp/lifecycle.out
say "soak: rc=$RC cycles=$CYCLES guest_uptime=$T->$(cut -d" " -f1 /proc/uptime)"
[ "$RC" = 0 ] || fail "intxd soak --lifecycle exited with $RC"
for m in direct relay; do
    grep -q "^lifecycle: edu0 $m pci=$EDU phases=6 intx_after_reset=enabled clean=true$" /tmp/lifecycle.out ||
        fail "lifecycle $m is not clean"
done

kill -TERM "$DPID"
i=0
while kill -0 "$DPID" 2>/dev/null && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
if kill -0 "$DPID" 2>/dev/null; then fail "intxd run did not stop within 10 s of SIGTERM"; else wait "$DPID"; fi
DPID=
say "sysfs after: driver=$(drv "$D") driver_override=$(rd "$D/driver_override")"
[ "$(drv "$D")" = "$BEFORE_DRV" ] || fail "driver link is $(drv "$D"), was $BEFORE_DRV"
finish
