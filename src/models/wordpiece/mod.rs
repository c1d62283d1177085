//! Allocation-free BERT WordPiece tokenizer.
//!
//! [`WordPiece`] reproduces, id for id, what the Hugging Face `tokenizers` crate produces
//! for BERT-style `tokenizer.json` files (normalizer `BertNormalizer`, pre-tokenizer
//! `BertPreTokenizer`, model `WordPiece`, post-processor adding `[CLS] ... [SEP]`), but
//! writes ids straight into a caller's buffer and performs no heap allocation per call
//! once its [`Scratch`] has grown to the largest chunk of input seen.
//!
//! Pipeline (mirrors `tokenizers` 0.23):
//! 1. Added tokens with `normalized: false` (e.g. `[CLS]`, `[MASK]`) are split out of the
//!    raw text, leftmost-longest.
//! 2. Each remaining piece is normalized: clean text, space around CJK ideographs, NFD
//!    followed by dropping nonspacing marks (Mn), char-by-char lowercase.
//! 3. Added tokens with `normalized: true` are split out of the normalized text.
//! 4. The rest is split on whitespace, and every punctuation char becomes its own word.
//! 5. Each word goes through greedy longest-match-first WordPiece.
//! 6. `[CLS]` and `[SEP]` are added; the word pieces are truncated to `max_len - 2`.
//!
//! To make counting cheap on very long inputs, plain text is processed in chunks that end
//! right after an ASCII whitespace byte; since every stage above is local to a word, this
//! gives the same ids as processing the whole text at once, and lets [`WordPiece::count_tokens`]
//! stop as soon as the truncation limit is reached.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;

use serde_json::Value;
use unicode_categories::UnicodeCategories;
use unicode_normalization::char::{canonical_combining_class, decompose_canonical};

