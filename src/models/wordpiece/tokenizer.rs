//! The tokenizer proper: chunking, added-token splitting, the BERT pre-tokenizer and greedy
//! WordPiece, writing ids into the caller's buffer.

use unicode_categories::UnicodeCategories;

use super::{TokenScratch, WordPiece};

/// Minimum number of bytes in a chunk of plain text before we look for a whitespace byte
/// to cut at (see module docs).
const CHUNK_BYTES: usize = 512;

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

impl WordPiece {
    /// Number of ids [`WordPiece::encode_into`] would write for `text`, including `[CLS]`
    /// and `[SEP]`, truncated to `max_len` (values below 2 are treated as 2).
    pub fn count_tokens(&self, text: &str, max_len: usize, scratch: &mut TokenScratch) -> usize {
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
        scratch: &mut TokenScratch,
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
        scratch: &mut TokenScratch,
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
    fn plain(&self, text: &str, scratch: &mut TokenScratch, sink: &mut Sink<'_>) {
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
