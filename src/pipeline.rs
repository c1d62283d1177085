//! The streaming pipeline: consumer thread → rings → lanes → producer thread, built, started
//! and drained in one place.
//!
//! Start: check the configuration, make sure the topics exist (this is where an unreachable
//! broker is reported), build the producer, the engine and the consumer, spawn the ingest and
//! emit threads. Stop (drain): stop consuming, queue what was consumed, let the lanes finish
//! every queued request, deliver every outcome, commit the acknowledged offsets, close.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::BaseProducer;
use serde::Serialize;

use crate::config::{Config, DeliveryGuarantee};
use crate::emit::ErrorClass;
use crate::engine::{Engine, EngineSettings};
use crate::ingest::{Decoder, Limits};
use crate::kafka::consumer::{
    close_in_background, commit_points, IngestContext, IngestShared, IngestThread,
};
use crate::kafka::producer::{EmitContext, EmitStats, EmitThread};
use crate::kafka::{admin, base_client_config, consumer_config, producer_config, CommitTracker};
use crate::models::ModelCache;
use crate::telemetry::metrics::OutcomeMetrics;
use crate::telemetry::EngineStats;

/// Why the pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("Kafka at {servers}: {reason}")]
    Kafka { servers: String, reason: String },
    #[error("{0}")]
    Other(String),
}

/// A running pipeline.
pub struct Pipeline {
    engine: Option<Engine>,
    consumer: Arc<BaseConsumer<IngestContext>>,
    ingest: Option<JoinHandle<()>>,
    emit: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    pub ingest_shared: Arc<IngestShared>,
    pub emit_stats: Arc<EmitStats>,
    pub engine_stats: Arc<EngineStats>,
    pub started: Instant,
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
}

fn kafka_err(cfg: &Config, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Kafka { servers: cfg.kafka.bootstrap.servers.clone(), reason: e.to_string() }
}

