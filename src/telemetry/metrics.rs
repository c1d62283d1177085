//! The metrics registry: one Prometheus registry (crate `prometheus`) feeds `GET /metrics`,
//! the control plane's JSON metrics and the latency part of the metrics-topic snapshot.
//!
//! Two kinds of sources:
//! - [`OutcomeMetrics`]: recorded on the emit thread for every outcome (one counter increment
//!   and up to four histogram observations: atomics only, no allocation, no lock).
//! - Everything else (ingest, emit, engine and cache counters) already lives in atomics of the
//!   pipeline; [`Metrics::observe_pipeline`] and [`Metrics::observe_cache`] mirror them into
//!   the registry when someone reads the metrics (a scrape, the JSON endpoint, the control
//!   plane's periodic sampler). Mirroring adds the growth since the last look, so the
//!   exported counters keep growing across pipeline restarts (a restarted pipeline starts its
//!   own counters at zero; a new `generation` tells the mirror to start over from zero).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus::core::Collector;
use prometheus::{
    CounterVec, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::core::{
    CacheStats, CounterReading, EmitStats, EngineStats, ErrorClass, IngestStats, Outcome, Verdict,
};

/// Upper bounds (seconds) of the latency histograms: 100 µs × 1.5^k, up to about 65 s.
pub fn latency_buckets() -> Vec<f64> {
    (0..34).map(|k| 1e-4 * 1.5f64.powi(k)).collect()
}

/// Upper bounds of the batch-size histogram (requests per batch).
pub fn batch_size_buckets() -> Vec<f64> {
    vec![
        1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0, 96.0, 128.0, 192.0,
        256.0, 384.0, 512.0, 1024.0,
    ]
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    // Names and buckets are constants checked by the unit tests below.
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid histogram options")
}

/// One model version's outcome metrics (children of the labelled families, resolved once).
struct VersionMetrics {
    results: IntCounter,
    dead_letters: [IntCounter; ErrorClass::COUNT],
    end_to_end: Histogram,
}

/// What one model version did so far: the figures an automatic canary compares (cumulative;
/// a window is the difference of two readings).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VersionReading {
    /// Records that got an outcome from this version (results and dead letters).
    pub requests: u64,
    /// Dead letters that are the version's fault: `inference` failures and an open circuit
    /// (not the client's own bad records, not expiries).
    pub errors: u64,
    /// End-to-end latency of its records.
    pub latency: HistogramSnapshot,
}

impl VersionReading {
    /// Two versions' readings together (same histogram buckets).
    pub fn plus(&self, other: &VersionReading) -> VersionReading {
        VersionReading {
            requests: self.requests + other.requests,
            errors: self.errors + other.errors,
            latency: self.latency.plus(&other.latency),
        }
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &VersionReading) -> VersionReading {
        VersionReading {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            latency: self.latency.since(&earlier.latency),
        }
    }
}

/// (model, primary, shadow, measure) → (sum, count) of the agreement since start.
type RunningMeans = HashMap<[String; 4], (f64, u64)>;

/// (model, version) → its metric children.
type VersionMap = HashMap<(Arc<str>, Arc<str>), Arc<VersionMetrics>>;

/// Shadow scoring's metrics (see `execute::shadow`).
#[derive(Clone)]
pub struct ShadowMetrics {
    results: IntCounter,
    dropped: IntCounter,
    failed: IntCounter,
    compared: IntCounterVec,
    agreement: GaugeVec,
    /// (model, primary, shadow, measure) → (sum, count) of the agreement since start.
    running: Arc<Mutex<RunningMeans>>,
}

