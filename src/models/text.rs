//! Text tokenization for BERT-family models.
//!
//! The fast path is our own allocation-free [`WordPiece`]; a tokenizer.json it does not
//! support falls back to the Hugging Face `tokenizers` crate (correct, but allocating).

use crate::core::InvalidInput;
use std::path::Path;

use super::wordpiece::{TokenScratch, TokenizerError, WordPiece};
use super::ModelError;

/// A model's tokenizer.
pub enum TextTokenizer {
    /// Allocation-free BERT WordPiece.
    Fast(WordPiece),
    /// Any other tokenizer.json, through the `tokenizers` crate.
    Hf { tokenizer: Box<tokenizers::Tokenizer>, cls: u32, sep: u32, pad: u32 },
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TextTokenizer::Fast(_) => f.write_str("TextTokenizer::Fast"),
            TextTokenizer::Hf { .. } => f.write_str("TextTokenizer::Hf"),
        }
    }
}

impl TextTokenizer {
    /// Loads `tokenizer.json`, preferring the fast path.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        match WordPiece::from_file(path) {
            Ok(w) => Ok(TextTokenizer::Fast(w)),
            Err(TokenizerError::Unsupported(why)) => {
                tracing::warn!(path = %path.display(), reason = %why,
                    "tokenizer not supported by the allocation-free WordPiece; using the tokenizers crate");
                let tokenizer = tokenizers::Tokenizer::from_file(path).map_err(|e| {
                    ModelError::Spec { path: path.to_path_buf(), reason: e.to_string() }
                })?;
                let id = |names: &[&str]| names.iter().find_map(|n| tokenizer.token_to_id(n));
                let (Some(cls), Some(sep)) = (id(&["[CLS]", "<s>"]), id(&["[SEP]", "</s>"])) else {
                    return Err(ModelError::Spec {
                        path: path.to_path_buf(),
                        reason: "tokenizer has no [CLS]/[SEP] (or <s>/</s>) tokens".into(),
                    });
                };
                let pad = id(&["[PAD]", "<pad>"]).unwrap_or(0);
                Ok(TextTokenizer::Hf { tokenizer: Box::new(tokenizer), cls, sep, pad })
            }
            Err(e) => Err(ModelError::Spec { path: path.to_path_buf(), reason: e.to_string() }),
        }
    }

    /// The padding id.
    pub fn pad_id(&self) -> u32 {
        match self {
            TextTokenizer::Fast(w) => w.pad_id(),
            TextTokenizer::Hf { pad, .. } => *pad,
        }
    }

    /// Number of token ids the model knows (valid ids are below it).
    pub fn vocab_size(&self) -> usize {
        match self {
            TextTokenizer::Fast(w) => w.vocab_size(),
            TextTokenizer::Hf { tokenizer, .. } => tokenizer.get_vocab_size(true),
        }
    }

    /// Tokens `encode_into` would write for `text` (specials included, truncated to `max_len`).
    pub fn count_tokens(
        &self,
        text: &str,
        max_len: usize,
        scratch: &mut TokenScratch,
    ) -> Result<usize, InvalidInput> {
        match self {
            TextTokenizer::Fast(w) => Ok(w.count_tokens(text, max_len, scratch)),
            TextTokenizer::Hf { tokenizer, .. } => {
                let enc = tokenizer.encode(text, false).map_err(|e| e.to_string())?;
                Ok((enc.get_ids().len() + 2).min(max_len))
            }
        }
    }

    /// Writes `[CLS] ids.. [SEP]` into `out` and returns how many ids it wrote.
    pub fn encode_into(
        &self,
        text: &str,
        max_len: usize,
        scratch: &mut TokenScratch,
        out: &mut [u32],
    ) -> Result<usize, InvalidInput> {
        match self {
            TextTokenizer::Fast(w) => Ok(w.encode_into(text, max_len, scratch, out)),
            TextTokenizer::Hf { tokenizer, cls, sep, .. } => {
                let max_len = max_len.min(out.len());
                if max_len < 2 {
                    return Err("sequence buffer shorter than 2 tokens".into());
                }
                let enc = tokenizer.encode(text, false).map_err(|e| e.to_string())?;
                let body = &enc.get_ids()[..enc.get_ids().len().min(max_len - 2)];
                out[0] = *cls;
                out[1..1 + body.len()].copy_from_slice(body);
                out[1 + body.len()] = *sep;
                Ok(body.len() + 2)
            }
        }
    }
}
