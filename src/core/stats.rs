//! The stage counters: what the ingest side, the lanes, the emit side and the model cache
//! count. Atomics (and one histogram behind a mutex taken once per batch), written by the
//! stage that owns them and read by telemetry at any time.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use super::outcome::{ErrorClass, Outcome};

use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// One named counter of a stage: the metric it is exported as, what it counts, and its value
/// now. Each stage's counters are named here, beside the atomics they read, so an exporter
/// never matches values to names by position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterReading {
    pub name: &'static str,
    pub help: &'static str,
    pub value: u64,
}

fn reading(name: &'static str, help: &'static str, a: &AtomicU64) -> CounterReading {
    CounterReading { name, help, value: a.load(Ordering::Relaxed) }
}

/// Whether a lane computes (degraded mode takes a failing GPU lane out of service).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LaneState {
    /// Computing on its own executor.
    Serving = 0,
    /// Taken out of service after repeated device faults; its work went to the other lanes.
    OutOfService = 1,
    /// A GPU lane taken out of service that goes on as a CPU lane (`gpu.cpuFallback`).
    CpuFallback = 2,
}

impl LaneState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => LaneState::OutOfService,
            2 => LaneState::CpuFallback,
            _ => LaneState::Serving,
        }
    }

    /// The name used in `status` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            LaneState::Serving => "serving",
            LaneState::OutOfService => "out_of_service",
            LaneState::CpuFallback => "cpu_fallback",
        }
    }
}

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
    /// Each lane's [`LaneState`], as its `u8`.
    lane_state: Vec<AtomicU8>,
    /// When each lane's oldest unfinished batch started, or it last finished one while more
    /// were in flight (microseconds after `epoch`, plus one); 0 while the lane is idle.
    lane_busy_since: Vec<AtomicU64>,
    epoch: Instant,
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
            lane_state: (0..lanes).map(|_| AtomicU8::new(LaneState::Serving as u8)).collect(),
            lane_busy_since: (0..lanes).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
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

    /// Lane `lane` is computing: a batch started, or one finished with more in flight.
    pub fn mark_busy(&self, lane: usize) {
        let now = self.epoch.elapsed().as_micros().min(u64::MAX as u128 - 1) as u64 + 1;
        if let Some(a) = self.lane_busy_since.get(lane) {
            a.store(now, Ordering::Relaxed);
        }
    }

    /// Lane `lane` has nothing in flight.
    pub fn mark_idle(&self, lane: usize) {
        if let Some(a) = self.lane_busy_since.get(lane) {
            a.store(0, Ordering::Relaxed);
        }
    }

    /// The lane that has gone longest without finishing a batch while computing one, and for
    /// how long; `None` when every lane is idle. A forward pass cannot be interrupted, so a
    /// lane past `processing.timeout` here is reported hung (liveness fails).
    pub fn longest_busy(&self) -> Option<(usize, Duration)> {
        let now = self.epoch.elapsed().as_micros() as u64 + 1;
        self.lane_busy_since
            .iter()
            .enumerate()
            .filter_map(|(i, a)| match a.load(Ordering::Relaxed) {
                0 => None,
                since => Some((i, Duration::from_micros(now.saturating_sub(since)))),
            })
            .max_by_key(|(_, d)| *d)
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

    /// The engine's counters, named.
    pub fn readings(&self) -> [CounterReading; 7] {
        [
            reading("sluice_batches_total", "Batches computed", &self.batches),
            reading(
                "sluice_batch_rows_total",
                "Rows (sequences or feature vectors) computed in batches",
                &self.rows,
            ),
            reading("sluice_batch_requests_total", "Requests computed in batches", &self.requests),
            reading(
                "sluice_batch_tokens_real_total",
                "Real (unpadded) tokens of text batches",
                &self.real_tokens,
            ),
            reading(
                "sluice_batch_tokens_padded_total",
                "Padded tokens of text batches (longest x rows)",
                &self.padded_tokens,
            ),
            reading(
                "sluice_failed_batches_total",
                "Batches whose model call failed",
                &self.failed_batches,
            ),
            reading(
                "sluice_retried_batches_total",
                "Failed batches retried (split in halves)",
                &self.retried_batches,
            ),
        ]
    }

    /// Records lane `lane`'s state.
    pub fn set_lane_state(&self, lane: usize, state: LaneState) {
        if let Some(a) = self.lane_state.get(lane) {
            a.store(state as u8, Ordering::SeqCst);
        }
    }

    /// Every lane's state, by index.
    pub fn lane_states(&self) -> Vec<LaneState> {
        self.lane_state.iter().map(|a| LaneState::from_u8(a.load(Ordering::SeqCst))).collect()
    }

    /// Lanes that compute (serving, or on the CPU fallback).
    pub fn lanes_in_service(&self) -> usize {
        self.lane_states().into_iter().filter(|s| *s != LaneState::OutOfService).count()
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

/// Counters of the ingest side (records consumed, rejected at decode, pauses, commits).
#[derive(Debug, Default)]
pub struct IngestStats {
    pub consumed: AtomicU64,
    pub rejected: AtomicU64,
    pub pauses: AtomicU64,
    pub rebalances: AtomicU64,
    pub commits: AtomicU64,
    pub commit_failures: AtomicU64,
    /// Bytes of consumed records (value and key) that Sluice still holds, wherever they are:
    /// held back, queued, batched, in an outcome waiting for the broker. A gauge: each
    /// record's bytes are counted when it is consumed and uncounted when its last reference
    /// goes (payloads are shared, never copied, so this is the memory they really take).
    pub held_bytes: AtomicU64,
    /// Records waiting for their model version to load (a gauge).
    pub waiting_for_model: AtomicU64,
}

impl IngestStats {
    /// The ingest side's counters, named.
    pub fn readings(&self) -> [CounterReading; 6] {
        [
            reading(
                "sluice_records_consumed_total",
                "Records read from the input and priority topics",
                &self.consumed,
            ),
            reading(
                "sluice_records_rejected_total",
                "Records rejected before queueing (parse, validation, unknown_model, too_large)",
                &self.rejected,
            ),
            reading(
                "sluice_consumer_pauses_total",
                "Times the consumer paused its partitions because a ring was full",
                &self.pauses,
            ),
            reading("sluice_rebalances_total", "Partition revocations handled", &self.rebalances),
            reading("sluice_offset_commits_total", "Offset commits that succeeded", &self.commits),
            reading(
                "sluice_offset_commit_failures_total",
                "Offset commits that failed (retried with the next commit)",
                &self.commit_failures,
            ),
        ]
    }
}

/// Counters of the emit side (results, dead letters per class, deliveries).
#[derive(Debug, Default)]
pub struct EmitStats {
    pub results: AtomicU64,
    pub dead_letters: AtomicU64,
    pub dead_letters_by_class: [AtomicU64; ErrorClass::COUNT],
    pub delivered: AtomicU64,
    pub delivery_retries: AtomicU64,
    pub undeliverable: AtomicU64,
    /// Outcomes the broker or client refused because of the record (its size), sent again as
    /// a cut dead letter (counted once per cut: a result may be cut twice).
    pub cut_outcomes: AtomicU64,
    pub metrics_reports: AtomicU64,
    /// Exactly-once: transactions committed and aborted.
    pub txn_committed: AtomicU64,
    pub txn_aborted: AtomicU64,
    /// Exactly-once: outcomes dropped because their partition was revoked before their turn
    /// (the partition's next owner reads the record again).
    pub txn_dropped: AtomicU64,
    /// Exactly-once: why the last transaction failed, and whether that is fatal (set by the
    /// emit thread before it ends; the control plane restarts the pipeline unless fatal).
    pub txn_failure: parking_lot::Mutex<Option<(String, bool)>>,
}

impl EmitStats {
    /// Counts one outcome as a result or as a dead letter of its class. Every sink calls
    /// this once per outcome it writes.
    pub fn count(&self, o: &Outcome) {
        match o.failure() {
            None => {
                self.results.fetch_add(1, Ordering::Relaxed);
            }
            Some(f) => {
                self.dead_letters.fetch_add(1, Ordering::Relaxed);
                self.dead_letters_by_class[f.class.index()].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The emit side's delivery counters, named (results and dead letters are exported per
    /// outcome, with their latencies, by telemetry).
    pub fn readings(&self) -> [CounterReading; 8] {
        [
            reading(
                "sluice_transactions_committed_total",
                "Kafka transactions committed (exactly_once)",
                &self.txn_committed,
            ),
            reading(
                "sluice_transactions_aborted_total",
                "Kafka transactions aborted (exactly_once); the pipeline restarts from the last committed offsets",
                &self.txn_aborted,
            ),
            reading(
                "sluice_transaction_outcomes_dropped_total",
                "Outcomes of revoked partitions not produced (exactly_once; the next owner processes them again)",
                &self.txn_dropped,
            ),
            reading(
                "sluice_deliveries_total",
                "Records acknowledged by the broker (results, dead letters, metrics snapshots)",
                &self.delivered,
            ),
            reading(
                "sluice_delivery_retries_total",
                "Records sent again after a failed delivery",
                &self.delivery_retries,
            ),
            reading(
                "sluice_undeliverable_total",
                "Outcomes still undelivered after kafka.producer.maxAttempts sends (still retried; their partition's commits wait)",
                &self.undeliverable,
            ),
            reading(
                "sluice_outcomes_cut_total",
                "Outcomes refused for their size and sent again as a cut dead letter",
                &self.cut_outcomes,
            ),
            reading(
                "sluice_metrics_snapshots_total",
                "Metrics snapshots sent to the metrics topic",
                &self.metrics_reports,
            ),
        ]
    }

    /// `(class, count)` of every class with at least one dead letter.
    pub fn dead_letters_by_class(&self) -> Vec<(ErrorClass, u64)> {
        ErrorClass::ALL
            .iter()
            .map(|c| (*c, self.dead_letters_by_class[c.index()].load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// Model cache counters, readable at any time without locking.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
    pub loads: AtomicU64,
    pub load_failures: AtomicU64,
    /// Warm-up time of the most recent load, microseconds.
    pub last_warmup_us: AtomicU64,
    /// Canary steps taken (a step applied here, from any instance's decision).
    pub canary_steps: AtomicU64,
    /// Canaries that ended with their version serving.
    pub canary_completions: AtomicU64,
    /// Canaries rolled back (by their rules or by an operator).
    pub canary_rollbacks: AtomicU64,
}

impl CacheStats {
    /// The cache's counters, named.
    pub fn readings(&self) -> [CounterReading; 8] {
        [
            reading(
                "sluice_model_cache_hits_total",
                "Model lookups served from the cache",
                &self.hits,
            ),
            reading(
                "sluice_model_cache_misses_total",
                "Model lookups that had to load the model",
                &self.misses,
            ),
            reading(
                "sluice_model_cache_evictions_total",
                "Models evicted (LRU capacity or idle TTL)",
                &self.evictions,
            ),
            reading("sluice_model_loads_total", "Models loaded and warmed up", &self.loads),
            reading(
                "sluice_model_load_failures_total",
                "Model loads that failed",
                &self.load_failures,
            ),
            reading(
                "sluice_canary_steps_total",
                "Automatic canary steps applied by this instance",
                &self.canary_steps,
            ),
            reading(
                "sluice_canary_completions_total",
                "Automatic canaries that ended with their version serving",
                &self.canary_completions,
            ),
            reading(
                "sluice_canary_rollbacks_total",
                "Automatic canaries rolled back (error rate, p99, or an operator)",
                &self.canary_rollbacks,
            ),
        ]
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
