#!/usr/bin/env bash
# FlatBuffers tooling for schemas/inference.fbs (the request contract).
#
#   scripts/gen-flatbuffers.sh                 check the schema compiles and that the hand-written
#                                              accessors in src/ingest/flatbuf.rs use the vtable
#                                              slots and union values flatc assigns
#   scripts/gen-flatbuffers.sh --python DIR    also generate Python bindings into DIR
#   scripts/gen-flatbuffers.sh --rust DIR      also generate Rust into DIR (needs flatc >= 23,
#                                              the generation that targets the flatbuffers 25 crate)
#
# Sluice's Rust accessors are hand-written (src/ingest/flatbuf.rs): Debian's flatc (2.0.8,
# package flatbuffers-compiler) generates Rust for the 2.x runtime, which does not compile
# against the flatbuffers 25 crate Sluice uses. The check below keeps the two in step: it runs
# whatever flatc is installed, since the slot numbering is the same in every version.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
schema="$root/schemas/inference.fbs"
accessors="$root/src/ingest/flatbuf.rs"
python_out=""
rust_out=""

while [[ $# -gt 0 ]]; do
    case "$1" in
        --python) python_out="${2:?--python needs a directory}"; shift 2 ;;
        --rust) rust_out="${2:?--rust needs a directory}"; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

if ! command -v flatc >/dev/null; then
    echo "flatc not found: apt-get install flatbuffers-compiler (or a release from github.com/google/flatbuffers)" >&2
    exit 1
fi
version="$(flatc --version | awk '{print $NF}')"
major="${version%%.*}"
echo "flatc $version"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# 1. The schema compiles; collect the slots flatc assigns.
flatc --rust -o "$tmp" "$schema"
generated="$tmp/inference_generated.rs"
awk '
    /^impl<.a> [A-Za-z]+<.a> \{/ { t = $2; sub(/<.*/, "", t) }
    /^impl Input \{/ { t = "Input" }
    t != "" && /pub const VT_[A-Z_]+: flatbuffers::VOffsetT = [0-9]+;/ {
        name = $3; sub(/^VT_/, "", name); sub(/:$/, "", name)
        v = $NF; sub(/;$/, "", v); print t, name, v
    }
    t == "Input" && /pub const [A-Za-z]+: Self = Self\([0-9]+\);/ {
        name = $3; sub(/:$/, "", name); v = $NF; gsub(/[^0-9]/, "", v); print "Input", toupper(name), v
    }
    /^}/ { t = "" }
' "$generated" | sed 's/^Input TOKENIDS/Input TOKEN_IDS/' | sort > "$tmp/flatc.txt"

# 2. The same from the hand-written accessors (mod slot / mod input_type).
awk '
    /pub const REQ_[A-Z_]+: VOffsetT/ { p = "Request"; pre = "REQ_" }
    /pub const TEXTS_[A-Z_]+: VOffsetT/ { p = "Texts"; pre = "TEXTS_" }
    /pub const TOK_[A-Z_]+: VOffsetT/ { p = "TokenIds"; pre = "TOK_" }
    /pub const FEAT_[A-Z_]+: VOffsetT/ { p = "Features"; pre = "FEAT_" }
    /pub const [A-Z_]+: VOffsetT = [0-9]+;/ {
        name = $3; sub(/:$/, "", name); sub("^" pre, "", name)
        v = $NF; sub(/;$/, "", v); print p, name, v
    }
    /pub const [A-Z_]+: u8 = [0-9]+;/ {
        name = $3; sub(/:$/, "", name); v = $NF; sub(/;$/, "", v); print "Input", name, v
    }
' "$accessors" | sort > "$tmp/hand.txt"

if ! diff -u "$tmp/flatc.txt" "$tmp/hand.txt"; then
    echo "src/ingest/flatbuf.rs does not match $schema (- flatc, + hand-written)" >&2
    exit 1
fi
echo "schema OK; src/ingest/flatbuf.rs matches it ($(wc -l < "$tmp/flatc.txt") slots and union values)"

if [[ -n "$python_out" ]]; then
    flatc --python -o "$python_out" "$schema"
    echo "Python bindings in $python_out/sluice/fb/"
fi

if [[ -n "$rust_out" ]]; then
    if [[ "$major" -lt 23 ]]; then
        echo "flatc $version generates Rust for the flatbuffers 2.x crate; Sluice uses 25.x (needs flatc >= 23)" >&2
        exit 1
    fi
    flatc --rust -o "$rust_out" "$schema"
    echo "Rust in $rust_out/inference_generated.rs"
fi
