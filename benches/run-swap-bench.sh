#!/usr/bin/env bash
# Swaps without a hiccup, measured: what switching the serving version, changing the split and
# running a canary to 100% cost in latency, at half of the measured capacity, with the tabular
# demo model (so that warming a version does not compete with serving on a small machine).
#
#   benches/run-swap-bench.sh [OUT_DIR]        (default benches/results/swap-<UTC date>)
#
# One broker and one `sluice serve` for the whole run (the swaps act on a running instance; that
# is the point). First a capacity sweep (open loop, p99 bound 100 ms, bisection to 10%); then
# five steps at half that capacity, each STEP long, on the same running instance:
#   0 baseline, 1 serving 1 -> 2, 2 split {2: 50, 3: 50}, 3 canary to version 1 (10/50/100 %,
#   CANARY_STEP_S each, ending with version 1 serving), 4 baseline again.
# The swap starts AT seconds into its step (benches/swap/action.sh; its calls and answers are in
# swap-actions.log). Each step's latencies come from `sluice loadgen` (intended send times,
# HdrHistogram, every record checked back). The verdict: no dead letter, nothing missing, and
# the step's p99 within 2x the p99 of the baseline steps (the larger of steps 0 and 4: the
# broker slows as it fills, so the later baseline is the fair one for the later steps).
#
# Env:
#   STEP=25s WARMUP=2s AT=6 CANARY_STEP_S=4
#   CAP_RATES=4000:1.5:64000     the capacity grid
#   RATE                          skip the capacity sweep and run the swap steps at this rate
#   BENCH_PORT=19094 CONTROL_PORT=18094
#   SLUICE                        a sluice binary with --features loadgen (built here if unset)
set -euo pipefail
cd "$(dirname "$0")/.."
DATE=$(date -u +%Y-%m-%d)
OUT="${1:-benches/results/swap-$DATE}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STEP="${STEP:-25s}"
WARMUP="${WARMUP:-2s}"
export AT="${AT:-6}" CANARY_STEP_S="${CANARY_STEP_S:-4}"
CAP_RATES="${CAP_RATES:-4000:1.5:64000}"
BENCH_PORT="${BENCH_PORT:-19094}"
CONTROL_PORT="${CONTROL_PORT:-18094}"
export CONTROL="127.0.0.1:$CONTROL_PORT" SWAP_LOG="$OUT/swap-actions.log"
if [[ -z "${SLUICE:-}" ]]; then
    cargo build --release --locked --features loadgen --bin sluice
    SLUICE=target/release/sluice
