#!/usr/bin/env bash
# A 60-second soak in every mode and irqchip against a standalone daemon,
# so that its own fd count and memory are measured before and after.
#   usage: .ci/long-soak.sh [SECONDS]    (default 60 per run, 4 runs)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
bin=target/release/intxd
dir=$(mktemp -d /tmp/intxd-soak.XXXXXX)
trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null; rm -rf "$dir"' EXIT
cat > "$dir/intxd.toml" <<TOML
[daemon]
socket = "$dir/control.sock"
[[device]]
name = "sim0"
pci = "sim:0"
TOML
chmod 0644 "$dir/intxd.toml"
RUST_LOG=warn "$bin" run --config "$dir/intxd.toml" &
daemon=$!
for _ in $(seq 100); do [ -S "$dir/control.sock" ] && break; sleep 0.05; done
"$bin" soak --connect "$dir/control.sock" --mode all --irqchip all --duration "$secs" --json > "$dir/soak.json"
python3 - "$dir/soak.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for x in r["runs"]:
    print(f"soak {x['mode']}/{x['irqchip']}: {x['delivered']} interrupts in {x['elapsed_s']:.0f} s "
          f"({x['rate_per_s']:.0f}/s), lost {x['lost']}, spurious {x['spurious']}, "
          f"p50/p99/max {x['latency_us']['p50']:.0f}/{x['latency_us']['p99']:.0f}/{x['latency_us']['max']:.0f} us")
res = r.get("resources")
if res:
    print(f"daemon fds {res['fds_before']} -> {res['fds_after']}, RSS {res['rss_kib_before']} -> {res['rss_kib_after']} KiB")
bad = [x for x in r["runs"] if x["lost"] or x["spurious"] or x["delivered"] != x["cycles"]]
leak = res and res["fds_after"] != res["fds_before"]
sys.exit(1 if bad or leak else 0)
PY
