#!/usr/bin/env bash
# CI: build the cargo-fuzz targets in fuzz/ and run each for a bounded time.
#
#   .ci/fuzz.sh                      # 45 s per target
#   FUZZ_SECS=600 .ci/fuzz.sh        # longer
#   FUZZ_TARGETS=protocol .ci/fuzz.sh
#
# Runs on a clean clone, as root, with only the package registries reachable
# (crates.io for cargo-fuzz and the fuzz crate's dependencies, Debian for a
# C++ compiler if one is missing). Idempotent: installs only what is absent.
#
# Toolchain: stable Rust. cargo-fuzz passes nightly-only flags to rustc
# (-Zsanitizer=address, and -Z flags for the coverage instrumentation), so
# RUSTC_BOOTSTRAP=1 lets the stable compiler accept them. This is the
# documented escape hatch the Rust project uses to build itself; it enables
# unstable features only for this build, not for the main crate's CI.
#
# The committed corpus (fuzz/corpus/<target>/) is copied to a scratch
# directory and fuzzed there, so a CI run never grows it. A crash, panic,
# timeout or OOM stops that target's run; the reproducer is kept under
# fuzz/artifacts/<target>/ (git-ignored) and its path printed, and the script
# exits non-zero after running the remaining targets. Reproduce with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
export RUSTC_BOOTSTRAP=1

FUZZ_SECS="${FUZZ_SECS:-45}"
FUZZ_TARGETS="${FUZZ_TARGETS:-config protocol}"
CARGO_FUZZ_VERSION="${CARGO_FUZZ_VERSION:-0.13.2}"
case "$FUZZ_SECS" in
  '' | *[!0-9]* | 0)
    echo "FATAL: FUZZ_SECS must be a positive whole number of seconds, not '$FUZZ_SECS'" >&2
    exit 2
    ;;
esac

# --- tools (idempotent) -----------------------------------------------------
if ! command -v c++ >/dev/null 2>&1; then
  # libfuzzer-sys compiles libFuzzer's C++ sources.
  echo "== installing a C++ compiler (libfuzzer-sys builds libFuzzer from source)"
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "FATAL: no C++ compiler, and cannot apt-get one (need root on Debian)" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++ >/dev/null
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== cargo install cargo-fuzz --locked --version $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi
echo "== $(rustc --version), $(cargo fuzz --version), RUSTC_BOOTSTRAP=1"

# --- build -----------------------------------------------------------------
# Release with debug assertions (overflow checks etc.) and AddressSanitizer.
triple="$(rustc -vV | sed -n 's/^host: //p')"
echo "== cargo fuzz build --release --debug-assertions --sanitizer address --target $triple"
cargo fuzz build --release --debug-assertions --sanitizer address --target "$triple"
bindir="fuzz/target/$triple/release"

# --- run -------------------------------------------------------------------
scratch="$(mktemp -d "${TMPDIR:-/tmp}/intxd-fuzz.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
failed=0
for t in $FUZZ_TARGETS; do
  if [ ! -x "$bindir/$t" ] || [ ! -d "fuzz/corpus/$t" ]; then
    echo "FATAL: unknown fuzz target '$t' (no $bindir/$t or fuzz/corpus/$t/)" >&2
    exit 2
  fi
  corpus="$scratch/$t/corpus"
  log="$scratch/$t/libfuzzer.log"
  artifacts="fuzz/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  cp -R "fuzz/corpus/$t/." "$corpus/"
  dict=()
  if [ -f "fuzz/$t.dict" ]; then dict=("-dict=fuzz/$t.dict"); fi
  echo "== fuzz $t for ${FUZZ_SECS}s ($(find "$corpus" -type f | wc -l) seed inputs)"
  rc=0
  "$bindir/$t" "$corpus" "${dict[@]}" \
    -max_total_time="$FUZZ_SECS" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts/" >"$log" 2>&1 || rc=$?

  # (|| true: a run that crashed early may lack any of these lines.)
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1 || true)"
  # The in-memory corpus size from libFuzzer's last status line (DONE on a
  # clean finish); inputs that added no coverage are not counted.
  corp="$(grep -E '^#[0-9]+[[:space:]].* corp: [0-9]+/' "$log" | tail -n 1 |
    sed -E 's/.* corp: ([0-9]+)\/.*/\1/' || true)"
  : "${execs:=?}" "${corp:=?}"
  detail="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 |
    sed -E 's/^#[0-9]+[[:space:]]+DONE[[:space:]]+//' || true)"
  if [ "$rc" -eq 0 ]; then
    echo "fuzz $t: $execs execs, corpus $corp inputs, 0 crashes"
    echo "  ($detail; $(find "$corpus" -type f | wc -l) files in the scratch corpus)"
  else
    failed=1
    repro="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1 || true)"
    echo "fuzz $t: $execs execs, corpus $corp inputs, 1 crashes (libFuzzer exit $rc)"
    echo "---- what failed ----"
    grep -m 1 -A 4 -E "panicked at|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)" "$log" || true
    echo "---- libFuzzer output (last 60 lines) ----"
    tail -n 60 "$log"
    echo "------------------------------------------"
    if [ -n "$repro" ]; then
      echo "reproducer: $repro"
      echo "reproduce:  RUSTC_BOOTSTRAP=1 cargo fuzz run $t $repro"
    else
      echo "reproducer: none written (see the output above)"
    fi
  fi
done

if [ "$failed" -ne 0 ]; then
  echo "FAIL: a fuzz target crashed" >&2
  exit 1
fi
echo "== fuzz: all targets ran ${FUZZ_SECS}s with 0 crashes (script wall time ${SECONDS}s)"