fi
LOG="$OUT/swap-serve.log"
: >"$LOG"
: >"$SWAP_LOG"
work=$(mktemp -d)
serve_pid=""
cleanup() {
    if [[ -n "$serve_pid" ]]; then kill -TERM "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; fi
    scripts/broker.sh stop "$BENCH_PORT" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

scripts/broker.sh stop "$BENCH_PORT" >/dev/null 2>&1 || true
scripts/broker.sh start "$BENCH_PORT" >>"$LOG" 2>&1
BROKER="127.0.0.1:$BENCH_PORT"
"$SLUICE" models gen-demo "$work/models" >/dev/null
# Three versions of the tabular model (the same weights: what is measured is the swap).
for v in 2 3; do cp -r "$work/models/tabular/1" "$work/models/tabular/$v"; done

SLUICE_KAFKA_BOOTSTRAP_SERVERS="$BROKER" \
SLUICE_STREAMING_INFERENCE_MODEL_REPOSITORY="$work/models" \
SLUICE_STREAMING_INFERENCE_MODEL_STATE_DIRECTORY="$work/state" \
SLUICE_CONTROL_LISTEN="$CONTROL" \
    setsid "$SLUICE" serve --config benches/p99/sluice-bench.yaml >>"$LOG" 2>&1 </dev/null &
serve_pid=$!
for _ in $(seq 1 300); do
    curl -sf "http://$CONTROL/health/ready" >/dev/null 2>&1 && break
    kill -0 "$serve_pid" 2>/dev/null || { echo "sluice serve exited (log: $LOG)" >&2; tail -20 "$LOG" >&2; exit 1; }
    sleep 0.2
done
curl -sf -X POST -H 'Content-Type: application/json' -d '{"version": "1"}' \
    "http://$CONTROL/batch-inference/models/tabular/serving" >>"$SWAP_LOG"
echo >>"$SWAP_LOG"

common=(--bootstrap "$BROKER" --model tabular --payload tabular --width 8 --hostile-share 0
    --priority-share 0.05 --system sluice --broker "Tansu (one broker, memory storage)")
"$SLUICE" loadgen run "${common[@]}" --rates 20 --duration 3s --warmup 1s --no-half-step \
    --drain-timeout 120s --p99-bound-ms 600000 --min-achieved 0 >>"$LOG" 2>&1

if [[ -z "${RATE:-}" ]]; then
    "$SLUICE" loadgen run "${common[@]}" --rates "$CAP_RATES" --duration 8s --warmup 2s \
        --p99-bound-ms 100 --patience 2 --bisect-to 0.1 --no-half-step \
        --system-notes "capacity sweep before the swaps" \
        --out "$OUT/swap-capacity.json" 2>&1 | tee -a "$LOG"
    max=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sweep"]["max_sustained_rps"] or 0)' "$OUT/swap-capacity.json")
    RATE=$(python3 -c "print(round(float('$max') / 2))")
fi
[[ "$RATE" != 0 ]] || { echo "no sustained rate found" >&2; exit 1; }
echo "swap steps at $RATE/s" | tee -a "$LOG"
"$SLUICE" loadgen run "${common[@]}" --rates "$RATE,$RATE,$RATE,$RATE,$RATE" --duration "$STEP" \
    --warmup "$WARMUP" --no-half-step --patience 10 --p99-bound-ms 1000 --min-achieved 0.9 \
    --before-step benches/swap/action.sh \
    --system-notes "5 steps on one running instance: baseline, serving switch, split change, canary to 100%, baseline (swap ${AT}s into its step)" \
    --out "$OUT/swap-steps.json" 2>&1 | tee -a "$LOG"
sleep 1
curl -sf "http://$CONTROL/batch-inference/models" >"$OUT/swap-models-after.json" || true
curl -sf "http://$CONTROL/metrics" | grep -E '^sluice_(canary|model_requests_total|circuit_parked|requests_total)' >"$OUT/swap-metrics-after.txt" || true

python3 - "$OUT" "$RATE" "$STEP" "$AT" <<'PY'
import json, os, platform, subprocess, sys
out, rate, step, at = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
d = json.load(open(os.path.join(out, "swap-steps.json")))
steps = d["sweep"]["steps"]
names = ["baseline", "serving 1 -> 2", "split {2: 50, 3: 50}", "canary to 1 (10/50/100 %)", "baseline again"]
base = max(s["latency"]["p99_ms"] for i, s in enumerate(steps) if i in (0, len(steps) - 1))
cap = ""
capf = os.path.join(out, "swap-capacity.json")
if os.path.exists(capf):
    c = json.load(open(capf))["sweep"]
    cap = f"capacity (highest sustained, p99 <= 100 ms): {c['max_sustained_rps']:.0f}/s (first failed above: {c.get('min_failed_rps') or 0:.0f}/s); "
cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True).stdout.strip()
lines = [
    "# Swaps under load (tabular demo model)", "",
    f"- **Machine:** {cpu or platform.processor()}, {os.cpu_count()} CPUs; broker: {d.get('broker')}",
    f"- **Date:** {d.get('date')}; commit {d.get('commit')}",
    f"- **Command:** `benches/run-swap-bench.sh` (STEP={step}, swap {at} s into its step)",
    f"- **Load:** open loop (Poisson), {cap}swap steps at {rate:.0f}/s (half), 5% on the priority topic",
    "- **Latency:** end to end from each record's intended send time (HdrHistogram), steps' warm-up excluded",
    f"- **Bound:** a swap step passes when it has no dead letter, nothing missing, and p99 <= 2 x the baseline p99 ({base:.1f} ms, the larger of the two baseline steps)",
    "",
    "| step | swap | offered/s | achieved/s | p50 ms | p95 ms | p99 ms | p99.9 ms | max ms | dead letters | missing | p99 / baseline | verdict |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]
ok_all = True
for i, s in enumerate(steps):
    l = s["latency"]
    ratio = l["p99_ms"] / base if base else float("nan")
    swap = i not in (0, len(steps) - 1)
    ok = s["dead_letters"] == 0 and s["missing"] == 0 and (ratio <= 2.0 or not swap)
    ok_all &= ok
    lines.append(f"| {i} | {names[i] if i < len(names) else '-'} | {s['offered_rps']:.0f} | {s['achieved_rps']:.0f} | {l['p50_ms']:.1f} | {l['p95_ms']:.1f} | {l['p99_ms']:.1f} | {l['p999_ms']:.1f} | {l['max_ms']:.1f} | {s['dead_letters']} | {s['missing']} | {ratio:.2f} | {'pass' if ok else 'FAIL'} |")
lines += ["", f"All swap steps within the bound: **{'yes' if ok_all else 'no'}**.", "",
          "Control-plane calls (swap-actions.log):", "", "```"]
lines += open(os.path.join(out, "swap-actions.log")).read().strip().splitlines()
lines += ["```", ""]
open(os.path.join(out, "swap.md"), "w").write("\n".join(lines))
print("\n".join(lines))
PY
