//! Shadow scoring: every batch of a model that has a shadow version is computed again, off the
//! hot path, with that version; both results go to the shadow topic and their agreement into
//! a metric.
//!
//! A lane hands each computed batch to the [`ShadowTap`] (one lock-free `try_send` of the
//! batch's requests, which share their payload bytes, and of the primary output, which is
//! shared too). A bounded queue (`model.rollout.shadowQueueBatches`) sits between the lanes and
//! the shadow thread (`sluice-shadow`), which stages the batch into its own CPU staging buffer,
//! computes it with the shadow version, compares row by row and publishes. When the shadow
//! thread falls behind, the queue is full and the batch's shadow work is dropped and counted:
//! the primary result has already been sent, its commit does not wait for the shadow, and a
//! lane never blocks on it. Shadow results are best effort (no retries, never in a
//! transaction).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

use super::executor::{CpuExecutor, Executor};
use super::fill::{fill_batch, FillScratch};
use crate::core::{argmax, BatchCaps, BatchOutput, Envelope, IdText, InputKind, OutputKind};
use crate::models::cache::Lookup;
use crate::models::{LoadedModel, ModelCache};
use crate::queue::Request;
use crate::telemetry::metrics::ShadowMetrics;

/// How often an idle shadow thread looks at its stop flag.
const STOP_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// One shadow result, as the publisher renders it.
pub struct ShadowResult<'a> {
    pub env: &'a Envelope,
    pub id: &'a str,
    pub model: &'a str,
    pub primary_version: &'a str,
    pub shadow_version: &'a str,
    /// The primary output and this request's rows in it (first, count).
    pub primary: (&'a BatchOutput, usize, usize),
    /// The shadow output and this request's rows in it.
    pub shadow: (&'a BatchOutput, usize, usize),
    /// How far the two agree, by `measure`.
    pub agreement: f64,
    pub measure: &'static str,
}

/// Where shadow results go (the Kafka layer's shadow producer). Best effort: `publish`
/// returns `false` when the result could not be queued for sending (it is counted dropped).
pub trait ShadowPublisher: Send + Sync {
    fn publish(&self, result: &ShadowResult<'_>) -> bool;
}

/// What an engine needs to shadow: the cache (to find shadow versions), where results go,
/// the metrics and the queue's bound.
#[derive(Clone)]
pub struct ShadowSetup {
    pub cache: Arc<ModelCache>,
    pub publisher: Arc<dyn ShadowPublisher>,
    pub metrics: ShadowMetrics,
    pub queue_batches: usize,
}

impl std::fmt::Debug for ShadowSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShadowSetup").field("queue_batches", &self.queue_batches).finish()
    }
}

/// One request of a batch, as the shadow recomputes it.
struct Item {
    env: Envelope,
    id: IdText,
    input: std::ops::Range<u32>,
    input_kind: InputKind,
    items: u32,
    max_tokens: u32,
    seq: u64,
    /// Its first row in the primary output.
    first_row: u32,
}

struct Job {
    name: Arc<str>,
    primary_version: Arc<str>,
    shadow_version: Arc<str>,
    primary: Arc<BatchOutput>,
    items: Vec<Item>,
}

/// The lanes' side: hands computed batches to the shadow thread.
pub struct ShadowTap {
    cache: Arc<ModelCache>,
    tx: Sender<Job>,
    metrics: ShadowMetrics,
}

impl ShadowTap {
    /// Offers a computed batch (`reqs` in row order, `out` their output) for shadow scoring
    /// when its model has a shadow version other than the batch's. Never blocks.
    pub fn offer(&self, model: &LoadedModel, reqs: &[Request], out: &Arc<BatchOutput>) {
        let Some(shadow) = self.cache.shadow_of(&model.name) else { return };
        if shadow == model.version || reqs.is_empty() {
            return;
        }
        let mut row = 0u32;
        let items = reqs
            .iter()
            .map(|r| {
                let it = Item {
                    env: r.env.clone(),
                    id: r.id.clone(),
                    input: r.input.clone(),
                    input_kind: r.input_kind,
                    items: r.items,
                    max_tokens: r.max_tokens,
                    seq: r.seq,
                    first_row: row,
                };
                row += r.items;
                it
            })
            .collect();
        let job = Job {
            name: model.name.clone(),
            primary_version: model.version.clone(),
            shadow_version: shadow,
            primary: out.clone(),
            items,
        };
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(j) | TrySendError::Disconnected(j)) => {
                self.metrics.dropped(j.items.len());
            }
        }
    }
}

