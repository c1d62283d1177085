//! Reachability and lag: a probe client for the control plane's health check, and the
//! consumer lag of an assigned partition.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;

use super::client::{
    base_client_config, close_in_background, create, instance_name, KafkaLayerError,
};
use super::oauth::Plain;
use crate::config::Config;

/// Consumer lag of one assigned partition (see [`SourceHandle::consumer_lag`](super::source::SourceHandle::consumer_lag)).
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
    client: Option<BaseConsumer<Plain>>,
    topic: String,
}

impl KafkaProbe {
    /// A probe for the brokers of `cfg` (connects lazily).
    pub fn new(cfg: &Config) -> Result<KafkaProbe, KafkaLayerError> {
        let client: BaseConsumer<Plain> =
            create(&base_client_config(cfg, &format!("{}-probe", instance_name()))?, Plain)?;
        Ok(KafkaProbe { client: Some(client), topic: cfg.kafka.topics.streaming.input.clone() })
    }

    /// The number of brokers in the cluster, when one answered a metadata request within
    /// `timeout`. Blocking.
    pub fn check(&self, timeout: Duration) -> Result<usize, KafkaLayerError> {
        let closed = || KafkaLayerError::Other("probe closed".into());
        let client = self.client.as_ref().ok_or_else(closed)?;
        // Serves librdkafka's pending callbacks, an OAUTHBEARER token refresh among them (the
        // probe is subscribed to nothing, so no record comes back).
        let _ = client.poll(Duration::ZERO);
        let md = client.fetch_metadata(Some(&self.topic), timeout)?;
        if md.brokers().is_empty() {
            return Err(KafkaLayerError::Other("metadata lists no brokers".into()));
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
