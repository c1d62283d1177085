#!/usr/bin/env bash
# Same-machine A/B check of two Sluice builds (a change against the commit before it): did the
# change cost performance? Two measurements, alternating A and B so that both see the same
# machine state:
#
#  1. engine throughput (benches/engine_throughput.rs, MiniLM on the CPU, Sluice only) at a few
#     batch sizes, ROUNDS rounds of A then B; the table keeps each build's best round per size;
#  2. single-rate tabular steps through Kafka: for each rate and repeat, a FRESH Tansu broker,
#     `sluice serve` of the build under test, and the same load generator binary for both
#     builds (`sluice loadgen run`, open loop, latency from intended send times). A step is
#     sustained when every record came back once, output kept up with the offered rate and
#     p99 <= P99_MS.
#
#   benches/run-ab-check.sh A_SLUICE A_BENCH B_SLUICE B_BENCH [OUT_DIR]
#
#   A_/B_SLUICE   `sluice` release binaries (serve); A's must have the `loadgen` subcommand
#                 (it drives every step: the generator is not what is compared)
#   A_/B_BENCH    engine_throughput bench binaries (`cargo bench --bench engine_throughput
#                 --no-run` prints their paths)
# Env: RATES=16000,32000 REPEAT=3 STEP=8s WARMUP=2s P99_MS=100 BATCH_SIZES=8,32,128
#      MIN_SECONDS=5 ROUNDS=2 LOADGEN=<A_SLUICE> SKIP_ENGINE=0 SKIP_STEPS=0
set -euo pipefail
cd "$(dirname "$0")/.."
A_SLUICE=$(realpath "$1"); A_BENCH=$(realpath "$2"); B_SLUICE=$(realpath "$3"); B_BENCH=$(realpath "$4")
OUT="${5:-benches/results/ab-$(date -u +%Y-%m-%d)}"
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
RATES="${RATES:-16000,32000}"; REPEAT="${REPEAT:-3}"; STEP="${STEP:-8s}"; WARMUP="${WARMUP:-2s}"
P99_MS="${P99_MS:-100}"; BATCH_SIZES="${BATCH_SIZES:-8,32,128}"; MIN_SECONDS="${MIN_SECONDS:-5}"
ROUNDS="${ROUNDS:-2}"; LOADGEN="${LOADGEN:-$A_SLUICE}"
export SLUICE_CACHE="${SLUICE_CACHE:-$HOME/.cache/sluice}"
log() { echo "[ab $(date -u +%H:%M:%S)] $*" >&2; }

scripts/fetch-minilm.sh models >/dev/null
scripts/broker.sh install >/dev/null
MODELS="$SLUICE_CACHE/ab-models"
"$A_SLUICE" models gen-demo "$MODELS" >/dev/null

BROKER=""; SYS_PID=""
cleanup() {
    [[ -n "$SYS_PID" ]] && kill -TERM "$SYS_PID" 2>/dev/null && wait "$SYS_PID" 2>/dev/null || true
    [[ -n "$BROKER" ]] && scripts/broker.sh stop "${BROKER##*:}" >/dev/null 2>&1 || true
}
trap cleanup EXIT

if [[ "${SKIP_ENGINE:-0}" != 1 ]]; then
    for round in $(seq 1 "$ROUNDS"); do
        for side in A B; do
            bin=$A_BENCH; [[ $side == B ]] && bin=$B_BENCH
            log "engine round $round, build $side"
            RAYON_NUM_THREADS=$(nproc) "$bin" --bench --batch-sizes "$BATCH_SIZES" --min-seconds "$MIN_SECONDS" \
                --models models --model minilm --json "$OUT/engine-$side-$round.json" >"$OUT/engine-$side-$round.log" 2>&1
        done
    done
fi