/// A JSON metrics snapshot (the metrics topic's record value).
fn metrics_snapshot(
    instance: &str,
    ingest: &IngestShared,
    emit: &EmitStats,
    engine: &EngineStats,
    started: Instant,
) -> Vec<u8> {
    let h = engine.batch_us.lock().clone();
    let by_class: serde_json::Map<String, serde_json::Value> = ErrorClass::ALL
        .iter()
        .zip(&emit.dead_letters_by_class)
        .map(|(c, n)| (c.as_str().to_string(), n.load(Ordering::Relaxed).into()))
        .collect();
    let v = serde_json::json!({
        "instance": instance,
        "timestamp_ms": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        "uptime_s": started.elapsed().as_secs_f64(),
        "consumed": ingest.stats.consumed.load(Ordering::Relaxed),
        "results": emit.results.load(Ordering::Relaxed),
        "dead_letters": emit.dead_letters.load(Ordering::Relaxed),
        "dead_letters_by_class": by_class,
        "delivered": emit.delivered.load(Ordering::Relaxed),
        "undeliverable": emit.undeliverable.load(Ordering::Relaxed),
        "batches": engine.batches.load(Ordering::Relaxed),
        "mean_batch_rows": engine.mean_batch_rows(),
        "padding_efficiency": engine.padding_efficiency(),
        "batch_ms": {"p50": h.value_at_quantile(0.5) as f64 / 1e3, "p99": h.value_at_quantile(0.99) as f64 / 1e3},
        "paused": ingest.paused.load(Ordering::Relaxed),
        "assigned_partitions": ingest.assigned.lock().len(),
        "latency_ms": emit.outcomes.latency_summary_ms(),
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
        if cfg.streaming.inference.processing.guarantee == DeliveryGuarantee::ExactlyOnce {
            return Err(PipelineError::Config(
                "streaming.inference.processing.guarantee: exactly_once is not available in this version; use at_least_once".into(),
            ));
        }
        let topics = &cfg.kafka.topics.streaming;
        let servers = &cfg.kafka.bootstrap.servers;
        let instance = format!("sluice-{}-{}", hostname(), std::process::id());

        // Topics (and reachability).
        let admin_cfg = base_client_config(cfg, &format!("{instance}-admin"));
        let all = [
            topics.input.as_str(),
            topics.priority.as_str(),
            topics.output.as_str(),
            topics.dlq.as_str(),
            topics.metrics.as_str(),
        ];
        let created = admin::ensure_topics(&admin_cfg, &all, 1, Duration::from_secs(10))
            .map_err(|e| kafka_err(cfg, e))?;
        if !created.is_empty() {
            tracing::info!(topics = ?created, "created missing topics (1 partition each; create them yourself for more)");
        }

        let tracker = Arc::new(Mutex::new(CommitTracker::new()));
        let emit_stats = Arc::new(EmitStats { outcomes, ..EmitStats::default() });
        let producer: BaseProducer<EmitContext> =
            producer_config(cfg, &format!("{instance}-producer"))
                .create_with_context(EmitContext::new(tracker.clone(), emit_stats.clone()))
                .map_err(|e| kafka_err(cfg, e))?;

        let ingest_shared = IngestShared::new(
            tracker.clone(),
            Duration::from_millis(cfg.kafka.consumer.revoke_timeout_ms),
        );
        let consumer: BaseConsumer<IngestContext> =
            consumer_config(cfg, &format!("{instance}-consumer"))
                .create_with_context(IngestContext { shared: ingest_shared.clone() })
                .map_err(|e| kafka_err(cfg, e))?;
        consumer
            .subscribe(&[topics.priority.as_str(), topics.input.as_str()])
            .map_err(|e| kafka_err(cfg, e))?;
        let consumer = Arc::new(consumer);
        let c = &cfg.kafka.consumer;

        let settings = EngineSettings::from_config(cfg);
        let (tx, rx) = crossbeam_channel::bounded(settings.ring_capacity.max(256));
        let engine = Engine::start(&settings, tx.clone())
            .map_err(|e| PipelineError::Other(format!("starting lanes: {e}")))?;
        let engine_stats = engine.stats().clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::new(AtomicBool::new(false));
        let started = Instant::now();

        let metrics = cfg.streaming.inference.metrics.enabled.then(|| {
            let (i, e, g) = (ingest_shared.clone(), emit_stats.clone(), engine_stats.clone());
            let name = instance.clone();
            let render: crate::kafka::producer::MetricsRenderer =
                Box::new(move || metrics_snapshot(&name, &i, &e, &g, started));
            (cfg.streaming.inference.reporting_interval(), render)
        });
        let emit = EmitThread {
            producer,
            completions: rx,
            output_topic: topics.output.as_str().into(),
            dlq_topic: topics.dlq.as_str().into(),
            metrics_topic: topics.metrics.as_str().into(),
            metrics,
            max_attempts: cfg.kafka.producer.max_attempts.max(1),
            stopping: stopping.clone(),
        };
        let emit = std::thread::Builder::new()
            .name("sluice-emit".into())
            .spawn(move || emit.run())
            .map_err(|e| PipelineError::Other(e.to_string()))?;

        let ingest = IngestThread {
            consumer: consumer.clone(),
            shared: ingest_shared.clone(),
            decoder: Decoder::new(cache, Limits::from_config(cfg), None),
            rings: engine.rings().clone(),
            completions: tx,
            priority_topic: topics.priority.clone(),
            input_topic: topics.input.clone(),
            commit_interval: Duration::from_millis(c.commit_interval_ms.max(1)),
            stop: stop.clone(),
        };
        let ingest = std::thread::Builder::new()
            .name("sluice-ingest".into())
            .spawn(move || ingest.run())
            .map_err(|e| PipelineError::Other(e.to_string()))?;
        tracing::info!(%servers, group = %c.group, input = %topics.input, priority = %topics.priority, "pipeline started");
        Ok(Pipeline {
            engine: Some(engine),
            consumer,
            ingest: Some(ingest),
            emit: Some(emit),
            stop,
            stopping,
            ingest_shared,
            emit_stats,
            engine_stats,
            started,
        })
    }

    /// Whether every pipeline thread is still running.
    pub fn is_healthy(&self) -> bool {
        self.ingest.as_ref().is_some_and(|h| !h.is_finished())
            && self.emit.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Requests queued on the (priority, normal) rings, and each ring's capacity.
    pub fn ring_depths(&self) -> (usize, usize, usize) {
        self.engine
            .as_ref()
            .map(|e| {
                let (p, n) = e.rings().depths();
                (p, n, e.rings().capacity())
            })
            .unwrap_or((0, 0, 0))
    }

    /// Consumer lag of every assigned partition: its high watermark (asked from the broker,
    /// within `budget` in all) minus the consumer's position. Before the first record of a
    /// partition is fetched, the group's committed offset (or the low watermark) stands in for
    /// the position. Blocking: call it off the hot path, now and then.
    pub fn consumer_lag(&self, budget: Duration) -> Vec<PartitionLag> {
        let deadline = Instant::now() + budget;
        let left =
            || deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(1));
        let assigned = self.ingest_shared.assigned.lock().clone();
        let valid = |o: rdkafka::Offset| o.to_raw().filter(|o| *o >= 0);
        let positions = self.consumer.position().ok();
        let mut lags: Vec<PartitionLag> = assigned
            .into_iter()
            .map(|(topic, partition)| {
                let position = positions
                    .as_ref()
                    .and_then(|t| t.find_partition(&topic, partition))
                    .and_then(|e| valid(e.offset()));
                PartitionLag { topic, partition, position, high_watermark: None, lag: None }
            })
            .collect();
        let unknown: Vec<usize> = (0..lags.len()).filter(|i| lags[*i].position.is_none()).collect();
        if !unknown.is_empty() && !left().is_zero() {
            let mut tpl = rdkafka::TopicPartitionList::new();
            for i in &unknown {
                tpl.add_partition(&lags[*i].topic, lags[*i].partition);
            }
            if let Ok(got) = self.consumer.committed_offsets(tpl, left()) {
                for i in unknown {
                    let l = &mut lags[i];
                    l.position =
                        got.find_partition(&l.topic, l.partition).and_then(|e| valid(e.offset()));
                }
            }
        }
        for l in &mut lags {
            if left().is_zero() {
                break;
            }
            if let Ok((low, high)) = self.consumer.fetch_watermarks(&l.topic, l.partition, left()) {
                l.high_watermark = Some(high);
                let position = *l.position.get_or_insert(low);
                l.lag = Some((high - position).max(0));
            }
        }
        lags
    }

    /// Drains and stops: every consumed record gets its outcome delivered and its offset
    /// committed before this returns.
    pub fn stop(mut self) -> StopReport {
        let t = Instant::now();
        tracing::info!("pipeline stopping: draining in-flight work");
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.ingest.take() {
            let _ = h.join();
        }
        if let Some(engine) = self.engine.take() {
            engine.shutdown();
        }
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(h) = self.emit.take() {
            let _ = h.join();
        }
        let points = self.ingest_shared.tracker.lock().take_commits();
        commit_points(&self.consumer, &points, CommitMode::Sync, &self.ingest_shared.stats);
        let blocked = self.ingest_shared.tracker.lock().blocked();
        if !blocked.is_empty() {
            tracing::error!(
                ?blocked,
                "partitions with undeliverable outcomes: not committed past them"
            );
        }
        self.consumer.unsubscribe();
        let report = self.report();
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
            consumed: self.ingest_shared.stats.consumed.load(Ordering::Relaxed),
            results: self.emit_stats.results.load(Ordering::Relaxed),
            dead_letters: self.emit_stats.dead_letters.load(Ordering::Relaxed),
            delivered: self.emit_stats.delivered.load(Ordering::Relaxed),
            undeliverable: self.emit_stats.undeliverable.load(Ordering::Relaxed),
            seconds: self.started.elapsed().as_secs_f64(),
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if self.ingest.is_some() || self.emit.is_some() {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(h) = self.ingest.take() {
                let _ = h.join();
            }
            if let Some(e) = self.engine.take() {
                e.shutdown();
            }
            if let Some(h) = self.emit.take() {
                let _ = h.join();
            }
        }
        // The consumer is closed off-thread: librdkafka's destroy can hang (rdkafka #509).
        let consumer = self.consumer.clone();
        close_in_background(consumer);
    }
}

/// Consumer lag of one assigned partition (see [`Pipeline::consumer_lag`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// The next offset this instance will read.
    pub position: Option<i64>,
    /// The next offset the broker will write.
    pub high_watermark: Option<i64>,
    /// `high_watermark - position`; `None` when the broker did not answer in time.
    pub lag: Option<i64>,
}

/// A Kafka client for reachability checks outside the pipeline (the control plane's health).
pub struct KafkaProbe {
    client: Option<BaseConsumer>,
    topic: String,
}

impl KafkaProbe {
    /// A probe for the brokers of `cfg` (connects lazily).
    pub fn new(cfg: &Config) -> Result<KafkaProbe, PipelineError> {
        let client: BaseConsumer =
            base_client_config(cfg, &format!("sluice-{}-{}-probe", hostname(), std::process::id()))
                .create()
                .map_err(|e| kafka_err(cfg, e))?;
        Ok(KafkaProbe { client: Some(client), topic: cfg.kafka.topics.streaming.input.clone() })
    }

    /// The number of brokers in the cluster, when one answered a metadata request within
    /// `timeout`. Blocking.
    pub fn check(&self, timeout: Duration) -> Result<usize, String> {
        let client = self.client.as_ref().ok_or("probe closed")?;
        let md = client.fetch_metadata(Some(&self.topic), timeout).map_err(|e| e.to_string())?;
        if md.brokers().is_empty() {
            return Err("metadata lists no brokers".into());
        }
        Ok(md.brokers().len())
    }
}

impl Drop for KafkaProbe {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            close_in_background(c);
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "host".into())
}
