//! The streaming pipeline: the Kafka source and sink around the engine (see [`crate::run`]),
//! started and drained in one place.
//!
//! Start: refuse what this version cannot do, connect to Kafka (topics, producer, consumer;
//! this is where an unreachable broker is reported), start the engine, the sink and the
//! source. Stop (drain): stop consuming, queue what was consumed, let the lanes finish every
//! queued request, deliver every outcome, commit the acknowledged offsets, leave the group.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::Config;
use crate::core::{EmitStats, EngineStats, ErrorClass};
use crate::decode::Decoder;
use crate::execute::shadow::ShadowSetup;
use crate::kafka::{self, MetricsRenderer, PartitionLag, SourceHandle, SourceShared};
use crate::models::ModelCache;
use crate::run::{RunError, Running};
use crate::settings::Settings;
use crate::telemetry::metrics::OutcomeMetrics;

/// Why the pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("Kafka at {servers}: {reason}")]
    Kafka { servers: String, reason: String },
    #[error(transparent)]
    Run(#[from] crate::run::RunError),
}

/// A running pipeline.
pub struct Pipeline {
    running: Option<Running>,
    source: SourceHandle,
    pub emit_stats: Arc<EmitStats>,
    pub engine_stats: Arc<EngineStats>,
    pub started: Instant,
    /// `streaming.inference.processing.drainTimeout`.
    drain_timeout: Duration,
}

/// Counters of a finished run.
#[derive(Debug, Clone, Serialize)]
pub struct StopReport {
    pub consumed: u64,
    pub results: u64,
    pub dead_letters: u64,
    pub delivered: u64,
    pub undeliverable: u64,
    pub seconds: f64,
    /// Threads still running at the drain deadline and left behind (a lane hung in a model
    /// call): the pipeline could not be stopped cleanly.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hung: Vec<String>,
}

