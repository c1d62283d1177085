#!/usr/bin/env bash
# Where does the time go under load? Runs one tabular load step against Sluice and against the
# passthrough, each on a fresh broker, with the in-process sampling profiler on (cargo feature
# `profiling`), and writes a flame graph of each system's whole run (start, priming, the step,
# the drain) plus the step's loadgen report.
#
#   benches/run-profile.sh [OUT_DIR]    (default benches/results/profile-<UTC date>)
#
# Env: RATE=30000 (records/s), STEP=15s, SYSTEMS="sluice passthrough", BENCH_PORT=19093,
#      SLUICE (a binary built with --features loadgen,profiling; built here if unset).
set -euo pipefail
cd "$(dirname "$0")/.."
export SLUICE_CACHE="${SLUICE_CACHE:-$HOME/.cache/sluice}"
OUT="${1:-benches/results/profile-$(date -u +%Y-%m-%d)}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RATE="${RATE:-30000}"
STEP="${STEP:-15s}"
SYSTEMS="${SYSTEMS:-sluice passthrough}"
export BENCH_PORT="${BENCH_PORT:-19093}"
source benches/p99/rig.sh
rig_binary loadgen,profiling
rig_models "$OUT"
for sys in $SYSTEMS; do
    export SLUICE_PROFILE_SVG="$OUT/$sys-$RATE.svg" BENCH_LOG="$OUT/$sys-$RATE.log"
    : >"$BENCH_LOG"
    echo "[profile] $sys at $RATE/s (load average $(cut -d' ' -f1 /proc/loadavg))" >&2
    "$SLUICE" loadgen run --bootstrap "127.0.0.1:$BENCH_PORT" --model tabular --payload tabular --width 8 \
        --rates "$RATE" --duration "$STEP" --warmup 2s --no-half-step --p99-bound-ms 100 \
        --system "$sys" --out "$OUT/$sys-$RATE.json" --before-step "benches/p99/fresh-step.sh $sys tabular" \
        2>&1 | tee -a "$BENCH_LOG" >&2
    benches/p99/fresh-step.sh stop    # SIGTERM: the system writes its flame graph as it exits
    unset SLUICE_PROFILE_SVG
done
echo "[profile] flame graphs in $OUT" >&2