impl ShadowMetrics {
    fn new() -> Self {
        let counter = |name: &str, help: &str| {
            IntCounter::with_opts(Opts::new(name, help)).expect("valid counter options")
        };
        ShadowMetrics {
            results: counter("sluice_shadow_results_total", "Shadow results queued for the shadow topic"),
            dropped: counter(
                "sluice_shadow_dropped_total",
                "Requests whose shadow result was dropped: the shadow queue or the shadow producer was full",
            ),
            failed: counter(
                "sluice_shadow_failed_total",
                "Requests whose shadow computation failed (the shadow version is not loaded, or its batch failed)",
            ),
            compared: IntCounterVec::new(
                Opts::new("sluice_shadow_compared_total", "Requests compared between primary and shadow"),
                &["model", "primary", "shadow"],
            )
            .expect("valid counter options"),
            agreement: GaugeVec::new(
                Opts::new(
                    "sluice_shadow_agreement",
                    "Running mean agreement of primary and shadow results: cosine (embeddings), share of equal labels (classifiers), mean absolute difference (tabular; 0 is full agreement)",
                ),
                &["model", "primary", "shadow", "measure"],
            )
            .expect("valid gauge options"),
            running: Arc::default(),
        }
    }

    fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.results.clone()))?;
        registry.register(Box::new(self.dropped.clone()))?;
        registry.register(Box::new(self.failed.clone()))?;
        registry.register(Box::new(self.compared.clone()))?;
        registry.register(Box::new(self.agreement.clone()))?;
        Ok(())
    }

    /// `n` shadow results queued for sending.
    pub fn published(&self, n: usize) {
        self.results.inc_by(n as u64);
    }

    /// `n` requests' shadow work dropped.
    pub fn dropped(&self, n: usize) {
        self.dropped.inc_by(n as u64);
    }

    /// `n` requests' shadow computation failed.
    pub fn failed(&self, n: usize) {
        self.failed.inc_by(n as u64);
    }

    /// Adds `count` comparisons summing to `sum` to the running mean of (model, primary,
    /// shadow).
    pub fn agreement(
        &self,
        model: &str,
        primary: &str,
        shadow: &str,
        measure: &str,
        sum: f64,
        count: u64,
    ) {
        if count == 0 {
            return;
        }
        let key = [model, primary, shadow, measure].map(str::to_owned);
        let mean = {
            let mut running = self.running.lock();
            let e = running.entry(key).or_insert((0.0, 0));
            e.0 += sum;
            e.1 += count;
            e.0 / e.1 as f64
        };
        self.compared.with_label_values(&[model, primary, shadow]).inc_by(count);
        self.agreement.with_label_values(&[model, primary, shadow, measure]).set(mean);
    }

    /// (results, dropped, failed) so far.
    pub fn totals(&self) -> (u64, u64, u64) {
        (self.results.get(), self.dropped.get(), self.failed.get())
    }

    /// The running mean agreement of (model, primary, shadow) and how many requests it
    /// covers.
    pub fn agreement_of(
        &self,
        model: &str,
        primary: &str,
        shadow: &str,
    ) -> Option<(f64, u64, String)> {
        let running = self.running.lock();
        running
            .iter()
            .find(|(k, _)| k[0] == model && k[1] == primary && k[2] == shadow)
            .map(|(k, (sum, n))| (sum / *n as f64, *n, k[3].clone()))
    }
}

/// Per-outcome metrics, recorded where every outcome passes (the emit thread).
#[derive(Clone)]
pub struct OutcomeMetrics {
    /// Shadow scoring (recorded by the shadow thread).
    pub shadow: ShadowMetrics,
    requests: IntCounterVec,
    /// `sluice_model_requests_total{model,version,outcome,class}`.
    model_requests: IntCounterVec,
    /// `sluice_model_end_to_end_latency_seconds{model,version}`.
    model_latency: HistogramVec,
    /// The children of the two families above per (model, version), resolved on first use.
    versions: Arc<Mutex<VersionMap>>,
    results: IntCounter,
    dead_letters: [IntCounter; ErrorClass::COUNT],
    /// Arrival to the start of the batch (served requests).
    pub queue: Histogram,
    /// The batch's staging and model time (served requests).
    pub inference: Histogram,
    /// Arrival to outcome (every record, dead letters included).
    pub end_to_end: Histogram,
    /// Requests in the batch each served request ran in.
    pub batch_size: Histogram,
    /// Exactly-once: how long each committed transaction was open.
    pub txn_duration: Histogram,
    /// Exactly-once: outcomes per committed transaction.
    pub txn_records: Histogram,
}

