//! A lane: one OS thread that owns a batcher, an executor and its staging buffers.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::circuit::{Admit, CircuitState, Circuits};
use super::executor::Executor;
use super::fill::{fill_batch, FillScratch};
use super::shadow::ShadowTap;
use crate::config::CircuitOpenPolicy;
use crate::core::{now_epoch_ms, panic_message, EngineStats, ErrorClass, Failure, Outcome};
use crate::models::{LoadedModel, ModelError};
use crate::queue::{BatchPolicy, Batcher, Request, Rings};

/// What all lanes share.
#[derive(Clone)]
pub struct LaneShared {
    pub rings: Arc<Rings>,
    pub completions: Sender<Outcome>,
    pub stats: Arc<EngineStats>,
    /// The model versions' circuit breakers, and the requests parked behind open ones.
    pub circuits: Arc<Circuits>,
    /// Shadow scoring: computed batches of models with a shadow version go there.
    pub shadow: Option<Arc<ShadowTap>>,
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
    /// Device faults in a row after which the lane leaves service (`gpu.laneFailureLimit`).
    pub device_fault_limit: u32,
}

/// Why a lane's loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaneExit {
    /// The rings closed and everything queued has an outcome (or the drain was abandoned).
    Finished,
    /// Taken out of service after repeated device faults (the reason); its requests went
    /// back to the rings for the other lanes.
    OutOfService(String),
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
    parked_scratch: Vec<Request>,
    /// Device faults in a row; the last one's message.
    device_faults: u32,
    device_error: String,
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
            parked_scratch: Vec::new(),
            device_faults: 0,
            device_error: String::new(),
            scratch: FillScratch::default(),
            executor,
            shared,
            settings,
        }
    }

    /// The lane's index.
    pub fn index(&self) -> usize {
        self.settings.index
    }

    /// The engine's statistics this lane records into.
    pub fn stats(&self) -> &Arc<EngineStats> {
        &self.shared.stats
    }

    /// The lane's executor (tests and benchmarks inspect it).
    pub fn executor(&self) -> &E {
        &self.executor
    }

    /// Runs until the rings are closed and everything queued has an outcome, or until the
    /// lane leaves service.
    pub fn run(mut self) -> LaneExit {
        tracing::info!(lane = self.settings.index, executor = %self.executor.describe(), "lane started");
        loop {
            if self.device_faults >= self.settings.device_fault_limit.max(1) {
                return self.leave_service();
            }
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
        LaneExit::Finished
    }

    /// Takes the lane out of service: what it holds (in flight and in its batcher) goes back
    /// to the rings for the other lanes; nothing is dead-lettered for the device's fault.
    fn leave_service(mut self) -> LaneExit {
        let why = format!(
            "{} device faults in a row on {}; last: {}",
            self.device_faults,
            self.executor.describe(),
            self.device_error
        );
        self.shared.stats.set_lane_state(self.settings.index, crate::core::LaneState::OutOfService);
        self.drain_inflight();
        let held = self.batcher.take_all();
        tracing::error!(lane = self.settings.index, requests = held.len(), reason = %why,
            "lane taken out of service: its work goes to the remaining lanes");
        for r in held {
            if self.shared.rings.push_wait(r).is_err() {
                // Abandoned at the drain deadline: left uncommitted.
                break;
            }
        }
        self.shared.stats.mark_idle(self.settings.index);
        LaneExit::OutOfService(why)
    }

    /// A batch failed for the device, not for itself: its requests go back to the batcher
    /// (this lane tries them again, or hands them over when it leaves service), with no
    /// retry spent and no dead letter.
    fn device_fault(&mut self, mut reqs: Vec<Request>, error: &ModelError) {
        self.device_faults += 1;
        self.device_error = crate::core::bounded_reason(error.to_string());
        tracing::warn!(lane = self.settings.index, faults_in_a_row = self.device_faults,
            limit = self.settings.device_fault_limit, error = %self.device_error,
            "device fault: the batch goes back to be computed again");
        for r in reqs.drain(..) {
            self.batcher.push(r);
        }
        self.pool.push(reqs);
    }

    /// Forms and submits one batch if there is work. Returns false when idle.
    pub fn step(&mut self) -> bool {
        self.batcher.refill(&self.shared.rings);
        self.batcher.take_expired(now_epoch_ms(), &mut self.expired);
        for (req, f) in self.expired.drain(..) {
            send(&self.shared.completions, req.into_failed(f, None, 0));
        }
        if self.shared.circuits.parked() > 0 {
            self.expire_parked();
            if let Some(probe) = self.shared.circuits.take_probe() {
                // Synchronously, like a retry: nothing of this lane may be in flight.
                self.drain_inflight();
                self.shared.stats.mark_busy(self.settings.index);
                let model = probe.model.clone();
                self.run_now(vec![probe], model, Instant::now());
                return true;
            }
        }
        let mut reqs = self.pool.pop().unwrap_or_default();
        if self.batcher.next_batch(&mut reqs).is_none() {
            self.pool.push(reqs);
            return false;
        }
        let started = Instant::now();
        self.shared.stats.mark_busy(self.settings.index);
        let model = reqs[0].model.clone();
        if !self.admitted(&model, &mut reqs) {
            self.pool.push(reqs);
            return true;
        }
        if !self.stage(&model, &mut reqs, started) {
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
                self.retry(job, e);
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
                self.retry(job, e);
            }
        }
    }

    /// A batch computed at its first attempt: its results, and a success for its breaker.
    fn emit_success(&mut self, job: InFlight, out: crate::core::BatchOutput) {
        let model = job.model.clone();
        self.emit_results(job, out);
        for r in self.shared.circuits.record_success(&model) {
            self.batcher.push(r);
        }
    }

    fn emit_results(&mut self, mut job: InFlight, out: crate::core::BatchOutput) {
        self.device_faults = 0;
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
        if let Some(tap) = &self.shared.shadow {
            tap.offer(&job.model, &job.reqs, &out);
        }
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

    /// Asks the model version's circuit breaker about a batch: `true` to compute it; else its
    /// requests were parked (breaker open, `whenOpen: wait`) or dead-lettered as
    /// `circuit_open` (`whenOpen: dead_letter`), and `reqs` is empty.
    fn admitted(&mut self, model: &LoadedModel, reqs: &mut Vec<Request>) -> bool {
        match self.shared.circuits.admit(model) {
            Admit::Run | Admit::Probe => true,
            Admit::Park => {
                self.shared.circuits.park(reqs.drain(..));
                false
            }
            Admit::Reject(f) => {
                for r in reqs.drain(..) {
                    send(&self.shared.completions, r.into_failed(f.clone(), None, 0));
                }
                false
            }
        }
    }

    /// Dead-letters the parked requests whose deadline passed while they waited.
    fn expire_parked(&mut self) {
        self.shared.circuits.take_expired(now_epoch_ms(), &mut self.parked_scratch);
        for r in self.parked_scratch.drain(..) {
            let f = Failure::new(
                ErrorClass::Expired,
                "deadline passed while the model version's circuit breaker was open",
            );
            send(&self.shared.completions, r.into_failed(f, None, 0));
        }
    }

    /// A failed batch (its first attempt): retried synchronously, then judged as a whole
    /// for its version's circuit breaker (see [`settle`](Self::settle)).
    fn retry(&mut self, job: InFlight, error: ModelError) {
        let model = job.model.clone();
        let mut tally = Tally::default();
        self.retry_tree(job, 1, error, &mut tally);
        self.settle(&model, tally);
    }

    /// Computes `reqs` synchronously as a batch of its own (a probe of an open breaker),
    /// with retries, and judges it like any batch.
    fn run_now(&mut self, reqs: Vec<Request>, model: Arc<LoadedModel>, started: Instant) {
        let mut tally = Tally::default();
        self.run_sub(reqs, model.clone(), started, 1, &mut tally);
        self.settle(&model, tally);
    }

    /// Retries a failed batch synchronously: the whole batch once more if it is a single
    /// request, else each half (an out-of-memory batch usually fits when halved). Splitting
    /// a batch of several requests that ran out of memory or panicked does not spend a
    /// retry: halving ends after log2(requests) rounds, a batch too big for the device is
    /// never dead-lettered for its size alone, and a request that makes the model panic is
    /// isolated and fails alone. Requests whose retries are spent go to `tally`.
    fn retry_tree(
        &mut self,
        mut job: InFlight,
        attempt: u32,
        error: ModelError,
        tally: &mut Tally,
    ) {
        self.shared.stats.failed_batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if error.is_device_fault() {
            self.device_fault(std::mem::take(&mut job.reqs), &error);
            return;
        }
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
            tracing::debug!(lane = self.settings.index, model = %job.model.name, requests = job.reqs.len(), attempts = attempt, %error, "retries of a batch spent");
            for mut req in job.reqs.drain(..) {
                req.env.attempts = attempt;
                let f = Failure::new(
                    ErrorClass::Inference,
                    format!("inference failed after {attempt} attempts: {error}"),
                );
                tally.failed.push((req, f, job.started));
            }
            tally.error = error;
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
            self.run_sub(reqs, job.model.clone(), job.started, next_attempt, tally);
        }
    }

    /// Stages and computes `reqs` synchronously; a failure goes to
    /// [`retry_tree`](Self::retry_tree) with `attempt`.
    fn run_sub(
        &mut self,
        mut reqs: Vec<Request>,
        model: Arc<LoadedModel>,
        started: Instant,
        attempt: u32,
        tally: &mut Tally,
    ) {
        if !self.stage(&model, &mut reqs, started) {
            // The others are staged again, without it.
            if !reqs.is_empty() {
                self.run_sub(reqs, model, started, attempt, tally);
            }
            return;
        }
        let st = self.executor.staging();
        let (rows, real, padded) = (st.rows, st.real_tokens(), st.padded_tokens());
        let sub = InFlight { reqs, model, started, rows, real_tokens: real, padded_tokens: padded };
        let result = guarded("submit", || self.executor.submit(&sub.model))
            .and_then(|_| guarded("collect", || self.executor.collect()));
        match result {
            Ok(out) => {
                tally.computed = true;
                self.emit_results(sub, out);
            }
            Err(e) => self.retry_tree(sub, attempt, e, tally),
        }
    }

    /// Fills the executor's staging slot with `reqs`. A request that cannot be staged is
    /// taken out of `reqs` and dead-lettered; then `false` (the slot holds nothing usable).
    fn stage(&mut self, model: &LoadedModel, reqs: &mut Vec<Request>, started: Instant) -> bool {
        let Err((k, why)) = fill_batch(model, reqs, self.executor.staging(), &mut self.scratch)
        else {
            return true;
        };
        let bad = reqs.swap_remove(k);
        send(
            &self.shared.completions,
            bad.into_failed(
                Failure::new(ErrorClass::Inference, format!("staging failed: {why}")),
                Some(started),
                0,
            ),
        );
        false
    }

    /// Judges a batch whose retries are over. Some of its requests computed: the version
    /// works (the others failed for their own input), so the failed ones are dead-lettered
    /// as `inference` and the breaker hears of a success. None computed: a failure of the
    /// version; if that leaves its breaker open, the requests are parked (`whenOpen: wait`)
    /// instead of dead-lettered.
    fn settle(&mut self, model: &Arc<LoadedModel>, tally: Tally) {
        if !tally.computed && tally.failed.is_empty() {
            // Nothing computed and nothing failed: the batch went back for a device fault.
            self.shared.circuits.probe_inconclusive(model);
            return;
        }
        if tally.computed {
            for r in self.shared.circuits.record_success(model) {
                self.batcher.push(r);
            }
        } else if !tally.failed.is_empty() {
            let circuit = self.shared.circuits.record_failure(model, &tally.error);
            if circuit != CircuitState::Closed
                && self.shared.circuits.settings().when_open == CircuitOpenPolicy::Wait
            {
                tracing::debug!(lane = self.settings.index, model = %model.name, requests = tally.failed.len(), "batch failed with its circuit open: its requests are parked");
                self.shared.circuits.park(tally.failed.into_iter().map(|(r, _, _)| r));
                return;
            }
        }
        if let Some((_, f, _)) = tally.failed.first() {
            tracing::warn!(lane = self.settings.index, model = %model.name, requests = tally.failed.len(), reason = %f.reason, "batch failed; dead-lettering its requests");
        }
        for (req, f, started) in tally.failed {
            send(&self.shared.completions, req.into_failed(f, Some(started), 0));
        }
    }
}

/// What became of a failed batch's retries.
#[derive(Default)]
struct Tally {
    /// Some request of it was computed.
    computed: bool,
    /// Requests whose retries are spent, with their failure and their batch's start.
    failed: Vec<(Request, Failure, Instant)>,
    /// The last error.
    error: String,
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
