//! A lane: one OS thread that owns a batcher, an executor and its staging buffers.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::executor::Executor;
use super::fill::{fill_batch, FillScratch};
use crate::core::{now_epoch_ms, panic_message, EngineStats, ErrorClass, Failure, Outcome};
use crate::models::{LoadedModel, ModelError};
use crate::queue::{BatchPolicy, Batcher, Request, Rings};

/// What all lanes share.
#[derive(Clone)]
pub struct LaneShared {
    pub rings: Arc<Rings>,
    pub completions: Sender<Outcome>,
    pub stats: Arc<EngineStats>,
}

/// One lane's settings.
#[derive(Debug, Clone)]
pub struct LaneSettings {
    pub index: usize,
    pub policy: BatchPolicy,
    /// Retries of a failed batch (split in halves each time) before its requests fail.
    pub max_retries: u32,
    /// How long an idle lane sleeps before it looks again (it is woken early by new work).
    pub idle_wait: Duration,
}

struct InFlight {
    reqs: Vec<Request>,
    model: Arc<LoadedModel>,
    started: Instant,
    rows: usize,
    real_tokens: usize,
    padded_tokens: usize,
}

/// The lane loop state.
pub struct Lane<E: Executor> {
    executor: E,
    shared: LaneShared,
    settings: LaneSettings,
    batcher: Batcher,
    scratch: FillScratch,
    inflight: VecDeque<InFlight>,
    pool: Vec<Vec<Request>>,
    expired: Vec<(Request, Failure)>,
}

impl<E: Executor> Lane<E> {
    /// A lane over `executor`.
    pub fn new(executor: E, shared: LaneShared, settings: LaneSettings) -> Self {
        let depth = executor.depth().max(1);
        let rows = settings.policy.caps.max_rows;
        Lane {
            batcher: Batcher::new(settings.policy.clone()),
            pool: (0..depth + 1).map(|_| Vec::with_capacity(rows)).collect(),
            inflight: VecDeque::with_capacity(depth),
            expired: Vec::with_capacity(rows * 4),
            scratch: FillScratch::default(),
            executor,
            shared,
            settings,
        }
    }

    /// The lane's executor (tests and benchmarks inspect it).
    pub fn executor(&self) -> &E {
        &self.executor
    }

    /// Runs until the rings are closed and everything queued has an outcome.
    pub fn run(mut self) {
        tracing::info!(lane = self.settings.index, executor = %self.executor.describe(), "lane started");
        loop {
            if self.shared.rings.is_abandoned() {
                tracing::warn!(
                    lane = self.settings.index,
                    "drain deadline passed: lane stops with work still queued (left uncommitted)"
                );
                self.drain_inflight();
                break;
            }
            if !self.step() {
                self.drain_inflight();
                let rings = &self.shared.rings;
                if rings.is_closed() && rings.is_empty() && self.batcher.held() == 0 {
                    break;
                }
                rings.wait_for_work(self.settings.idle_wait);
            }
        }
        tracing::info!(lane = self.settings.index, "lane stopped");
    }

    /// Forms and submits one batch if there is work. Returns false when idle.
    pub fn step(&mut self) -> bool {
        self.batcher.refill(&self.shared.rings);
        self.batcher.take_expired(now_epoch_ms(), &mut self.expired);
        for (req, f) in self.expired.drain(..) {
            send(&self.shared.completions, req.into_failed(f, None, 0));
        }
        let mut reqs = self.pool.pop().unwrap_or_default();
        if self.batcher.next_batch(&mut reqs).is_none() {
            self.pool.push(reqs);
            return false;
        }
        let started = Instant::now();
        self.shared.stats.mark_busy(self.settings.index);
        let model = reqs[0].model.clone();
        if let Err((k, why)) = fill_batch(&model, &reqs, self.executor.staging(), &mut self.scratch)
        {
            let bad = reqs.swap_remove(k);
            send(
                &self.shared.completions,
                bad.into_failed(
                    Failure::new(ErrorClass::Inference, format!("staging failed: {why}")),
                    Some(started),
                    0,
                ),
            );
            for r in reqs.drain(..) {
                self.batcher.push(r);
            }
            self.pool.push(reqs);
            return true;
        }
        let st = self.executor.staging();
        let (rows, real, padded) = (st.rows, st.real_tokens(), st.padded_tokens());
        let submitted = guarded("submit", || self.executor.submit(&model));
        let job = InFlight { reqs, model, started, rows, real_tokens: real, padded_tokens: padded };
        match submitted {
            Ok(()) => {
                self.inflight.push_back(job);
                if self.inflight.len() >= self.executor.depth() {
                    self.finish_oldest();
                }
            }
            Err(e) => {
                self.drain_inflight();
                self.retry(job, 1, e);
            }
        }
        true
    }

    fn drain_inflight(&mut self) {
        while !self.inflight.is_empty() {
            self.finish_oldest();
        }
        self.shared.stats.mark_idle(self.settings.index);
    }

    fn finish_oldest(&mut self) {
        let Some(job) = self.inflight.pop_front() else { return };
        let collected = guarded("collect", || self.executor.collect());
        self.shared.stats.mark_busy(self.settings.index);
        match collected {
            Ok(out) => self.emit_success(job, out),
            Err(e) => {
                // Finish the batches behind it first: retries run synchronously.
                self.drain_inflight();
                self.retry(job, 1, e);
            }
        }
    }