/// Errors returned while loading a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The tokenizer file could not be read.
    #[error("reading tokenizer file: {0}")]
    Io(#[from] std::io::Error),
    /// The tokenizer file is not valid JSON.
    #[error("parsing tokenizer json: {0}")]
    Json(#[from] serde_json::Error),
    /// The tokenizer uses a component or option this implementation does not reproduce;
    /// the message names it. Callers should fall back to the `tokenizers` crate.
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
    /// The tokenizer json is structurally wrong (missing or mistyped field).
    #[error("invalid tokenizer json: {0}")]
    Invalid(String),
}

/// Minimum number of bytes in a chunk of plain text before we look for a whitespace byte
/// to cut at (see module docs).
const CHUNK_BYTES: usize = 512;

/// Runs of (non-Mn) combining characters longer than this are sorted with the std stable
/// sort (which may allocate) instead of an insertion sort.
const INSERTION_SORT_MAX: usize = 64;

/// FxHash-style hasher: vocab keys are fixed at load time, so hash flooding is not a
/// concern and a fast multiplicative hash beats SipHash on short keys.
#[derive(Default, Clone, Copy)]
struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, mut bytes: &[u8]) {
        while bytes.len() >= 8 {
            self.add(u64::from_le_bytes(bytes[..8].try_into().unwrap()));
            bytes = &bytes[8..];
        }
        if bytes.len() >= 4 {
            self.add(u32::from_le_bytes(bytes[..4].try_into().unwrap()) as u64);
            bytes = &bytes[4..];
        }
        for &b in bytes {
            self.add(b as u64);
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

type FxMap<V> = HashMap<Box<str>, V, BuildHasherDefault<FxHasher>>;

/// A string → id map plus the byte length of its longest key (longer slices are never
/// looked up).
#[derive(Debug, Clone, Default)]
struct Vocab {
    map: FxMap<u32>,
    max_key_len: usize,
}

impl Vocab {
    fn insert(&mut self, key: &str, id: u32) {
        self.max_key_len = self.max_key_len.max(key.len());
        self.map.insert(key.into(), id);
    }

    #[inline]
    fn get(&self, key: &str) -> Option<u32> {
        self.map.get(key).copied()
    }
}

/// Added tokens matched by exact string comparison, leftmost-longest (as the
/// `tokenizers` crate's Aho-Corasick matcher does).
#[derive(Debug, Clone, Default)]
struct AddedMatcher {
    /// (pattern, id), sorted by descending pattern length so the first hit is the longest.
    patterns: Vec<(Box<str>, u32)>,
    /// `first_byte[b]` is true when some pattern starts with byte `b`.
    first_byte: Vec<bool>,
    /// The first byte of every pattern, when they all share it (`[` for BERT specials).
    only_first: Option<u8>,
}

impl AddedMatcher {
    fn new(mut patterns: Vec<(Box<str>, u32)>) -> Self {
        patterns.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        let mut first_byte = vec![false; 256];
        for (p, _) in &patterns {
            first_byte[p.as_bytes()[0] as usize] = true;
        }
        let only_first = match patterns.first() {
            Some((p0, _)) if patterns.iter().all(|(p, _)| p.as_bytes()[0] == p0.as_bytes()[0]) => {
                Some(p0.as_bytes()[0])
            }
            _ => None,
        };
        Self { patterns, first_byte, only_first }
    }

    #[inline]
    fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The leftmost-longest match starting in `text[from..until]` (it may end after
    /// `until`), as `(start, end, id)`.
    #[inline]
    fn find(&self, text: &str, from: usize, until: usize) -> Option<(usize, usize, u32)> {
        if self.patterns.is_empty() {
            return None;
        }
        let bytes = text.as_bytes();
        let mut pos = from;
        while pos < until {
            match self.only_first {
                Some(fb) => match find_byte(&bytes[pos..until], fb) {
                    Some(off) => pos += off,
                    None => return None,
                },
                None => {
                    if !self.first_byte[bytes[pos] as usize] {
                        pos += 1;
                        continue;
                    }
                }
            }
            let rest = &bytes[pos..];
            for (p, id) in &self.patterns {
                if rest.starts_with(p.as_bytes()) {
                    return Some((pos, pos + p.len(), *id));
                }
            }
            pos += 1;
        }
        None
    }
}

/// Position of the first `needle` in `hay`, eight bytes at a time.
#[inline]
fn find_byte(hay: &[u8], needle: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let rep = LO * needle as u64;
    let mut i = 0;
    while i + 8 <= hay.len() {
        let w = u64::from_le_bytes(hay[i..i + 8].try_into().unwrap()) ^ rep;
        if w.wrapping_sub(LO) & !w & HI != 0 {
            break; // some byte of this word is `needle`
        }
        i += 8;
    }
    hay[i..].iter().position(|&b| b == needle).map(|p| p + i)
}

/// Reusable per-thread scratch space for [`WordPiece`]: the normalized text of the current
/// chunk and a small buffer for canonical reordering of combining marks. It grows to the
/// largest chunk seen (chunks end at whitespace, so roughly the longest run without
/// whitespace plus 512 bytes), then never allocates again. (One pathological exception:
/// a run of more than 64 spacing combining marks with nonzero combining class is
/// reordered with the std stable sort, which may allocate.)
#[derive(Debug, Default, Clone)]
pub struct Scratch {
    norm: String,
    run: Vec<(u8, char)>,
}

impl Scratch {
    /// Creates an empty scratch space (same as `Scratch::default()`).
    pub fn new() -> Self {
        Self::default()
    }
}

/// Where token ids go: either counted only, or written to `out[1..]` (after `[CLS]`).
/// `n` counts body tokens (no specials) and may run past `limit` while a word is in
/// progress; only ids with index `< limit` are written.
struct Sink<'a> {
    out: Option<&'a mut [u32]>,
    n: usize,
    limit: usize,
}

impl Sink<'_> {
    #[inline]
    fn push(&mut self, id: u32) {
        if self.n < self.limit {
            if let Some(out) = self.out.as_deref_mut() {
                out[1 + self.n] = id;
            }
        }
        self.n += 1;
    }

    #[inline]
    fn full(&self) -> bool {
        self.n >= self.limit
    }
}

/// A BERT WordPiece tokenizer (normalizer + pre-tokenizer + model + `[CLS]`/`[SEP]`
/// post-processing) that writes ids into a caller's buffer without allocating.
///
/// Build it with [`WordPiece::from_file`] or [`WordPiece::from_json_str`]; share it
/// across threads (it is immutable) and give each thread its own [`Scratch`].
#[derive(Debug, Clone)]
pub struct WordPiece {
    /// Full vocab, used for the first piece of a word.
    vocab: Vocab,
    /// Vocab entries that start with the continuing-subword prefix, keyed without it.
    cont_vocab: Vocab,
    vocab_size: usize,
    unk_id: u32,
    cls_id: u32,
    sep_id: u32,
    pad_id: u32,
    max_input_chars_per_word: usize,
    clean_text: bool,
    handle_chinese_chars: bool,
    strip_accents: bool,
    lowercase: bool,
    /// Added tokens matched against the raw text (`normalized: false`).
    raw_added: AddedMatcher,
    /// Added tokens matched against the normalized text (`normalized: true`).
    norm_added: AddedMatcher,
    /// False when a normalized added token contains whitespace, so plain text must not be
    /// cut into chunks at whitespace.
    chunking: bool,
}

fn field<'a>(obj: &'a Value, key: &str, what: &str) -> Result<&'a Value, TokenizerError> {
    obj.get(key).ok_or_else(|| TokenizerError::Invalid(format!("{what}: missing field `{key}`")))
}

fn opt_bool(obj: &Value, key: &str, default: bool, what: &str) -> Result<bool, TokenizerError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(TokenizerError::Invalid(format!("{what}: `{key}` is not a bool"))),
    }
}

fn type_name(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or("<untyped>")
}

fn as_id(v: &Value, what: &str) -> Result<u32, TokenizerError> {
    v.as_u64()
        .and_then(|x| u32::try_from(x).ok())
        .ok_or_else(|| TokenizerError::Invalid(format!("{what}: id is not a u32")))
}

/// One added token as declared in `added_tokens`.
struct AddedDecl {
    content: String,
    single_word: bool,
    normalized: bool,
}

