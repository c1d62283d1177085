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

/// Errors from the Kafka layer.
#[derive(Debug, thiserror::Error)]
pub enum KafkaLayerError {
    #[error("kafka client: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("{0}")]
    Other(String),
}
