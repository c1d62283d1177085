//! The shadow topic's producer (`kafka.topics.streaming.shadow`): shadow results, best effort.
//!
//! Its own producer, never transactional and not idempotent, so that shadow records stay
//! outside any exactly-once transaction and a full shadow queue never delays the results.
//! `publish` runs on the shadow thread and never blocks: a full local queue drops the result,
//! and a failed delivery is counted dropped too (`sluice_shadow_dropped_total`).

use std::time::Duration;

use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use super::client::{base_client_config, close_in_background, create, KafkaLayerError};
use crate::config::Config;
use crate::execute::shadow::{ShadowPublisher, ShadowResult};
use crate::render::{result_key_of, write_shadow_result};
use crate::telemetry::metrics::ShadowMetrics;

/// Counts failed shadow deliveries.
struct ShadowContext {
    metrics: ShadowMetrics,
}

impl ClientContext for ShadowContext {
    crate::kafka::oauth::refresh_oauth_token!();
}

impl ProducerContext for ShadowContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.metrics.dropped(1);
        }
    }
}

/// The shadow topic's producer.
pub struct KafkaShadow {
    /// `None` once dropped (closed in the background: librdkafka's destroy can hang).
    producer: Option<BaseProducer<ShadowContext>>,
    topic: String,
}

impl KafkaShadow {
    /// A producer for `kafka.topics.streaming.shadow`.
    pub fn new(
        cfg: &Config,
        instance: &str,
        metrics: ShadowMetrics,
    ) -> Result<Self, KafkaLayerError> {
        let mut c = base_client_config(cfg, &format!("{instance}-shadow"))?;
        c.set("enable.idempotence", "false")
            .set("acks", "1")
            .set("linger.ms", "20")
            .set("message.timeout.ms", "30000")
            .set("queue.buffering.max.messages", "100000")
            .set("message.max.bytes", "16000000")
            .set("compression.type", cfg.kafka.producer.compression.as_str());
        let producer = create(&c, ShadowContext { metrics })?;
        Ok(KafkaShadow {
            producer: Some(producer),
            topic: cfg.kafka.topics.streaming.shadow.clone(),
        })
    }
}

impl ShadowPublisher for KafkaShadow {
    fn publish(&self, r: &ShadowResult<'_>) -> bool {
        let Some(producer) = &self.producer else { return false };
        let mut buf = Vec::with_capacity(256);
        if !write_shadow_result(r, &mut buf) {
            return false;
        }
        let key = result_key_of(r.env, r.id);
        let sent = producer
            .send(BaseRecord::<[u8], [u8], ()>::to(&self.topic).key(key).payload(&buf))
            .is_ok();
        producer.poll(Duration::ZERO);
        sent
    }
}

impl Drop for KafkaShadow {
    fn drop(&mut self) {
        if let Some(p) = self.producer.take() {
            // What is queued gets a moment to leave; the rest is dropped (best effort).
            let _ = p.flush(Duration::from_secs(2));
            close_in_background(p);
        }
    }
}
