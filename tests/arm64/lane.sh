#!/bin/sh
# tests/arm64/lane.sh: the arm64 lane's guest script (runs as /test.sh under busybox sh in the
# emulated arm64 host that tests/qemu/run.sh boots with ARCH=aarch64: EL2, GICv3, SMMUv3, edu).
# tests/arm64_lane.rs builds the initramfs with /lane.env (settings and build-time paths), the
# aarch64 intxd, /vfio-e2e.sh, /edu.toml, the config fixture under /src/config and the aarch64
# test binaries under /tbin. In order:
#   (a) `intxd soak --json --mode all --irqchip all --cycles N` on the emulated device, and
#       the user irqchip once more with the vCPU kick off (INTXD_SOAK_KICK=off), to see whether
#       this kernel wakes a vCPU parked in WFI on a KVM_IRQ_LINE from another thread;
#   (b) tests/qemu/vfio-e2e.sh: the daemon binds edu behind the SMMUv3 (its IOMMU group comes
#       with the vfio-pci probe), soaks it direct and relay with the vGIC and the user irqchip,
#       gives it back at SIGTERM;
#   (c) the project's test binaries, under the aarch64 seccomp filter where they start daemons,
#       each without the tests SKIP_<binary> (lane.env) names (tests/arm64_lane.rs says why),
#       each test's end stamped with the guest uptime (`test-time` lines);
#   (d) `intxd bench` with short settings.
# Figures come out as `arm64-lane: ...` lines and `arm64-json NAME: {one-line JSON}`; the Rust
# test asserts on them. Exit 0 only if every step ran clean.
. /lane.env
FAILS=0
say() { echo "arm64-lane: $*"; }
fail() { say "FAIL: $*"; FAILS=$((FAILS + 1)); }
up() { cut -d' ' -f1 /proc/uptime; }
json() { printf 'arm64-json %s: ' "$1"; tr -d '\n' < "$2"; echo; }
STEPS=${STEPS:-soak-sim nokick vfio tests bench}
# step NAME: announces it; false when STEPS (lane.env) leaves it out
step() { case " $STEPS " in *" $1 "*) say "step $1 at uptime $(up)s" ;; *) return 1 ;; esac; }

say "kernel $(uname -r) cpus $(grep -c ^processor /proc/cpuinfo)"
dmesg | grep -E 'kvm \[[0-9]+\]: (VHE|Hyp|nVHE)|arm-smmu-v3.*ias|GICv3: ' | sed 's/^/arm64-lane: dmesg: /' | head -6
[ -c /dev/kvm ] || fail "no /dev/kvm in the guest"
# What the test binaries baked in at build time: the intxd binary and the source tree.
mkdir -p "$(dirname "$BIN_EXE")" "$MANIFEST" /var/tmp
ln -sf /bin/intxd "$BIN_EXE"
ln -sfn /src/config "$MANIFEST/config"

# ---- (a) the soak on the emulated device --------------------------------------------------------
if step soak-sim; then
timeout "$SOAK_TIMEOUT" /bin/intxd soak --json --mode all --irqchip all --cycles "$CYCLES" \
    > /tmp/soak-sim.json 2> /tmp/soak-sim.err
rc=$?
say "soak-sim rc=$rc"
[ "$rc" = 0 ] || { fail "soak-sim exited $rc"; tail -20 /tmp/soak-sim.err | sed 's/^/arm64-lane: soak-sim stderr: /'; }
json soak-sim /tmp/soak-sim.json
fi

# ---- (a') the user irqchip without the vCPU kick: does this kernel wake a vCPU in WFI? --------
# (KVM_IRQ_LINE from another thread; fixed upstream in 2026, "KVM: arm64: Wake-up from WFI when
# irqchip is in userspace"). A stall here is a finding about the kernel, not a failure.
if step nokick; then
INTXD_SOAK_KICK=off timeout "$SOAK_TIMEOUT" /bin/intxd soak --json --mode direct --irqchip user \
    --cycles "${NOKICK_CYCLES:-$CYCLES}" > /tmp/soak-nokick.json 2> /tmp/soak-nokick.err
