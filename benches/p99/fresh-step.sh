#!/usr/bin/env bash
# Gives the next load step a clean start: stops the system under test and the broker of the
# previous step, starts a fresh broker on the same port and a fresh system, and primes it (group
# join, model load) with a short run that is not recorded. `sluice loadgen run --before-step`
# calls it before every step, so no step measures what an earlier one left in the broker (the
# test broker's memory storage gets slower as it fills).
#
#   benches/p99/fresh-step.sh SYSTEM WORKLOAD     before a step
#   benches/p99/fresh-step.sh stop                after the sweep: stop the system and the broker
#
# SYSTEM: sluice | sluice-eos (processing.guarantee exactly_once) | passthrough | python-peer | quix-peer | broker-only (no system: the
# generator's records go to the output topic, one hop). WORKLOAD: tabular | minilm.
#
# Env (set by benches/run-p99-bench.sh): SLUICE (binary), BENCH_PORT (broker port), BENCH_STATE
# (a directory for the pid file), BENCH_LOG (append the system's and the priming run's output
# here), SLUICE_STREAMING_INFERENCE_MODEL_REPOSITORY, PEER_VENV, QUIX_VENV, PEER_MODEL,
# PEER_BATCH (the peers' batch size), PEER_WAIT_MS; SLUICE_LOADGEN_STEP and SLUICE_LOADGEN_RATE
# come from loadgen.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${SLUICE:?}" "${BENCH_PORT:?}" "${BENCH_STATE:?}" "${BENCH_LOG:?}"
PIDFILE="$BENCH_STATE/system.pid"
BROKER="127.0.0.1:$BENCH_PORT"
say() { echo "[fresh-step $(date -u +%H:%M:%S)] $*" >>"$BENCH_LOG"; }

# "U s user, S s system": the CPU time process PID has used.
cpu_time() {
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f s user, %.2f s system", $14 / hz, $15 / hz }' "/proc/$1/stat"
}

stop_system() {
    [[ -f "$PIDFILE" ]] || return 0
    local pid
    pid=$(cat "$PIDFILE")
    rm -f "$PIDFILE"
    # CPU time the system used in its life (priming and step included), for the log.
    if [[ -r "/proc/$pid/stat" ]]; then
        say "system $pid used $(cpu_time "$pid") of CPU"
        # ... and by thread (name: CPU seconds), busiest first.
        say "  by thread: $(for t in /proc/"$pid"/task/*; do
            awk -v hz="$(getconf CLK_TCK)" -v name="$(cat "$t/comm" 2>/dev/null)" '{ printf "%s %.2f\n", name, ($14 + $15) / hz }' "$t/stat" 2>/dev/null
        done | sort -k2 -rn | head -8 | awk '{ printf "%s %s s, ", $1, $2 }')"
    fi
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    say "system $pid still running 30 s after SIGTERM: killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

# CPU time the step's broker used in its life, for the log: what a system costs the broker
# (request patterns differ) counts against the same two cores.
broker_cpu() {
    local pidfile="${SLUICE_CACHE:-$HOME/.cache/sluice}/broker/tansu-$BENCH_PORT.pid" pid
    [[ -f "$pidfile" ]] || return 0
    pid=$(cat "$pidfile")
    [[ -r "/proc/$pid/stat" ]] || return 0
    say "broker $pid used $(cpu_time "$pid") of CPU"
}

if [[ "${1:-}" == stop ]]; then
    stop_system
    broker_cpu
    scripts/broker.sh stop "$BENCH_PORT" >/dev/null 2>&1 || true
    exit 0
fi

SYSTEM=${1:?system}
WORKLOAD=${2:?workload}
mkdir -p "$BENCH_STATE"
say "step ${SLUICE_LOADGEN_STEP:-?} at ${SLUICE_LOADGEN_RATE:-?}/s: fresh broker and $SYSTEM"
stop_system
broker_cpu
scripts/broker.sh stop "$BENCH_PORT" >/dev/null 2>&1 || true
scripts/broker.sh start "$BENCH_PORT" >>"$BENCH_LOG" 2>&1
export SLUICE_KAFKA_BOOTSTRAP_SERVERS="$BROKER"

peer_model=${PEER_MODEL:-}
case "$SYSTEM" in
    sluice | sluice-eos)
        guarantee=at_least_once
        [[ "$SYSTEM" == sluice-eos ]] && guarantee=exactly_once
        SLUICE_STREAMING_INFERENCE_PROCESSING_GUARANTEE=$guarantee \
            setsid "$SLUICE" serve --config benches/p99/sluice-bench.yaml >>"$BENCH_LOG" 2>&1 </dev/null &
        echo $! >"$PIDFILE" ;;
    passthrough)
        setsid "$SLUICE" loadgen passthrough --config benches/p99/sluice-bench.yaml >>"$BENCH_LOG" 2>&1 </dev/null &
        echo $! >"$PIDFILE" ;;
    python-peer | quix-peer)
        if [[ "$SYSTEM" == python-peer ]]; then
            py="$PEER_VENV/bin/python"; script=benches/peers/kafka_st_peer.py
        else
            py="${QUIX_VENV:-$PEER_VENV}/bin/python"; script=benches/peers/quix_st_peer.py
        fi
        ready="$BENCH_STATE/ready"
        rm -f "$ready"
        setsid "$py" "$script" --bootstrap "$BROKER" --group "$SYSTEM" --model-dir "$peer_model" \
            --threads "$(nproc)" --batch-size "${PEER_BATCH:-32}" --max-wait-ms "${PEER_WAIT_MS:-10}" \
            >"$ready" 2>>"$BENCH_LOG" </dev/null &
        echo $! >"$PIDFILE"
        for _ in $(seq 1 600); do
            grep -q '^ready' "$ready" && break
            kill -0 "$(cat "$PIDFILE")" 2>/dev/null || break
            sleep 0.2
        done ;;
    broker-only) ;;
    *) echo "fresh-step.sh: unknown system $SYSTEM" >&2; exit 2 ;;
esac
if [[ -f "$PIDFILE" ]] && ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    echo "fresh-step.sh: $SYSTEM exited at start (log: $BENCH_LOG)" >&2
    tail -20 "$BENCH_LOG" >&2
    exit 1
fi

# Prime: group join, topic metadata, model load. Not recorded.
# Only completeness counts here (the group join may make the first records slow): a system that
# does not answer every priming record fails the step.
prime=(--bootstrap "$BROKER" --rates 20 --duration 3s --warmup 1s --no-half-step --drain-timeout 120s
    --p99-bound-ms 600000 --min-achieved 0 --system prime)
case "$WORKLOAD" in
    tabular) prime+=(--model tabular --payload tabular --width 8) ;;
    minilm) prime+=(--model minilm --payload text --long-share 0.2) ;;
esac
if [[ "$SYSTEM" == broker-only ]]; then
    prime+=(--input-topic realtime-inference-output --hostile-share 0 --priority-share 0)
fi
primed=$("$SLUICE" loadgen run "${prime[@]}" 2>&1) || true
echo "$primed" >>"$BENCH_LOG"
if ! grep -q "prime sustained up to" <<<"$primed"; then
    echo "fresh-step.sh: $SYSTEM did not answer every priming record (log: $BENCH_LOG)" >&2
    tail -20 "$BENCH_LOG" >&2
    exit 1
fi
say "primed"