impl std::fmt::Debug for OutcomeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutcomeMetrics")
            .field("results", &self.results.get())
            .finish_non_exhaustive()
    }
}

impl Default for OutcomeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn us_to_s(us: u64) -> f64 {
    us as f64 / 1e6
}

impl OutcomeMetrics {
    /// Fresh metrics, not yet in a registry.
    pub fn new() -> Self {
        let requests = IntCounterVec::new(
            Opts::new(
                "sluice_requests_total",
                "Records that got their outcome, by outcome (result, dead_letter) and error class",
            ),
            &["outcome", "class"],
        )
        .expect("valid counter options");
        let results = requests.with_label_values(&["result", "none"]);
        let dead_letters =
            ErrorClass::ALL.map(|c| requests.with_label_values(&["dead_letter", c.as_str()]));
        let model_requests = IntCounterVec::new(
            Opts::new(
                "sluice_model_requests_total",
                "Records that got their outcome, by model version, outcome and error class",
            ),
            &["model", "version", "outcome", "class"],
        )
        .expect("valid counter options");
        let model_latency = HistogramVec::new(
            HistogramOpts::new(
                "sluice_model_end_to_end_latency_seconds",
                "Arrival to outcome, by model version",
            )
            .buckets(latency_buckets()),
            &["model", "version"],
        )
        .expect("valid histogram options");
        OutcomeMetrics {
            shadow: ShadowMetrics::new(),
            requests,
            model_requests,
            model_latency,
            versions: Arc::default(),
            results,
            dead_letters,
            queue: histogram(
                "sluice_queue_latency_seconds",
                "Arrival to the start of its batch, served requests",
                latency_buckets(),
            ),
            inference: histogram(
                "sluice_inference_latency_seconds",
                "Staging and model time of the batch, served requests",
                latency_buckets(),
            ),
            end_to_end: histogram(
                "sluice_end_to_end_latency_seconds",
                "Arrival to outcome, every record",
                latency_buckets(),
            ),
            batch_size: histogram(
                "sluice_request_batch_size",
                "Requests in the batch each served request ran in",
                batch_size_buckets(),
            ),
            txn_duration: histogram(
                "sluice_transaction_duration_seconds",
                "Begin to commit of each committed transaction (exactly_once)",
                latency_buckets(),
            ),
            txn_records: histogram(
                "sluice_transaction_records",
                "Outcomes per committed transaction (exactly_once)",
                (0..18).map(|k| 2f64.powi(k)).collect(),
            ),
        }
    }