impl WordPiece {
    /// Parse a tokenizer.json file. Returns `Err(Unsupported)` if the pipeline is not
    /// `BertNormalizer` (or no normalizer) / `BertPreTokenizer` / `WordPiece` with
    /// `[CLS]`/`[SEP]` post-processing (`TemplateProcessing` or `BertProcessing`), so the
    /// caller can fall back to the `tokenizers` crate.
    ///
    /// `truncation` and `padding` in the file are ignored except for the padding id
    /// ([`WordPiece::pad_id`]); truncation is given per call.
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let json = std::fs::read_to_string(path)?;
        Self::from_json_str(&json)
    }

    /// Parse the contents of a tokenizer.json; see [`WordPiece::from_file`].
    pub fn from_json_str(json: &str) -> Result<Self, TokenizerError> {
        let root: Value = serde_json::from_str(json)?;
        if !root.is_object() {
            return Err(TokenizerError::Invalid("top level is not an object".into()));
        }

        // --- model ---
        let model = field(&root, "model", "tokenizer")?;
        if let Some(t) = model.get("type") {
            if t.as_str() != Some("WordPiece") {
                return Err(TokenizerError::Unsupported(format!(
                    "model type {}",
                    type_name(model)
                )));
            }
        }
        let unk_token = model.get("unk_token").and_then(Value::as_str).unwrap_or("[UNK]");
        let prefix = model.get("continuing_subword_prefix").and_then(Value::as_str).unwrap_or("##");
        let max_input_chars_per_word = match model.get("max_input_chars_per_word") {
            None | Some(Value::Null) => 100,
            Some(v) => v.as_u64().ok_or_else(|| {
                TokenizerError::Invalid("model: max_input_chars_per_word is not an integer".into())
            })? as usize,
        };
        let vocab_json = field(model, "vocab", "model")?
            .as_object()
            .ok_or_else(|| TokenizerError::Unsupported("model vocab is not a map".into()))?;
        let mut vocab = Vocab::default();
        let mut cont_vocab = Vocab::default();
        vocab.map.reserve(vocab_json.len());
        for (k, v) in vocab_json {
            let id = as_id(v, "model vocab")?;
            vocab.insert(k, id);
            if let Some(rest) = k.strip_prefix(prefix) {
                cont_vocab.insert(rest, id);
            }
        }
        let vocab_size = vocab.map.len();
        let unk_id = vocab.get(unk_token).ok_or_else(|| {
            TokenizerError::Unsupported(format!("unk token {unk_token:?} is not in the vocab"))
        })?;

        // --- normalizer ---
        let (clean_text, handle_chinese_chars, strip_accents, lowercase) =
            match root.get("normalizer") {
                None | Some(Value::Null) => (false, false, false, false),
                Some(n) if type_name(n) == "BertNormalizer" => {
                    let what = "BertNormalizer";
                    let lowercase = opt_bool(n, "lowercase", true, what)?;
                    let strip = opt_bool(n, "strip_accents", lowercase, what)?;
                    (
                        opt_bool(n, "clean_text", true, what)?,
                        opt_bool(n, "handle_chinese_chars", true, what)?,
                        strip,
                        lowercase,
                    )
                }
                Some(n) => {
                    return Err(TokenizerError::Unsupported(format!("normalizer {}", type_name(n))))
                }
            };

        // --- pre-tokenizer ---
        match root.get("pre_tokenizer") {
            Some(p) if type_name(p) == "BertPreTokenizer" => {}
            Some(Value::Null) | None => {
                return Err(TokenizerError::Unsupported("no pre_tokenizer".into()))
            }
            Some(p) => {
                return Err(TokenizerError::Unsupported(format!("pre_tokenizer {}", type_name(p))))
            }
        }

        // --- post-processor ---
        let (cls_id, sep_id) = match root.get("post_processor") {
            Some(p) if type_name(p) == "BertProcessing" => {
                let pair_id = |key: &str| -> Result<u32, TokenizerError> {
                    let pair = field(p, key, "BertProcessing")?;
                    let id = pair.get(1).ok_or_else(|| {
                        TokenizerError::Invalid(format!("BertProcessing: `{key}` is not a pair"))
                    })?;
                    as_id(id, "BertProcessing")
                };
                (pair_id("cls")?, pair_id("sep")?)
            }
            Some(p) if type_name(p) == "TemplateProcessing" => parse_template(p)?,
            Some(Value::Null) | None => {
                return Err(TokenizerError::Unsupported("no post_processor".into()))
            }
            Some(p) => {
                return Err(TokenizerError::Unsupported(format!("post_processor {}", type_name(p))))
            }
        };

        // --- padding id ---
        let pad_id = match root.get("padding") {
            Some(p) if p.is_object() => match p.get("pad_id") {
                Some(v) => as_id(v, "padding")?,
                None => 0,
            },
            _ => vocab.get("[PAD]").unwrap_or(0),
        };

        let mut wp = WordPiece {
            vocab,
            cont_vocab,
            vocab_size,
            unk_id,
            cls_id,
            sep_id,
            pad_id,
            max_input_chars_per_word,
            clean_text,
            handle_chinese_chars,
            strip_accents,
            lowercase,
            raw_added: AddedMatcher::default(),
            norm_added: AddedMatcher::default(),
            chunking: true,
        };

        // --- added tokens (ids assigned as `AddedVocabulary::add_tokens` does) ---
        let mut decls = Vec::new();
        if let Some(list) = root.get("added_tokens").filter(|v| !v.is_null()) {
            let list = list
                .as_array()
                .ok_or_else(|| TokenizerError::Invalid("added_tokens is not a list".into()))?;
            for t in list {
                let what = "added token";
                let content = field(t, "content", what)?
                    .as_str()
                    .ok_or_else(|| TokenizerError::Invalid("added token content".into()))?;
                let special = opt_bool(t, "special", false, what)?;
                decls.push(AddedDecl {
                    content: content.to_owned(),
                    single_word: opt_bool(t, "single_word", false, what)?,
                    // lstrip/rstrip only move whitespace into the added token's span; the
                    // pre-tokenizer drops that whitespace anyway, so ids are unaffected.
                    normalized: opt_bool(t, "normalized", !special, what)?,
                });
            }
        }
        wp.install_added_tokens(decls)?;
        Ok(wp)
    }

    fn install_added_tokens(&mut self, decls: Vec<AddedDecl>) -> Result<(), TokenizerError> {
        // content -> (id, index into `decls` of the latest declaration)
        let mut by_content: HashMap<String, (u32, usize)> = HashMap::new();
        let mut next_id = self.vocab_size as u32;
        for (i, d) in decls.iter().enumerate() {
            if d.content.is_empty() {
                continue;
            }
            let id = match by_content.get(&d.content) {
                Some(&(id, _)) => id,
                None => match self.vocab.get(&d.content) {
                    Some(id) => id,
                    None => {
                        next_id += 1;
                        next_id - 1
                    }
                },
            };
            by_content.insert(d.content.clone(), (id, i));
        }
        // The tokenizers crate keys tokens by id: a later declaration with the same id
        // replaces the earlier one.
        let mut by_id: HashMap<u32, usize> = HashMap::new();
        for (_, &(id, i)) in by_content.iter() {
            let e = by_id.entry(id).or_insert(i);
            *e = (*e).max(i);
        }
        let mut raw = Vec::new();
        let mut norm = Vec::new();
        let mut scratch = Scratch::default();
        for (&id, &i) in &by_id {
            let d = &decls[i];
            if d.single_word {
                return Err(TokenizerError::Unsupported(format!(
                    "added token {:?} with single_word=true",
                    d.content
                )));
            }
            if d.normalized {
                self.normalize_into(&d.content, &mut scratch);
                let pat = scratch.norm.as_str();
                if pat.is_empty() {
                    return Err(TokenizerError::Unsupported(format!(
                        "added token {:?} normalizes to an empty string",
                        d.content
                    )));
                }
                if pat.chars().any(char::is_whitespace) {
                    self.chunking = false;
                }
                norm.push((Box::<str>::from(pat), id));
            } else {
                raw.push((Box::<str>::from(d.content.as_str()), id));
            }
        }
        for list in [&mut raw, &mut norm] {
            list.sort();
            if let Some(w) = list.windows(2).find(|w| w[0].0 == w[1].0) {
                // The tokenizers crate then picks one of them depending on hash-map
                // iteration order, which we cannot reproduce.
                return Err(TokenizerError::Unsupported(format!(
                    "two added tokens match the same text {:?}",
                    w[0].0
                )));
            }
        }
        self.raw_added = AddedMatcher::new(raw);
        self.norm_added = AddedMatcher::new(norm);
        Ok(())
    }

    /// Number of ids [`WordPiece::encode_into`] would write for `text`, including `[CLS]`
    /// and `[SEP]`, truncated to `max_len` (values below 2 are treated as 2).
    pub fn count_tokens(&self, text: &str, max_len: usize, scratch: &mut Scratch) -> usize {
        let limit = max_len.max(2);
        self.run(text, limit, scratch, None)
    }

    /// Writes `[CLS] ids.. [SEP]` into `out[..n]` and returns `n`. Truncation keeps the
    /// first `max_len - 2` word pieces (as HF truncation `longest_first` with a single
    /// sequence does), then `[SEP]`. If `out` is shorter than `max_len`, it truncates at
    /// `out.len()` instead. `max_len` values below 2 are treated as 2.
    ///
    /// # Panics
    /// If `out.len() < 2`.
    pub fn encode_into(
        &self,
        text: &str,
        max_len: usize,
        scratch: &mut Scratch,
        out: &mut [u32],
    ) -> usize {
        assert!(out.len() >= 2, "encode_into: output buffer must hold at least 2 ids");
        let limit = max_len.max(2).min(out.len());
        self.run(text, limit, scratch, Some(out))
    }

    /// Id of the padding token (`padding.pad_id` from the json, else `[PAD]`, else 0).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Id of the leading special token added by the post-processor (`[CLS]`).
    pub fn cls_id(&self) -> u32 {
        self.cls_id
    }

    /// Id of the trailing special token added by the post-processor (`[SEP]`).
    pub fn sep_id(&self) -> u32 {
        self.sep_id
    }

    /// Id of the model's unknown token (`[UNK]`).
    pub fn unk_id(&self) -> u32 {
        self.unk_id
    }

    /// Number of entries in the WordPiece vocab (as the `tokenizers` crate's
    /// `Model::get_vocab_size`; added tokens not in the vocab are not counted).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Shared body of `count_tokens` / `encode_into`; `limit >= 2`, and when `out` is
    /// given, `out.len() >= limit`.
    fn run(
        &self,
        text: &str,
        limit: usize,
        scratch: &mut Scratch,
        out: Option<&mut [u32]>,
    ) -> usize {
        let mut sink = Sink { out, n: 0, limit: limit - 2 };
        if let Some(out) = sink.out.as_deref_mut() {
            out[0] = self.cls_id;
        }
        let bytes = text.as_bytes();
        let mut p = 0;
        while p < text.len() && !sink.full() {
            let chunk_end = if self.chunking && text.len() - p > CHUNK_BYTES {
                match bytes[p + CHUNK_BYTES..]
                    .iter()
                    .position(|&b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
                {
                    Some(i) => p + CHUNK_BYTES + i + 1,
                    None => text.len(),
                }
            } else {
                text.len()
            };
            match self.raw_added.find(text, p, chunk_end) {
                Some((start, end, id)) => {
                    self.plain(&text[p..start], scratch, &mut sink);
                    if !sink.full() {
                        sink.push(id);
                    }
                    p = end;
                }
                None => {
                    self.plain(&text[p..chunk_end], scratch, &mut sink);
                    p = chunk_end;
                }
            }
        }
        let n = sink.n.min(sink.limit);
        if let Some(out) = sink.out {
            out[n + 1] = self.sep_id;
        }
        n + 2
    }

    /// Normalizes a piece of text without raw added tokens, splits out normalized added
    /// tokens, and tokenizes the rest.
    fn plain(&self, text: &str, scratch: &mut Scratch, sink: &mut Sink<'_>) {
        if text.is_empty() || sink.full() {
            return;
        }
        self.normalize_into(text, scratch);
        let norm = scratch.norm.as_str();
        if self.norm_added.is_empty() {
            self.pre_tokenize(norm, sink);
            return;
        }
        let mut p = 0;
        while p < norm.len() && !sink.full() {
            match self.norm_added.find(norm, p, norm.len()) {
                Some((start, end, id)) => {
                    self.pre_tokenize(&norm[p..start], sink);
                    if !sink.full() {
                        sink.push(id);
                    }
                    p = end;
                }
                None => {
                    self.pre_tokenize(&norm[p..], sink);
                    p = norm.len();
                }
            }
        }
    }

    /// `BertNormalizer` into `scratch.norm`.
    fn normalize_into(&self, text: &str, scratch: &mut Scratch) {
        let Scratch { norm, run } = scratch;
        norm.clear();
        run.clear();
        norm.reserve(text.len());
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b < 0x80 {
                // ASCII fast path: no CJK, NFD is the identity, combining class 0.
                i += 1;
                let b = if self.clean_text && (b < 0x20 || b == 0x7f) {
                    if matches!(b, b'\t' | b'\n' | b'\r') {
                        b' '
                    } else {
                        continue; // \0 and other control chars: dropped before NFD
                    }
                } else if self.lowercase {
                    b.to_ascii_lowercase()
                } else {
                    b
                };
                if !run.is_empty() {
                    self.flush_run(norm, run);
                }
                norm.push(b as char);
                continue;
            }
            let c = text[i..].chars().next().expect("char boundary");
            i += c.len_utf8();
            let c = if self.clean_text {
                if c == '\u{fffd}' || c.is_other() {
                    continue;
                } else if c.is_whitespace() {
                    ' '
                } else {
                    c
                }
            } else {
                c
            };
            if self.handle_chinese_chars && is_chinese_char(c) {
                self.decomposed(' ', norm, run);
                self.decomposed(c, norm, run);
                self.decomposed(' ', norm, run);
            } else {
                self.decomposed(c, norm, run);
            }
        }
        if self.strip_accents {
            self.flush_run(norm, run);
        }
    }

    /// NFD (when stripping accents) with canonical reordering, then Mn removal and
    /// lowercasing. Nonspacing marks are dropped before reordering: stable-sorting and then
    /// filtering gives the same relative order for the survivors as filtering first.
    #[inline]
    fn decomposed(&self, c: char, norm: &mut String, run: &mut Vec<(u8, char)>) {
        if !self.strip_accents {
            self.finish(c, norm);
            return;
        }
        if c.is_ascii() {
            if !run.is_empty() {
                self.flush_run(norm, run);
            }
            self.finish(c, norm);
            return;
        }
        decompose_canonical(c, |d| {
            let ccc = canonical_combining_class(d);
            if ccc == 0 {
                if !run.is_empty() {
                    self.flush_run(norm, run);
                }
                if !d.is_mark_nonspacing() {
                    self.finish(d, norm);
                }
            } else if !d.is_mark_nonspacing() {
                run.push((ccc, d));
            }
        });
    }

    /// Emits the pending combining run in canonical order (stable by combining class).
    fn flush_run(&self, norm: &mut String, run: &mut Vec<(u8, char)>) {
        if run.len() > INSERTION_SORT_MAX {
            run.sort_by_key(|k| k.0);
        } else {
            for i in 1..run.len() {
                let mut j = i;
                while j > 0 && run[j - 1].0 > run[j].0 {
                    run.swap(j - 1, j);
                    j -= 1;
                }
            }
        }
        for &(_, c) in run.iter() {
            self.finish(c, norm);
        }
        run.clear();
    }

    /// Lowercase (char by char, as `NormalizedString::lowercase`) and append.
    #[inline]
    fn finish(&self, c: char, norm: &mut String) {
        if !self.lowercase {
            norm.push(c);
        } else if c.is_ascii() {
            norm.push(c.to_ascii_lowercase());
        } else {
            for l in c.to_lowercase() {
                norm.push(l);
            }
        }
    }

    /// `BertPreTokenizer`: split on whitespace, isolate punctuation; each word goes to
    /// WordPiece. Stops once the sink is full.
    fn pre_tokenize(&self, s: &str, sink: &mut Sink<'_>) {
        let mut word_start: Option<usize> = None;
        for (i, c) in s.char_indices() {
            let (ws, punct) = if c.is_ascii() {
                let b = c as u8;
                (matches!(b, b' ' | 0x09..=0x0d), b.is_ascii_punctuation())
            } else {
                (c.is_whitespace(), c.is_punctuation())
            };
            if ws || punct {
                if let Some(st) = word_start.take() {
                    self.word(&s[st..i], sink);
                    if sink.full() {
                        return;
                    }
                }
                if punct {
                    self.word(&s[i..i + c.len_utf8()], sink);
                    if sink.full() {
                        return;
                    }
                }
            } else if word_start.is_none() {
                word_start = Some(i);
            }
        }
        if let Some(st) = word_start {
            self.word(&s[st..], sink);
        }
    }

    /// WordPiece on one word: greedy longest-match-first; `[UNK]` for the whole word if it
    /// is too long or any part has no match.
    fn word(&self, w: &str, sink: &mut Sink<'_>) {
        if w.len() > self.max_input_chars_per_word
            && w.chars().count() > self.max_input_chars_per_word
        {
            sink.push(self.unk_id);
            return;
        }
        let word_start = sink.n;
        let mut start = 0;
        while start < w.len() {
            let vocab = if start == 0 { &self.vocab } else { &self.cont_vocab };
            // Slices longer than the longest key cannot match; skipping them keeps the
            // result of trying every end position from the end of the word.
            let mut end = w.len().min(start + vocab.max_key_len);
            while !w.is_char_boundary(end) {
                end -= 1;
            }
            let mut found = None;
            while end > start {
                if let Some(id) = vocab.get(&w[start..end]) {
                    found = Some(id);
                    break;
                }
                end -= 1;
                while !w.is_char_boundary(end) {
                    end -= 1;
                }
            }
            match found {
                Some(id) => {
                    sink.push(id);
                    start = end;
                }
                None => {
                    sink.n = word_start;
                    sink.push(self.unk_id);
                    return;
                }
            }
        }
    }
}

