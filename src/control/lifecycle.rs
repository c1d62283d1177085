//! The pipeline's lifecycle: `stopped → starting → running → stopping → stopped`, or `failed`
//! with its cause (broker unreachable, model repository missing, a pipeline thread that died).
//!
//! Start, stop and restart are idempotent and never race: each holds one async mutex (`op`)
//! for its whole run, and only the control plane's runtime takes it. The blocking parts
//! (`Pipeline::start`, loading models, `Pipeline::stop`) run on the runtime's blocking pool,
//! never on the hot path. Readers (status, metrics, health) look at a copy of the state and
//! clone the pipeline's `Arc` for a moment; they never wait for a lifecycle operation.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use serde::Serialize;

use crate::config::Config;
use crate::models::ModelCache;
use crate::pipeline::{Pipeline, PipelineError, StopReport};
use crate::telemetry::metrics::Metrics;

/// Where the pipeline is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PipelineState {
    Stopped,
    Starting,
    Running,
    Stopping,
    Failed,
}

impl PipelineState {
    /// The name used in JSON, logs and the `state` label of `sluice_pipeline_state`.
    pub fn as_str(self) -> &'static str {
        match self {
            PipelineState::Stopped => "stopped",
            PipelineState::Starting => "starting",
            PipelineState::Running => "running",
            PipelineState::Stopping => "stopping",
            PipelineState::Failed => "failed",
        }
    }
}

/// A copy of the lifecycle's state.
#[derive(Debug, Clone)]
pub struct StateInfo {
    pub state: PipelineState,
    /// When the current state was entered.
    pub since: SystemTime,
    pub since_instant: Instant,
    /// Why the pipeline failed (state `failed`).
    pub cause: Option<String>,
    /// True when the failure is a pipeline thread that stopped unexpectedly.
    pub threads_died: bool,
    /// Exactly-once: restarts after an aborted transaction (in this process).
    pub restarts_after_abort: u64,
    /// ... and when the last one began, with how many came in a row (each within 5 minutes
    /// of the one before) until then: the backoff between them grows with that run.
    pub last_abort_restart: Option<(Instant, u32)>,
    /// Counts successful starts; identifies the running pipeline.
    pub generation: u64,
    /// Counters of the last pipeline that was stopped.
    pub last_stop: Option<StopReport>,
}

/// Whether a lifecycle call changed anything (`false`: it was already so).
pub type Changed = bool;

/// Why a start failed.
#[derive(Debug, Clone)]
pub struct StartError {
    pub cause: String,
    /// The broker could not be reached (as opposed to configuration or models).
    pub kafka: bool,
}

struct Current {
    generation: u64,
    pipeline: Arc<Pipeline>,
}

/// The lifecycle state machine around [`Pipeline::start`] and [`Pipeline::stop`].
pub struct Lifecycle {
    cfg: Config,
    cache: Arc<ModelCache>,
    metrics: Arc<Metrics>,
    op: tokio::sync::Mutex<()>,
    info: Mutex<StateInfo>,
    current: Mutex<Option<Current>>,
}

/// Why a model repository cannot serve.
#[derive(Debug, thiserror::Error)]
enum NotServable {
    #[error("model repository {root}: {source}")]
    Unreadable { root: String, source: crate::models::ModelError },
    #[error("model repository {root} holds no models")]
    Empty { root: String },
    #[error("model repository {root}: no model could be loaded ({first})")]
    NoneLoads { root: String, first: String },
}

