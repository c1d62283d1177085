//! Connecting a streaming run: topics, the producer and the consumer, subscribed.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, Producer};

use super::admin;
use super::client::{
    base_client_config, consumer_config, create, producer_config, transactional_id, KafkaLayerError,
};
use super::commit::CommitTracker;
use super::sink::{KafkaSink, MetricsRenderer, SinkContext};
use super::source::{KafkaSource, SourceContext, SourceHandle, SourceShared};
use super::txn::{Transactions, TxnSettings};
use crate::config::{Config, DeliveryGuarantee};
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
    let admin_cfg = base_client_config(cfg, &format!("{instance}-admin"))?;
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
    // The shadow topic is best effort, like shadow records: a missing one that cannot be
    // created (no CreateTopics permission) does not stop the pipeline.
    match admin::ensure_topics(&admin_cfg, &[topics.shadow.as_str()], 1, Duration::from_secs(5)) {
        Ok(c) if !c.is_empty() => {
            tracing::info!(topic = %topics.shadow, "created the shadow topic (1 partition)")
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(topic = %topics.shadow, error = %e, "the shadow topic is missing and could not be created: shadow records are dropped (counted) until it exists")
        }
    }
    let tracker = Arc::new(Mutex::new(CommitTracker::new()));
    let producer: BaseProducer<SinkContext> = create(
        &producer_config(cfg, &format!("{instance}-producer"))?,
        SinkContext::new(tracker.clone(), emit_stats),
    )?;
    let processing = &cfg.streaming.inference.processing;
    let exactly_once = processing.guarantee == DeliveryGuarantee::ExactlyOnce;
    let (txn_requests, txn_inbox) = crossbeam_channel::unbounded();
    // Each blocking transaction call (begin, offsets, commit, abort) waits at most this: a
    // broker that does not answer must not hold the emit thread (and a revocation waiting
    // for it) for the whole transaction timeout.
    let call_timeout =
        Duration::from_millis(processing.transactions.timeout_ms).min(Duration::from_secs(10));
    if exactly_once {
        // Registers the transactional.id with its coordinator: a predecessor with the same id
        // is fenced and its open transaction aborted.
        producer.init_transactions(Duration::from_secs(30)).map_err(|e| {
            KafkaLayerError::Other(format!(
                "exactly_once: initialising transactions for transactional.id {:?} failed: {e} (the broker must support transactions)",
                transactional_id(cfg)
            ))
        })?;
        tracing::info!(transactional_id = %transactional_id(cfg), "exactly_once: transactions initialised");
    }
    let shared = SourceShared::new(
        tracker,
        Duration::from_millis(cfg.kafka.consumer.revoke_timeout_ms),
        exactly_once.then_some(txn_requests),
    );
    let consumer: BaseConsumer<SourceContext> = create(
        &consumer_config(cfg, &format!("{instance}-consumer"))?,
        SourceContext { shared: shared.clone() },
    )?;
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
        max_replays: processing.max_replays,
        txn: exactly_once.then(|| {
            let settings = TxnSettings {
                interval: Duration::from_millis(processing.transactions.commit_interval_ms),
                max_records: processing.transactions.max_records,
                call_timeout,
            };
            let consumer = consumer.clone();
            Transactions::new(
                Box::new(move || consumer.group_metadata()),
                settings,
                txn_inbox,
                shared.transactions_closed.clone(),
            )
        }),
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
