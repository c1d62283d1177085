//! Added tokens (`[CLS]`, `[MASK]`, user additions): id assignment as the `tokenizers` crate
//! does it, and the leftmost-longest matcher that splits them out of the text.

use std::collections::HashMap;

use super::{Scratch, TokenizerError, WordPiece};

/// Added tokens matched by exact string comparison, leftmost-longest (as the
/// `tokenizers` crate's Aho-Corasick matcher does).
#[derive(Debug, Clone, Default)]
pub(super) struct AddedMatcher {
    /// (pattern, id), sorted by descending pattern length so the first hit is the longest.
    patterns: Vec<(Box<str>, u32)>,
    /// `first_byte[b]` is true when some pattern starts with byte `b`.
    first_byte: Vec<bool>,
    /// The first byte of every pattern, when they all share it (`[` for BERT specials).
    only_first: Option<u8>,
}

impl AddedMatcher {
    pub(super) fn new(mut patterns: Vec<(Box<str>, u32)>) -> Self {
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
    pub(super) fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The leftmost-longest match starting in `text[from..until]` (it may end after
    /// `until`), as `(start, end, id)`.
    #[inline]
    pub(super) fn find(
        &self,
        text: &str,
        from: usize,
        until: usize,
    ) -> Option<(usize, usize, u32)> {
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

/// One added token as declared in `added_tokens`.
pub(super) struct AddedDecl {
    pub(super) content: String,
    pub(super) single_word: bool,
    pub(super) normalized: bool,
}

impl WordPiece {
    pub(super) fn install_added_tokens(
        &mut self,
        decls: Vec<AddedDecl>,
    ) -> Result<(), TokenizerError> {
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
}