/// Extracts `(cls_id, sep_id)` from a `TemplateProcessing` whose single template is
/// exactly `[special] $A [special]`, each special being one id.
fn parse_template(p: &Value) -> Result<(u32, u32), TokenizerError> {
    let unsupported = |why: &str| TokenizerError::Unsupported(format!("TemplateProcessing: {why}"));
    let single = field(p, "single", "TemplateProcessing")?
        .as_array()
        .ok_or_else(|| unsupported("single is not a list"))?;
    let specials = field(p, "special_tokens", "TemplateProcessing")?;
    let special_id = |piece: &Value| -> Result<u32, TokenizerError> {
        let name = piece
            .get("SpecialToken")
            .and_then(|s| s.get("id"))
            .and_then(Value::as_str)
            .ok_or_else(|| unsupported("single template is not [special] $A [special]"))?;
        let ids = specials
            .get(name)
            .and_then(|s| s.get("ids"))
            .and_then(Value::as_array)
            .ok_or_else(|| unsupported(&format!("special token {name:?} not declared")))?;
        if ids.len() != 1 {
            return Err(unsupported(&format!("special token {name:?} has {} ids", ids.len())));
        }
        as_id(&ids[0], "TemplateProcessing")
    };
    if single.len() != 3 || single[1].get("Sequence").is_none() {
        return Err(unsupported("single template is not [special] $A [special]"));
    }
    let seq_id = single[1]["Sequence"].get("id").and_then(Value::as_str);
    if seq_id != Some("A") {
        return Err(unsupported("single template sequence is not $A"));
    }
    Ok((special_id(&single[0])?, special_id(&single[2])?))
}

