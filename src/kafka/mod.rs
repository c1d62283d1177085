//! Kafka: the consumer (ingest) thread, the producer (emit) thread, the commit tracker and
//! topic administration.
//!
//! **Architecture invariant:** only this module touches rdkafka, and nothing in it runs on an
//! async runtime: each client is driven by its own OS thread (the admin client's futures by a
//! tiny blocking executor).

pub mod admin;
pub mod commit;
pub mod consumer;
pub mod payload;
pub mod producer;

use rdkafka::ClientConfig;

use crate::config::Config;

pub use commit::{CommitPoint, CommitTracker};

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