/// The shadow thread, owned by the engine: it ends when every lane has dropped its tap.
pub struct ShadowWorker {
    thread: Option<JoinHandle<()>>,
    /// Set at shutdown: batches still queued are dropped (counted), not computed.
    stop: Arc<AtomicBool>,
}

impl ShadowWorker {
    /// Starts `sluice-shadow`; returns the tap for the lanes.
    pub fn start(setup: &ShadowSetup, caps: BatchCaps) -> std::io::Result<(Arc<ShadowTap>, Self)> {
        let (tx, rx) = crossbeam_channel::bounded(setup.queue_batches.max(1));
        let (cache, publisher, metrics) =
            (setup.cache.clone(), setup.publisher.clone(), setup.metrics.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-shadow".into())
            .spawn(move || run(&rx, &cache, &*publisher, &metrics, caps, &stopping))?;
        let tap = ShadowTap { cache: setup.cache.clone(), tx, metrics: setup.metrics.clone() };
        Ok((Arc::new(tap), ShadowWorker { thread: Some(thread), stop }))
    }

    /// Tells the shadow thread to drop what is still queued (the lanes are ending).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Waits for the shadow thread (after [`stop`](Self::stop), or once every lane has
    /// ended).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the shadow thread panicked");
            }
        }
    }
}

impl Drop for ShadowWorker {
    fn drop(&mut self) {
        self.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    rx: &Receiver<Job>,
    cache: &ModelCache,
    publisher: &dyn ShadowPublisher,
    metrics: &ShadowMetrics,
    caps: BatchCaps,
    stop: &AtomicBool,
) {
    let mut exec = CpuExecutor::new(caps);
    let mut scratch = FillScratch::default();
    loop {
        if stop.load(Ordering::SeqCst) {
            let left: usize = rx.try_iter().map(|j| j.items.len()).sum();
            metrics.dropped(left);
            return;
        }
        let job = match rx.recv_timeout(STOP_CHECK) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let n = job.items.len();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            score(&job, cache, publisher, metrics, &mut exec, &mut scratch)
        }));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                metrics.failed(n);
                tracing::debug!(model = %job.name, shadow = %job.shadow_version, error = %why, "shadow batch not computed");
            }
            Err(_) => {
                metrics.failed(n);
                tracing::error!(model = %job.name, shadow = %job.shadow_version, "the shadow computation panicked; the batch's shadow results are dropped");
                exec = CpuExecutor::new(caps);
            }
        }
    }
}

/// Computes one batch with the shadow version, compares and publishes.
fn score(
    job: &Job,
    cache: &ModelCache,
    publisher: &dyn ShadowPublisher,
    metrics: &ShadowMetrics,
    exec: &mut CpuExecutor,
    scratch: &mut FillScratch,
) -> Result<(), String> {
    let model = match cache.lookup(&job.name, Some(&job.shadow_version)) {
        Lookup::Ready(m) => m,
        Lookup::Missing { .. } => return Err("the shadow version is not loaded".into()),
        Lookup::Failed(e) => return Err(e.to_string()),
    };
    let reqs: Vec<Request> = job
        .items
        .iter()
        .map(|it| Request {
            env: it.env.clone(),
            id: it.id.clone(),
            model: model.clone(),
            input: it.input.clone(),
            input_kind: it.input_kind,
            items: it.items,
            max_tokens: it.max_tokens,
            deadline_ms: None,
            seq: it.seq,
            routed: false,
        })
        .collect();
    fill_batch(&model, &reqs, exec.staging(), scratch)
        .map_err(|(k, why)| format!("staging request {k}: {why}"))?;
    exec.submit(&model).map_err(|e| e.to_string())?;
    let out = exec.collect().map_err(|e| e.to_string())?;
    if out.width != job.primary.width {
        return Err(format!(
            "the shadow's output has width {}, the primary's {}: not comparable",
            out.width, job.primary.width
        ));
    }
    let measure = measure_of(&job.primary.kind);
    let (mut sum, mut compared) = (0.0, 0u64);
    let mut shadow_row = 0usize;
    for (it, req) in job.items.iter().zip(&reqs) {
        let rows = it.items as usize;
        let first = it.first_row as usize;
        let agreement = agreement(&job.primary, first, &out, shadow_row, rows);
        let published = publisher.publish(&ShadowResult {
            env: &it.env,
            id: req.id(),
            model: &job.name,
            primary_version: &job.primary_version,
            shadow_version: &job.shadow_version,
            primary: (&job.primary, first, rows),
            shadow: (&out, shadow_row, rows),
            agreement,
            measure,
        });
        if published {
            metrics.published(1);
        } else {
            metrics.dropped(1);
        }
        if agreement.is_finite() {
            sum += agreement;
            compared += 1;
        }
        shadow_row += rows;
    }
    metrics.agreement(&job.name, &job.primary_version, &job.shadow_version, measure, sum, compared);
    Ok(())
}