/// CJK ideograph ranges, as in `tokenizers`' `BertNormalizer`.
#[inline]
fn is_chinese_char(c: char) -> bool {
    matches!(
        c as u32,
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const VOCAB: &[&str] = &[
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "!", ",", ".", "'", "un",
        "##aff", "##able", "play", "##ing", "cafe", "naive", "a", "b", "c", "##b", "##c", "中",
        "国", "i", "##̇", "ß", "σ", "ς", "ο", "δ", "##δ", "##ο", "##σ", "##ς", "don", "t", "u", "s",
        "$", "+", "x", "##x", "ab", "##bc", "abc", "##ß",
    ];

    fn json_with(normalizer: &str, post: &str, added_extra: &str) -> String {
        let vocab: Vec<String> = VOCAB
            .iter()
            .enumerate()
            .map(|(i, t)| format!("{}: {}", serde_json::to_string(t).unwrap(), i + 10))
            .collect();
        let special = |id: u32, c: &str| {
            format!(
                r#"{{"id":{id},"content":"{c}","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}}"#
            )
        };
        format!(
            r###"{{"version":"1.0","truncation":null,"padding":null,
            "added_tokens":[{},{},{},{},{}{added_extra}],
            "normalizer":{normalizer},
            "pre_tokenizer":{{"type":"BertPreTokenizer"}},
            "post_processor":{post},
            "decoder":null,
            "model":{{"type":"WordPiece","unk_token":"[UNK]","continuing_subword_prefix":"##","max_input_chars_per_word":10,
              "vocab":{{{}}}}}}}"###,
            special(10, "[PAD]"),
            special(11, "[UNK]"),
            special(12, "[CLS]"),
            special(13, "[SEP]"),
            special(14, "[MASK]"),
            vocab.join(",")
        )
    }

    const BERT_NORM: &str = r#"{"type":"BertNormalizer","clean_text":true,"handle_chinese_chars":true,"strip_accents":null,"lowercase":true}"#;
    const TEMPLATE: &str = r#"{"type":"TemplateProcessing",
        "single":[{"SpecialToken":{"id":"[CLS]","type_id":0}},{"Sequence":{"id":"A","type_id":0}},{"SpecialToken":{"id":"[SEP]","type_id":0}}],
        "pair":[],
        "special_tokens":{"[CLS]":{"id":"[CLS]","ids":[12],"tokens":["[CLS]"]},"[SEP]":{"id":"[SEP]","ids":[13],"tokens":["[SEP]"]}}}"#;

    fn tok() -> WordPiece {
        WordPiece::from_json_str(&json_with(BERT_NORM, TEMPLATE, "")).unwrap()
    }

    fn id(t: &str) -> u32 {
        VOCAB.iter().position(|v| *v == t).unwrap() as u32 + 10
    }

    fn enc(wp: &WordPiece, text: &str) -> Vec<u32> {
        let mut s = Scratch::default();
        let mut out = vec![0u32; 64];
        let n = wp.encode_into(text, 64, &mut s, &mut out);
        assert_eq!(n, wp.count_tokens(text, 64, &mut s));
        out.truncate(n);
        assert_eq!(out[0], wp.cls_id());
        assert_eq!(out[n - 1], wp.sep_id());
        out[1..n - 1].to_vec()
    }

    fn ids(ts: &[&str]) -> Vec<u32> {
        ts.iter().map(|t| id(t)).collect()
    }

    #[test]
    fn specials_and_sizes() {
        let wp = tok();
        assert_eq!(wp.cls_id(), 12);
        assert_eq!(wp.sep_id(), 13);
        assert_eq!(wp.unk_id(), 11);
        assert_eq!(wp.pad_id(), 10);
        assert_eq!(wp.vocab_size(), VOCAB.len());
        assert!(enc(&wp, "").is_empty());
        assert!(enc(&wp, "   \t\n ").is_empty());
    }

    #[test]
    fn greedy_longest_match_and_unk() {
        let wp = tok();
        assert_eq!(enc(&wp, "unaffable"), ids(&["un", "##aff", "##able"]));
        assert_eq!(enc(&wp, "playing"), ids(&["play", "##ing"]));
        // longest-first: "abc" beats "ab" + "##c"
        assert_eq!(enc(&wp, "abc"), ids(&["abc"]));
        assert_eq!(enc(&wp, "abcbc"), ids(&["abc", "##bc"]));
        // any failing piece makes the whole word [UNK]
        assert_eq!(enc(&wp, "playz hello"), vec![11, id("hello")]);
        // more than max_input_chars_per_word (10) chars -> [UNK]
        let mut ten = vec!["##x"; 10];
        ten[0] = "x";
        assert_eq!(enc(&wp, "xxxxxxxxxx"), ids(&ten));
        assert_eq!(enc(&wp, "xxxxxxxxxxx"), vec![11]);
        // the limit counts chars, not bytes
        assert_eq!(enc(&wp, "ßßßßßßßßßß").len(), 10);
        assert_eq!(enc(&wp, "ßßßßßßßßßßß"), vec![11]);
    }

    #[test]
    fn lowercase_clean_and_punctuation() {
        let wp = tok();
        assert_eq!(enc(&wp, "Hello,\tWORLD!!"), ids(&["hello", ",", "world", "!", "!"]));
        // control chars, NUL and U+FFFD are dropped (joining the word), \u{b} is a control
        assert_eq!(enc(&wp, "hel\u{0}lo\u{fffd} wor\u{b}ld\u{200b}"), ids(&["hello", "world"]));
        // ASCII symbols count as punctuation
        assert_eq!(enc(&wp, "a$b+c"), ids(&["a", "$", "b", "+", "c"]));
        assert_eq!(enc(&wp, "don't"), ids(&["don", "'", "t"]));
        assert_eq!(enc(&wp, "U.S."), ids(&["u", ".", "s", "."]));
        // NBSP and ideographic space are whitespace
        assert_eq!(enc(&wp, "hello\u{a0}world\u{3000}!"), ids(&["hello", "world", "!"]));
    }

    #[test]
    fn accents_and_special_lowercase() {
        let wp = tok();
        assert_eq!(enc(&wp, "Café NAÏVE"), ids(&["cafe", "naive"]));
        // decomposed input too
        assert_eq!(enc(&wp, "cafe\u{301}"), ids(&["cafe"]));
        // char-by-char lowercase: no final-sigma rule
        assert_eq!(enc(&wp, "ΟΔΟΣ"), ids(&["ο", "##δ", "##ο", "##σ"]));
        assert_eq!(enc(&wp, "ς"), ids(&["ς"]));
        // İ: NFD gives I + U+0307 (Mn, dropped), then lowercase
        assert_eq!(enc(&wp, "İ"), ids(&["i"]));
        assert_eq!(enc(&wp, "ß"), ids(&["ß"]));
    }

    #[test]
    fn no_strip_accents_keeps_marks() {
        let norm = r#"{"type":"BertNormalizer","clean_text":true,"handle_chinese_chars":true,"strip_accents":false,"lowercase":true}"#;
        let wp = WordPiece::from_json_str(&json_with(norm, TEMPLATE, "")).unwrap();
        // İ lowercases to i + U+0307
        assert_eq!(enc(&wp, "İ"), ids(&["i", "##̇"]));
        assert_eq!(enc(&wp, "café"), vec![11]);
    }

    #[test]
    fn no_lowercase() {
        let norm = r#"{"type":"BertNormalizer","clean_text":true,"handle_chinese_chars":true,"strip_accents":null,"lowercase":false}"#;
        let wp = WordPiece::from_json_str(&json_with(norm, TEMPLATE, "")).unwrap();
        assert_eq!(enc(&wp, "Hello hello café"), vec![11, id("hello"), 11]);
    }

    #[test]
    fn chinese_chars_are_split() {
        let wp = tok();
        assert_eq!(enc(&wp, "中国hello"), ids(&["中", "国", "hello"]));
        let norm = r#"{"type":"BertNormalizer","clean_text":true,"handle_chinese_chars":false,"strip_accents":null,"lowercase":true}"#;
        let wp = WordPiece::from_json_str(&json_with(norm, TEMPLATE, "")).unwrap();
        assert_eq!(enc(&wp, "中国"), vec![11]);
    }

    #[test]
    fn added_tokens_in_text() {
        let wp = tok();
        assert_eq!(enc(&wp, "hello[MASK]world [SEP]"), vec![id("hello"), 14, id("world"), 13]);
        // raw added tokens are matched before lowercasing
        assert_eq!(enc(&wp, "[mask]"), vec![11, 11, 11]);
        // a normalized added token matches after lowercasing
        let extra = r#",{"id":99,"content":"HeLLo!","single_word":false,"lstrip":false,"rstrip":false,"normalized":true,"special":false}"#;
        let wp = WordPiece::from_json_str(&json_with(BERT_NORM, TEMPLATE, extra)).unwrap();
        let new_id = VOCAB.len() as u32; // first id past the vocab size
        assert_eq!(enc(&wp, "say hello! HELLO!"), vec![11, new_id, new_id]);
    }

    #[test]
    fn truncation() {
        let wp = tok();
        let text = "hello world ".repeat(50);
        let mut s = Scratch::default();
        let mut out = vec![0u32; 200];
        assert_eq!(wp.count_tokens(&text, 7, &mut s), 7);
        let n = wp.encode_into(&text, 7, &mut s, &mut out);
        assert_eq!(
            &out[..n],
            &[12, id("hello"), id("world"), id("hello"), id("world"), id("hello"), 13]
        );
        // truncation inside a multi-piece word keeps the first pieces
        let n = wp.encode_into("unaffable", 4, &mut s, &mut out);
        assert_eq!(&out[..n], &[12, id("un"), id("##aff"), 13]);
        // out shorter than max_len
        let n = wp.encode_into(&text, 512, &mut s, &mut out[..5]);
        assert_eq!(&out[..n], &[12, id("hello"), id("world"), id("hello"), 13]);
        assert_eq!(wp.count_tokens(&text, 1000, &mut s), 102);
        assert_eq!(wp.count_tokens(&text, 0, &mut s), 2);
        // a bad word after the limit does not disturb what was written
        let n = wp.encode_into("hello playz", 3, &mut s, &mut out);
        assert_eq!(&out[..n], &[12, id("hello"), 13]);
    }

    #[test]
    fn long_input_chunking_matches_single_pass() {
        let wp = tok();
        let unit = "hello,world café 中国 unaffable\u{301}\u{302} [MASK] ";
        let text = unit.repeat(200);
        let got = enc_big(&wp, &text);
        let one = enc(&wp, unit);
        assert_eq!(got.len(), one.len() * 200);
        for c in got.chunks(one.len()) {
            assert_eq!(c, &one[..]);
        }
    }

    fn enc_big(wp: &WordPiece, text: &str) -> Vec<u32> {
        let mut s = Scratch::default();
        let mut out = vec![0u32; 100_000];
        let n = wp.encode_into(text, out.len(), &mut s, &mut out);
        out[1..n - 1].to_vec()
    }

    #[test]
    fn bert_processing_and_unsupported() {
        let post = r#"{"type":"BertProcessing","sep":["[SEP]",13],"cls":["[CLS]",12]}"#;
        let wp = WordPiece::from_json_str(&json_with(BERT_NORM, post, "")).unwrap();
        assert_eq!(enc(&wp, "hello"), vec![id("hello")]);

        let bad_post = r#"{"type":"RobertaProcessing","sep":["[SEP]",13],"cls":["[CLS]",12]}"#;
        let err = WordPiece::from_json_str(&json_with(BERT_NORM, bad_post, "")).unwrap_err();
        assert!(
            matches!(&err, TokenizerError::Unsupported(m) if m.contains("RobertaProcessing")),
            "{err}"
        );

        let bad_norm = r#"{"type":"NFC"}"#;
        let err = WordPiece::from_json_str(&json_with(bad_norm, TEMPLATE, "")).unwrap_err();
        assert!(matches!(&err, TokenizerError::Unsupported(m) if m.contains("NFC")), "{err}");

        let extra = r#",{"id":99,"content":"zz","single_word":true,"lstrip":false,"rstrip":false,"normalized":false,"special":false}"#;
        let err = WordPiece::from_json_str(&json_with(BERT_NORM, TEMPLATE, extra)).unwrap_err();
        assert!(
            matches!(&err, TokenizerError::Unsupported(m) if m.contains("single_word")),
            "{err}"
        );

        // two normalized added tokens with the same normalized form: which one the
        // tokenizers crate matches depends on hash-map order
        let extra = r#",{"id":99,"content":"AB","single_word":false,"lstrip":false,"rstrip":false,"normalized":true,"special":false},{"id":98,"content":"ab","single_word":false,"lstrip":false,"rstrip":false,"normalized":true,"special":false}"#;
        let json = json_with(BERT_NORM, TEMPLATE, extra);
        let err = WordPiece::from_json_str(&json).unwrap_err();
        assert!(matches!(&err, TokenizerError::Unsupported(m) if m.contains("same text")), "{err}");

        assert!(matches!(WordPiece::from_json_str("{"), Err(TokenizerError::Json(_))));
        assert!(matches!(
            WordPiece::from_file(Path::new("/nonexistent/tokenizer.json")),
            Err(TokenizerError::Io(_))
        ));
    }
}
