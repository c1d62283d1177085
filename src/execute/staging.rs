//! Host staging buffers: where a lane writes a batch's token ids, masks and features.
//!
//! On CPU this is plain aligned memory reused batch after batch; a CUDA lane keeps two of these
//! in page-locked memory and copies them to the device asynchronously. Buffers grow to the
//! largest batch seen and are then reused, so steady state allocates nothing.

/// One batch laid out for a model: `rows × seq_len` token ids and attention mask (row-major,
/// right-padded with the pad id and mask 0) for text models, or `rows × width` features for
/// tabular models.
#[derive(Debug, Default)]
pub struct HostStaging {
    /// Token ids, `rows * seq_len` valid entries.
    pub ids: Vec<u32>,
    /// Attention mask (1 = real token), same layout as `ids`.
    pub mask: Vec<u32>,
    /// Unpadded token count of each row.
    pub row_tokens: Vec<u32>,
    /// Feature values, `rows * width` valid entries.
    pub features: Vec<f32>,
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
            ids: Vec::with_capacity(tokens),
            mask: Vec::with_capacity(tokens),
            row_tokens: Vec::with_capacity(rows),
            features: Vec::with_capacity(features),
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