    /// Adds these metrics to `registry`.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.requests.clone()))?;
        self.shadow.register(registry)?;
        registry.register(Box::new(self.model_requests.clone()))?;
        registry.register(Box::new(self.model_latency.clone()))?;
        registry.register(Box::new(self.queue.clone()))?;
        registry.register(Box::new(self.inference.clone()))?;
        registry.register(Box::new(self.end_to_end.clone()))?;
        registry.register(Box::new(self.batch_size.clone()))?;
        registry.register(Box::new(self.txn_duration.clone()))?;
        registry.register(Box::new(self.txn_records.clone()))?;
        Ok(())
    }

    /// Records one committed transaction.
    pub fn observe_transaction(&self, records: usize, open_for: std::time::Duration) {
        self.txn_duration.observe(open_for.as_secs_f64());
        self.txn_records.observe(records as f64);
    }

    /// Records one outcome: atomics, and for an outcome of a model version one short map
    /// lookup (no allocation after the version's first outcome).
    #[inline]
    pub fn record(&self, o: &Outcome) {
        let t = o.timings;
        self.end_to_end.observe(us_to_s(t.total_us));
        let version = o.model.as_ref().map(|m| self.version(&m.name, &m.version));
        if let Some(v) = &version {
            v.end_to_end.observe(us_to_s(t.total_us));
        }
        match &o.verdict {
            Verdict::Success { batch_size, .. } => {
                self.results.inc();
                self.queue.observe(us_to_s(t.queue_us));
                self.inference.observe(us_to_s(t.infer_us));
                self.batch_size.observe(*batch_size as f64);
                if let Some(v) = &version {
                    v.results.inc();
                }
            }
            Verdict::Failure(f) => {
                self.dead_letters[f.class.index()].inc();
                if let Some(v) = &version {
                    v.dead_letters[f.class.index()].inc();
                }
            }
        }
    }

    /// The metric children of one model version, made on its first outcome.
    fn version(&self, name: &Arc<str>, version: &Arc<str>) -> Arc<VersionMetrics> {
        let mut map = self.versions.lock();
        let key = (name.clone(), version.clone());
        if let Some(v) = map.get(&key) {
            return v.clone();
        }
        let (n, v) = (&**name, &**version);
        let made = Arc::new(VersionMetrics {
            results: self.model_requests.with_label_values(&[n, v, "result", "none"]),
            dead_letters: ErrorClass::ALL
                .map(|c| self.model_requests.with_label_values(&[n, v, "dead_letter", c.as_str()])),
            end_to_end: self.model_latency.with_label_values(&[n, v]),
        });
        map.insert(key, made.clone());
        made
    }

    /// What `name`/`version` did so far (zeros for a version without outcomes).
    pub fn version_reading(&self, name: &str, version: &str) -> VersionReading {
        let found = {
            let map = self.versions.lock();
            map.iter().find(|((n, v), _)| &**n == name && &**v == version).map(|(_, m)| m.clone())
        };
        let Some(m) = found else { return VersionReading::default() };
        let dead: u64 = m.dead_letters.iter().map(IntCounter::get).sum();
        let errors = m.dead_letters[ErrorClass::Inference.index()].get()
            + m.dead_letters[ErrorClass::CircuitOpen.index()].get();
        VersionReading {
            requests: m.results.get() + dead,
            errors,
            latency: HistogramSnapshot::of(&m.end_to_end),
        }
    }

    /// Results so far.
    pub fn results(&self) -> u64 {
        self.results.get()
    }

    /// Dead letters so far, by class (in [`ErrorClass::ALL`] order).
    pub fn dead_letters(&self) -> [u64; ErrorClass::COUNT] {
        std::array::from_fn(|i| self.dead_letters[i].get())
    }

    /// p50/p95/p99 (milliseconds) of the three latencies since these metrics were created: the
    /// metrics-topic snapshot's `latency_ms`.
    pub fn latency_summary_ms(&self) -> serde_json::Value {
        let q = |h: &Histogram| HistogramSnapshot::of(h).summary(1e3);
        serde_json::json!({"queue": q(&self.queue), "inference": q(&self.inference), "end_to_end": q(&self.end_to_end)})
    }
}

/// The cumulative bucket counts of a histogram at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Upper bounds, ascending (the implicit `+Inf` bucket is not listed).
    pub bounds: Vec<f64>,
    /// Cumulative counts per bound, then the total (the `+Inf` bucket) last.
    pub cumulative: Vec<u64>,
    pub sum: f64,
}

impl HistogramSnapshot {
    /// Reads `h`.
    pub fn of(h: &Histogram) -> Self {
        let mut out = HistogramSnapshot::default();
        for mf in h.collect() {
            for m in mf.get_metric() {
                let p = m.get_histogram();
                for b in p.get_bucket() {
                    out.bounds.push(b.upper_bound());
                    out.cumulative.push(b.cumulative_count());
                }
                out.cumulative.push(p.get_sample_count());
                out.sum = p.get_sample_sum();
            }
        }
        out
    }

