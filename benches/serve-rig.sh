# Sourced by benches/run-soak.sh and benches/run-idle-cpu.sh (from the repository root): the
# binary to run, a fresh Tansu, the demo models and a config for them.
#
#   rig_bin                 sets $bin: SOAK_BIN, else target/release/sluice, else target/debug
#   rig_start NAME          sets $work (a temporary dir), $addr and $port (a fresh broker) and
#                           writes $work/NAME.yaml: group NAME, topics NAME-in, NAME-prio,
#                           NAME-out, NAME-dlq, NAME-metrics, the demo models in $work/models.
#                           At exit, kills $serve_pid (if set), stops the broker, removes $work.

rig_bin() {
    bin="${SOAK_BIN:-}"
    if [[ -z "$bin" ]]; then
        if [[ -x target/release/sluice ]]; then bin=target/release/sluice; else bin=target/debug/sluice; fi
    fi
    [[ -x "$bin" ]] || { echo "no sluice binary at $bin: cargo build --release first" >&2; exit 1; }
}

rig_start() {
    local name="$1"
    work="$(mktemp -d)"
    # (Not `kill "${serve_pid:-0}"`: `kill 0` would signal the whole process group.)
    trap 'if [[ -n "${serve_pid:-}" ]]; then kill "$serve_pid" 2>/dev/null || true; fi; scripts/broker.sh stop "${port:-}" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
    addr="$(scripts/broker.sh start | tail -n 1)"
    port="${addr##*:}"
    "$bin" models gen-demo "$work/models" >/dev/null
    cat > "$work/$name.yaml" <<YAML
kafka:
  bootstrap: {servers: "$addr"}
  consumer: {group: $name}
  topics:
    streaming: {input: $name-in, priority: $name-prio, output: $name-out, dlq: $name-dlq, metrics: $name-metrics}
streaming:
  inference:
    model: {repository: "$work/models"}
control: {listen: "127.0.0.1:0"}
YAML
}
