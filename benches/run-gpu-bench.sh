#!/usr/bin/env bash
# GPU benchmark (benches/gpu_throughput.rs): MiniLM-shaped embeddings through CUDA lanes,
# throughput and latency by batch size and streams per device, engine only and end to end,
# plus the card's measured limits and our kernels against the candle ops they replace.
#
# Two steps, because the GPU machine (the `device` tool) has no crates.io and no toolchain:
#
#   benches/run-gpu-bench.sh build     # here: release build against the CUDA 13.0.x wheels,
#                                      # binary copied into gpu-carry/ (git-ignored)
#   benches/run-gpu-bench.sh run       # on the GPU machine, from the repository root
#
# Carry `gpu-carry` with the device call, e.g.
#   run(command="benches/run-gpu-bench.sh run", carry=["gpu-carry"], timeout_s=540)
# Results go to benches/results/gpu-<UTC date>.{md,json}, and to $OUT when it is set (the
# device tool brings back what is written there).
#
# Env (run): BATCH_SIZES=1,8,32,64,128  STREAMS=1,2,4  MIN_SECONDS=3  DEVICE=0  SKIP_E2E=0
#            CUDA_LIBS: folders with libcudart/cublas/curand/nvrtc .so.13 (default: PyTorch's
#            nvidia/*/lib folders in the machine's site-packages)
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY="gpu-carry"
step="${1:-}"

case "$step" in
build)
    cargo fetch --locked
    eval "$(scripts/cuda-toolchain.sh)"
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${SLUICE_CACHE:-$HOME/.cache/sluice}/cuda-target}"
    echo "building the GPU bench (release, --features cuda, CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP)" >&2
    bin="$(cargo bench --locked --features cuda --bench gpu_throughput --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu_throughput" and m.get("executable"):
        print(m["executable"])' | tail -n 1)"
    [[ -x "$bin" ]] || { echo "bench binary not built" >&2; exit 1; }
    mkdir -p "$CARRY"
    # Debug info stripped: the device tool carries at most 64 MiB.
    objcopy --strip-debug "$bin" "$CARRY/gpu_throughput"
    ls -l "$CARRY/gpu_throughput" >&2
    # The binary needs libcuda.so.1 (the driver) and the CUDA 13 libraries at run time.
    readelf -d "$CARRY/gpu_throughput" | grep NEEDED >&2
    ;;
run)
    [[ -x "$CARRY/gpu_throughput" ]] || { echo "no $CARRY/gpu_throughput: run '$0 build' first and carry $CARRY" >&2; exit 1; }
    if [[ -z "${CUDA_LIBS:-}" ]]; then
        CUDA_LIBS="$(python3 - <<'EOF' 2>/dev/null || true
import glob, os, site
dirs = []
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    dirs += glob.glob(os.path.join(sp, "nvidia", "*", "lib"))
    dirs += glob.glob(os.path.join(sp, "nvidia", "cu13", "lib"))
print(":".join(sorted(set(d for d in dirs if os.path.isdir(d)))))
EOF
)"
    fi
    export LD_LIBRARY_PATH="${CUDA_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    missing="$(ldd "$CARRY/gpu_throughput" | grep 'not found' || true)"
    [[ -z "$missing" ]] || { echo "missing libraries (set CUDA_LIBS):"; echo "$missing"; exit 1; }
    date_tag="$(date -u +%Y-%m-%d)"
    out_md="benches/results/gpu-${date_tag}.md"
    out_json="benches/results/gpu-${date_tag}.json"
    mkdir -p benches/results
    args=(--batch-sizes "${BATCH_SIZES:-1,8,32,64,128}" --streams "${STREAMS:-1,2,4}"
          --min-seconds "${MIN_SECONDS:-3}" --device "${DEVICE:-0}"
          --sentences benches/data/bench_sentences.txt --models models
          --markdown "$out_md" --json "$out_json")
    [[ "${SKIP_E2E:-0}" == "1" ]] && args+=(--skip-e2e)
    "$CARRY/gpu_throughput" "${args[@]}"
    if [[ -n "${OUT:-}" ]]; then
        cp "$out_md" "$out_json" "$OUT/"
    fi
    ;;
*)
    echo "usage: $0 build|run" >&2
    exit 2
    ;;
esac
