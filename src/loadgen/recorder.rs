//! Bookkeeping of one run: which records came back, and how late against their intended send
//! time.
//!
//! Every record's latency is `completion - intended send time`. A record that the producer
//! could only send late (its client queue was full, the process was descheduled) or that the
//! system under test held back is charged for all of that time, so a stall shows in the tail
//! as it would to a user, which a closed-loop measure (send, wait, send the next) hides.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::workload::Planned;
use crate::core::new_histogram;

/// Latency percentiles of one histogram, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// The summary of a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
        Percentiles {
            count: h.len(),
            mean_ms: h.mean() / 1e3,
            p50_ms: ms(0.5),
            p95_ms: ms(0.95),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: h.max() as f64 / 1e3,
        }
    }
}

/// Quantiles of the percentile-spectrum picture.
pub const SPECTRUM_QUANTILES: [f64; 12] =
    [0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0];

/// `(quantile, milliseconds)` at each of [`SPECTRUM_QUANTILES`].
pub fn spectrum(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    SPECTRUM_QUANTILES.iter().map(|&q| (q, h.value_at_quantile(q) as f64 / 1e3)).collect()
}

/// The latency of the well-formed requests whose intended send time fell in one second of a
/// step (warm-up included): how latency moved during the step, e.g. around a model swap.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Seconds from the step's start to the window's start.
    pub start_s: u32,
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// How one outcome came back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutcomeKind {
    /// On the output topic.
    Result,
    /// On the dead-letter topic.
    DeadLetter,
}

/// Extra figures a result record may carry (Sluice's and the peer's do; passthrough's do not).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResultFacts {
    /// Rows in the batch that served the request.
    pub batch_size: Option<u32>,
    /// Inference time of that batch, microseconds.
    pub infer_us: Option<u64>,
}

/// Largest batch size tracked for per-batch-size inference times.
const MAX_TRACKED_BATCH: usize = 1024;

/// The checker and latency recorder of one run (owned by the collector thread).
pub struct Recorder {
    intended_ns: std::sync::Arc<[u64]>,
    plan: std::sync::Arc<[Planned]>,
    seen: Vec<u8>,
    warmup_ns: u64,
    send_end_ns: u64,
    /// Well-formed requests answered on the output topic (after warm-up).
    pub results: Histogram<u64>,
    /// Priority-topic requests (after warm-up).
    pub priority: Histogram<u64>,
    /// Dead letters (after warm-up).
    pub dead_letters: Histogram<u64>,
    /// Every outcome of a record sent after warm-up, whatever its topic.
    pub all: Histogram<u64>,
    /// Outcomes on the output topic, dead-letter topic.
    pub results_n: u64,
    pub dlq_n: u64,
    /// Well-formed requests that were dead-lettered, hostile ones that got a result.
    pub unexpected_dlq: u64,
    pub unexpected_results: u64,
    /// Outcomes for a record that already had one.
    pub duplicates: u64,
    /// Records of other runs, or with keys this run did not send.
    pub foreign: u64,
    /// Outcomes that arrived inside the measurement window (warm-up end .. last intended send).
    pub completed_in_window: u64,
    batch_rows_sum: u64,
    batch_n: u64,
    /// (sum of infer µs, count) per batch size.
    infer_by_batch: Vec<(u64, u64)>,
    first_unseen: usize,
    /// Results of well-formed requests per second of intended send time.
    timeline: Vec<Histogram<u64>>,
    sent: usize,
}

impl Recorder {
    /// A recorder for the planned records of a run with these intended send times (ns from the
    /// start of the run). Records due before `warmup_ns` are checked but not measured.
    pub fn new(
        intended_ns: std::sync::Arc<[u64]>,
        plan: std::sync::Arc<[Planned]>,
        warmup_ns: u64,
    ) -> Recorder {
        let n = intended_ns.len();
        let send_end_ns = intended_ns.last().map_or(0, |t| t + 1);
        Recorder {
            intended_ns,
            plan,
            seen: vec![0; n],
            warmup_ns,
            send_end_ns,
            results: new_histogram(),
            priority: new_histogram(),
            dead_letters: new_histogram(),
            all: new_histogram(),
            results_n: 0,
            dlq_n: 0,
            unexpected_dlq: 0,
            unexpected_results: 0,
            duplicates: 0,
            foreign: 0,
            completed_in_window: 0,
            batch_rows_sum: 0,
            batch_n: 0,
            infer_by_batch: vec![(0, 0); MAX_TRACKED_BATCH + 1],
            first_unseen: 0,
            timeline: (0..send_end_ns.div_ceil(1_000_000_000)).map(|_| new_histogram()).collect(),
            sent: n,
        }
    }

