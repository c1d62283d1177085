//! Kafka: the record source (consumer, thread `sluice-ingest`), the outcome sink (producer,
//! thread `sluice-emit`), the commit tracker, zero-copy payloads, topic administration and
//! the reachability/lag probe.
//!
//! **Architecture invariant:** only this module touches rdkafka, and nothing in it runs on an
//! async runtime: each client is driven by its own OS thread (the admin client's futures by a
//! tiny blocking executor).

pub mod admin;
pub mod commit;
pub mod local;
pub mod payload;
pub mod probe;
pub mod sink;
pub mod source;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::BaseProducer;
use rdkafka::ClientConfig;

use crate::config::Config;
use crate::telemetry::metrics::OutcomeMetrics;

pub use commit::{CommitPoint, CommitTracker};
pub use probe::{KafkaProbe, PartitionLag};
pub use sink::{KafkaSink, MetricsRenderer, SinkContext};
pub use source::{KafkaSource, SourceContext, SourceHandle, SourceShared};

/// Settings every client shares: brokers, IPv4 (Tansu and loopback tests), client id.
pub fn base_client_config(cfg: &Config, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka.bootstrap.servers)
        .set("client.id", client_id)
        .set("broker.address.family", "v4")
        .set("socket.keepalive.enable", "true");
    c
}

/// The emit thread's producer settings: idempotent, `acks=all`, `linger.ms` from the config,
/// and room for a dead letter carrying a record of up to `maxRecordBytes` plus headroom.
/// (`sluice loadgen passthrough` uses the same, so that it measures the same client.)
pub fn producer_config(cfg: &Config, client_id: &str) -> ClientConfig {
    let mut c = base_client_config(cfg, client_id);
    // librdkafka's own default is 1,000,000 bytes, below the default maxRecordBytes (1 MiB);
    // its ceiling is 1,000,000,000.
    let max_message = (cfg.streaming.inference.limits.max_record_bytes + 256 * 1024)
        .clamp(1_000_000, 1_000_000_000);
    c.set("message.max.bytes", max_message.to_string())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", cfg.kafka.producer.linger_ms.to_string())
        .set("message.timeout.ms", cfg.kafka.producer.delivery_timeout_ms.to_string())
        .set("compression.type", "none");
    c
}

/// The ingest thread's consumer settings: the configured group, manual commits of stored
/// offsets only, `read_committed`, short fetch waits.
pub fn consumer_config(cfg: &Config, client_id: &str) -> ClientConfig {
    let k = &cfg.kafka.consumer;
    let mut c = base_client_config(cfg, client_id);
    c.set("group.id", &k.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", k.session_timeout_ms.to_string())
        .set("heartbeat.interval.ms", k.heartbeat_interval_ms.to_string())
        .set("enable.partition.eof", "false")
        .set("queued.max.messages.kbytes", "16384")
        .set("fetch.wait.max.ms", "10")
        .set("isolation.level", "read_committed");
    c
}

/// Errors from the Kafka layer.
#[derive(Debug, thiserror::Error)]
pub enum KafkaLayerError {
    #[error("kafka client: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("{0}")]
    Other(String),
}

/// This process's name towards the brokers: `sluice-<host>-<pid>` (client ids, metrics).
pub fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("sluice-{host}-{}", std::process::id())
}

/// The Kafka ends of a streaming run, connected: the source and the sink to run, and the
/// pipeline's handle on the consumer.
pub struct Connected {
    pub source: KafkaSource,
    pub sink: KafkaSink,
    pub handle: SourceHandle,
}

/// Makes sure every topic exists (this is where an unreachable broker is reported), creates
/// the producer and the consumer of `instance`, and subscribes to the input and priority
/// topics. `metrics` renders the metrics topic's snapshot, when enabled.
pub fn connect(
    cfg: &Config,
    instance: &str,
    outcomes: Arc<OutcomeMetrics>,
    emit_stats: Arc<crate::core::EmitStats>,
    metrics: Option<(Duration, MetricsRenderer)>,
) -> Result<Connected, KafkaLayerError> {
    let topics = &cfg.kafka.topics.streaming;
    let admin_cfg = base_client_config(cfg, &format!("{instance}-admin"));
    let all = [
        topics.input.as_str(),
        topics.priority.as_str(),
        topics.output.as_str(),
        topics.dlq.as_str(),
        topics.metrics.as_str(),
    ];
    let created = admin::ensure_topics(&admin_cfg, &all, 1, Duration::from_secs(10))?;
    if !created.is_empty() {
        tracing::info!(topics = ?created, "created missing topics (1 partition each; create them yourself for more)");
    }
    let tracker = Arc::new(Mutex::new(CommitTracker::new()));
    let producer: BaseProducer<SinkContext> = producer_config(cfg, &format!("{instance}-producer"))
        .create_with_context(SinkContext::new(tracker.clone(), emit_stats))?;
    let shared =
        SourceShared::new(tracker, Duration::from_millis(cfg.kafka.consumer.revoke_timeout_ms));
    let consumer: BaseConsumer<SourceContext> =
        consumer_config(cfg, &format!("{instance}-consumer"))
            .create_with_context(SourceContext { shared: shared.clone() })?;
    consumer.subscribe(&[topics.priority.as_str(), topics.input.as_str()])?;
    let consumer = Arc::new(consumer);
    let sink = KafkaSink {
        producer,
        outcomes,
        output_topic: topics.output.as_str().into(),
        dlq_topic: topics.dlq.as_str().into(),
        metrics_topic: topics.metrics.as_str().into(),
        metrics,
        max_attempts: cfg.kafka.producer.max_attempts.max(1),
    };
    let source = KafkaSource {
        consumer: consumer.clone(),
        shared: shared.clone(),
        priority_topic: topics.priority.clone(),
        input_topic: topics.input.clone(),
        commit_interval: Duration::from_millis(cfg.kafka.consumer.commit_interval_ms.max(1)),
    };
    Ok(Connected { source, sink, handle: SourceHandle { consumer, shared } })
}

/// Drops a client on a helper thread and waits up to 10 s: librdkafka's destroy can hang
/// (rust-rdkafka #509). A hung close is logged and abandoned; the process exit ends it.
pub fn close_in_background<T: Send + 'static>(client: T) {
    let (tx, rx) = crossbeam_channel::bounded::<()>(1);
    let spawned = std::thread::Builder::new().name("sluice-kafka-close".into()).spawn(move || {
        drop(client);
        let _ = tx.send(());
    });
    match spawned {
        Ok(h) => {
            if rx.recv_timeout(Duration::from_secs(10)).is_ok() {
                let _ = h.join();
            } else {
                tracing::warn!("closing a Kafka client did not finish within 10 s; abandoning it");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not spawn the close thread"),
    }
}
