//! Sluice: Kafka streams in, model predictions out.
//!
//! The module tree mirrors the data path: [`ingest`] (decode and validate requests) →
//! [`queue`] (priority rings and per-lane batchers) → [`execute`] (lanes and executors) →
//! [`emit`] (results and dead letters). Beside it: [`models`] (repository, cache, candle
//! models), [`config`] and [`telemetry`].

pub mod config;
pub mod models;
pub mod testkit;