say "soak-nokick rc=$?"
tail -5 /tmp/soak-nokick.err | sed 's/^/arm64-lane: soak-nokick stderr: /'
json soak-nokick /tmp/soak-nokick.json
fi

# ---- (b) edu through vfio-pci behind the SMMUv3 --------------------------------------------------
if step vfio; then
VFIO_E2E_CYCLES=${VFIO_CYCLES:-$CYCLES} VFIO_E2E_IRQCHIPS="kernel user" sh /vfio-e2e.sh
rc=$?
say "vfio-e2e rc=$rc"
[ "$rc" = 0 ] || fail "vfio-e2e.sh exited $rc"
for f in /tmp/status0.json /tmp/soak-*-*.json; do
    [ -f "$f" ] && json "vfio-$(basename "$f" .json)" "$f"
done
fi

# ---- (c) the test binaries -------------------------------------------------------------------------
cd /tmp || exit 1
step tests || TESTS=
for tb in $TESTS; do
    [ -x "/tbin/$tb" ] || { fail "no test binary $tb"; continue; }
    t=$(up)
    eval "skip=\${SKIP_$tb:-}"
    set --
    for s in $skip; do set -- "$@" --skip "$s"; done
    [ -n "$skip" ] && say "tests $tb: leaving out $skip"
    # A sampler stamps the binary's new output lines with the guest uptime once a second: when
    # each test ended (the lane's timings). The output goes to a file, never a pipe, so a daemon a
    # killed test leaves behind cannot hold the lane up.
    : > "/tmp/$tb.out"; : > "/tmp/$tb.timed"; rm -f /tmp/tb.done
    stamp() { m=$(wc -l < "/tmp/$tb.out"); [ "$m" -gt "$n" ] || return 0
              sed -n "$((n + 1)),${m}p" "/tmp/$tb.out" | sed "s/^/$(up) /" >> "/tmp/$tb.timed"; n=$m; }
    ( n=0; until [ -e /tmp/tb.done ]; do stamp; sleep 1; done; stamp ) &
    sampler=$!
    timeout "$TEST_TIMEOUT" "/tbin/$tb" --test-threads=2 --exact "$@" > "/tmp/$tb.out" 2>&1
    rc=$?
    touch /tmp/tb.done; wait "$sampler"
    sed -n "s/^\([0-9.]*\) test \(.*\) \.\.\. \([a-zA-Z]*\)$/arm64-lane: test-time $tb \1s \2 \3/p" "/tmp/$tb.timed"
    r=$(grep '^test result:' "/tmp/$tb.out" | tail -1)
    num() { echo "$r" | sed -n "s/.* \([0-9]*\) $1.*/\1/p"; }
    say "tests $tb: rc=$rc passed=$(num passed) failed=$(num failed) ignored=$(num ignored) uptime=$t->$(up)"
    grep -E '^test .* \.\.\. FAILED$' "/tmp/$tb.out" | sed "s/^test \(.*\) \.\.\. FAILED$/arm64-lane: tests $tb FAILED \1/"
    if [ "$rc" != 0 ]; then
        fail "tests $tb rc=$rc"
        grep -A4 'panicked at' "/tmp/$tb.out" | grep -v '^note:' | head -40 | sed "s/^/arm64-lane: tests $tb | /"
    fi
done

# ---- (d) the benchmark -------------------------------------------------------------------------------
if step bench; then
# shellcheck disable=SC2086
timeout "$BENCH_TIMEOUT" /bin/intxd bench --json $BENCH_ARGS > /tmp/bench.json 2> /tmp/bench.err
rc=$?
say "bench rc=$rc"
[ "$rc" = 0 ] || { fail "bench exited $rc"; tail -20 /tmp/bench.err | sed 's/^/arm64-lane: bench stderr: /'; }
json bench /tmp/bench.json
fi

say "end at uptime $(up)s"
[ "$FAILS" = 0 ] && { say "ALL PASSED"; exit 0; }
say "$FAILS step(s) FAILED"
exit 1
