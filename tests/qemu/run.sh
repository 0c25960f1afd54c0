#!/bin/bash
# tests/qemu/run.sh CACHE_DIR INITRD [TIMEOUT_SECS]
#
# Boots the guest kernel from prepare.sh with INITRD (from mkinitrd.sh) under QEMU TCG:
#   q35 + emulated Intel IOMMU with interrupt remapping + the "edu" PCI device (INTx pin A),
#   -cpu max (AuthenticAMD with SVM+NPT under TCG, so kvm_amd gives the guest /dev/kvm).
# With ARCH=aarch64 in CACHE_DIR/env (tests/arm64/prepare.sh): qemu-system-aarch64 -M virt with
#   EL2 (virtualization=on: the guest has /dev/kvm), a GICv3 and an emulated SMMUv3, -cpu max,
#   multi-threaded TCG, and "edu" behind the SMMU.
# Against TCG hangs (an x86 guest whose timer interrupt is stuck, halted for good), QEMU's
# monitor sends a serial break (`chardev-send-break`) every INTXD_QEMU_BREAK_SECS: the UART's
# interrupt wakes the guest CPU, and with no character after it the break is dropped.
# The serial console goes to stdout and to a log file (lines prefixed with host seconds since
# QEMU started). Exits with the guest script's exit code, parsed from "INTXD-QEMU-RESULT: <n>".
# Exit codes of its own: 124 timeout, 125 no result line (QEMU error, kernel panic, /init crash),
# 126 bad usage / missing files.
#
# Environment (all optional):
#   INTXD_QEMU_LOG        log file (default: INITRD with .log instead of .cpio.gz)
#   INTXD_QEMU_ACCEL      tcg (default) | kvm   (kvm adds kernel-irqchip=split, -cpu host)
#   INTXD_QEMU_CPU        default: max under tcg, host under kvm
#   INTXD_QEMU_SMP        default 1 (as fast as 2 on a 2-core host under TCG, see README); 2 on aarch64
#   INTXD_QEMU_BREAK_SECS seconds between serial breaks (default 2, 0 on aarch64; 0: none)
#   INTXD_QEMU_MEM        default 1024 (MiB; 512 boots equally fast)
#   INTXD_QEMU_APPEND     extra kernel command line (e.g. vfio_iommu_type1.allow_unsafe_interrupts=1)
#   INTXD_QEMU_ARGS       extra QEMU arguments (word-split)
#   INTXD_QEMU_INTERACTIVE=1  no timeout/log: console on this terminal and a guest shell after
#                         the test (intxd.shell=1); Ctrl-A X quits QEMU
set -uo pipefail
export LC_ALL=C   # EPOCHREALTIME must use "." as the decimal point
shopt -s extglob

