//! Connecting a streaming run: topics, the producer and the consumer, subscribed.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::BaseProducer;

use super::admin;
use super::client::{base_client_config, consumer_config, producer_config, KafkaLayerError};
use super::commit::CommitTracker;
use super::sink::{KafkaSink, MetricsRenderer, SinkContext};
use super::source::{KafkaSource, SourceContext, SourceHandle, SourceShared};
use crate::config::Config;
use crate::core::EmitStats;
use crate::telemetry::metrics::OutcomeMetrics;

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
    emit_stats: Arc<EmitStats>,
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
        dead_letter_key_bytes: cfg.kafka.producer.dead_letter_key_bytes,
    };
    let source = KafkaSource {
        consumer: consumer.clone(),
        shared: shared.clone(),
        priority_topic: topics.priority.clone(),
        input_topic: topics.input.clone(),
        commit_interval: Duration::from_millis(cfg.kafka.consumer.commit_interval_ms.max(1)),
        max_held_bytes: cfg.kafka.consumer.max_held_bytes,
    };
    Ok(Connected { source, sink, handle: SourceHandle { consumer: Some(consumer), shared } })
}