    /// Tells the recorder how many records were actually sent (all of them unless the run was
    /// stopped early); only those are expected back.
    pub fn set_sent(&mut self, sent: usize) {
        self.sent = sent.min(self.seen.len());
    }

    /// Records that are expected back.
    pub fn sent(&self) -> usize {
        self.sent
    }

    /// Records one outcome for record `seq`, completed at `now_ns` (ns from the start of the run).
    pub fn on_outcome(&mut self, seq: usize, kind: OutcomeKind, now_ns: u64, facts: ResultFacts) {
        let Some(&intended) = self.intended_ns.get(seq) else {
            self.foreign += 1;
            return;
        };
        let seen = &mut self.seen[seq];
        *seen = seen.saturating_add(1);
        if *seen > 1 {
            self.duplicates += 1;
            return;
        }
        let hostile = self.plan.get(seq).is_some_and(|p| p.hostile.is_some());
        match kind {
            OutcomeKind::Result => {
                self.results_n += 1;
                self.unexpected_results += u64::from(hostile);
            }
            OutcomeKind::DeadLetter => {
                self.dlq_n += 1;
                self.unexpected_dlq += u64::from(!hostile);
            }
        }
        if let Some(b) = facts.batch_size {
            self.batch_rows_sum += u64::from(b);
            self.batch_n += 1;
            if let (Some(us), Some(slot)) =
                (facts.infer_us, self.infer_by_batch.get_mut(b as usize))
            {
                slot.0 += us;
                slot.1 += 1;
            }
        }
        if now_ns >= self.warmup_ns && now_ns < self.send_end_ns {
            self.completed_in_window += 1;
        }
        let us = (now_ns.saturating_sub(intended) / 1_000).max(1);
        if kind == OutcomeKind::Result && !hostile {
            if let Some(w) = self.timeline.get_mut((intended / 1_000_000_000) as usize) {
                let _ = w.record(us);
            }
        }
        if intended < self.warmup_ns {
            return;
        }
        let _ = self.all.record(us);
        match kind {
            OutcomeKind::Result if !hostile => {
                let _ = self.results.record(us);
                if self.plan.get(seq).is_some_and(|p| p.priority) {
                    let _ = self.priority.record(us);
                }
            }
            OutcomeKind::Result => {}
            OutcomeKind::DeadLetter => {
                let _ = self.dead_letters.record(us);
            }
        }
    }

    /// The latency per second of intended send time (see [`Window`]).
    pub fn timeline(&self) -> Vec<Window> {
        self.timeline
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let p = Percentiles::of(h);
                Window {
                    start_s: i as u32,
                    count: p.count,
                    p50_ms: p.p50_ms,
                    p99_ms: p.p99_ms,
                    max_ms: p.max_ms,
                }
            })
            .collect()
    }

    /// Counts a record that is not one of this run's.
    pub fn on_foreign(&mut self) {
        self.foreign += 1;
    }

    /// True once every sent record has had an outcome.
    pub fn complete(&mut self) -> bool {
        while self.first_unseen < self.sent && self.seen[self.first_unseen] > 0 {
            self.first_unseen += 1;
        }
        self.first_unseen >= self.sent
    }

    /// Sent records without an outcome.
    pub fn missing(&self) -> u64 {
        self.seen[..self.sent].iter().filter(|&&s| s == 0).count() as u64
    }

    /// Mean rows per batch over the outcomes that said.
    pub fn mean_batch(&self) -> Option<f64> {
        (self.batch_n > 0).then(|| self.batch_rows_sum as f64 / self.batch_n as f64)
    }

    /// `(batch size, mean inference ms)` of the largest batch size seen with an inference time.
    pub fn largest_batch_infer(&self) -> Option<(u32, f64)> {
        self.infer_by_batch
            .iter()
            .enumerate()
            .rev()
            .find(|(_, (_, n))| *n > 0)
            .map(|(b, (sum, n))| (b as u32, *sum as f64 / *n as f64 / 1e3))
    }

    /// Length of the measurement window (warm-up end .. last intended send), in seconds.
    pub fn window_secs(&self) -> f64 {
        self.send_end_ns.saturating_sub(self.warmup_ns) as f64 / 1e9
    }

    /// Records due inside the measurement window.
    pub fn due_in_window(&self) -> u64 {
        self.intended_ns.iter().filter(|&&t| t >= self.warmup_ns).count() as u64
    }
}
