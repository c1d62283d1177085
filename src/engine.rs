//! The engine: rings plus lanes, built and joined in one place.
//!
//! Build (rings, stats), connect (completion channel), spawn (one thread per lane). `submit`
//! queues a validated request; `shutdown` closes the rings and joins every lane after it has
//! given every queued request an outcome.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::emit::Outcome;
use crate::execute::lane::Lane;
use crate::execute::{CpuExecutor, LaneSettings, LaneShared};
use crate::ingest::Request;
use crate::queue::{BatchPolicy, Rings};
use crate::telemetry::EngineStats;

/// How to build an engine.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub cpu_lanes: usize,
    pub ring_capacity: usize,
    pub policy: BatchPolicy,
    pub max_retries: u32,
    /// Longest an idle lane sleeps between looks at the rings (it is woken early by work).
    pub idle_wait: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings { cpu_lanes: 1, ring_capacity: 4096, policy: BatchPolicy::default(), max_retries: 3, idle_wait: Duration::from_millis(500) }
    }
}

/// Running lanes over shared rings.
pub struct Engine {
    rings: Arc<Rings>,
    stats: Arc<EngineStats>,
    lanes: Vec<JoinHandle<()>>,
}

impl Engine {
    /// Spawns the lanes; every outcome goes to `completions`.
    pub fn start(settings: &EngineSettings, completions: Sender<Outcome>) -> std::io::Result<Engine> {
        let rings = Arc::new(Rings::new(settings.ring_capacity));
        let stats = Arc::new(EngineStats::new(settings.cpu_lanes));
        let shared = LaneShared { rings: rings.clone(), completions, stats: stats.clone() };
        let mut lanes = Vec::with_capacity(settings.cpu_lanes);
        for index in 0..settings.cpu_lanes.max(1) {
            let lane_settings = LaneSettings { index, policy: settings.policy.clone(), max_retries: settings.max_retries, idle_wait: settings.idle_wait };
            let executor = CpuExecutor::new(settings.policy.max_rows, settings.policy.max_tokens);
            let lane = Lane::new(executor, shared.clone(), lane_settings);
            let handle = std::thread::Builder::new().name(format!("sluice-lane-{index}")).spawn(move || lane.run());
            match handle {
                Ok(h) => lanes.push(h),
                Err(e) => {
                    rings.close();
                    for h in lanes {
                        let _ = h.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Engine { rings, stats, lanes })
    }

    /// The rings (for depth gauges and backpressure checks).
    pub fn rings(&self) -> &Arc<Rings> {
        &self.rings
    }

    /// Batch statistics.
    pub fn stats(&self) -> &Arc<EngineStats> {
        &self.stats
    }

    /// Queues a request; hands it back if its ring is full.
    pub fn submit(&self, req: Request) -> Result<(), Request> {
        self.rings.push(req)
    }

    /// Queues a request, waiting while its ring is full.
    pub fn submit_wait(&self, req: Request) {
        self.rings.push_wait(req)
    }

    /// Stops taking work, lets the lanes finish everything queued, and joins them.
    pub fn shutdown(mut self) {
        self.rings.close();
        for h in self.lanes.drain(..) {
            if h.join().is_err() {
                tracing::error!("a lane thread panicked");
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.rings.close();
        for h in self.lanes.drain(..) {
            let _ = h.join();
        }
    }
}

impl EngineSettings {
    /// Engine settings from the configuration file's `streaming.inference` section.
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        let inf = &cfg.streaming.inference;
        let b = &inf.batching;
        let expire_late_after = match inf.watermark.policy {
            crate::config::WatermarkPolicy::Expire => Some(inf.delay_threshold()),
            _ => None,
        };
        EngineSettings {
            cpu_lanes: inf.lanes.cpu.count.max(1),
            ring_capacity: b.ring_capacity,
            policy: BatchPolicy {
                max_rows: b.max_batch_rows,
                max_tokens: b.max_batch_tokens,
                priority_burst: b.priority_burst as u32,
                length_grouping: b.length_grouping,
                expire_late_after,
            },
            max_retries: inf.processing.max_retries,
            idle_wait: inf.trigger_interval(),
        }
    }
}

impl crate::ingest::Limits {
    /// Ingest limits from the configuration file.
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        let inf = &cfg.streaming.inference;
        crate::ingest::Limits {
            max_record_bytes: inf.limits.max_record_bytes,
            max_items: inf.limits.max_items_per_request,
            max_id_bytes: inf.limits.max_id_bytes,
            max_batch_rows: inf.batching.max_batch_rows,
            max_batch_tokens: inf.batching.max_batch_tokens,
        }
    }
}

impl crate::models::cache::CacheSettings {
    /// Cache settings from `streaming.inference.model.cache`. A disabled cache means no
    /// eviction policy: every model loaded stays loaded.
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        let inf = &cfg.streaming.inference;
        let c = &inf.model.cache;
        crate::models::cache::CacheSettings {
            capacity: if c.enabled { c.size } else { usize::MAX },
            ttl: c.enabled.then(|| inf.ttl()),
            warmup_rows: inf.batching.max_batch_rows.min(8),
        }
    }
}