    /// Observations in the snapshot.
    pub fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// Both snapshots' observations together (same buckets; an empty one adds nothing).
    pub fn plus(&self, other: &HistogramSnapshot) -> HistogramSnapshot {
        if other.cumulative.is_empty() {
            return self.clone();
        }
        if self.cumulative.is_empty() || self.cumulative.len() != other.cumulative.len() {
            return other.clone();
        }
        HistogramSnapshot {
            bounds: self.bounds.clone(),
            cumulative: self.cumulative.iter().zip(&other.cumulative).map(|(a, b)| a + b).collect(),
            sum: self.sum + other.sum,
        }
    }

    /// What was observed between `earlier` and `self` (same histogram).
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        if earlier.cumulative.len() != self.cumulative.len() {
            return self.clone();
        }
        HistogramSnapshot {
            bounds: self.bounds.clone(),
            cumulative: self
                .cumulative
                .iter()
                .zip(&earlier.cumulative)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
            sum: (self.sum - earlier.sum).max(0.0),
        }
    }

    /// The `q` quantile, interpolated linearly inside its bucket as Prometheus'
    /// `histogram_quantile` does; `None` without observations. A quantile in the `+Inf` bucket
    /// reports the highest finite bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 || self.bounds.is_empty() {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut prev_count = 0u64;
        let mut prev_bound = 0.0;
        for (i, bound) in self.bounds.iter().enumerate() {
            let c = self.cumulative[i];
            if c as f64 >= rank && c > prev_count {
                let in_bucket = (c - prev_count) as f64;
                let frac = ((rank - prev_count as f64) / in_bucket).clamp(0.0, 1.0);
                return Some(prev_bound + (bound - prev_bound) * frac);
            }
            prev_count = c;
            prev_bound = *bound;
        }
        self.bounds.last().copied()
    }

    /// Mean of the observations, `None` without any.
    pub fn mean(&self) -> Option<f64> {
        let n = self.count();
        (n > 0).then(|| self.sum / n as f64)
    }

    /// `{"count", "mean", "p50", "p95", "p99"}` with values multiplied by `scale` (1e3: seconds
    /// to milliseconds), rounded to 3 decimals; nulls without observations.
    pub fn summary(&self, scale: f64) -> serde_json::Value {
        let r = |v: Option<f64>| v.map(|v| (v * scale * 1e3).round() / 1e3);
        serde_json::json!({
            "count": self.count(),
            "mean": r(self.mean()),
            "p50": r(self.quantile(0.5)),
            "p95": r(self.quantile(0.95)),
            "p99": r(self.quantile(0.99)),
        })
    }
}

/// Last values seen of the current pipeline's counters (see the module docs).
#[derive(Default)]
struct Mirror {
    generation: u64,
    /// Last value seen of each mirrored counter, by metric name.
    last: BTreeMap<&'static str, u64>,
    lanes: Vec<u64>,
}

/// Adds the growth of `now` over `*last` to `c`.
fn mirror(c: &IntCounter, last: &mut u64, now: u64) {
    if now > *last {
        c.inc_by(now - *last);
    }
    *last = now;
}

/// The process' metrics: the registry and every metric in it.
pub struct Metrics {
    registry: Registry,
    /// Recorded by the emit thread of the running pipeline.
    pub outcomes: Arc<OutcomeMetrics>,
    /// Counters mirrored from the stages' atomics (pipeline and cache), by metric name.
    counters: BTreeMap<&'static str, IntCounter>,
    lane_busy: CounterVec,
    pub gpu_memory_used: IntGaugeVec,
    pub gpu_memory_total: IntGaugeVec,
    pub padding_efficiency: Gauge,
    pub ring_depth: IntGaugeVec,
    pub ring_capacity: IntGauge,
    pub consumer_paused: IntGauge,
    pub held_bytes: IntGauge,
    pub waiting_for_model: IntGauge,
    pub assigned_partitions: IntGauge,
    pub consumer_lag: IntGaugeVec,
    pub consumer_lag_total: IntGauge,
    pub model_warmup_seconds: Gauge,
    pub models_loaded: IntGauge,
    pub pipeline_state: IntGaugeVec,
    pub pipeline_starts: IntCounter,
    pub pipeline_start_failures: IntCounter,
    pub kafka_reachable: IntGauge,
    pub circuit_state: IntGaugeVec,
    pub lane_in_service: IntGaugeVec,
    pub repository_readable: IntGauge,
    pub circuit_parked: IntGauge,
    pub control_requests: IntCounterVec,
    mirror: Mutex<Mirror>,
}

