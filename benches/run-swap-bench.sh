#!/usr/bin/env bash
# Swaps without a hiccup, measured: what switching the serving version, changing the split and
# running a canary to 100% cost in latency, at half of the measured capacity, with the tabular
# demo model (so that warming a version does not compete with serving on a small machine).
#
#   benches/run-swap-bench.sh [OUT_DIR]        (default benches/results/swap-<UTC date>)
#
# Every step, capacity steps included, runs on a fresh broker and a freshly started, primed
# `sluice serve` (benches/p99/fresh-step.sh): the test broker slows as it fills, and a first
# version of this benchmark that kept one broker for the whole run measured that fill (its
# p99 grew from step to step whatever the step did; benches/results/swap-2026-12-01-one-broker/).
# First a capacity sweep (open loop, p99 bound 100 ms, bisection to 10%, steps as long as the
# swap steps: the broker's fill within a step weighs on its p99); then five steps at
# half that capacity: 0 baseline, 1 serving 1 -> 2, 2 split {2: 50, 3: 50}, 3 canary to version
# 1 (10/50/100 %, CANARY_STEP_S each, ending with version 1 serving), 4 baseline again. Before
# each step benches/swap/action.sh sets the state the swap starts from and schedules the swap
# AT seconds into the step (its calls and answers are in swap-actions.log). Each step's
# latencies come from `sluice loadgen` (intended send times, HdrHistogram, every record checked
# back), with a p99 per second of intended send time. The verdict: no dead letter, nothing
# missing, and the worst one-second p99 from the swap on within 2x the worst one-second p99
# between the warm-up and the swap.
#
# Env:
#   STEP=12s WARMUP=2s AT=4 CANARY_STEP_S=1 VIEW_AFTER=7   (capacity steps are STEP long too)
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
STEP="${STEP:-12s}"
WARMUP="${WARMUP:-2s}"
export AT="${AT:-4}" CANARY_STEP_S="${CANARY_STEP_S:-1}" VIEW_AFTER="${VIEW_AFTER:-7}"
CAP_RATES="${CAP_RATES:-4000:1.5:64000}"
BENCH_PORT="${BENCH_PORT:-19094}"
CONTROL_PORT="${CONTROL_PORT:-18094}"
export CONTROL="127.0.0.1:$CONTROL_PORT" SWAP_LOG="$OUT/swap-actions.log"
if [[ -z "${SLUICE:-}" ]]; then
    cargo build --release --locked --features loadgen --bin sluice
    SLUICE=target/release/sluice
fi
export BENCH_LOG="$OUT/swap-serve.log" BENCH_PORT SLUICE
: >"$BENCH_LOG"
: >"$SWAP_LOG"
work=$(mktemp -d)
export BENCH_STATE="$work/bench-state" ROLLOUT_STATE="$work/rollout-state"
cleanup() {
    benches/p99/fresh-step.sh stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
"$SLUICE" models gen-demo "$work/models" >/dev/null
# Three versions of the tabular model (the same weights: what is measured is the swap).
for v in 2 3; do cp -r "$work/models/tabular/1" "$work/models/tabular/$v"; done
export SLUICE_STREAMING_INFERENCE_MODEL_REPOSITORY="$work/models"
export SLUICE_STREAMING_INFERENCE_MODEL_STATE_DIRECTORY="$ROLLOUT_STATE"
export SLUICE_CONTROL_LISTEN="$CONTROL"
BROKER="127.0.0.1:$BENCH_PORT"
LOG="$BENCH_LOG"

common=(--bootstrap "$BROKER" --model tabular --payload tabular --width 8 --hostile-share 0
    --priority-share 0.05 --system sluice --broker "Tansu (one broker, memory storage), fresh for every step")

if [[ -z "${RATE:-}" ]]; then
    "$SLUICE" loadgen run "${common[@]}" --rates "$CAP_RATES" --duration "$STEP" --warmup "$WARMUP" \
        --p99-bound-ms 100 --patience 2 --bisect-to 0.1 --no-half-step \
        --before-step "rm -rf '$ROLLOUT_STATE' && benches/p99/fresh-step.sh sluice tabular" \
        --system-notes "capacity sweep before the swaps (fresh broker and system per step)" \
        --out "$OUT/swap-capacity.json" 2>&1 | tee -a "$LOG"
    max=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sweep"]["max_sustained_rps"] or 0)' "$OUT/swap-capacity.json")
    RATE=$(python3 -c "print(round(float('$max') / 2))")
fi
[[ "$RATE" != 0 ]] || { echo "no sustained rate found" >&2; exit 1; }
echo "swap steps at $RATE/s" | tee -a "$LOG"
"$SLUICE" loadgen run "${common[@]}" --rates "$RATE,$RATE,$RATE,$RATE,$RATE" --duration "$STEP" \
    --warmup "$WARMUP" --no-half-step --patience 10 --p99-bound-ms 1000 --min-achieved 0.9 \
    --before-step benches/swap/action.sh \
    --system-notes "5 steps, each on a fresh broker and system: baseline, serving switch, split change, canary to 100%, baseline (swap ${AT}s into its step)" \
    --out "$OUT/swap-steps.json" 2>&1 | tee -a "$LOG"
sleep 1
# The last step's instance (a baseline): its view after the run. The canary step's end state
# is in swap-actions.log and the serve log.
curl -sf "http://$CONTROL/batch-inference/models" >"$OUT/swap-models-after.json" || true
curl -sf "http://$CONTROL/metrics" | grep -E '^sluice_(canary|model_requests_total|circuit_parked|requests_total)' >"$OUT/swap-metrics-after.txt" || true

python3 benches/swap/report.py "$OUT" "$RATE" "$STEP" "$AT"
