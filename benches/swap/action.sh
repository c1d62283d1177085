#!/usr/bin/env bash
# The swap of one step of benches/run-swap-bench.sh, run by `sluice loadgen run --before-step`:
# it starts, in the background, the control-plane call of step $SLUICE_LOADGEN_STEP, AT seconds
# into the step (so the step has a stretch before the swap, the swap, and a stretch after it),
# and returns at once. Every call and its answer go to $SWAP_LOG with the time.
#
#   step 0  nothing (baseline)
#   step 1  switch the serving version 1 -> 2
#   step 2  split {"2": 50, "3": 50}
#   step 3  canary to version 1: steps 10, 50, 100 % of $CANARY_STEP_S s each (it ends serving)
#   step 4  nothing (baseline again)
set -euo pipefail
: "${CONTROL:?}" "${SWAP_LOG:?}" "${AT:?}" "${CANARY_STEP_S:?}"
model=tabular
case "${SLUICE_LOADGEN_STEP:?}" in
    1) path=serving body='{"version": "2"}' ;;
    2) path=traffic body='{"split": {"2": 50, "3": 50}}' ;;
    3) path=traffic
       body="{\"canary\": {\"version\": \"1\", \"steps\": [10, 50, 100], \"stepSeconds\": $CANARY_STEP_S, \"maxErrorRate\": 0.01, \"maxP99Ratio\": 3}}" ;;
    *) echo "$(date -u +%FT%T.%3NZ) step $SLUICE_LOADGEN_STEP: no swap" >>"$SWAP_LOG"; exit 0 ;;
esac
(
    sleep "$AT"
    start=$(date -u +%FT%T.%3NZ)
    answer=$(curl -sS -m 60 -X POST -H 'Content-Type: application/json' -d "$body" \
        "http://$CONTROL/batch-inference/models/$model/$path" -w ' HTTP %{http_code} in %{time_total}s')
    echo "$start step $SLUICE_LOADGEN_STEP: POST $path $body -> $answer" >>"$SWAP_LOG"
) </dev/null >/dev/null 2>&1 &
