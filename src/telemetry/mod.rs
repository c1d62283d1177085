//! Telemetry: engine statistics and logging set-up.

pub mod logging;
pub mod metrics;
pub mod stats;

pub use stats::{EngineStats, LaneMemory};
