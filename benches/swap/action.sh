#!/usr/bin/env bash
# Before each step of benches/run-swap-bench.sh (`sluice loadgen run --before-step`): a fresh
# broker and a freshly started, primed `sluice serve` (benches/p99/fresh-step.sh; the test
# broker slows as it fills, so every step starts from an empty one), its rollout state set to
# where the step's swap starts from, and then, in the background, the step's swap AT seconds
# into the step. Every call and its answer go to $SWAP_LOG with the time.
#
#   step  state before              swap
#   0     serving 1                 none (baseline)
#   1     serving 1                 switch the serving version to 2
#   2     serving 2                 split {"2": 50, "3": 50}
#   3     split {"2": 50, "3": 50}  canary to version 1: 10, 50, 100 % of CANARY_STEP_S s each
#   4     serving 1                 none (baseline again)
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${CONTROL:?}" "${SWAP_LOG:?}" "${AT:?}" "${CANARY_STEP_S:?}" "${ROLLOUT_STATE:?}" "${VIEW_AFTER:?}"
step="${SLUICE_LOADGEN_STEP:?}"
model=tabular

call() { # PATH BODY: POST it now, log the answer; fails on a non-2xx answer
    local start answer
    start=$(date -u +%FT%T.%3NZ)
    answer=$(curl -sS -m 60 -X POST -H 'Content-Type: application/json' -d "$2" \
        "http://$CONTROL/batch-inference/models/$model/$1" -w ' HTTP %{http_code} in %{time_total}s')
    echo "$start step $step: POST $1 $2 -> $answer" >>"$SWAP_LOG"
    [[ "$answer" == *" HTTP 2"* ]]
}

# A fresh system whose rollout state starts empty.
rm -rf "$ROLLOUT_STATE"
benches/p99/fresh-step.sh sluice tabular
for _ in $(seq 1 300); do
    curl -sf "http://$CONTROL/health/ready" >/dev/null 2>&1 && break
    sleep 0.1
done
case "$step" in
    2) call serving '{"version": "2"}' ;;
    3) call serving '{"version": "2"}'; call traffic '{"split": {"2": 50, "3": 50}}' ;;
    *) call serving '{"version": "1"}' ;;
esac
case "$step" in
    1) path=serving body='{"version": "2"}' ;;
    2) path=traffic body='{"split": {"2": 50, "3": 50}}' ;;
    3) path=traffic
       body="{\"canary\": {\"version\": \"1\", \"steps\": [10, 50, 100], \"stepSeconds\": $CANARY_STEP_S, \"maxErrorRate\": 0.01, \"maxP99Ratio\": 3}}" ;;
    *) echo "$(date -u +%FT%T.%3NZ) step $step: no swap" >>"$SWAP_LOG"; exit 0 ;;
esac
(
    set +e
    sleep "$AT"
    call "$path" "$body"
    # Where the swap ended (the canary's status, the split), near the end of the step.
    sleep "$VIEW_AFTER"
    curl -sS -m 10 "http://$CONTROL/batch-inference/models" >"$ROLLOUT_STATE.view.json"
    view=$(python3 - "$ROLLOUT_STATE.view.json" <<'PY'
import json, sys
m = [x for x in json.load(open(sys.argv[1]))["models"] if x["name"] == "tabular"][0]
c = m.get("canary") or {}
print(f"serving {m['serving']}, split {m['split']}, canary {c.get('status')} at {c.get('percent')}%")
PY
)
    echo "$(date -u +%FT%T.%3NZ) step $step: after the swap: $view" >>"$SWAP_LOG"
) </dev/null >/dev/null 2>&1 &
