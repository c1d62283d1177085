//! Kafka: the record source (consumer, thread `sluice-ingest`), the outcome sink (producer,
//! thread `sluice-emit`), the commit tracker, zero-copy payloads, topic administration and
//! the reachability/lag probe, `sluice replay` (dead letters back to their input topic),
//! the rollout control topic (`rollout`, thread `sluice-rollout`) and the shadow topic
//! (`shadow`).
//!
//! **Architecture invariant:** only this module touches rdkafka, and nothing in it runs on an
//! async runtime: each client is driven by its own OS thread (the admin client's futures by a
//! tiny blocking executor).

pub mod admin;
pub mod client;
pub mod commit;
pub mod connect;
pub mod local;
pub mod oauth;
pub mod payload;
pub mod probe;
pub mod replay;
pub mod rollout;
pub mod shadow;
pub mod sink;
pub mod source;
pub mod txn;

pub use client::{
    base_client_config, close_in_background, consumer_config, instance_name, producer_config,
    KafkaLayerError,
};
pub use commit::{CommitPoint, CommitTracker};
pub use connect::{connect, Connected};
pub use probe::{KafkaProbe, PartitionLag};
pub use replay::{replay, ReplayOptions, ReplaySummary};
pub use sink::{KafkaSink, MetricsRenderer, SinkContext};
pub use source::{KafkaSource, SourceContext, SourceHandle, SourceShared};
