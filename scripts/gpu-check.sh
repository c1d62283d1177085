#!/usr/bin/env bash
# The GPU tests and the GPU benchmark in one call on a machine with a GPU and no toolchain
# (the `device` tool's machine: CUDA driver and PyTorch's CUDA 13 wheels, no cargo, no
# crates.io).
#
#   scripts/gpu-check.sh pack   # here: needs `benches/run-gpu-bench.sh build` first (not with
#                               # SKIP_BENCH=1, which packs the tests only); builds the
#                               # GPU test binaries (--features cuda) and puts them, stripped
#                               # and gzipped, in gpu-carry/ beside the bench binary
#   scripts/gpu-check.sh run    # there, from the repository root, with gpu-carry carried:
#                               # runs tests/gpu_kernels.rs and tests/gpu_lane.rs, then
#                               # `benches/run-gpu-bench.sh run` (SKIP_BENCH=1: tests only)
#
# Logs and results go to $OUT when it is set (the device tool brings them back). The test
# binaries' exit codes are printed last; the script exits non-zero when any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY="gpu-carry"
TESTS=(gpu_kernels gpu_lane)

case "${1:-}" in
pack)
    set -e
    mkdir -p "$CARRY"
    if [[ "${SKIP_BENCH:-0}" != "1" && ! -x "$CARRY/gpu_throughput" ]]; then
        echo "run 'benches/run-gpu-bench.sh build' first (or SKIP_BENCH=1 for the tests only)" >&2
        exit 1
    fi
    eval "$(scripts/cuda-toolchain.sh)"
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${SLUICE_CACHE:-$HOME/.cache/sluice}/ci-target-cuda}"
    args=()
    for t in "${TESTS[@]}"; do args+=(--test "$t"); done
    cargo test --locked --features cuda --no-run "${args[@]}" --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])' |
        while read -r name exe; do
            # Debug info stripped and gzipped: the device tool carries at most 64 MiB.
            objcopy --strip-debug "$exe" "$CARRY/$name"
            gzip -9 -f "$CARRY/$name"
        done
    ls -l "$CARRY" >&2
    ;;
run)
    out="${OUT:-$CARRY/out}"
    mkdir -p "$out"
    for t in "${TESTS[@]}"; do
        [[ -f "$CARRY/$t.gz" ]] || { echo "no $CARRY/$t.gz: run '$0 pack' first and carry $CARRY" >&2; exit 1; }
        gunzip -c "$CARRY/$t.gz" > "/tmp/$t" && chmod +x "/tmp/$t"
    done
    libs="$(python3 - <<'EOF' 2>/dev/null || true
import glob, os, site
dirs = []
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    dirs += glob.glob(os.path.join(sp, "nvidia", "*", "lib"))
print(":".join(sorted(set(d for d in dirs if os.path.isdir(d)))))
EOF
)"
    # The driver's libcuda.so.1 where the image mounts it, if it is not on the default path.
    for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
        [[ -d "$d" ]] && libs="$libs:$d"
    done
    export CUDA_LIBS="${CUDA_LIBS:-$libs}"
    export LD_LIBRARY_PATH="${CUDA_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    {
        date -u
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv || true
        nproc
    } 2>&1 | tee "$out/machine.txt"
    summary=()
    failed=0
    for t in "${TESTS[@]}"; do
        echo "== $t" >&2
        ldd "/tmp/$t" | grep 'not found' >&2
        "/tmp/$t" --test-threads=1 --nocapture 2>&1 | tee "$out/test-$t.log"
        rc=${PIPESTATUS[0]}
        summary+=("test $t: exit $rc")
        [[ $rc == 0 ]] || failed=1
    done
    if [[ "${SKIP_BENCH:-0}" != "1" ]]; then
        echo "== benches/run-gpu-bench.sh run" >&2
        benches/run-gpu-bench.sh run 2>&1 | tee "$out/bench.log"
        rc=${PIPESTATUS[0]}
        summary+=("bench: exit $rc")
        [[ $rc == 0 ]] || failed=1
    fi
    printf '%s\n' "${summary[@]}" | tee "$out/summary.txt"
    exit "$failed"
    ;;
*)
    echo "usage: $0 pack|run" >&2
    exit 2
    ;;
esac
