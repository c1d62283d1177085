//! What the control plane watches: a periodic sampler (pipeline threads, the metrics mirror,
//! consumer lag, a sliding window for throughput and latency percentiles) and the health
//! checks (Kafka reachable, models loaded, pipeline running).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::config::Config;
use crate::kafka::{KafkaLayerError, KafkaProbe, PartitionLag};

/// A broker check: the number of brokers, or why none answered (shared by cached answers).
pub type KafkaCheck = Result<usize, Arc<KafkaLayerError>>;
use crate::telemetry::metrics::{HistogramSnapshot, Metrics};

/// Throughput and percentiles cover about this much recent time.
pub const WINDOW: Duration = Duration::from_secs(60);
/// How often a window sample is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// A broker check is reused for this long.
const KAFKA_CHECK_TTL: Duration = Duration::from_secs(2);
/// How long a broker check may take.
const KAFKA_CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// Budget of one lag sample (all partitions).
pub const LAG_BUDGET: Duration = Duration::from_secs(3);

/// Totals at one moment, for rates and windowed percentiles.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub consumed: u64,
    pub results: u64,
    pub dead_letters: u64,
    pub queue: HistogramSnapshot,
    pub inference: HistogramSnapshot,
    pub end_to_end: HistogramSnapshot,
    pub batch_size: HistogramSnapshot,
}

impl Sample {
    fn take(m: &Metrics) -> Sample {
        let o = &m.outcomes;
        Sample {
            at: Instant::now(),
            consumed: m.counter("sluice_records_consumed_total"),
            results: o.results(),
            dead_letters: o.dead_letters().iter().sum(),
            queue: HistogramSnapshot::of(&o.queue),
            inference: HistogramSnapshot::of(&o.inference),
            end_to_end: HistogramSnapshot::of(&o.end_to_end),
            batch_size: HistogramSnapshot::of(&o.batch_size),
        }
    }
}

/// The last consumer-lag sample.
#[derive(Debug, Clone, Default)]
pub struct LagSample {
    pub at: Option<Instant>,
    pub generation: u64,
    pub partitions: Vec<PartitionLag>,
}

impl LagSample {
    /// Lag summed over the partitions whose lag is known.
    pub fn total(&self) -> i64 {
        self.partitions.iter().filter_map(|p| p.lag).sum()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "total": self.at.map(|_| self.total()),
            "sampled_seconds_ago": self.at.map(|t| (t.elapsed().as_secs_f64() * 10.0).round() / 10.0),
            "partitions": self.partitions,
        })
    }
}

/// A health check's verdict.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: Value,
}

impl Check {
    fn json(&self) -> Value {
        json!({"ok": self.ok, "detail": self.detail})
    }
}

/// The sampler's state and the cached broker check.
pub struct Observer {
    cfg: Config,
    metrics: Arc<Metrics>,
    window: Mutex<VecDeque<Sample>>,
    pub(super) lag: Mutex<LagSample>,
    kafka_last: tokio::sync::Mutex<Option<(Instant, KafkaCheck)>>,
    probe: Arc<Mutex<Option<KafkaProbe>>>,
}

impl Observer {
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Observer {
        let first = Sample::take(&metrics);
        Observer {
            cfg: cfg.clone(),
            metrics,
            window: Mutex::new(VecDeque::from([first])),
            lag: Mutex::new(LagSample::default()),
            kafka_last: tokio::sync::Mutex::new(None),
            probe: Arc::new(Mutex::new(None)),
        }
    }

    /// The last lag sample, if it belongs to pipeline `generation`.
    pub fn lag(&self, generation: u64) -> LagSample {
        let l = self.lag.lock();
        if l.generation == generation {
            l.clone()
        } else {
            LagSample::default()
        }
    }

    /// The oldest sample still inside the window, and a fresh one.
    pub fn window(&self) -> (Sample, Sample) {
        let now = Sample::take(&self.metrics);
        let w = self.window.lock();
        let oldest = w
            .iter()
            .find(|s| now.at.duration_since(s.at) <= WINDOW + SAMPLE_EVERY)
            .or(w.back())
            .cloned();
        (oldest.unwrap_or_else(|| now.clone()), now)
    }

    pub(super) fn push_sample(&self) {
        let s = Sample::take(&self.metrics);
        let mut w = self.window.lock();
        w.push_back(s);
        while w.front().is_some_and(|f| f.at.elapsed() > WINDOW + 2 * SAMPLE_EVERY) {
            w.pop_front();
        }
    }

    /// Whether a broker answers (cached for a moment; one check at a time).
    pub async fn kafka(&self) -> KafkaCheck {
        let mut last = self.kafka_last.lock().await;
        if let Some((at, r)) = &*last {
            if at.elapsed() < KAFKA_CHECK_TTL {
                return r.clone();
            }
        }
        let (probe, cfg) = (self.probe.clone(), self.cfg.clone());
        let r = tokio::task::spawn_blocking(move || {
            let mut p = probe.lock();
            if p.is_none() {
                *p = Some(KafkaProbe::new(&cfg).map_err(Arc::new)?);
            }
            match p.as_ref() {
                Some(p) => p.check(KAFKA_CHECK_TIMEOUT).map_err(Arc::new),
                None => Err(Arc::new(KafkaLayerError::Other("no probe".into()))),
            }
        })
        .await
        .unwrap_or_else(|e| {
            Err(Arc::new(KafkaLayerError::Other(format!("broker check panicked: {e}"))))
        });
        self.metrics.kafka_reachable.set(i64::from(r.is_ok()));
        *last = Some((Instant::now(), r.clone()));
        r
    }

    /// Closes the broker probe's client (off-thread; librdkafka's destroy can hang).
    pub fn close(&self) {
        self.probe.lock().take();
    }
}

/// `{"status": "ok"|"unavailable", "checks": {...}, "failing": [...]}` and whether all passed.
pub fn health_body(checks: &[Check]) -> (bool, Value) {
    let ok = checks.iter().all(|c| c.ok);
    let failing: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.name).collect();
    let map: serde_json::Map<String, Value> =
        checks.iter().map(|c| (c.name.to_string(), c.json())).collect();
    (
        ok,
        json!({"status": if ok { "ok" } else { "unavailable" }, "checks": map, "failing": failing}),
    )
}
