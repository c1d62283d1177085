//! `sluice demo`: the whole pipeline with no setup.
//!
//! An in-process broker (librdkafka's mock cluster), the bundled demo models (or MiniLM when
//! `models/minilm` has been fetched), a built-in open-loop producer at a fixed rate with a
//! small share of bad records, and a live one-line-per-second view of throughput, end-to-end
//! latency percentiles, batch size and dead letters.

pub mod models;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::core::new_histogram;
use crate::kafka::local::{LocalBroker, PlainProducer, ReadRecord, TopicReader};
use crate::models::{ModelCache, Repository};
use crate::pipeline::Pipeline;
use crate::settings::Settings;

/// Why the demo stopped early.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {reason}")]
pub struct DemoError {
    step: &'static str,
    reason: String,
}

/// Maps an error of `step` into a [`DemoError`].
fn during<E: std::fmt::Display>(step: &'static str) -> impl Fn(E) -> DemoError {
    move |e| DemoError { step, reason: e.to_string() }
}

/// Demo options.
pub struct DemoOptions {
    /// Requests per second from the built-in producer (0: none, only outside clients).
    pub rate: u64,
    /// Stop after this long (None: until Ctrl-C).
    pub duration: Option<Duration>,
    /// Model repository; the demo models are generated into a cache directory when None.
    pub models: Option<PathBuf>,
    /// Share of deliberately bad records (0.0-1.0).
    pub bad_share: f64,
}

const SENTENCES: &[&str] = &[
    "the quick brown fox jumps over the lazy dog",
    "streaming inference turns kafka records into predictions",
    "a small model answers in a few milliseconds",
    "priority requests are served before the normal lane",
    "every record gets exactly one outcome",
    "the batcher groups sentences of similar length",
    "offsets are committed after the result is acknowledged",
    "what a lovely day for a walk in the park",
];

/// Partitions of the demo's input topic, and of the priority topic.
const PARTITIONS_IN: usize = 4;
const PARTITIONS_OTHER: usize = 1;
/// How long the demo waits for the group join before starting the load anyway.
const JOIN_WAIT: Duration = Duration::from_secs(30);
/// How long the summary waits for the outcomes of the last records.
const FINAL_WAIT: Duration = Duration::from_secs(30);

