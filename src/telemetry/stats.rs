//! Engine statistics: counters and a batch-time histogram, updated once per batch.

use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// Figures the lanes record per batch. Counters are atomics; the histogram sits behind a
/// mutex taken once per batch (never per request).
pub struct EngineStats {
    pub batches: AtomicU64,
    pub rows: AtomicU64,
    pub requests: AtomicU64,
    pub real_tokens: AtomicU64,
    pub padded_tokens: AtomicU64,
    pub failed_batches: AtomicU64,
    pub retried_batches: AtomicU64,
    /// Out-of-memory batches split in halves (a subset of `failed_batches`).
    pub oom_splits: AtomicU64,
    /// Device memory seen by each lane (zero for CPU lanes), refreshed by GPU lanes.
    pub lane_memory: Vec<LaneMemory>,
    /// Busy time of each lane, microseconds.
    pub lane_busy_us: Vec<AtomicU64>,
    /// Batch compute time (staging + model), microseconds.
    pub batch_us: Mutex<Histogram<u64>>,
}

impl EngineStats {
    /// Empty statistics for `lanes` lanes.
    pub fn new(lanes: usize) -> Self {
        EngineStats {
            batches: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            real_tokens: AtomicU64::new(0),
            padded_tokens: AtomicU64::new(0),
            failed_batches: AtomicU64::new(0),
            retried_batches: AtomicU64::new(0),
            oom_splits: AtomicU64::new(0),
            lane_memory: (0..lanes).map(|_| LaneMemory::default()).collect(),
            lane_busy_us: (0..lanes).map(|_| AtomicU64::new(0)).collect(),
            batch_us: Mutex::new(new_histogram()),
        }
    }

    /// Records one computed batch.
    pub fn record_batch(
        &self,
        lane: usize,
        requests: usize,
        rows: usize,
        real_tokens: usize,
        padded_tokens: usize,
        us: u64,
    ) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(requests as u64, Ordering::Relaxed);
        self.rows.fetch_add(rows as u64, Ordering::Relaxed);
        self.real_tokens.fetch_add(real_tokens as u64, Ordering::Relaxed);
        self.padded_tokens.fetch_add(padded_tokens as u64, Ordering::Relaxed);
        if let Some(b) = self.lane_busy_us.get(lane) {
            b.fetch_add(us, Ordering::Relaxed);
        }
        let _ = self.batch_us.lock().record(us.max(1));
    }

    /// Real tokens / padded tokens over all text batches (1.0 when no padding).
    pub fn padding_efficiency(&self) -> f64 {
        let p = self.padded_tokens.load(Ordering::Relaxed);
        if p == 0 {
            1.0
        } else {
            self.real_tokens.load(Ordering::Relaxed) as f64 / p as f64
        }
    }

    /// Mean rows per batch.
    pub fn mean_batch_rows(&self) -> f64 {
        let b = self.batches.load(Ordering::Relaxed);
        if b == 0 {
            0.0
        } else {
            self.rows.load(Ordering::Relaxed) as f64 / b as f64
        }
    }
}

/// Device memory as one GPU lane last saw it (`cuMemGetInfo` of its device: the device's
/// whole use, shared by the lanes on it). `total_bytes == 0` means a CPU lane.
#[derive(Debug, Default)]
pub struct LaneMemory {
    /// CUDA device ordinal of the lane.
    pub device: AtomicU64,
    /// Bytes in use on the device (total − free).
    pub used_bytes: AtomicU64,
    /// Device memory in bytes.
    pub total_bytes: AtomicU64,
}

impl LaneMemory {
    /// Records one `(free, total)` reading of `device`.
    pub fn set(&self, device: usize, free: usize, total: usize) {
        self.device.store(device as u64, Ordering::Relaxed);
        self.used_bytes.store(total.saturating_sub(free) as u64, Ordering::Relaxed);
        self.total_bytes.store(total as u64, Ordering::Relaxed);
    }
}

/// A histogram of microseconds from 1 µs to 10 minutes at 3 significant digits; it never
/// resizes, so recording never allocates.
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts; fall back to an auto-resizing one
    // rather than panic if that ever changed.
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| {
        let mut h = Histogram::new(3).unwrap_or_else(|_| unreachable_histogram());
        h.auto(true);
        h
    })
}

#[cold]
fn unreachable_histogram() -> Histogram<u64> {
    // Histogram::new(3) only fails for sigfig > 5.
    match Histogram::new(2) {
        Ok(h) => h,
        Err(_) => std::process::abort(),
    }
}