/// A JSON metrics snapshot (the metrics topic's record value).
fn metrics_snapshot(
    instance: &str,
    source: &SourceShared,
    emit: &EmitStats,
    outcomes: &OutcomeMetrics,
    engine: &EngineStats,
    started: Instant,
) -> Vec<u8> {
    let h = engine.batch_us.lock().clone();
    let by_class: serde_json::Map<String, serde_json::Value> = ErrorClass::ALL
        .iter()
        .map(|c| {
            let n = emit.dead_letters_by_class[c.index()].load(Ordering::Relaxed);
            (c.as_str().to_string(), n.into())
        })
        .collect();
    let v = serde_json::json!({
        "instance": instance,
        "timestamp_ms": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        "uptime_s": started.elapsed().as_secs_f64(),
        "consumed": source.stats.consumed.load(Ordering::Relaxed),
        "results": emit.results.load(Ordering::Relaxed),
        "dead_letters": emit.dead_letters.load(Ordering::Relaxed),
        "dead_letters_by_class": by_class,
        "delivered": emit.delivered.load(Ordering::Relaxed),
        "undeliverable": emit.undeliverable.load(Ordering::Relaxed),
        "batches": engine.batches.load(Ordering::Relaxed),
        "mean_batch_rows": engine.mean_batch_rows(),
        "padding_efficiency": engine.padding_efficiency(),
        "batch_ms": {"p50": h.value_at_quantile(0.5) as f64 / 1e3, "p99": h.value_at_quantile(0.99) as f64 / 1e3},
        "paused": source.paused.load(Ordering::Relaxed),
        "assigned_partitions": source.assigned.lock().len(),
        "latency_ms": outcomes.latency_summary_ms(),
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

impl Pipeline {
    /// Starts the pipeline with models from `cache`.
    pub fn start(cfg: &Config, cache: Arc<ModelCache>) -> Result<Pipeline, PipelineError> {
        Self::start_with_metrics(cfg, cache, Arc::new(OutcomeMetrics::new()))
    }

    /// [`start`](Self::start), recording every outcome into `outcomes` (the control plane
    /// passes the ones of its registry, so they outlive restarts).
    pub fn start_with_metrics(
        cfg: &Config,
        cache: Arc<ModelCache>,
        outcomes: Arc<OutcomeMetrics>,
    ) -> Result<Pipeline, PipelineError> {
        let mut settings = Settings::from_config(cfg);
        let instance = kafka::instance_name();
        let started = Instant::now();
        let emit_stats = Arc::new(EmitStats::default());
        // The snapshot reads the source's and the engine's figures, which exist only once
        // they are built: it gets them through cells filled below.
        let cells = Arc::new(SnapshotCells::default());
        let metrics = cfg.streaming.inference.metrics.enabled.then(|| {
            let (cells, emit, outcomes) = (cells.clone(), emit_stats.clone(), outcomes.clone());
            let name = instance.clone();
            let render: MetricsRenderer = Box::new(move || {
                let (Some(src), Some(eng)) = (cells.source.get(), cells.engine.get()) else {
                    return Vec::new();
                };
                metrics_snapshot(&name, src, &emit, &outcomes, eng, started)
            });
            (cfg.streaming.inference.reporting_interval(), render)
        });
        let shadow_metrics = outcomes.shadow.clone();
        let connected = kafka::connect(cfg, &instance, outcomes, emit_stats.clone(), metrics)
            .map_err(|e| PipelineError::Kafka {
                servers: cfg.kafka.bootstrap.servers.clone(),
                reason: e.to_string(),
            })?;
        let shared = connected.handle.shared.clone();
        // Shadow scoring: its own producer, outside any transaction (execute::shadow).
        let shadow = kafka::shadow::KafkaShadow::new(cfg, &instance, shadow_metrics.clone())
            .map_err(|e| PipelineError::Kafka {
                servers: cfg.kafka.bootstrap.servers.clone(),
                reason: format!("the shadow producer: {e}"),
            })?;
        settings.engine.shadow = Some(ShadowSetup {
            cache: cache.clone(),
            publisher: Arc::new(shadow),
            metrics: shadow_metrics,
            queue_batches: cfg.streaming.inference.model.rollout.shadow_queue_batches,
        });
        // Model loads run on the loader thread, never on the ingest thread.
        let decoder = Decoder::new(cache, settings.limits.clone(), None)
            .with_background_loads()
            .map_err(|source| RunError::Spawn { name: "sluice-model-loader", source })?;
        let running = Running::start(
            Box::new(connected.source),
            Box::new(connected.sink),
            &settings.engine,
            decoder,
            shared.stats.clone(),
        )?;
        let engine_stats = running.engine_stats().clone();
        let _ = cells.source.set(shared);
        let _ = cells.engine.set(engine_stats.clone());
        let topics = &cfg.kafka.topics.streaming;
        tracing::info!(servers = %cfg.kafka.bootstrap.servers, group = %cfg.kafka.consumer.group,
            input = %topics.input, priority = %topics.priority, "pipeline started");
        Ok(Pipeline {
            running: Some(running),
            source: connected.handle,
            emit_stats,
            engine_stats,
            started,
            drain_timeout: cfg.streaming.inference.processing.drain_timeout(),
        })
    }

    /// The source's shared state (assignment, pause state, counters).
    pub fn source(&self) -> &Arc<SourceShared> {
        &self.source.shared
    }

    /// The circuit breakers of the model versions (absent once stopped).
    pub fn circuits(&self) -> Option<&Arc<crate::execute::circuit::Circuits>> {
        self.running.as_ref().map(Running::circuits)
    }

    /// Whether every pipeline thread is still running.
    pub fn is_healthy(&self) -> bool {
        self.running.as_ref().is_some_and(Running::is_healthy)
    }

    /// Requests queued on the (priority, normal) rings, and each ring's capacity.
    pub fn ring_depths(&self) -> (usize, usize, usize) {
        self.running
            .as_ref()
            .map(|r| {
                let (p, n) = r.rings().depths();
                (p, n, r.rings().capacity())
            })
            .unwrap_or((0, 0, 0))
    }

    /// Consumer lag of every assigned partition (see [`SourceHandle::consumer_lag`]).
    pub fn consumer_lag(&self, budget: Duration) -> Vec<PartitionLag> {
        self.source.consumer_lag(budget)
    }

    /// Drains and stops: every consumed record gets its outcome delivered and its offset
    /// committed before this returns, unless `processing.drainTimeout` passes first: then
    /// what is not settled stays uncommitted (processed again after a restart), and threads
    /// that do not end (a lane hung in a model call) are left behind and named in the report.
    pub fn stop(mut self) -> StopReport {
        let t = Instant::now();
        let deadline = t + self.drain_timeout;
        tracing::info!(
            drain_timeout_s = self.drain_timeout.as_secs(),
            "pipeline stopping: draining in-flight work"
        );
        let mut hung = Vec::new();
        if let Some(running) = self.running.take() {
            running.request_stop();
            let poller = self.source.drain_poller();
            let finished = running.finish_by(deadline);
            drop(poller);
            match finished {
                Ok(()) => {}
                Err(RunError::Hung(what)) => {
                    tracing::error!(threads = %what, "drain deadline passed with threads still running; they are left behind");
                    hung.push(what);
                }
                Err(e) => tracing::error!(error = %e, "pipeline thread failed while draining"),
            }
        }
        self.source.shared.drained.store(true, Ordering::SeqCst);
        // The final commit gets what is left of the deadline, and at least 2 s.
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(2));
        self.source.commit_acknowledged_within(left);
        self.source.unsubscribe();
        let mut report = self.report();
        report.hung = hung;
        tracing::info!(
            drain_ms = t.elapsed().as_millis() as u64,
            consumed = report.consumed,
            results = report.results,
            dead_letters = report.dead_letters,
            "pipeline stopped"
        );
        report
    }

    /// Counters so far.
    pub fn report(&self) -> StopReport {
        StopReport {
            consumed: self.source.shared.stats.consumed.load(Ordering::Relaxed),
            results: self.emit_stats.results.load(Ordering::Relaxed),
            dead_letters: self.emit_stats.dead_letters.load(Ordering::Relaxed),
            delivered: self.emit_stats.delivered.load(Ordering::Relaxed),
            undeliverable: self.emit_stats.undeliverable.load(Ordering::Relaxed),
            seconds: self.started.elapsed().as_secs_f64(),
            hung: Vec::new(),
        }
    }
}

/// The figures a metrics snapshot reads, filled in once the pipeline is built.
#[derive(Default)]
struct SnapshotCells {
    source: std::sync::OnceLock<Arc<SourceShared>>,
    engine: std::sync::OnceLock<Arc<EngineStats>>,
}
