#!/bin/sh
# /init of the intxd QEMU test initramfs (copied there by tests/qemu/mkinitrd.sh).
# Runs as PID 1 under busybox sh inside the guest:
#   mounts, loads the vfio/kvm modules in dependency order, runs /test.sh,
#   prints "INTXD-QEMU-RESULT: <exit code>" and powers the VM off.
# Kernel command line knobs:
#   <module>.<param>=<value>   forwarded to insmod (busybox insmod does not read /proc/cmdline)
#   intxd.shell=1              start a shell on the console after the test (interactive debugging)
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
# a cross-built initramfs has only /bin/sh (mkinitrd.sh could not run a foreign busybox)
[ -e /bin/mount ] || /bin/busybox --install -s
export HOME=/root TERM=dumb   # the serial console is a tty; keep TUI output (progress bars) plain
umask 022

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
ln -sf /proc/self/fd /dev/fd 2>/dev/null
hostname intxd-qemu
# run.sh's serial breaks (INTXD_QEMU_BREAK_SECS) are there for the UART interrupt they raise; the
# tty ignores them (by default every second one becomes a NUL read from the console, echoed as
# `^@` into whatever line the guest is writing)
stty -F /dev/console ignbrk 2>/dev/null || stty ignbrk 2>/dev/null

up() { cut -d' ' -f1 /proc/uptime; }
say() { echo "intxd-qemu: $*"; }
say "init at uptime $(up)s, kernel $(uname -r), cpu $(grep -m1 '^vendor_id' /proc/cpuinfo | cut -d: -f2 | tr -d ' ')"

# ---- modules ----------------------------------------------------------------------------------
# *.order files: "<name> <file>" in load order (dependencies first), written by mkinitrd.sh.
# Only the KVM vendor module matching the vCPU is loaded: TCG's -cpu max is AuthenticAMD (SVM);
# a doomed insmod kvm-intel would cost ~0.6 s of emulated time.
O=/lib/modules/intxd-qemu
case "$(grep -m1 '^vendor_id' /proc/cpuinfo)" in
    *AuthenticAMD*|*HygonGenuine*) VENDOR=amd ;;
    *GenuineIntel*) VENDOR=intel ;;
    *) VENDOR=none ;;
esac
MODFAIL=
for f in $O/common.order $O/$VENDOR.order; do
    [ -f "$f" ] || continue
    while read -r name file; do
        [ -n "$name" ] || continue
        grep -q "^$name " /proc/modules && continue
        params=$(tr ' ' '\n' < /proc/cmdline | sed -n "s/^$name\.//p" | tr '\n' ' ')
        # shellcheck disable=SC2086
        if ! out=$(insmod "$O/$file" $params 2>&1); then
            say "insmod $name FAILED: $out"
            MODFAIL="$MODFAIL $name"
        fi
    done < "$f"
done
say "modules loaded at uptime $(up)s:$(cut -d' ' -f1 /proc/modules | sort | tr '\n' ' ' | sed 's/^/ /')"
[ -n "$MODFAIL" ] && say "module load failures:$MODFAIL"

export INTXD_QEMU=1 INTXD_QEMU_MODFAIL="$MODFAIL"

# ---- the test ---------------------------------------------------------------------------------
say "test start at uptime $(up)s"
cd /tmp
sh /test.sh
rc=$?
say "test end at uptime $(up)s, rc=$rc"
if [ "$rc" != 0 ]; then
    echo "----- guest dmesg (last 60 lines) -----"
    dmesg | tail -60
    echo "----- end of dmesg -----"
fi

if grep -qw 'intxd.shell=1' /proc/cmdline; then
    say "intxd.shell=1: starting a shell; exit it to power off"
    TERM=vt100 setsid cttyhack sh
fi

# keep kernel messages from interleaving with the result line on the serial console
dmesg -n 1 2>/dev/null
sync
echo "INTXD-QEMU-RESULT: $rc"
poweroff -f
# poweroff -f does not return; if it ever does, do not let PID 1 exit (kernel panic)
sleep 5
echo o > /proc/sysrq-trigger
while :; do sleep 60; done
