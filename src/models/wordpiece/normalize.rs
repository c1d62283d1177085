//! `BertNormalizer`: clean text, space around CJK ideographs, NFD and accent stripping,
//! canonical reordering of combining marks, char-by-char lowercase.

use unicode_categories::UnicodeCategories;
use unicode_normalization::char::{canonical_combining_class, decompose_canonical};

use super::{TokenScratch, WordPiece};

/// Runs of (non-Mn) combining characters longer than this are sorted with the std stable
/// sort (which may allocate) instead of an insertion sort.
const INSERTION_SORT_MAX: usize = 64;

impl WordPiece {
    /// `BertNormalizer` into `scratch.norm`.
    pub(super) fn normalize_into(&self, text: &str, scratch: &mut TokenScratch) {
        let TokenScratch { norm, run } = scratch;
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
