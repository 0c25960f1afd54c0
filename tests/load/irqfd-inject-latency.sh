#!/bin/sh
# The kernel-irqchip soak's stalls under load, and whose they are.
#
# Runs `intxd soak --irqchip kernel` beside two busy loops while tracefs
# records when KVM queues and when a kworker runs `irqfd_inject`, the work
# item by which KVM asserts the GSI of a resampling irqfd (a level GSI cannot
# be injected from the eventfd's wake-up, so KVM defers it to the system
# workqueue). Prints the soak's table and the work item's queue-to-run
# latency: the soak's worst raise-to-ack latency follows the kworker's.
#
# Usage (as root, after `cargo build --release`):
#   tests/load/irqfd-inject-latency.sh [CYCLES] [ROUNDS]
# Needs tracefs in the kernel (CONFIG_FTRACE, CONFIG_EVENT_TRACING) and
# irqfd_inject in /proc/kallsyms. Touches nothing it did not start: its own
# tracefs mount (removed at the end), its own two busy loops (killed by pid).
set -eu

cycles=${1:-12288}
rounds=${2:-3}
here=$(cd "$(dirname "$0")/../.." && pwd)
intxd=${INTXD:-$here/target/release/intxd}
[ "$(id -u)" = 0 ] || { echo "irqfd-inject-latency: run as root (tracefs)" >&2; exit 2; }
[ -x "$intxd" ] || { echo "irqfd-inject-latency: build first: $intxd is missing" >&2; exit 2; }
addr=$(awk '$3 == "irqfd_inject" { print $1; exit }' /proc/kallsyms)
case "$addr" in
    ""|0000000000000000) echo "irqfd-inject-latency: irqfd_inject is not in /proc/kallsyms (KVM not loaded, or kptr_restrict)" >&2; exit 2 ;;
esac

work=$(mktemp -d /tmp/irqfd-latency.XXXXXX)
tr=$work/tracefs
mkdir "$tr"
mount -t tracefs nodev "$tr"
b1= b2=
cleanup() {
    [ -n "$b1" ] && kill "$b1" 2>/dev/null || true
    [ -n "$b2" ] && kill "$b2" 2>/dev/null || true
    echo 0 > "$tr/tracing_on" 2>/dev/null || true
    for e in workqueue_queue_work workqueue_execute_start; do
        echo 0 > "$tr/events/workqueue/$e/enable" 2>/dev/null || true
        echo 0 > "$tr/events/workqueue/$e/filter" 2>/dev/null || true
    done
    umount "$tr" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

for e in workqueue_queue_work workqueue_execute_start; do
    echo "function == 0x$addr" > "$tr/events/workqueue/$e/filter"
    echo 1 > "$tr/events/workqueue/$e/enable"
done
echo 32768 > "$tr/buffer_size_kb"
echo > "$tr/trace"

sh -c 'while :; do :; done' & b1=$!
sh -c 'while :; do :; done' & b2=$!
echo 1 > "$tr/tracing_on"
i=0
while [ "$i" -lt "$rounds" ]; do
    RUST_LOG=warn "$intxd" soak --mode all --irqchip kernel --cycles "$cycles" || true
    i=$((i + 1))
done
echo 0 > "$tr/tracing_on"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"

# Pair each queueing of the work item with its next run.
awk '
/workqueue_queue_work:/ || /workqueue_execute_start:/ {
    for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+\.[0-9]+:$/) { t = substr($i, 1, length($i) - 1) + 0 }
    match($0, /work struct[= ][0-9a-f]+/); w = substr($0, RSTART + 12, RLENGTH - 12)
    if ($0 ~ /queue_work:/) { if (!(w in q)) q[w] = t }
    else if (w in q) {
        l = t - q[w]; delete q[w]; n++
        if (l > max) max = l
        if (l > 0.1) slow100++
        if (l > 0.01) slow10++
    }
}
END {
    printf "irqfd_inject: %d runs; queued-to-run max %.1f ms; %d over 10 ms, %d over 100 ms\n", n, max * 1000, slow10, slow100
}' "$tr/trace"
