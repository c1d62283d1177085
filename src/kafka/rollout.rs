//! Rollout state shared by every instance through a compacted control topic
//! (`kafka.topics.streaming.control`): one record per change, key = model name, value = the
//! model's whole rollout state (`models::rollout::RolloutState`: serving version, split,
//! shadow, canary), e.g. `{"serving": "1", "split": {"1": 90, "2": 10}, "shadow": "3"}`.
//!
//! Every instance follows the topic on a thread of its own (`sluice-rollout`), outside any
//! consumer group: it reads the topic's partitions from the beginning, so a new or restarted
//! instance replays the latest state of every model, and it applies each record in order: it
//! loads and warms the versions the state names, then puts it in force (and stores it in the
//! state directory, so that an instance that starts without the broker still has it). A call to
//! any instance publishes a record here after checking it locally; every instance, the caller
//! included, converges on the topic's order: the last record of a model wins, except that a
//! record that would move a canary backwards is ignored (`RolloutState::supersedes`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::client::{base_client_config, close_in_background, create, instance_name};
use super::oauth::Plain;
use crate::config::Config;
use crate::models::cache::Applied;
use crate::models::rollout::RolloutState;
use crate::models::ModelCache;

/// How long publishing one record may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Records the delivery result of the one record in flight.
#[derive(Default)]
struct Ack(Mutex<Option<Result<(), String>>>);

impl ClientContext for Ack {
    crate::kafka::oauth::refresh_oauth_token!();
}

impl ProducerContext for Ack {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        *self.0.lock() = Some(result.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string()));
    }
}

/// The follower thread and the publisher of one instance.
pub struct RolloutSync {
    topic: String,
    /// `None` once dropped (closed in the background: librdkafka's destroy can hang).
    producer: Mutex<Option<BaseProducer<Ack>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Records applied so far (tests and `status`).
    pub applied: Arc<AtomicU64>,
}

impl RolloutSync {
    /// Creates the control topic if it is missing (compacted, one partition) and starts
    /// following it.
    pub fn start(cfg: &Config, cache: Arc<ModelCache>) -> Result<RolloutSync, String> {
        let topic = cfg.kafka.topics.streaming.control.clone();
        let name = format!("{}-rollout", instance_name());
        let base =
            base_client_config(cfg, &name).map_err(|e| format!("Kafka client settings: {e}"))?;
        ensure_compacted(&base, &topic)?;
        let producer: BaseProducer<Ack> = {
            let mut c = base.clone();
            c.set("acks", "all").set("message.timeout.ms", "10000");
            create(&c, Ack::default()).map_err(|e| format!("producer: {e}"))?
        };
        let consumer: BaseConsumer<Plain> = {
            let mut c = base.clone();
            c.set("group.id", &name)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("enable.partition.eof", "false");
            create(&c, Plain).map_err(|e| format!("consumer: {e}"))?
        };
        let md = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .map_err(|e| format!("metadata of {topic}: {e}"))?;
        let partitions = md.topics().first().map_or(0, |t| t.partitions().len() as i32);
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions.max(1) {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .map_err(|e| format!("assigning {topic}: {e}"))?;
        }
        consumer.assign(&tpl).map_err(|e| format!("assigning {topic}: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let applied = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, applied) = (stop.clone(), applied.clone());
            std::thread::Builder::new()
                .name("sluice-rollout".into())
                .spawn(move || follow(consumer, &cache, &stop, &applied))
                .map_err(|e| format!("spawning sluice-rollout: {e}"))?
        };
        tracing::info!(topic = %topic, "following the rollout control topic");
        Ok(RolloutSync {
            topic,
            producer: Mutex::new(Some(producer)),
            stop,
            thread: Some(thread),
            applied,
        })
    }

    /// Publishes `name`'s rollout state to every instance; returns once the broker has it
    /// (blocking: call it off the async runtime's threads).
    pub fn publish(&self, name: &str, state: &RolloutState) -> Result<(), String> {
        let value = serde_json::to_vec(state).map_err(|e| e.to_string())?;
        let guard = self.producer.lock();
        let Some(producer) = guard.as_ref() else {
            return Err(format!("control topic {}: closed", self.topic));
        };
        *producer.context().0.lock() = None;
        producer
            .send(BaseRecord::<str, [u8], ()>::to(&self.topic).key(name).payload(&value))
            .map_err(|(e, _)| format!("control topic {}: {e}", self.topic))?;
        let deadline = Instant::now() + PUBLISH_TIMEOUT;
        loop {
            producer.poll(Duration::from_millis(50));
            if let Some(result) = producer.context().0.lock().take() {
                return result.map_err(|e| format!("control topic {}: {e}", self.topic));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "control topic {}: not acknowledged within {} s",
                    self.topic,
                    PUBLISH_TIMEOUT.as_secs()
                ));
            }
        }
    }
}

