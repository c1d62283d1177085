//! `sluice loadgen`: the open-loop benchmark harness.
//!
//! It offers load at a fixed or Poisson rate and charges every record's latency from its
//! *intended* send time (no coordinated omission), checks that every record comes back once,
//! sweeps the rate up until the system under test cannot keep up, and writes JSON, Markdown
//! and SVG reports. The same harness drives Sluice, the passthrough floor
//! ([`passthrough`]) and the Python peer in `benches/peers/`, on the same broker and workload.
//!
//! Layout: [`schedule`] (intended send times) → [`workload`] (what each record is) →
//! [`open_loop`] (the send loop, over a clock and a sink) → [`step`] (one rate against a real
//! broker, with [`recorder`] checking and measuring) → [`sweep`] → [`report`] and [`plot`].
//! This is a tool beside the pipeline, not part of it: it talks to rdkafka directly, and it is
//! only built with the `loadgen` cargo feature. [`cli`] holds the `sluice loadgen` arguments
//! and the glue to the harness; the harness itself returns [`LoadgenError`].

pub mod cli;
pub mod error;
pub mod open_loop;
pub mod passthrough;
pub mod plot;
pub mod recorder;
pub mod report;
pub mod schedule;
pub mod step;
pub mod sweep;
pub mod workload;

pub use error::LoadgenError;
