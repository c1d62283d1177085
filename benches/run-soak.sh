#!/usr/bin/env bash
# Soak run (benches/soak.py has the details): a fresh Tansu, the demo models, `sluice serve`,
# RATE records/s with 1% hostile ones for MINUTES, RSS/threads/fds sampled every 10 s, and a
# check that every record got its outcome. Results go to benches/results/soak-<UTC date>/.
#
#   benches/run-soak.sh [MINUTES=10] [RATE=150]
#
# Needs Python with kafka-python (and matplotlib for the plot): pip install kafka-python
# matplotlib. SOAK_BIN picks the binary (default target/release/sluice, else target/debug).
# SOAK_TARGET=passthrough runs `sluice loadgen passthrough` (a loadgen build) instead of
# `sluice serve`, with the same config and load: whether the test broker itself carries RATE for
# MINUTES (its memory storage slows as it fills), measured before the soak proper. Its results go
# to benches/results/soak-<UTC date>/passthrough/.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-10}"
rate="${2:-150}"
source benches/serve-rig.sh
rig_bin
target="${SOAK_TARGET:-serve}"
out="benches/results/soak-$(date -u +%Y-%m-%d)"
[[ "$target" == "passthrough" ]] && out="$out/passthrough"
mkdir -p "$out"
rig_start soak
if [[ "$target" == "passthrough" ]]; then
    "$bin" loadgen passthrough --config "$work/soak.yaml" > "$out/sluice.log" 2>&1 &
else
    "$bin" serve --config "$work/soak.yaml" > "$out/sluice.log" 2>&1 &
fi
serve_pid=$!
sleep 10
{
    echo "machine: $(nproc) cores, $(uname -sr); binary: $bin; broker: Tansu at $addr (fresh)"
    echo "command: SOAK_TARGET=$target benches/run-soak.sh $minutes $rate; started $(date -u +%FT%TZ)"
} > "$out/README.txt"
rc=0
python3 benches/soak.py "$addr" "$serve_pid" "$out" "$minutes" "$rate" | tee "$out/soak.log" || rc=$?
kill -TERM "$serve_pid"
wait "$serve_pid" || true
exit "$rc"
