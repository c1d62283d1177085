# Sourced by benches/run-p99-bench.sh and benches/run-profile.sh (from the repository root):
# what both need before their first step.
#
#   rig_binary FEATURES   exports SLUICE: as given, else a release build with FEATURES
#   rig_models OUT        installs the broker, writes the demo models into
#                         $SLUICE_CACHE/p99-models (MODELS, and exported as the model
#                         repository), exports BENCH_STATE=OUT/.state, and at exit stops the
#                         last step's system and broker (benches/p99/fresh-step.sh stop)

rig_binary() {
    if [[ -z "${SLUICE:-}" ]]; then
        echo "[rig] building sluice (release, features $1)" >&2
        cargo build --release --locked --quiet --features "$1"
        SLUICE="${CARGO_TARGET_DIR:-$PWD/target}/release/sluice"
    fi
    export SLUICE
}

rig_models() {
    scripts/broker.sh install >/dev/null
    MODELS="$SLUICE_CACHE/p99-models"
    "$SLUICE" models gen-demo "$MODELS" >/dev/null
    export SLUICE_STREAMING_INFERENCE_MODEL_REPOSITORY="$MODELS"
    export BENCH_STATE="$1/.state"
    trap 'benches/p99/fresh-step.sh stop; rm -rf "$BENCH_STATE"' EXIT
}
