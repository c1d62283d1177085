//! The passthrough baseline: consume → produce with Sluice's own client settings and no model.
//! What it reaches is the floor that the broker and the Kafka client impose on any pipeline.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::error::{LoadgenError, Result};
use crate::config::Config;
use crate::kafka::client::create;
use crate::kafka::close_in_background;
use crate::kafka::oauth::Plain;
use crate::kafka::{admin, base_client_config, consumer_config, producer_config, CommitTracker};

/// What a passthrough run did.
#[derive(Clone, Copy, Debug, Default)]
pub struct PassthroughReport {
    pub forwarded: u64,
    pub delivery_failures: u64,
    pub commits: u64,
}

/// Acknowledgements feed the same commit tracker Sluice's emit thread feeds.
struct AckContext {
    tracker: Arc<Mutex<CommitTracker>>,
    failures: AtomicU64,
}

impl ClientContext for AckContext {
    crate::kafka::oauth::refresh_oauth_token!();
}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Box<(Arc<str>, i32, i64)>;
    fn delivery(&self, result: &DeliveryResult<'_>, source: Self::DeliveryOpaque) {
        let (topic, partition, offset) = *source;
        match result {
            Ok(_) => {
                self.tracker.lock().ack(&topic, partition, offset);
            }
            Err((e, _)) => {
                tracing::error!(%topic, partition, offset, error = %e, "passthrough could not forward a record; its partition's commits stop here");
                self.failures.fetch_add(1, Ordering::Relaxed);
                self.tracker.lock().block(&topic, partition, offset);
            }
        }
    }
}

/// Forwards every record of the input and priority topics to the output topic (same key,
/// value and headers) until `stop` is set. Like Sluice, it never waits for a send: offsets are
/// tracked, acknowledged by delivery reports, and the contiguous acknowledged prefix is
/// committed every `commitIntervalMs` (the same `CommitTracker`). `on_ready` runs once the
/// consumer has its first partitions.
pub fn run(
    cfg: &Config,
    stop: &AtomicBool,
    mut on_ready: impl FnMut(),
) -> Result<PassthroughReport> {
    let topics = &cfg.kafka.topics.streaming;
    let instance = format!("sluice-passthrough-{}", std::process::id());
    let all = [topics.input.as_str(), topics.priority.as_str(), topics.output.as_str()];
    let client_config = |role: &str| -> Result<rdkafka::ClientConfig> {
        let c = match role {
            "producer" => producer_config(cfg, &format!("{instance}-{role}")),
            "consumer" => consumer_config(cfg, &format!("{instance}-{role}")),
            _ => base_client_config(cfg, &format!("{instance}-{role}")),
        };
        c.map_err(LoadgenError::topics("configuring the Kafka clients"))
    };
    admin::ensure_topics(&client_config("admin")?, &all, 1, Duration::from_secs(10))
        .map_err(LoadgenError::topics("creating topics"))?;
    let tracker = Arc::new(Mutex::new(CommitTracker::new()));
    let producer: BaseProducer<AckContext> = create(
        &client_config("producer")?,
        AckContext { tracker: tracker.clone(), failures: AtomicU64::new(0) },
    )
    .map_err(LoadgenError::topics("creating the producer"))?;
    let consumer: BaseConsumer<Plain> = create(&client_config("consumer")?, Plain)
        .map_err(LoadgenError::topics("creating the consumer"))?;
    consumer
        .subscribe(&[topics.priority.as_str(), topics.input.as_str()])
        .map_err(LoadgenError::kafka("subscribing"))?;
    let names: [Arc<str>; 2] =
        [Arc::from(topics.input.as_str()), Arc::from(topics.priority.as_str())];
    let commit_every = Duration::from_millis(cfg.kafka.consumer.commit_interval_ms.max(1));
    let mut report = PassthroughReport::default();
    let mut last_commit = Instant::now();
    let mut ready = false;
    let commit = |mode: CommitMode, report: &mut PassthroughReport| -> Result<()> {
        let points = tracker.lock().take_commits();
        if points.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for p in points {
            tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.offset))?;
        }
        consumer.commit(&tpl, mode).map_err(LoadgenError::kafka("committing"))?;
        report.commits += 1;
        Ok(())
    };
    while !stop.load(Ordering::SeqCst) {
        if !ready && consumer.assignment().is_ok_and(|a| a.count() > 0) {
            ready = true;
            on_ready();
        }
        match consumer.poll(Duration::from_millis(10)) {
            Some(Ok(m)) => {
                let Some(topic) = names.iter().find(|n| &***n == m.topic()).cloned() else {
                    continue;
                };
                tracker.lock().track(&topic, m.partition(), m.offset());
                let mut rec = BaseRecord::with_opaque_to(
                    &topics.output,
                    Box::new((topic, m.partition(), m.offset())),
                )
                .payload(m.payload().unwrap_or_default());
                if let Some(k) = m.key() {
                    rec = rec.key(k);
                }
                if let Some(h) = m.headers() {
                    rec = rec.headers(h.detach());
                }
                loop {
                    match producer.send(rec) {
                        Ok(()) => break,
                        Err((
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull,
                            ),
                            back,
                        )) => {
                            rec = back;
                            producer.poll(Duration::from_millis(1));
                        }
                        Err((e, _)) => return Err(LoadgenError::kafka("forwarding a record")(e)),
                    }
                }
                report.forwarded += 1;
            }
            Some(Err(e)) => tracing::warn!(error = %e, "passthrough consumer"),
            None => {}
        }
        producer.poll(Duration::ZERO);
        if last_commit.elapsed() >= commit_every {
            commit(CommitMode::Async, &mut report)?;
            last_commit = Instant::now();
        }
    }
    // Drain: everything forwarded is acknowledged, then committed.
    producer
        .flush(Duration::from_secs(30))
        .map_err(LoadgenError::kafka("waiting for acknowledgements"))?;
    commit(CommitMode::Sync, &mut report)?;
    report.delivery_failures = producer.context().failures.load(Ordering::Relaxed);
    close_in_background(consumer);
    Ok(report)
}