/// Lifecycle states, as the `state` label of `sluice_pipeline_state`.
pub const PIPELINE_STATES: [&str; 5] = ["stopped", "starting", "running", "stopping", "failed"];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every Sluice metric in it.
    pub fn new() -> Self {
        let registry = Registry::new();
        let outcomes = Arc::new(OutcomeMetrics::new());
        outcomes.register(&registry).expect("outcome metrics register once");
        let reg = |c: Box<dyn Collector>| registry.register(c).expect("metric names are unique");
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid counter");
            reg(Box::new(c.clone()));
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid gauge");
            reg(Box::new(g.clone()));
            g
        };
        let fgauge = |name: &str, help: &str| {
            let g = Gauge::new(name, help).expect("valid gauge");
            reg(Box::new(g.clone()));
            g
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
            reg(Box::new(g.clone()));
            g
        };
        // Every stage names its own counters (`core::stats`); register each under its name.
        let names = IngestStats::default()
            .readings()
            .into_iter()
            .chain(EmitStats::default().readings())
            .chain(EngineStats::new(0).readings())
            .chain(CacheStats::default().readings());
        let counters = names.map(|r| (r.name, counter(r.name, r.help))).collect();
        let lane_busy = CounterVec::new(
            Opts::new(
                "sluice_lane_busy_seconds_total",
                "Time each execution lane spent computing batches",
            ),
            &["lane"],
        )
        .expect("valid counter");
        reg(Box::new(lane_busy.clone()));
        let control_requests = IntCounterVec::new(
            Opts::new(
                "sluice_control_requests_total",
                "Control-plane HTTP requests by status code",
            ),
            &["code"],
        )
        .expect("valid counter");
        reg(Box::new(control_requests.clone()));
        Metrics {
            outcomes: outcomes.clone(),
            counters,
            lane_busy,
            gpu_memory_used: gauge_vec("sluice_gpu_memory_used_bytes", "Device memory in use (cuMemGetInfo total - free) as each GPU lane last saw it", &["lane", "device"]),
            gpu_memory_total: gauge_vec("sluice_gpu_memory_total_bytes", "Device memory of each GPU lane's device", &["lane", "device"]),
            padding_efficiency: fgauge("sluice_padding_efficiency", "Real tokens / padded tokens over all text batches of the running pipeline (1 = no padding)"),
            ring_depth: gauge_vec("sluice_ring_depth", "Requests queued on each ring", &["ring"]),
            ring_capacity: gauge("sluice_ring_capacity", "Capacity of each ring"),
            consumer_paused: gauge("sluice_consumer_paused", "1 while the consumer's partitions are paused by backpressure"),
            held_bytes: gauge("sluice_held_record_bytes", "Bytes of consumed records (values and keys) Sluice holds now, queued or in flight; bounded by kafka.consumer.maxHeldBytes"),
            waiting_for_model: gauge("sluice_records_waiting_for_model", "Records parked while their model version loads on the loader thread"),
            assigned_partitions: gauge("sluice_assigned_partitions", "Input and priority partitions assigned to this instance"),
            consumer_lag: gauge_vec("sluice_consumer_lag", "High watermark minus the consumer's position, per assigned partition (sampled)", &["topic", "partition"]),
            consumer_lag_total: gauge("sluice_consumer_lag_total", "Consumer lag summed over the assigned partitions (sampled)"),
            model_warmup_seconds: fgauge("sluice_model_warmup_seconds", "Warm-up time of the most recent model load"),
            models_loaded: gauge("sluice_models_loaded", "Models (name, version) in the cache"),
            pipeline_state: gauge_vec("sluice_pipeline_state", "1 for the pipeline's current lifecycle state, 0 for the others", &["state"]),
            pipeline_starts: counter("sluice_pipeline_starts_total", "Pipeline starts that succeeded"),
            pipeline_start_failures: counter("sluice_pipeline_start_failures_total", "Pipeline starts that failed"),
            kafka_reachable: gauge("sluice_kafka_reachable", "1 when the last broker check succeeded"),
            circuit_state: gauge_vec("sluice_circuit_state", "Circuit breaker of each model version that has failed: 0 closed, 1 half-open (probing), 2 open", &["model", "version"]),
            lane_in_service: gauge_vec("sluice_lane_in_service", "1 while a lane computes (on its own executor or on the CPU fallback), 0 once degraded mode took it out of service", &["lane"]),
            repository_readable: gauge("sluice_model_repository_readable", "1 while the model repository's directory can be read; 0 in degraded mode (the loaded versions keep serving)"),
            circuit_parked: gauge("sluice_circuit_parked_requests", "Requests parked (uncommitted) behind open circuit breakers"),
            control_requests,
            mirror: Mutex::new(Mirror::default()),
            registry,
        }
    }

    /// The registry (for extra collectors).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Mirrors the counters of a running pipeline. `generation` identifies the pipeline (a new
    /// one starts its counters at zero).
    pub fn observe_pipeline(
        &self,
        generation: u64,
        ingest: &IngestStats,
        emit: &EmitStats,
        engine: &EngineStats,
    ) {
        let mut m = self.mirror.lock();
        if m.generation != generation {
            m.generation = generation;
            m.last.clear();
            m.lanes.clear();
        }
        let readings =
            ingest.readings().into_iter().chain(emit.readings()).chain(engine.readings());
        for r in readings {
            self.mirror_reading(&mut m, r);
        }
        m.lanes.resize(engine.lane_busy_us.len(), 0);
        for (i, (busy, last)) in engine.lane_busy_us.iter().zip(m.lanes.iter_mut()).enumerate() {
            let v = busy.load(Ordering::Relaxed);
            if v > *last {
                self.lane_busy.with_label_values(&[&i.to_string()]).inc_by(us_to_s(v - *last));
            }
            *last = v;
        }
        for (i, mem) in engine.lane_memory.iter().enumerate() {
            let total = mem.total_bytes.load(Ordering::Relaxed);
            if total > 0 {
                let labels = [i.to_string(), mem.device.load(Ordering::Relaxed).to_string()];
                let labels = [labels[0].as_str(), labels[1].as_str()];
                self.gpu_memory_used
                    .with_label_values(&labels)
                    .set(mem.used_bytes.load(Ordering::Relaxed) as i64);
                self.gpu_memory_total.with_label_values(&labels).set(total as i64);
            }
        }
        self.padding_efficiency.set(engine.padding_efficiency());
    }

    /// Mirrors the model cache's counters.
    pub fn observe_cache(&self, stats: &CacheStats, loaded: usize) {
        let mut m = self.mirror.lock();
        for r in stats.readings() {
            self.mirror_reading(&mut m, r);
        }
        drop(m);
        let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        self.model_warmup_seconds.set(us_to_s(r(&stats.last_warmup_us)));
        self.models_loaded.set(loaded as i64);
    }

    /// Sets `sluice_pipeline_state`.
    pub fn set_state(&self, state: &str) {
        for s in PIPELINE_STATES {
            self.pipeline_state.with_label_values(&[s]).set(i64::from(s == state));
        }
    }

    /// Adds the growth of one stage counter since the last look to its metric.
    fn mirror_reading(&self, m: &mut Mirror, r: CounterReading) {
        let Some(c) = self.counters.get(r.name) else { return };
        mirror(c, m.last.entry(r.name).or_default(), r.value);
    }

    /// Value of a mirrored counter by name (for the JSON view).
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).map_or(0, IntCounter::get)
    }

    /// Busy seconds of each lane, in lane order.
    pub fn lane_busy_seconds(&self) -> Vec<f64> {
        let mut out = Vec::new();
        for mf in self.lane_busy.collect() {
            for m in mf.get_metric() {
                let lane = m
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "lane")
                    .and_then(|l| l.value().parse::<usize>().ok());
                if let Some(lane) = lane {
                    if out.len() <= lane {
                        out.resize(lane + 1, 0.0);
                    }
                    out[lane] = m.get_counter().get_value();
                }
            }
        }
        out
    }

    /// The Prometheus text exposition of every metric.
    pub fn render_text(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_builds_and_renders() {
        let m = Metrics::new();
        m.set_state("running");
        m.outcomes.end_to_end.observe(0.01);
        let text = m.render_text().unwrap();
        assert!(text.contains("sluice_pipeline_state{state=\"running\"} 1"), "{text}");
        assert!(text.contains("sluice_end_to_end_latency_seconds_count 1"), "{text}");
        assert!(
            text.contains("sluice_requests_total{class=\"parse\",outcome=\"dead_letter\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn gpu_lane_memory_becomes_gauges() {
        let m = Metrics::new();
        let engine = EngineStats::new(3);
        engine.lane_memory[2].set(1, 6 << 30, 80 << 30);
        m.observe_pipeline(1, &IngestStats::default(), &EmitStats::default(), &engine);
        let text = m.render_text().unwrap();
        assert!(
            text.contains("sluice_gpu_memory_used_bytes{device=\"1\",lane=\"2\"} 79456894976"),
            "{text}"
        );
        assert!(
            text.contains("sluice_gpu_memory_total_bytes{device=\"1\",lane=\"2\"} 85899345920"),
            "{text}"
        );
        assert!(!text.contains("lane=\"0\"}"), "CPU lanes report no device memory: {text}");
    }

    #[test]
    fn mirroring_keeps_counters_monotonic_across_generations() {
        let m = Metrics::new();
        let ingest = IngestStats::default();
        let emit = EmitStats::default();
        let engine = EngineStats::new(2);
        ingest.consumed.store(10, Ordering::Relaxed);
        engine.lane_busy_us[1].store(2_000_000, Ordering::Relaxed);
        m.observe_pipeline(1, &ingest, &emit, &engine);
        m.observe_pipeline(1, &ingest, &emit, &engine);
        assert_eq!(m.counter("sluice_records_consumed_total"), 10);
        assert_eq!(m.lane_busy_seconds(), vec![0.0, 2.0]);
        // A new pipeline starts from zero.
        let ingest2 = IngestStats::default();
        ingest2.consumed.store(3, Ordering::Relaxed);
        m.observe_pipeline(2, &ingest2, &emit, &EngineStats::new(2));
        assert_eq!(m.counter("sluice_records_consumed_total"), 13);
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let h = histogram("t_seconds", "t", vec![1.0, 2.0, 4.0]);
        for v in [0.5, 1.5, 1.5, 3.0] {
            h.observe(v);
        }
        let s = HistogramSnapshot::of(&h);
        assert_eq!(s.count(), 4);
        assert_eq!(s.cumulative, vec![1, 3, 4, 4]);
        assert_eq!(s.quantile(0.25), Some(1.0));
        assert_eq!(s.quantile(0.5), Some(1.5));
        assert_eq!(s.quantile(1.0), Some(4.0));
        h.observe(100.0);
        assert_eq!(HistogramSnapshot::of(&h).quantile(1.0), Some(4.0));
        let later = HistogramSnapshot::of(&h);
        let d = later.since(&s);
        assert_eq!(d.count(), 1);
        assert_eq!(HistogramSnapshot::default().quantile(0.5), None);
    }

    #[test]
    fn buckets_are_valid() {
        let b = latency_buckets();
        assert!(b.windows(2).all(|w| w[0] < w[1]) && b[0] == 1e-4 && *b.last().unwrap() > 60.0);
        let s = batch_size_buckets();
        assert!(s.windows(2).all(|w| w[0] < w[1]));
    }
}
