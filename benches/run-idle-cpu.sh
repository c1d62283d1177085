#!/usr/bin/env bash
# Idle and drain CPU of `sluice serve` (benches/idle_cpu.py has the details): a fresh Tansu, the
# demo models, `sluice serve` with its defaults, then idle for SECONDS (default 60), records
# with the broker killed mid-stream, and SIGTERM with the broker gone.
#   benches/run-idle-cpu.sh [SECONDS]        (needs: pip install kafka-python)
#   SOAK_BIN=target/debug/sluice benches/run-idle-cpu.sh   to pick the binary
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
bin="${SOAK_BIN:-}"
if [[ -z "$bin" ]]; then
    if [[ -x target/release/sluice ]]; then bin=target/release/sluice; else bin=target/debug/sluice; fi
fi
[[ -x "$bin" ]] || { echo "no sluice binary at $bin: cargo build --release first" >&2; exit 1; }
out="benches/results/idle-cpu-$(date -u +%Y-%m-%d)"
mkdir -p "$out"
work="$(mktemp -d)"
trap 'kill "${serve_pid:-0}" 2>/dev/null || true; scripts/broker.sh stop "${port:-}" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
addr="$(scripts/broker.sh start | tail -n 1)"
port="${addr##*:}"
broker_pid="$(cat "${SLUICE_CACHE:-$HOME/.cache/sluice}/broker/tansu-$port.pid")"
"$bin" models gen-demo "$work/models" >/dev/null
cat > "$work/idle.yaml" <<YAML
kafka:
  bootstrap: {servers: "$addr"}
  consumer: {group: idle}
  topics:
    streaming: {input: idle-in, priority: idle-prio, output: idle-out, dlq: idle-dlq, metrics: idle-metrics}
streaming:
  inference:
    model: {repository: "$work/models"}
control: {listen: "127.0.0.1:0"}
YAML
"$bin" serve --config "$work/idle.yaml" > "$out/sluice.log" 2>&1 &
serve_pid=$!
sleep 15
{
    echo "machine: $(nproc) cores, $(uname -sr); binary: $bin; broker: Tansu at $addr (fresh)"
    echo "command: benches/run-idle-cpu.sh $seconds; started $(date -u +%FT%TZ)"
} > "$out/README.txt"
rc=0
python3 benches/idle_cpu.py "$addr" "$serve_pid" "$broker_pid" "$out" "$seconds" | tee "$out/idle-cpu.log" || rc=$?
wait "$serve_pid" 2>/dev/null || true
exit "$rc"