if [[ "${SKIP_STEPS:-0}" != 1 ]]; then
    IFS=, read -r -a rates <<<"$RATES"
    for rep in $(seq 1 "$REPEAT"); do
        for rate in "${rates[@]}"; do
            for side in A B; do
                bin=$A_SLUICE; [[ $side == B ]] && bin=$B_SLUICE
                BROKER=$(scripts/broker.sh start | tail -1)
                export SLUICE_KAFKA_BOOTSTRAP_SERVERS="$BROKER" SLUICE_STREAMING_INFERENCE_MODEL_REPOSITORY="$MODELS"
                "$bin" serve --config benches/p99/sluice-bench.yaml >"$OUT/step-$side-$rate-$rep.serve.log" 2>&1 &
                SYS_PID=$!
                sleep 1
                common=(--bootstrap "$BROKER" --p99-bound-ms "$P99_MS" --model tabular --payload tabular --width 8 --no-half-step)
                "$LOADGEN" loadgen run "${common[@]}" --rates 20 --duration 4s --warmup 1s --drain-timeout 120s --system prime \
                    >"$OUT/step-$side-$rate-$rep.prime.log" 2>&1
                log "step $rate/s, repeat $rep, build $side (broker $BROKER)"
                "$LOADGEN" loadgen run "${common[@]}" --rates "$rate" --duration "$STEP" --warmup "$WARMUP" \
                    --system "$side" --out "$OUT/step-$side-$rate-$rep.json" >"$OUT/step-$side-$rate-$rep.log" 2>&1 || true
                kill -TERM "$SYS_PID" 2>/dev/null || true; wait "$SYS_PID" 2>/dev/null || true; SYS_PID=""
                scripts/broker.sh stop "${BROKER##*:}" >/dev/null 2>&1 || true; BROKER=""
            done
        done
    done
fi

python3 - "$OUT" <<'EOF'
import glob, json, os, sys
out = sys.argv[1]
lines = ["# A/B check", ""]
eng = {}
for p in sorted(glob.glob(os.path.join(out, "engine-*-*.json"))):
    side = os.path.basename(p).split("-")[1]
    for row in json.load(open(p)).get("results", []):
        b = row.get("batch_size")
        eng.setdefault(b, {}).setdefault(side, []).append(row.get("sentences_per_s", 0.0))
if eng:
    lines += ["## Engine throughput (MiniLM, sentences/s; best of the rounds, all rounds in brackets)", "",
              "| batch | A | B | B / A |", "|---:|---:|---:|---:|"]
    for b in sorted(eng):
        a, bb = eng[b].get("A", []), eng[b].get("B", [])
        if a and bb:
            lines.append(f"| {b} | {max(a):.1f} {sorted(round(x,1) for x in a)} | {max(bb):.1f} {sorted(round(x,1) for x in bb)} | {max(bb)/max(a):.3f} |")
    lines.append("")
steps = []
for p in sorted(glob.glob(os.path.join(out, "step-*-*-*.json"))):
    _, side, rate, rep = os.path.basename(p)[:-5].split("-")
    s = json.load(open(p))["sweep"]["steps"][0]
    steps.append((int(rate), int(rep), side, s))
if steps:
    lines += ["## Single-rate tabular steps, fresh broker each", "",
              "| rate/s | repeat | build | verdict | achieved/s | p50 ms | p99 ms | p99.9 ms | missing | dup |",
              "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for rate, rep, side, s in sorted(steps, key=lambda t: (t[0], t[1], t[2])):
        l = s["latency"]
        lines.append(f"| {rate} | {rep} | {side} | {s['verdict']} | {s['achieved_rps']:.0f} | {l['p50_ms']:.1f} | {l['p99_ms']:.1f} | {l['p999_ms']:.1f} | {s['missing']} | {s['duplicates']} |")
    lines.append("")
    for side in ("A", "B"):
        for rate in sorted({t[0] for t in steps}):
            ok = sum(1 for t in steps if t[0] == rate and t[2] == side and t[3]["sustained"])
            n = sum(1 for t in steps if t[0] == rate and t[2] == side)
            lines.append(f"- build {side} at {rate}/s: sustained in {ok} of {n}")
open(os.path.join(out, "README.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