usage() { echo "usage: $0 CACHE_DIR INITRD [TIMEOUT_SECS]" >&2; exit 126; }
[ $# -ge 2 ] || usage
CACHE=$1 INITRD=$2 TMO=${3:-150}
[ -f "$CACHE/env" ] || { echo "run: $CACHE/env missing: run tests/qemu/prepare.sh $CACHE first" >&2; exit 126; }
# shellcheck disable=SC1091
. "$CACHE/env"
[ -f "$INITRD" ] || { echo "run: no initrd $INITRD" >&2; exit 126; }
[[ $TMO =~ ^[0-9]+$ ]] || usage
LOG=${INTXD_QEMU_LOG:-${INITRD%.cpio.gz}.log}
[ "$LOG" != "$INITRD" ] || LOG=$INITRD.log

ACCEL=${INTXD_QEMU_ACCEL:-tcg}
CPU=${INTXD_QEMU_CPU:-max}
if [ "${ARCH:-x86_64}" = aarch64 ]; then
    MACHINE=virt,virtualization=on,gic-version=3,iommu=smmuv3
    [ "$ACCEL" = tcg ] && ACCEL=tcg,thread=multi
    SMP=${INTXD_QEMU_SMP:-2}
    APPEND="console=ttyAMA0 panic=-1 loglevel=4"
    IOMMU=()
else
    MACHINE=q35
    if [ "$ACCEL" = kvm ]; then
        MACHINE=q35,kernel-irqchip=split   # intremap=on with the KVM accelerator needs a split irqchip
        CPU=${INTXD_QEMU_CPU:-host}
    fi
    SMP=${INTXD_QEMU_SMP:-1}
    # no_timer_check: under load the early check that the timer ticks through the remapped
    # IO-APIC can miss its window and panic the boot ("timer doesn't work through
    # Interrupt-remapped IO-APIC"); the lanes saw it about once in five loaded boots.
    APPEND="console=ttyS0 intel_iommu=on panic=-1 loglevel=4 edd=off no_timer_check"
    IOMMU=(-device intel-iommu,intremap=on)
fi
APPEND="$APPEND ${INTXD_QEMU_APPEND:-}"
# shellcheck disable=SC2206
EXTRA=(${INTXD_QEMU_ARGS:-})
MON=$(mktemp -u "${TMPDIR:-/tmp}/intxd-qemu-mon.XXXXXX")
CMD=("$QEMU" -machine "$MACHINE" -accel "$ACCEL" -cpu "$CPU"
     -smp "$SMP" -m "${INTXD_QEMU_MEM:-1024}"
     -nodefaults -no-user-config -nographic -serial stdio -no-reboot
     "${IOMMU[@]}" -device edu
     -kernel "$VMLINUZ" -initrd "$INITRD" -append "$APPEND" "${EXTRA[@]}")
# Not on aarch64: QEMU 7.2 crashed once in its main loop (a segfault at an address ending in
# 0x400, PL011's break flag) with breaks sent into virt's PL011; arm64 runs rely on the timeout
# and the soak's own stall watchdog.
BREAK_DEFAULT=2
[ "${ARCH:-x86_64}" = aarch64 ] && BREAK_DEFAULT=0
BREAK_SECS=${INTXD_QEMU_BREAK_SECS:-$BREAK_DEFAULT}
[ "$BREAK_SECS" = 0 ] || CMD+=(-monitor "unix:$MON,server=on,wait=off")

echo "run: ${CMD[*]}" >&2
if [ "${INTXD_QEMU_INTERACTIVE:-0}" = 1 ]; then
    # debugging: the console on this terminal, a shell after the test (Ctrl-A X quits QEMU)
    for i in "${!CMD[@]}"; do
        [ "${CMD[$i]}" = stdio ] && CMD[$i]=mon:stdio
        [ "${CMD[$i]}" = "$APPEND" ] && CMD[$i]="$APPEND intxd.shell=1"
    done
    exec "${CMD[@]}"
fi
echo "run: timeout ${TMO}s, log $LOG" >&2
mkdir -p "$(dirname "$LOG")"
: > "$LOG"
RCFILE=$(mktemp)
BREAKER=
trap '[ -z "$BREAKER" ] || kill "$BREAKER" 2>/dev/null; rm -f "$RCFILE" "$MON"' EXIT
if [ "$BREAK_SECS" != 0 ]; then
    # one monitor connection for the whole run; it ends when QEMU closes the socket
    python3 - "$MON" "$BREAK_SECS" <<'PY' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
for _ in range(600):
    try:
        s.connect(sys.argv[1])
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit(0)
s.settimeout(float(sys.argv[2]))
try:
    while True:
        s.sendall(b"chardev-send-break serial0\n")
        try:
            if not s.recv(4096):
                break
            time.sleep(float(sys.argv[2]))
        except socket.timeout:
            pass
except OSError:
    pass
PY
    BREAKER=$!
fi

T0=${EPOCHREALTIME/./}
elapsed() { local us=$(( ${EPOCHREALTIME/./} - T0 )); printf '%3d.%02d' $((us / 1000000)) $((us % 1000000 / 10000)); }
RESULT= RESULT_AT=
while IFS= read -r line || [ -n "$line" ]; do
    line=${line//$'\r'/}
    line=${line//^@/}   # a serial break's NUL, echoed by a guest tty that does not ignore breaks
    line=${line//$'\e'\[*([0-9;?])[a-zA-Z]/}   # SeaBIOS' terminal control sequences
    el=$(elapsed)
    printf '[%s] %s\n' "$el" "$line"
    printf '[%s] %s\n' "$el" "$line" >> "$LOG"
    if [[ $line =~ INTXD-QEMU-RESULT:\ ([0-9]+) ]]; then
        RESULT=${BASH_REMATCH[1]} RESULT_AT=${el##* }
    fi
done < <(timeout -k 5 "$TMO" "${CMD[@]}" </dev/null 2>&1; echo $? > "$RCFILE")
TOTAL=$(elapsed); TOTAL=${TOTAL##* }
QRC=$(cat "$RCFILE" 2>/dev/null); QRC=${QRC:-?}

if [ -n "$RESULT" ]; then
    echo "run: guest result $RESULT at ${RESULT_AT}s after QEMU start; QEMU exited ($QRC) after ${TOTAL}s" | tee -a "$LOG" >&2
    [ "$QRC" = 0 ] || echo "run: WARNING: QEMU exit status $QRC after the result line (poweroff failed?)" | tee -a "$LOG" >&2
    exit "$RESULT"
fi
if [ "$QRC" = 124 ] || [ "$QRC" = 137 ]; then
    echo "run: TIMEOUT: no INTXD-QEMU-RESULT line within ${TMO}s; QEMU killed (log: $LOG)" | tee -a "$LOG" >&2
    exit 124
fi
echo "run: FAILED: QEMU exited ($QRC) after ${TOTAL}s without an INTXD-QEMU-RESULT line" \
     "(kernel panic, /init crash or QEMU error; see $LOG)" | tee -a "$LOG" >&2
exit 125
