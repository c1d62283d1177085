//! Allocation-free BERT WordPiece tokenizer.
//!
//! [`WordPiece`] reproduces, id for id, what the Hugging Face `tokenizers` crate produces
//! for BERT-style `tokenizer.json` files (normalizer `BertNormalizer`, pre-tokenizer
//! `BertPreTokenizer`, model `WordPiece`, post-processor adding `[CLS] ... [SEP]`), but
//! writes ids straight into a caller's buffer and performs no heap allocation per call
//! once its [`TokenScratch`] has grown to the largest chunk of input seen.
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

mod added;
mod hash;
mod load;
mod normalize;
#[cfg(test)]
mod tests;
mod tokenizer;

use added::AddedMatcher;
use hash::Vocab;

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

/// Reusable per-thread scratch space for [`WordPiece`]: the normalized text of the current
/// chunk and a small buffer for canonical reordering of combining marks. It grows to the
/// largest chunk seen (chunks end at whitespace, so roughly the longest run without
/// whitespace plus 512 bytes), then never allocates again. (One pathological exception:
/// a run of more than 64 spacing combining marks with nonzero combining class is
/// reordered with the std stable sort, which may allocate.)
#[derive(Debug, Default, Clone)]
pub struct TokenScratch {
    norm: String,
    run: Vec<(u8, char)>,
}

impl TokenScratch {
    /// Creates an empty scratch space (same as `TokenScratch::default()`).
    pub fn new() -> Self {
        Self::default()
    }
}

/// A BERT WordPiece tokenizer (normalizer + pre-tokenizer + model + `[CLS]`/`[SEP]`
/// post-processing) that writes ids into a caller's buffer without allocating.
///
/// Build it with [`WordPiece::from_file`] or [`WordPiece::from_json_str`]; share it
/// across threads (it is immutable) and give each thread its own [`TokenScratch`].
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