/// The agreement measure of an output kind.
pub fn measure_of(kind: &OutputKind) -> &'static str {
    match kind {
        OutputKind::Embedding => "cosine",
        OutputKind::Classification(_) => "label_agreement",
        OutputKind::Vector => "mean_abs_diff",
    }
}

/// How far rows `a_first..+rows` of `a` and `b_first..+rows` of `b` agree, averaged over the
/// rows: mean cosine (embeddings), the share of equal arg-max labels (classifiers), or the mean
/// absolute difference of the values (tabular outputs; 0 is full agreement).
pub fn agreement(
    a: &BatchOutput,
    a_first: usize,
    b: &BatchOutput,
    b_first: usize,
    rows: usize,
) -> f64 {
    if rows == 0 {
        return f64::NAN;
    }
    let mut total = 0.0;
    for r in 0..rows {
        let (x, y) = (a.row(a_first + r), b.row(b_first + r));
        total += match a.kind {
            OutputKind::Embedding => cosine(x, y),
            OutputKind::Classification(_) => f64::from(u8::from(argmax(x) == argmax(y))),
            OutputKind::Vector => {
                let n = x.len().max(1) as f64;
                x.iter().zip(y).map(|(p, q)| f64::from((p - q).abs())).sum::<f64>() / n
            }
        };
    }
    total / rows as f64
}

fn cosine(x: &[f32], y: &[f32]) -> f64 {
    let (mut xy, mut xx, mut yy) = (0.0f64, 0.0f64, 0.0f64);
    for (p, q) in x.iter().zip(y) {
        let (p, q) = (f64::from(*p), f64::from(*q));
        xy += p * q;
        xx += p * p;
        yy += q * q;
    }
    if xx == 0.0 || yy == 0.0 {
        return if xx == yy { 1.0 } else { 0.0 };
    }
    xy / (xx.sqrt() * yy.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(kind: OutputKind, width: usize, data: Vec<f32>) -> BatchOutput {
        BatchOutput { data, width, kind }
    }

    #[test]
    fn embeddings_compare_by_cosine() {
        let a = out(OutputKind::Embedding, 2, vec![1.0, 0.0, 0.0, 1.0]);
        let b = out(OutputKind::Embedding, 2, vec![2.0, 0.0, 1.0, 0.0]);
        assert!((agreement(&a, 0, &b, 0, 1) - 1.0).abs() < 1e-12, "same direction");
        assert!(agreement(&a, 1, &b, 1, 1).abs() < 1e-12, "orthogonal");
        assert!((agreement(&a, 0, &b, 0, 2) - 0.5).abs() < 1e-12, "mean over rows");
        assert_eq!(measure_of(&a.kind), "cosine");
    }

    #[test]
    fn classifiers_compare_labels_and_tabular_outputs_differences() {
        let labels: Arc<[String]> = vec!["neg".to_string(), "pos".to_string()].into();
        let a = out(OutputKind::Classification(labels.clone()), 2, vec![0.9, 0.1, 0.2, 0.8]);
        let b = out(OutputKind::Classification(labels), 2, vec![0.6, 0.4, 0.7, 0.3]);
        assert_eq!(agreement(&a, 0, &b, 0, 2), 0.5);
        let t = out(OutputKind::Vector, 2, vec![1.0, 2.0]);
        let u = out(OutputKind::Vector, 2, vec![1.5, 1.0]);
        assert_eq!(agreement(&t, 0, &u, 0, 1), 0.75);
        assert!(agreement(&t, 0, &u, 0, 0).is_nan());
    }
}