impl Drop for RolloutSync {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(p) = self.producer.lock().take() {
            close_in_background(p);
        }
    }
}

/// Creates `topic` (one partition, `cleanup.policy=compact`) unless it exists. A broker that
/// refuses the topic config gets a plain topic: the state is still correct (the last record
/// of a model wins), only replays read more.
fn ensure_compacted(base: &rdkafka::ClientConfig, topic: &str) -> Result<(), String> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let timeout = Duration::from_secs(10);
    let existing = super::admin::partition_counts(base, &[topic], timeout)
        .map_err(|e| format!("control topic {topic}: {e}"))?;
    if existing.first().is_some_and(Option::is_some) {
        return Ok(());
    }
    let admin: AdminClient<Plain> =
        create(base, Plain).map_err(|e| format!("admin client: {e}"))?;
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    let compacted =
        NewTopic::new(topic, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
    let plain = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    let mut result = Err(String::new());
    for new in [compacted, plain] {
        let r = super::admin::block_on(admin.create_topics([&new], &opts));
        result = match r.map(|mut v| v.pop()) {
            Ok(Some(Ok(_))) => Ok(()),
            Ok(Some(Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)))) => Ok(()),
            Ok(Some(Err((_, code)))) => Err(format!("creating {topic}: {code}")),
            Ok(None) => Err(format!("creating {topic}: no answer")),
            Err(e) => Err(format!("creating {topic}: {e}")),
        };
        if result.is_ok() {
            break;
        }
        tracing::warn!(topic, error = ?result, "creating the control topic compacted failed; trying a plain topic");
    }
    close_in_background(admin);
    result
}

fn follow(
    consumer: BaseConsumer<Plain>,
    cache: &ModelCache,
    stop: &AtomicBool,
    applied: &AtomicU64,
) {
    while !stop.load(Ordering::SeqCst) {
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(e)) => {
                tracing::debug!(error = %e, "rollout control topic: consumer error");
            }
            Some(Ok(msg)) => {
                let Some(name) = msg.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    tracing::warn!(
                        offset = msg.offset(),
                        "rollout record without a model name; ignored"
                    );
                    continue;
                };
                apply(cache, name, msg.payload());
                applied.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    close_in_background(consumer);
}

/// Applies one rollout record (see `ModelCache::load_and_apply`). A state whose versions
/// cannot be loaded here is logged and the previous one stays.
fn apply(cache: &ModelCache, name: &str, value: Option<&[u8]>) {
    let state: RolloutState = match value.map(serde_json::from_slice).transpose() {
        Ok(Some(r)) => r,
        // A tombstone: the model has no rollout state any more.
        Ok(None) => RolloutState::default(),
        Err(e) => {
            tracing::warn!(model = name, error = %e, "rollout record is not valid JSON; ignored");
            return;
        }
    };
    match cache.load_and_apply(name, &state) {
        Ok(Applied::Changed) => {
            tracing::debug!(model = name, "rollout state applied from the control topic");
        }
        Ok(Applied::Unchanged) => {}
        Ok(Applied::Stale) => {
            tracing::debug!(
                model = name,
                "rollout record older than the canary state here; ignored"
            );
        }
        Err(e) => {
            tracing::error!(model = name, error = %e, "the rollout state from the control topic cannot be put in force here (a version that does not load, or the state directory); the previous state stays");
        }
    }
}
