//! Host staging buffers: where a lane writes a batch's token ids, masks and features.
//!
//! On CPU this is plain memory reused batch after batch; a CUDA lane keeps two of these
//! backed by page-locked blocks ([`PinnedBlock`]) and copies them to the device
//! asynchronously. Buffers grow to the largest batch seen and are then reused, so steady
//! state allocates nothing.

use std::fmt;
use std::ops::{Deref, DerefMut};

/// Host memory that is not an ordinary `Vec` (page-locked memory of a CUDA context). The
/// staging code only needs a fixed-size slice and a way to get a bigger block from the same
/// allocator; it never learns what the memory is.
pub trait PinnedBlock<T>: Send + Sync {
    /// The whole block.
    fn as_slice(&self) -> &[T];
    /// The whole block, writable.
    fn as_mut_slice(&mut self) -> &mut [T];
    /// A new, uninitialised-but-valid block of at least `len` elements from the same
    /// allocator; `None` when that allocation failed.
    fn reallocate(&self, len: usize) -> Option<Box<dyn PinnedBlock<T>>>;
}

/// One growable staging array: a `Vec` on the CPU path, a [`PinnedBlock`] on a CUDA lane.
/// Derefs to the valid elements (`len` of them).
pub struct StagingBuf<T> {
    heap: Vec<T>,
    pinned: Option<Box<dyn PinnedBlock<T>>>,
    len: usize,
}

impl<T: Copy> StagingBuf<T> {
    /// An empty heap-backed buffer with room for `cap` elements.
    pub fn with_capacity(cap: usize) -> Self {
        StagingBuf { heap: Vec::with_capacity(cap), pinned: None, len: 0 }
    }

    /// An empty buffer backed by `block` (its length is the capacity).
    pub fn pinned(block: Box<dyn PinnedBlock<T>>) -> Self {
        StagingBuf { heap: Vec::new(), pinned: Some(block), len: 0 }
    }

    /// Whether the valid elements live in a [`PinnedBlock`].
    pub fn is_pinned(&self) -> bool {
        self.pinned.is_some()
    }

    /// Drops every element (keeps the memory).
    pub fn clear(&mut self) {
        self.heap.clear();
        self.len = 0;
    }

    /// Grows or shrinks to `n` elements, filling new ones with `value`. A pinned buffer that
    /// is too small is replaced by a bigger block of the same allocator (once: buffers are
    /// sized for the largest batch at start); if that fails the buffer falls back to the heap,
    /// which is slower to copy from but still correct.
    pub fn resize(&mut self, n: usize, value: T) {
        let Some(block) = self.pinned.as_mut() else {
            self.heap.resize(n, value);
            self.len = n;
            return;
        };
        if n > block.as_slice().len() {
            match block.reallocate(n) {
                Some(mut bigger) => {
                    bigger.as_mut_slice()[..self.len]
                        .copy_from_slice(&block.as_slice()[..self.len]);
                    *block = bigger;
                }
                None => {
                    tracing::warn!(
                        elements = n,
                        "page-locked staging could not grow; using pageable memory"
                    );
                    let mut heap = Vec::with_capacity(n);
                    heap.extend_from_slice(&block.as_slice()[..self.len]);
                    self.heap = heap;
                    self.pinned = None;
                    self.heap.resize(n, value);
                    self.len = n;
                    return;
                }
            }
        }
        let len = self.len;
        if n > len {
            block.as_mut_slice()[len..n].fill(value);
        }
        self.len = n;
    }
}

impl<T> Deref for StagingBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match &self.pinned {
            Some(b) => &b.as_slice()[..self.len],
            None => &self.heap,
        }
    }
}

impl<T> DerefMut for StagingBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.pinned {
            Some(b) => &mut b.as_mut_slice()[..self.len],
            None => &mut self.heap,
        }
    }
}

impl<T> Default for StagingBuf<T> {
    fn default() -> Self {
        StagingBuf { heap: Vec::new(), pinned: None, len: 0 }
    }
}

impl<T: fmt::Debug> fmt::Debug for StagingBuf<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: PartialEq> PartialEq for StagingBuf<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

/// One batch laid out for a model: `rows × seq_len` token ids and attention mask (row-major,
/// right-padded with the pad id and mask 0) for text models, or `rows × width` features for
/// tabular models.
#[derive(Debug, Default)]
pub struct HostStaging {
    /// Token ids, `rows * seq_len` valid entries.
    pub ids: StagingBuf<u32>,
    /// Attention mask (1 = real token), same layout as `ids`.
    pub mask: StagingBuf<u32>,
    /// Unpadded token count of each row.
    pub row_tokens: StagingBuf<u32>,
    /// Feature values, `rows * width` valid entries.
    pub features: StagingBuf<f32>,
    /// Rows (sequences or feature vectors) in the batch.
    pub rows: usize,
    /// Padded sequence length of the batch (text models).
    pub seq_len: usize,
    /// Feature width (tabular models).
    pub width: usize,
}

