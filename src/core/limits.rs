//! Size limits: what a record and a batch may hold.

/// The batch caps (`streaming.inference.batching.maxBatchRows` / `maxBatchTokens`). One value
/// serves every stage that needs them: the decoder rejects a request that could never fit in
/// a batch, the batcher fills batches up to them, and executors size their staging by them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchCaps {
    /// Rows (inputs) in one batch.
    pub max_rows: usize,
    /// Padded tokens (rows × the longest row) in one text batch.
    pub max_tokens: usize,
}

/// Per-record limits applied when a record is decoded (`streaming.inference.limits`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest record value accepted (`too_large` above).
    pub max_record_bytes: usize,
    /// Most inputs in one request.
    pub max_items: usize,
    /// Longest id in bytes.
    pub max_id_bytes: usize,
    /// A request must fit in one batch.
    pub caps: BatchCaps,
}

impl Default for BatchCaps {
    /// 64 rows, 8,192 padded tokens: the configuration's defaults.
    fn default() -> Self {
        BatchCaps { max_rows: 64, max_tokens: 8192 }
    }
}

impl Default for Limits {
    /// 1 MiB records, 64 inputs, 256-byte ids: the configuration's defaults.
    fn default() -> Self {
        Limits {
            max_record_bytes: 1 << 20,
            max_items: 64,
            max_id_bytes: 256,
            caps: BatchCaps::default(),
        }
    }
}
