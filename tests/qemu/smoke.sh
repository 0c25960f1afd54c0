#!/bin/sh
# tests/qemu/smoke.sh: guest-side smoke test (runs as /test.sh inside the QEMU guest, busybox sh).
# Proves the harness: the edu device (1234:11e8) sits in its own IOMMU group behind the emulated
# Intel vIOMMU, binds to vfio-pci by hand through sysfs, /dev/vfio/<group>, /dev/vfio/vfio and
# /dev/kvm (nested KVM on TCG's SVM) exist, and /bin/intxd plus its shared libraries run.
# Exit 0 only if every check passed.

FAILS=0
pass() { echo "smoke: PASS: $*"; }
fail() { echo "smoke: FAIL: $*"; FAILS=$((FAILS + 1)); }
check() { # description command...
    d=$1; shift
    if "$@"; then pass "$d"; else fail "$d"; fi
}
rd() { cat "$1" 2>/dev/null || echo '?'; }
drv() { [ -e "$1/driver" ] && basename "$(readlink "$1/driver")" || echo none; }

# ---- find the edu device -----------------------------------------------------------------------
EDU=
for d in /sys/bus/pci/devices/*; do
    if [ "$(rd "$d/vendor")" = 0x1234 ] && [ "$(rd "$d/device")" = 0x11e8 ]; then EDU=${d##*/}; fi
done
if [ -z "$EDU" ]; then
    fail "edu device 1234:11e8 not found (QEMU needs -device edu)"
    echo "PCI devices:"; for d in /sys/bus/pci/devices/*; do echo "  ${d##*/} $(rd "$d/vendor"):$(rd "$d/device")"; done
    exit 1
fi
pass "edu device found at $EDU"
D=/sys/bus/pci/devices/$EDU

# ---- lspci-style listing -------------------------------------------------------------------------
# (busybox has no lspci applet in Debian's busybox-static)
echo "---- lspci -nnvk (from sysfs) ----"
for d in /sys/bus/pci/devices/*; do
    echo "${d##*/} [$(rd "$d/class" | sed 's/^0x//')]: [$(rd "$d/vendor" | sed 's/^0x//'):$(rd "$d/device" | sed 's/^0x//')]" \
         "(rev $(rd "$d/revision" | sed 's/^0x//'))  driver=$(drv "$d")" \
         "iommu_group=$([ -e "$d/iommu_group" ] && basename "$(readlink "$d/iommu_group")" || echo none)"
done
echo "---- $EDU ----"
echo "  subsystem: $(rd "$D/subsystem_vendor"):$(rd "$D/subsystem_device")  irq: $(rd "$D/irq")" \
     " enable: $(rd "$D/enable")  driver_override: $(rd "$D/driver_override")"
# resource: one "start end flags" line per BAR; print the non-empty ones
i=0
while read -r start end flags; do
    if [ "$start" != 0x0000000000000000 ]; then
        echo "  region $i: $start-$end flags $flags"
    fi
    i=$((i + 1))
done < "$D/resource"
echo "  interrupt pin: $(od -An -tx1 -j 0x3d -N1 "$D/config" | tr -d ' ')  line: $(od -An -tu1 -j 0x3c -N1 "$D/config" | tr -d ' ')"
dmesg | grep -E 'DMAR-IR|IRQ remapping|DMAR: Intel|iommu.*Adding to iommu group' | sed 's/^/  dmesg: /' | head -8

# ---- IOMMU group --------------------------------------------------------------------------------
GROUP=
if [ -e "$D/iommu_group" ]; then
    GROUP=$(basename "$(readlink "$D/iommu_group")")
    pass "iommu_group $GROUP (members: $(ls "$D/iommu_group/devices" | tr '\n' ' '))"
else
    fail "$EDU has no iommu_group (is -device intel-iommu on the QEMU command line and intel_iommu=on?)"
fi

# ---- bind to vfio-pci by hand --------------------------------------------------------------------
[ -d /sys/bus/pci/drivers/vfio-pci ] || fail "vfio-pci driver not registered (module load failures:${INTXD_QEMU_MODFAIL:- none})"
ORIG=$(drv "$D")
echo "smoke: $EDU driver before: $ORIG"
if [ "$ORIG" != none ] && [ "$ORIG" != vfio-pci ]; then
    echo "$EDU" > "$D/driver/unbind" || fail "unbind from $ORIG"
fi
echo vfio-pci > "$D/driver_override" || fail "write driver_override"
[ "$(drv "$D")" = vfio-pci ] || echo "$EDU" > /sys/bus/pci/drivers_probe || fail "drivers_probe"
check "bound to vfio-pci (driver=$(drv "$D"))" [ "$(drv "$D")" = vfio-pci ]
ls -l /dev/vfio 2>&1 | sed 's/^/  /'
check "/dev/vfio/vfio is a char device" [ -c /dev/vfio/vfio ]
if [ -n "$GROUP" ]; then
    check "/dev/vfio/$GROUP is a char device" [ -c "/dev/vfio/$GROUP" ]
fi

# ---- nested KVM ---------------------------------------------------------------------------------
echo "  cpu: $(grep -m1 '^vendor_id' /proc/cpuinfo | cut -d: -f2) flags:$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -xE 'svm|npt|vmx|ept' | tr '\n' ' ' | sed 's/^/ /')"
ls -l /dev/kvm 2>&1 | sed 's/^/  /'
check "/dev/kvm is a char device (nested KVM)" [ -c /dev/kvm ]

# ---- the intxd binary -----------------------------------------------------------------------------
V=$(/bin/intxd --version 2>&1); rc=$?
echo "  /bin/intxd --version: $V (rc=$rc)"
case $V in intxd\ *) ok=$rc ;; *) ok=1 ;; esac
check "intxd --version runs" [ "$ok" = 0 ]

# ---- give the device back --------------------------------------------------------------------------
if [ "$(drv "$D")" = vfio-pci ]; then
    echo "$EDU" > /sys/bus/pci/drivers/vfio-pci/unbind || fail "unbind from vfio-pci"
fi
echo > "$D/driver_override" || fail "clear driver_override"
check "unbound (driver=$(drv "$D"))" [ "$(drv "$D")" = none ]
check "driver_override cleared ($(rd "$D/driver_override"))" [ "$(rd "$D/driver_override")" = "(null)" ]
if [ "$ORIG" != none ] && [ "$ORIG" != vfio-pci ]; then
    echo "$EDU" > /sys/bus/pci/drivers_probe
    check "rebound to $ORIG" [ "$(drv "$D")" = "$ORIG" ]
fi

if [ "$FAILS" = 0 ]; then
    echo "smoke: ALL PASSED"
    exit 0
fi
echo "smoke: $FAILS check(s) FAILED"
exit 1
