#!/usr/bin/env bash
# Idle and drain CPU of `sluice serve` (benches/idle_cpu.py has the details): a fresh Tansu, the
# demo models, `sluice serve` with its defaults, then idle for SECONDS (default 60), records
# with the broker killed mid-stream, and SIGTERM with the broker gone.
#   benches/run-idle-cpu.sh [SECONDS]        (needs: pip install kafka-python)
#   SOAK_BIN=target/debug/sluice benches/run-idle-cpu.sh   to pick the binary
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
source benches/serve-rig.sh
rig_bin
out="benches/results/idle-cpu-$(date -u +%Y-%m-%d)"
mkdir -p "$out"
rig_start idle
broker_pid="$(cat "${SLUICE_CACHE:-$HOME/.cache/sluice}/broker/tansu-$port.pid")"
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