/// A model repository that can serve: it exists, lists at least one model, and the serving
/// version of at least one model loads. Warms the serving version of each model (up to the
/// cache's capacity) so the first requests do not wait for a load.
fn prepare_models(cfg: &Config, cache: &ModelCache) -> Result<usize, NotServable> {
    let root = cache.repository().root().display().to_string();
    let models = cache
        .repository()
        .list()
        .map_err(|source| NotServable::Unreadable { root: root.clone(), source })?;
    if models.is_empty() {
        return Err(NotServable::Empty { root });
    }
    let mut loaded = 0;
    let mut first_error = None;
    for m in models.iter().take(cfg.streaming.inference.model.cache.size.max(1)) {
        match cache.get(&m.name, None) {
            Ok(_) => loaded += 1,
            Err(e) => {
                tracing::warn!(model = %m.name, error = %e, "model could not be loaded at start");
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    if loaded == 0 {
        return Err(NotServable::NoneLoads { root, first: first_error.unwrap_or_default() });
    }
    Ok(loaded)
}

impl Lifecycle {
    /// A stopped lifecycle.
    pub fn new(cfg: Config, cache: Arc<ModelCache>, metrics: Arc<Metrics>) -> Self {
        metrics.set_state(PipelineState::Stopped.as_str());
        Lifecycle {
            cfg,
            cache,
            metrics,
            op: tokio::sync::Mutex::new(()),
            info: Mutex::new(StateInfo {
                state: PipelineState::Stopped,
                since: SystemTime::now(),
                since_instant: Instant::now(),
                cause: None,
                threads_died: false,
                restarts_after_abort: 0,
                last_abort_restart: None,
                generation: 0,
                last_stop: None,
            }),
            current: Mutex::new(None),
        }
    }

    /// The current state.
    pub fn info(&self) -> StateInfo {
        self.info.lock().clone()
    }

    /// The pipeline (and its generation), while one exists (running, stopping, or failed
    /// because a thread died). Hold the `Arc` briefly: `stop` waits for it.
    pub fn pipeline(&self) -> Option<(u64, Arc<Pipeline>)> {
        self.current.lock().as_ref().map(|c| (c.generation, c.pipeline.clone()))
    }

    fn set_state(&self, state: PipelineState, cause: Option<String>) {
        let mut info = self.info.lock();
        let from = info.state;
        info.state = state;
        info.since = SystemTime::now();
        info.since_instant = Instant::now();
        info.threads_died = false;
        info.cause = cause;
        self.metrics.set_state(state.as_str());
        match &info.cause {
            Some(cause) => {
                tracing::error!(event = "pipeline_lifecycle", from = from.as_str(), to = state.as_str(),
                generation = info.generation, cause = %cause, "pipeline {}", state.as_str())
            }
            None => tracing::info!(
                event = "pipeline_lifecycle",
                from = from.as_str(),
                to = state.as_str(),
                generation = info.generation,
                "pipeline {}",
                state.as_str()
            ),
        }
    }

    /// Starts the pipeline unless it runs. `Ok(false)`: it was already running.
    pub async fn start(&self) -> Result<Changed, StartError> {
        let _op = self.op.lock().await;
        self.start_locked().await
    }

    /// Drains and stops the pipeline unless it is stopped; returns the drained pipeline's
    /// counters. A failed pipeline is cleaned up and becomes `stopped`.
    pub async fn stop(&self) -> (Changed, Option<StopReport>) {
        let _op = self.op.lock().await;
        self.stop_locked().await
    }

    /// Stops (draining) and starts again; from `stopped` or `failed` it just starts.
    pub async fn restart(&self) -> Result<Option<StopReport>, StartError> {
        let _op = self.op.lock().await;
        let (_, report) = self.stop_locked().await;
        self.start_locked().await?;
        Ok(report)
    }

    async fn start_locked(&self) -> Result<Changed, StartError> {
        let state = self.info.lock().state;
        if state == PipelineState::Running {
            return Ok(false);
        }
        if self.current.lock().is_some() {
            // Failed with a pipeline left over (a thread died): clean it up first.
            self.stop_locked().await;
        }
        self.set_state(PipelineState::Starting, None);
        let (cfg, cache, outcomes) =
            (self.cfg.clone(), self.cache.clone(), self.metrics.outcomes.clone());
        let result = tokio::task::spawn_blocking(move || {
            let models = prepare_models(&cfg, &cache)
                .map_err(|e| StartError { cause: e.to_string(), kafka: false })?;
            tracing::info!(models, "models warmed up");
            Pipeline::start_with_metrics(&cfg, cache, outcomes).map_err(|e| StartError {
                kafka: matches!(e, PipelineError::Kafka { .. }),
                cause: e.to_string(),
            })
        })
        .await
        .unwrap_or_else(|e| {
            Err(StartError { cause: format!("pipeline start panicked: {e}"), kafka: false })
        });
        match result {
            Ok(pipeline) => {
                let generation = {
                    let mut info = self.info.lock();
                    info.generation += 1;
                    info.generation
                };
                *self.current.lock() = Some(Current { generation, pipeline: Arc::new(pipeline) });
                self.metrics.pipeline_starts.inc();
                self.set_state(PipelineState::Running, None);
                Ok(true)
            }
            Err(e) => {
                self.metrics.pipeline_start_failures.inc();
                self.set_state(PipelineState::Failed, Some(e.cause.clone()));
                Err(e)
            }
        }
    }

    async fn stop_locked(&self) -> (Changed, Option<StopReport>) {
        let state = self.info.lock().state;
        let current = self.current.lock().take();
        let Some(Current { generation, pipeline }) = current else {
            if state == PipelineState::Failed {
                self.set_state(PipelineState::Stopped, None);
                return (true, None);
            }
            return (false, None);
        };
        let threads_died = self.info.lock().threads_died;
        self.set_state(PipelineState::Stopping, None);
        let started = Instant::now();
        let (ingest, emit, engine) =
            (pipeline.source().clone(), pipeline.emit_stats.clone(), pipeline.engine_stats.clone());
        let report = tokio::task::spawn_blocking(move || {
            // Readers hold the Arc only for a moment (the lag sampler for at most a few seconds).
            let mut pipeline = pipeline;
            let mut waited = Instant::now();
            let pipeline = loop {
                match Arc::try_unwrap(pipeline) {
                    Ok(p) => break p,
                    Err(back) => {
                        pipeline = back;
                        if waited.elapsed() > Duration::from_secs(5) {
                            tracing::warn!("pipeline stop waits for a reader of the pipeline");
                            waited = Instant::now();
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            };
            pipeline.stop()
        })
        .await;
        // The drained pipeline's final counters, before they are gone.
        self.metrics.observe_pipeline(generation, &ingest.stats, &emit, &engine);
        match report {
            Ok(report) => {
                tracing::info!(
                    event = "pipeline_drained",
                    generation,
                    drain_ms = started.elapsed().as_millis() as u64,
                    consumed = report.consumed,
                    results = report.results,
                    dead_letters = report.dead_letters,
                    undeliverable = report.undeliverable,
                    threads_died,
                    "pipeline drained and committed"
                );
                self.info.lock().last_stop = Some(report.clone());
                if report.hung.is_empty() {
                    self.set_state(PipelineState::Stopped, None);
                } else {
                    // A lane hung in a model call cannot be joined: only a process restart
                    // frees it.
                    self.set_state(
                        PipelineState::Failed,
                        Some(format!(
                            "stop passed streaming.inference.processing.drainTimeout with threads still running ({}); restart the process",
                            report.hung.join(", ")
                        )),
                    );
                }
                (true, Some(report))
            }
            Err(e) => {
                self.set_state(PipelineState::Failed, Some(format!("pipeline stop panicked: {e}")));
                (true, None)
            }
        }
    }

    /// Exactly-once: handles a running pipeline whose transaction failed (its emit thread
    /// ended with a transaction failure). An aborted transaction restarts it: the new
    /// pipeline reads again from the last committed offsets, so what the aborted transaction
    /// held is processed again. Restarts in a row wait 1 s, 2 s, 4 s ... (at most 60 s)
    /// between them while transactions keep failing. A fatal failure (this instance was
    /// fenced) stops it, so that its partitions go to the instance that fenced it, and leaves
    /// it `failed` with the cause. Returns whether it acted.
    pub async fn handle_transaction_failure(&self) -> bool {
        let (cause, fatal) = {
            let current = self.current.lock();
            let Some(c) = current.as_ref() else { return false };
            if c.pipeline.is_healthy() {
                return false;
            }
            let failure = c.pipeline.emit_stats.txn_failure.lock().clone();
            match failure {
                Some(f) => f,
                None => return false,
            }
        };
        if fatal {
            let _op = self.op.lock().await;
            if self.info.lock().state != PipelineState::Running {
                return false;
            }
            self.stop_locked().await;
            self.set_state(PipelineState::Failed, Some(format!("exactly_once: {cause}")));
            return true;
        }
        if self.info.lock().state != PipelineState::Running {
            return false;
        }
        let n = {
            let mut info = self.info.lock();
            info.restarts_after_abort += 1;
            let in_a_row = match info.last_abort_restart {
                Some((at, n)) if at.elapsed() < Duration::from_secs(300) => n + 1,
                _ => 1,
            };
            info.last_abort_restart = Some((Instant::now(), in_a_row));
            in_a_row
        };
        let backoff =
            Duration::from_secs(1u64 << n.saturating_sub(1).min(6)).min(Duration::from_secs(60));
        tracing::warn!(event = "transaction_restart", %cause, restarts = n, backoff_ms = backoff.as_millis() as u64,
            "transaction aborted: restarting the pipeline from the last committed offsets");
        tokio::time::sleep(backoff).await;
        match self.restart().await {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(cause = %e.cause, "restart after an aborted transaction failed");
                false
            }
        }
    }

    /// Marks a running pipeline whose thread stopped unexpectedly as failed. Skipped while a
    /// lifecycle operation runs (threads end on purpose then).
    pub fn check_threads(&self) {
        let Ok(_op) = self.op.try_lock() else { return };
        if self.info.lock().state != PipelineState::Running {
            return;
        }
        let (healthy, txn_failure) = self.current.lock().as_ref().map_or((true, None), |c| {
            (c.pipeline.is_healthy(), c.pipeline.emit_stats.txn_failure.lock().clone())
        });
        if !healthy {
            if txn_failure.is_some() {
                // handle_transaction_failure restarts or stops it.
                return;
            }
            self.set_state(
                PipelineState::Failed,
                Some(
                    "a pipeline thread stopped unexpectedly (see the log); restart the pipeline"
                        .into(),
                ),
            );
            self.info.lock().threads_died = true;
        }
    }
}
