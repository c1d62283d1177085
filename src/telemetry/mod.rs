//! Telemetry: the one Prometheus registry (behind `/metrics`, the JSON metrics view and the
//! metrics-topic snapshot) and logging set-up. The counters themselves live with the stages
//! that own them (`core::stats`); telemetry mirrors them by name.

pub mod logging;
pub mod metrics;
pub mod profile;
