//! Settings flow one way: the configuration file ([`Config`]) is turned into the settings
//! of every stage here, and only here. Each stage's settings type lives beside the code that
//! uses it and knows nothing of the file; every default is defined once (in the
//! configuration's `Default` impls, which take the vocabulary's defaults for limits and
//! batch caps).

use crate::config::{Config, WatermarkPolicy};
use crate::core::{BatchCaps, Limits};
use crate::engine::{EngineSettings, GpuLanes};
use crate::execute::circuit::CircuitSettings;
use crate::models::cache::CacheSettings;
use crate::queue::BatchPolicy;

/// Rows of each synthetic warm-up batch: enough to exercise the batched kernels, few enough
/// that loading a model stays quick.
const WARMUP_ROWS: usize = 8;

/// Everything a run needs, built from one [`Config`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// Lanes, rings, batch policy and retries.
    pub engine: EngineSettings,
    /// What a record may hold (the decoder's limits; its batch caps are the engine's).
    pub limits: Limits,
    /// The model cache's size, idle time and warm-up.
    pub cache: CacheSettings,
}

impl Settings {
    /// The settings of every stage from `cfg`.
    pub fn from_config(cfg: &Config) -> Settings {
        let inf = &cfg.streaming.inference;
        let b = &inf.batching;
        let caps = BatchCaps { max_rows: b.max_batch_rows, max_tokens: b.max_batch_tokens };
        let expire_late_after = match inf.watermark.policy {
            WatermarkPolicy::Expire => Some(inf.delay_threshold()),
            _ => None,
        };
        let engine = EngineSettings {
            cpu_lanes: inf.lanes.cpu.count,
            gpu: GpuLanes {
                devices: cfg.gpu.devices.clone(),
                streams_per_device: cfg.gpu.streams_per_device.max(1),
            },
            ring_capacity: b.ring_capacity,
            policy: BatchPolicy {
                caps,
                priority_burst: b.priority_burst as u32,
                length_grouping: b.length_grouping,
                expire_late_after,
            },
            max_retries: inf.processing.max_retries,
            idle_wait: inf.trigger_interval(),
            circuit: CircuitSettings::from(&inf.processing.circuit_breaker),
            lane_failure_limit: cfg.gpu.lane_failure_limit,
            cpu_fallback: cfg.gpu.cpu_fallback,
            shadow: None,
        };
        let limits = Limits {
            max_record_bytes: inf.limits.max_record_bytes,
            max_items: inf.limits.max_items_per_request,
            max_id_bytes: inf.limits.max_id_bytes,
            caps,
        };
        let c = &inf.model.cache;
        // A disabled cache means no eviction policy: every model loaded stays loaded.
        let cache = CacheSettings {
            capacity: if c.enabled { c.size } else { usize::MAX },
            ttl: c.enabled.then(|| inf.ttl()),
            warmup_rows: caps.max_rows.min(WARMUP_ROWS),
        };
        Settings { engine, limits, cache }
    }
}

impl Default for Settings {
    /// The settings of the default configuration.
    fn default() -> Self {
        Settings::from_config(&Config::default())
    }
}

impl Default for EngineSettings {
    /// The engine settings of the default configuration.
    fn default() -> Self {
        Settings::default().engine
    }
}

impl Default for CacheSettings {
    /// The cache settings of the default configuration.
    fn default() -> Self {
        Settings::default().cache
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_sets_the_batch_caps_of_every_stage() {
        let mut cfg = Config::default();
        cfg.streaming.inference.batching.max_batch_rows = 5;
        cfg.streaming.inference.batching.max_batch_tokens = 77;
        let s = Settings::from_config(&cfg);
        let caps = BatchCaps { max_rows: 5, max_tokens: 77 };
        assert_eq!(s.engine.policy.caps, caps);
        assert_eq!(s.limits.caps, caps);
        assert_eq!(s.cache.warmup_rows, 5);
    }

    #[test]
    fn defaults_come_from_the_vocabulary() {
        let s = Settings::default();
        assert_eq!(s.limits, Limits::default());
        assert_eq!(s.engine.policy.caps, BatchCaps::default());
    }
}
