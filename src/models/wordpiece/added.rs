//! The added-token matcher: splits added tokens (`[CLS]`, `[MASK]`, user additions) out of the
//! text, leftmost-longest. Which tokens and ids it holds is decided in `load.rs`.

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
    /// A matcher for `patterns` (pattern, id); no pattern may be empty.
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
    /// Whether there is nothing to match.
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
