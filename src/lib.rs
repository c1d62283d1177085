//! Sluice: Kafka streams in, model predictions out.
//!
//! Layers, bottom to top (each imports only from the layers below it; the `tidy` test checks
//! it):
//!
//! - [`core`]: the vocabulary every stage shares (envelope, outcome and failure, staging
//!   buffers, batch output, limits, stage counters);
//! - [`config`] (the configuration file) and [`telemetry`] (metrics registry, logging);
//! - [`models`]: repository, cache, tokenizers and the candle models;
//! - [`queue`] (the validated request, rings, batcher) and [`decode`] (records to requests);
//! - [`execute`] (lanes and executors) and [`engine`] (rings plus lanes);
//! - [`render`] (result JSON and dead-letter headers);
//! - sources and sinks: [`kafka`] and [`jsonl`];
//! - [`run`] (one run loop: a source and a sink around the engine) and [`settings`] (every
//!   stage's settings from the configuration);
//! - compositions: [`pipeline`] (`sluice serve`), [`jsonl::run`] (`sluice batch`), [`demo`];
//! - the HTTP [`control`] plane; the load generator (`loadgen`) beside it all.

// Requests travel by value on purpose: handing a full ring's request back in `Err` (instead
// of boxing it) is what keeps the hot path free of per-request allocation. Model enums hold
// their one big variant inline for the same reason.
#![allow(clippy::result_large_err, clippy::large_enum_variant)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod config;
pub mod control;
pub mod core;
pub mod decode;
pub mod demo;
pub mod engine;
pub mod execute;
pub mod jsonl;
pub mod kafka;
#[cfg(feature = "loadgen")]
pub mod loadgen;
pub mod models;
pub mod pipeline;
pub mod queue;
pub mod render;
pub mod run;
pub mod settings;
pub mod telemetry;