impl HostStaging {
    /// A staging area with room for `tokens` padded tokens and `features` feature values.
    pub fn with_capacity(rows: usize, tokens: usize, features: usize) -> Self {
        HostStaging {
            ids: StagingBuf::with_capacity(tokens),
            mask: StagingBuf::with_capacity(tokens),
            row_tokens: StagingBuf::with_capacity(rows),
            features: StagingBuf::with_capacity(features),
            rows: 0,
            seq_len: 0,
            width: 0,
        }
    }

    /// A staging area over page-locked blocks (a CUDA lane's slot): the lane writes the batch
    /// straight into memory the device can copy from asynchronously, with no extra copy.
    pub fn pinned(
        ids: Box<dyn PinnedBlock<u32>>,
        mask: Box<dyn PinnedBlock<u32>>,
        row_tokens: Box<dyn PinnedBlock<u32>>,
        features: Box<dyn PinnedBlock<f32>>,
    ) -> Self {
        HostStaging {
            ids: StagingBuf::pinned(ids),
            mask: StagingBuf::pinned(mask),
            row_tokens: StagingBuf::pinned(row_tokens),
            features: StagingBuf::pinned(features),
            rows: 0,
            seq_len: 0,
            width: 0,
        }
    }

    /// Prepares a text batch of `rows × seq_len`, filled with `pad` ids and a zero mask.
    pub fn begin_text(&mut self, rows: usize, seq_len: usize, pad: u32) {
        let n = rows * seq_len;
        self.ids.clear();
        self.ids.resize(n, pad);
        self.mask.clear();
        self.mask.resize(n, 0);
        self.row_tokens.clear();
        self.row_tokens.resize(rows, 0);
        self.features.clear();
        self.rows = rows;
        self.seq_len = seq_len;
        self.width = 0;
    }

    /// Prepares a tabular batch of `rows × width` zeros.
    pub fn begin_features(&mut self, rows: usize, width: usize) {
        self.ids.clear();
        self.mask.clear();
        self.row_tokens.clear();
        self.features.clear();
        self.features.resize(rows * width, 0.0);
        self.rows = rows;
        self.seq_len = 0;
        self.width = width;
    }

    /// The id slots of row `r` (length `seq_len`).
    pub fn row_ids_mut(&mut self, r: usize) -> &mut [u32] {
        let s = self.seq_len;
        &mut self.ids[r * s..(r + 1) * s]
    }

    /// Marks the first `n` tokens of row `r` as real.
    pub fn set_row_len(&mut self, r: usize, n: usize) {
        let s = self.seq_len;
        self.mask[r * s..r * s + n].fill(1);
        self.row_tokens[r] = n as u32;
    }

    /// The feature slots of row `r` (length `width`).
    pub fn row_features_mut(&mut self, r: usize) -> &mut [f32] {
        let w = self.width;
        &mut self.features[r * w..(r + 1) * w]
    }

    /// Real (unpadded) tokens in the batch.
    pub fn real_tokens(&self) -> usize {
        self.row_tokens.iter().map(|&n| n as usize).sum()
    }

    /// Padded tokens in the batch (`rows × seq_len`).
    pub fn padded_tokens(&self) -> usize {
        self.rows * self.seq_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake "pinned" allocator that counts its blocks, or fails to grow.
    struct Block(Vec<u32>, bool);

    impl PinnedBlock<u32> for Block {
        fn as_slice(&self) -> &[u32] {
            &self.0
        }
        fn as_mut_slice(&mut self) -> &mut [u32] {
            &mut self.0
        }
        fn reallocate(&self, len: usize) -> Option<Box<dyn PinnedBlock<u32>>> {
            self.1.then(|| Box::new(Block(vec![7; len], true)) as Box<dyn PinnedBlock<u32>>)
        }
    }

    #[test]
    fn pinned_buffer_behaves_like_a_vec_and_grows() {
        let mut b = StagingBuf::pinned(Box::new(Block(vec![9; 4], true)));
        assert!(b.is_pinned() && b.is_empty());
        b.resize(3, 1);
        assert_eq!(&*b, &[1, 1, 1]);
        b[2] = 5;
        b.resize(6, 2);
        assert_eq!(&*b, &[1, 1, 5, 2, 2, 2]);
        assert!(b.is_pinned());
        b.clear();
        b.resize(2, 0);
        assert_eq!(&*b, &[0, 0]);
    }

    #[test]
    fn pinned_buffer_falls_back_to_the_heap_when_it_cannot_grow() {
        let mut b = StagingBuf::pinned(Box::new(Block(vec![0; 2], false)));
        b.resize(2, 3);
        b.resize(5, 4);
        assert!(!b.is_pinned());
        assert_eq!(&*b, &[3, 3, 4, 4, 4]);
    }
}