    fn emit_success(&mut self, mut job: InFlight, out: crate::core::BatchOutput) {
        let infer_us = job.started.elapsed().as_micros() as u64;
        self.shared.stats.record_batch(
            self.settings.index,
            job.reqs.len(),
            job.rows,
            job.real_tokens,
            job.padded_tokens,
            infer_us,
        );
        let out = Arc::new(out);
        let batch_size = job.rows as u32;
        let mut row = 0u32;
        for req in job.reqs.drain(..) {
            let items = req.items;
            send(
                &self.shared.completions,
                req.into_success(out.clone(), row, batch_size, job.started, infer_us),
            );
            row += items;
        }
        self.pool.push(job.reqs);
    }

    /// Retries a failed batch synchronously: the whole batch once more if it is a single
    /// request, else each half (an out-of-memory batch usually fits when halved). Splitting
    /// a batch of several requests that ran out of memory or panicked does not spend a
    /// retry: halving ends after log2(requests) rounds, a batch too big for the device is
    /// never dead-lettered for its size alone, and a request that makes the model panic is
    /// isolated and fails alone.
    fn retry(&mut self, mut job: InFlight, attempt: u32, error: ModelError) {
        self.shared.stats.failed_batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let free_split = error.splits_for_free() && job.reqs.len() > 1;
        if error.is_out_of_memory() {
            self.shared
                .stats
                .oom_splits
                .fetch_add(u64::from(free_split), std::sync::atomic::Ordering::Relaxed);
        }
        let error = error.to_string();
        let next_attempt = if free_split { attempt } else { attempt + 1 };
        if !free_split && attempt > self.settings.max_retries {
            tracing::warn!(lane = self.settings.index, model = %job.model.name, requests = job.reqs.len(), attempts = attempt, %error, "batch failed; dead-lettering its requests");
            for mut req in job.reqs.drain(..) {
                req.env.attempts = attempt;
                let f = Failure::new(
                    ErrorClass::Inference,
                    format!("inference failed after {attempt} attempts: {error}"),
                );
                send(&self.shared.completions, req.into_failed(f, Some(job.started), 0));
            }
            self.pool.push(job.reqs);
            return;
        }
        self.shared.stats.retried_batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(lane = self.settings.index, requests = job.reqs.len(), attempt, %error, "retrying failed batch");
        let halves: Vec<Vec<Request>> = if job.reqs.len() > 1 {
            let tail = job.reqs.split_off(job.reqs.len() / 2);
            vec![std::mem::take(&mut job.reqs), tail]
        } else {
            vec![std::mem::take(&mut job.reqs)]
        };
        for mut reqs in halves {
            for r in reqs.iter_mut() {
                r.env.attempts = r.env.attempts.max(attempt) + 1;
            }
            let started = job.started;
            if let Err((k, why)) =
                fill_batch(&job.model, &reqs, self.executor.staging(), &mut self.scratch)
            {
                let bad = reqs.swap_remove(k);
                send(
                    &self.shared.completions,
                    bad.into_failed(
                        Failure::new(ErrorClass::Inference, format!("staging failed: {why}")),
                        Some(started),
                        0,
                    ),
                );
            }
            if reqs.is_empty() {
                continue;
            }
            let st = self.executor.staging();
            let (rows, real, padded) = (st.rows, st.real_tokens(), st.padded_tokens());
            let sub = InFlight {
                reqs,
                model: job.model.clone(),
                started,
                rows,
                real_tokens: real,
                padded_tokens: padded,
            };
            let result = guarded("submit", || self.executor.submit(&sub.model))
                .and_then(|_| guarded("collect", || self.executor.collect()));
            match result {
                Ok(out) => self.emit_success(sub, out),
                Err(e) => self.retry(sub, next_attempt, e),
            }
        }
    }
}

/// Runs one executor call; a panic inside it (a bug in a model, a kernel wrapper, a library)
/// becomes an inference error of the batch, so the lane retries and halves the batch like any
/// failure, isolates the request that triggers it, and keeps serving.
fn guarded<T>(call: &str, f: impl FnOnce() -> Result<T, ModelError>) -> Result<T, ModelError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let why = panic_message(payload.as_ref());
            tracing::error!(call, panic = %why, "the executor panicked; the batch counts as failed");
            Err(ModelError::Panicked(why))
        }
    }
}

fn send(tx: &Sender<Outcome>, o: Outcome) {
    thread_local! {
        static LOST: std::cell::Cell<(u64, Option<Instant>)> = const { std::cell::Cell::new((0, None)) };
    }
    if tx.send(o).is_err() {
        // Only happens when the sink is gone (it failed to write): the run is ending with its
        // error. Logged once per lane every 10 s, with the count, not once per outcome.
        LOST.with(|l| {
            let (n, last) = l.get();
            let n = n + 1;
            if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                tracing::error!(lost = n, "the outcome writer is gone; outcomes are not written (their records stay uncommitted)");
                l.set((0, Some(Instant::now())));
            } else {
                l.set((n, last));
            }
        });
    }
}