/// Waits until the pipeline is assigned `want` partitions (or `JOIN_WAIT`, or a stop).
fn wait_for_partitions(pipeline: &Pipeline, want: usize, stop: &AtomicBool) {
    let start = Instant::now();
    let assigned = || pipeline.source().assigned.lock().len();
    while assigned() < want && start.elapsed() < JOIN_WAIT && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let n = assigned();
    if n < want {
        println!("  (the pipeline holds {n} of {want} partitions after {JOIN_WAIT:?}; starting the load anyway)");
    } else {
        println!(
            "  pipeline ready after {:.1} s (group joined, {n} partitions); load starts now",
            start.elapsed().as_secs_f64()
        );
    }
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Picks the model repository and the model to drive: MiniLM if fetched, else tiny-embed.
fn demo_models(opt: &DemoOptions) -> Result<(PathBuf, String), DemoError> {
    if let Some(dir) = &opt.models {
        let repo = Repository::open(dir).map_err(during("opening the model repository"))?;
        let name = if repo.versions("minilm").is_ok_and(|v| !v.is_empty()) {
            "minilm"
        } else {
            "tiny-embed"
        };
        return Ok((dir.clone(), name.to_string()));
    }
    if Path::new("models/minilm/1/model.safetensors").is_file() {
        return Ok((PathBuf::from("models"), "minilm".into()));
    }
    let cache = std::env::var_os("SLUICE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("sluice"));
    let dir = cache.join("demo-models");
    models::write_demo_repository(&dir).map_err(during("writing the demo models"))?;
    Ok((dir, "tiny-embed".into()))
}

/// What the viewer has read: outcome counts, the batch sizes and latencies of the current
/// second (`lat`, `batch_sum`) and of the whole run (`total`).
struct Tally {
    out_n: u64,
    dlq_n: u64,
    batch_sum: u64,
    lat: hdrhistogram::Histogram<u64>,
    total: hdrhistogram::Histogram<u64>,
}

impl Tally {
    fn new() -> Self {
        Tally { out_n: 0, dlq_n: 0, batch_sum: 0, lat: new_histogram(), total: new_histogram() }
    }

    /// Counts one record read from the output (a result) or the dead-letter topic.
    fn take(&mut self, m: &ReadRecord, dlq: &str) {
        if m.topic == dlq {
            self.dlq_n += 1;
            return;
        }
        self.out_n += 1;
        let (us, batch) = result_facts(&m.payload);
        self.batch_sum += batch;
        if let Some(us) = us {
            let _ = self.lat.record(us);
            let _ = self.total.record(us);
        }
    }
}

/// A result's end-to-end latency in µs, from the intended send time carried in its id
/// (`demo-<n>-<intended µs>`), and its batch size.
fn result_facts(result: &[u8]) -> (Option<u64>, u64) {
    let Ok(r) = serde_json::from_slice::<serde_json::Value>(result) else { return (None, 0) };
    let sent = r["id"].as_str().and_then(|id| id.rsplit('-').next()?.parse::<u64>().ok());
    (sent.map(|t| now_us().saturating_sub(t).max(1)), r["batch_size"].as_u64().unwrap_or(0))
}

/// Runs the demo until `stop` is set or the duration passes.
pub fn run(opt: DemoOptions, stop: Arc<AtomicBool>) -> Result<(), DemoError> {
    let broker = LocalBroker::start().map_err(during("starting the in-process broker"))?;
    let bootstrap = broker.bootstrap();
    let mut cfg = Config::default();
    cfg.kafka.bootstrap.servers = bootstrap.clone();
    cfg.kafka.consumer.group = "sluice-demo".into();
    cfg.kafka.consumer.session_timeout_ms = 6000;
    cfg.kafka.consumer.heartbeat_interval_ms = 500;
    cfg.streaming.inference.metrics.reporting_interval_seconds = 5;
    let topics = cfg.kafka.topics.streaming.clone();
    let create = during("creating the demo topics");
    broker.create_topic(&topics.input, PARTITIONS_IN as i32).map_err(&create)?;
    for t in [&topics.priority, &topics.output, &topics.dlq, &topics.metrics, &topics.shadow] {
        broker.create_topic(t, 1).map_err(&create)?;
    }
    let (models, model) = demo_models(&opt)?;
    println!("sluice demo");
    println!(
        "  broker   {bootstrap}   (in-process; produce to '{}' or '{}' from another client)",
        topics.input, topics.priority
    );
    println!("  model    {model} from {}", models.display());
    println!(
        "  producer {} req/s, {:.0}% deliberately bad records; Ctrl-C stops",
        opt.rate,
        opt.bad_share * 100.0
    );

    let repo = Repository::open(&models).map_err(during("opening the model repository"))?;
    let cache = Arc::new(ModelCache::new(repo, Settings::from_config(&cfg).cache));
    cache.get(&model, None).map_err(during("loading the model"))?;
    let pipeline = Pipeline::start(&cfg, cache).map_err(during("starting the pipeline"))?;
    // The load starts once the pipeline holds every partition (and the viewer below its own):
    // records sent before the group joins would wait for them and show the joins as seconds of
    // latency.
    wait_for_partitions(&pipeline, PARTITIONS_IN + PARTITIONS_OTHER, &stop);
    // The viewer reads results and dead letters and prints a line per second. It is created
    // before the producer starts, so that an error here cannot leave the producer running.
    let viewer = TopicReader::new(
        &bootstrap,
        "sluice-demo-viewer",
        &[topics.output.as_str(), topics.dlq.as_str()],
    )
    .map_err(during("creating the viewer"))?;
    if !viewer.wait_assigned(JOIN_WAIT) {
        println!("  (the viewer has no partitions after {JOIN_WAIT:?}; its first figures include the wait)");
    }
    let produced = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| -> Result<(), DemoError> {
        // The open-loop producer: each record is due at start + n / rate, whatever the
        // pipeline does; ids carry the intended send time for the latency view.
        let producer = PlainProducer::new(&bootstrap).map_err(during("creating the producer"))?;
        let (prod_done, produced2, model2, input) =
            (done.clone(), produced.clone(), model.clone(), topics.input.clone());
        let rate = opt.rate;
        let bad_share = opt.bad_share;
        let producer_thread = std::thread::Builder::new().name("demo-producer".into()).spawn_scoped(s, move || {
            if rate == 0 {
                return;
            }
            let start = Instant::now();
            let mut n = 0u64;
            let mut bad_acc = 0.0f64;
            while !prod_done.load(Ordering::Relaxed) {
                let due = start + Duration::from_secs_f64(n as f64 / rate as f64);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep((due - now).min(Duration::from_millis(5)));
                    producer.poll();
                    continue;
                }
                let intended_us = now_us() - (now - due).as_micros() as u64;
                bad_acc += bad_share;
                let value = if bad_acc >= 1.0 {
                    bad_acc -= 1.0;
                    format!(r#"{{"id":"bad-{n}","model":"{model2}","input":42}}"#)
                } else {
                    let text = SENTENCES[(n as usize) % SENTENCES.len()];
                    format!(r#"{{"id":"demo-{n}-{intended_us}","model":"{model2}","input":"{text}"}}"#)
                };
                producer.send(&input, n.to_string().as_bytes(), value.as_bytes());
                n += 1;
                produced2.store(n, Ordering::Relaxed);
            }
            producer.flush(Duration::from_secs(5));
        });
        let producer_thread = producer_thread.map_err(during("spawning the producer"))?;

        let mut t = Tally::new();
        let mut last_out = 0u64;
        let started = Instant::now();
        let mut tick = Instant::now();
        let mut last_prod = 0u64;
        loop {
            if stop.load(Ordering::SeqCst) || opt.duration.is_some_and(|d| started.elapsed() >= d) {
                break;
            }
            if let Some(m) = viewer.poll(Duration::from_millis(20)) {
                t.take(&m, &topics.dlq);
            }
            if tick.elapsed() >= Duration::from_secs(1) {
                let secs = tick.elapsed().as_secs_f64();
                let p = produced.load(Ordering::Relaxed);
                let outs = t.out_n - last_out;
                println!(
                    "t={:>4.0}s  in {:>6.0}/s  out {:>6.0}/s  e2e p50 {:>7.1} ms  p99 {:>7.1} ms  batch {:>5.1}  dlq {}",
                    started.elapsed().as_secs_f64(),
                    (p - last_prod) as f64 / secs,
                    outs as f64 / secs,
                    t.lat.value_at_quantile(0.5) as f64 / 1e3,
                    t.lat.value_at_quantile(0.99) as f64 / 1e3,
                    if outs > 0 { t.batch_sum as f64 / outs as f64 } else { 0.0 },
                    t.dlq_n
                );
                t.lat.reset();
                t.batch_sum = 0;
                last_out = t.out_n;
                last_prod = p;
                tick = Instant::now();
            }
        }
        done.store(true, Ordering::SeqCst);
        let _ = producer_thread.join();
        // The summary counts every record sent: wait for the last outcomes.
        let sent = produced.load(Ordering::Relaxed);
        let wait_start = Instant::now();
        while t.out_n + t.dlq_n < sent && wait_start.elapsed() < FINAL_WAIT {
            if let Some(m) = viewer.poll(Duration::from_millis(20)) {
                t.take(&m, &topics.dlq);
            }
        }
        let (out_n, dlq_n) = (t.out_n, t.dlq_n);
        let outstanding = sent.saturating_sub(out_n + dlq_n);
        println!(
            "demo summary: produced {sent}, results {out_n}, dead letters {dlq_n}{}, e2e p50 {:.1} ms p99 {:.1} ms (every result from the first record on)",
            if outstanding > 0 {
                format!(" ({outstanding} still without an outcome after {FINAL_WAIT:?})")
            } else {
                String::new()
            },
            t.total.value_at_quantile(0.5) as f64 / 1e3,
            t.total.value_at_quantile(0.99) as f64 / 1e3
        );
        drop(viewer);
        Ok(())
    })?;
    let report = pipeline.stop();
    println!(
        "pipeline: consumed {}, results {}, dead letters {}",
        report.consumed, report.results, report.dead_letters
    );
    drop(broker);
    Ok(())
}
