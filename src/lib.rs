//! Sluice: Kafka streams in, model predictions out.
//!
//! The module tree mirrors the data path: [`ingest`] (decode and validate requests) →
//! [`queue`] (priority rings and per-lane batchers) → [`execute`] (lanes and executors) →
//! [`emit`] (results and dead letters). Beside it: [`models`] (repository, cache, candle
//! models), [`config`], [`telemetry`], and the [`engine`] that spawns and joins the lanes.
//! [`batch`] is the offline mode over JSONL files.

// Requests travel by value on purpose: handing a full ring's request back in `Err` (instead
// of boxing it) is what keeps the hot path free of per-request allocation. Model enums hold
// their one big variant inline for the same reason.
#![allow(clippy::result_large_err, clippy::large_enum_variant)]

pub mod batch;
pub mod config;
pub mod control;
pub mod demo;
pub mod emit;
pub mod engine;
pub mod execute;
pub mod ingest;
pub mod kafka;
#[cfg(feature = "loadgen")]
pub mod loadgen;
pub mod models;
pub mod pipeline;
pub mod queue;
pub mod telemetry;
