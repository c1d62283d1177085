//! What the control plane watches: a periodic sampler (pipeline threads, the metrics mirror,
//! consumer lag, a sliding window for throughput and latency percentiles) and the health
//! checks (Kafka reachable, models loaded, pipeline running).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value};

use super::lifecycle::PipelineState;
use super::Control;
use crate::config::Config;
use crate::kafka::{KafkaProbe, PartitionLag};
use crate::telemetry::metrics::{HistogramSnapshot, Metrics};

/// Throughput and percentiles cover about this much recent time.
pub const WINDOW: Duration = Duration::from_secs(60);
/// How often a window sample is taken.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// A broker check is reused for this long.
const KAFKA_CHECK_TTL: Duration = Duration::from_secs(2);
/// How long a broker check may take.
const KAFKA_CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// Budget of one lag sample (all partitions).
const LAG_BUDGET: Duration = Duration::from_secs(3);

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
    lag: Mutex<LagSample>,
    kafka_last: tokio::sync::Mutex<Option<(Instant, Result<usize, String>)>>,
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

    fn push_sample(&self) {
        let s = Sample::take(&self.metrics);
        let mut w = self.window.lock();
        w.push_back(s);
        while w.front().is_some_and(|f| f.at.elapsed() > WINDOW + 2 * SAMPLE_EVERY) {
            w.pop_front();
        }
    }

    /// Whether a broker answers (cached for a moment; one check at a time).
    pub async fn kafka(&self) -> Result<usize, String> {
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
                *p = Some(KafkaProbe::new(&cfg).map_err(|e| e.to_string())?);
            }
            p.as_ref().map_or(Err("no probe".to_string()), |p| p.check(KAFKA_CHECK_TIMEOUT))
        })
        .await
        .unwrap_or_else(|e| Err(format!("broker check panicked: {e}")));
        self.metrics.kafka_reachable.set(i64::from(r.is_ok()));
        *last = Some((Instant::now(), r.clone()));
        r
    }

    /// Closes the broker probe's client (off-thread; librdkafka's destroy can hang).
    pub fn close(&self) {
        self.probe.lock().take();
    }
}

/// Mirrors the pipeline's and the cache's counters and gauges into the registry.
pub fn refresh(ctl: &Control) {
    let m = &ctl.metrics;
    if let Some((generation, p)) = ctl.lifecycle.pipeline() {
        m.observe_pipeline(generation, &p.source().stats, &p.emit_stats, &p.engine_stats);
        let (prio, normal, cap) = p.ring_depths();
        m.ring_depth.with_label_values(&["priority"]).set(prio as i64);
        m.ring_depth.with_label_values(&["normal"]).set(normal as i64);
        m.ring_capacity.set(cap as i64);
        m.consumer_paused
            .set(i64::from(p.source().paused.load(std::sync::atomic::Ordering::Relaxed)));
        m.assigned_partitions.set(p.source().assigned.lock().len() as i64);
    } else {
        m.ring_depth.with_label_values(&["priority"]).set(0);
        m.ring_depth.with_label_values(&["normal"]).set(0);
        m.consumer_paused.set(0);
        m.assigned_partitions.set(0);
        m.consumer_lag.reset();
        m.consumer_lag_total.set(0);
    }
    m.observe_cache(&ctl.cache.stats, ctl.cache.loaded().len());
}

async fn sample_lag(ctl: &Arc<Control>) {
    let Some((generation, p)) = ctl.lifecycle.pipeline() else { return };
    let lags =
        tokio::task::spawn_blocking(move || p.consumer_lag(LAG_BUDGET)).await.unwrap_or_default();
    let m = &ctl.metrics;
    m.consumer_lag.reset();
    for l in &lags {
        if let Some(lag) = l.lag {
            m.consumer_lag.with_label_values(&[&l.topic, &l.partition.to_string()]).set(lag);
        }
    }
    let sample = LagSample { at: Some(Instant::now()), generation, partitions: lags };
    m.consumer_lag_total.set(sample.total());
    *ctl.observer.lag.lock() = sample;
}

/// The sampler: every second checks the pipeline's threads and mirrors the metrics; every
/// [`SAMPLE_EVERY`] takes a window sample; every `lag_every` samples consumer lag.
pub async fn run(
    ctl: Arc<Control>,
    lag_every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sample = Instant::now();
    let mut last_lag: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        ctl.lifecycle.check_threads();
        refresh(&ctl);
        if last_sample.elapsed() >= SAMPLE_EVERY {
            last_sample = Instant::now();
            ctl.observer.push_sample();
        }
        let running = ctl.lifecycle.info().state == PipelineState::Running;
        if running && last_lag.is_none_or(|t| t.elapsed() >= lag_every) {
            last_lag = Some(Instant::now());
            sample_lag(&ctl).await;
        }
    }
    ctl.observer.close();
}

/// The readiness checks: pipeline running, Kafka reachable, models loaded. A full queue
/// (backpressure) is reported but fails nothing.
pub async fn checks(ctl: &Control) -> Vec<Check> {
    let info = ctl.lifecycle.info();
    let mut pipeline_detail = json!({"state": info.state.as_str()});
    if let Some(cause) = &info.cause {
        pipeline_detail["cause"] = cause.clone().into();
    }
    if let Some((_, p)) = ctl.lifecycle.pipeline() {
        let (prio, normal, cap) = p.ring_depths();
        pipeline_detail["backpressure"] = json!({
            "paused": p.source().paused.load(std::sync::atomic::Ordering::Relaxed),
            "ring_depth": {"priority": prio, "normal": normal, "capacity": cap},
        });
    }
    let pipeline = Check {
        name: "pipeline",
        ok: info.state == PipelineState::Running,
        detail: pipeline_detail,
    };
    let kafka = match ctl.observer.kafka().await {
        Ok(brokers) => Check {
            name: "kafka",
            ok: true,
            detail: json!({"servers": ctl.cfg.kafka.bootstrap.servers, "brokers": brokers}),
        },
        Err(e) => Check {
            name: "kafka",
            ok: false,
            detail: json!({"servers": ctl.cfg.kafka.bootstrap.servers, "error": e}),
        },
    };
    let loaded: Vec<Value> =
        ctl.cache.loaded().into_iter().map(|(n, v)| json!({"name": n, "version": v})).collect();
    let loads = ctl.cache.stats.loads.load(std::sync::atomic::Ordering::Relaxed);
    let models = match ctl.cache.repository().list() {
        Err(e) => Check {
            name: "models",
            ok: false,
            detail: json!({"error": format!("model repository {}: {e}", ctl.cache.repository().root().display())}),
        },
        Ok(list) if list.is_empty() => Check {
            name: "models",
            ok: false,
            detail: json!({"error": format!("model repository {} holds no models", ctl.cache.repository().root().display())}),
        },
        // Loaded at start; a model evicted later (TTL) is loaded again on its next request.
        Ok(_) if loaded.is_empty() && loads == 0 => Check {
            name: "models",
            ok: false,
            detail: json!({"error": "no model loaded yet", "loaded": loaded}),
        },
        Ok(list) => Check {
            name: "models",
            ok: true,
            detail: json!({"loaded": loaded, "in_repository": list.len()}),
        },
    };
    vec![kafka, models, pipeline]
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
