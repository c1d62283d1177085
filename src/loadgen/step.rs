//! One load step against a real broker: an open-loop producer thread stamping intended send
//! times, and a collector that reads the output and dead-letter topics and checks that every
//! record came back exactly once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::error::{LoadgenError, Result};
use super::open_loop::{run_open_loop, Clock, RealClock, SendStats, Sink};
use super::recorder::{spectrum, OutcomeKind, Percentiles, Recorder, ResultFacts, Window};
use super::schedule::{intended_times, Arrival};
use super::workload::{Planned, Workload};
use crate::kafka::admin;
use crate::kafka::close_in_background;

/// Header carrying each record's intended send time, in nanoseconds since the Unix epoch.
pub const INTENDED_HEADER: &str = "sluice-loadgen-intended-ns";

/// The broker and topics a run talks to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Target {
    pub bootstrap: String,
    pub input_topic: String,
    pub priority_topic: String,
    pub output_topic: String,
    pub dlq_topic: String,
}

/// One step: a rate held for a duration.
#[derive(Clone, Debug)]
pub struct StepSpec {
    /// Offered records per second.
    pub rate: f64,
    pub arrival: Arrival,
    /// Sending time, warm-up included.
    pub duration: Duration,
    /// Records due in the first `warmup` are checked but not measured.
    pub warmup: Duration,
    /// How long to wait after the last send for outstanding outcomes.
    pub drain_timeout: Duration,
    pub workload: Workload,
}

/// What one step measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StepResult {
    /// Target rate, records per second.
    pub rate: f64,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Records sent, and sends the broker refused.
    pub sent: u64,
    pub send_failed: u64,
    /// Outcomes: results, dead letters; hostile records sent (each expects a dead letter).
    pub results: u64,
    pub dead_letters: u64,
    pub hostile_sent: u64,
    /// Well-formed requests dead-lettered; hostile records answered with a result.
    pub unexpected_dead_letters: u64,
    pub unexpected_results: u64,
    /// Sent records with no outcome when the drain timed out; extra outcomes; other runs' records.
    pub missing: u64,
    pub duplicates: u64,
    pub foreign: u64,
    /// Rate of records due in the measurement window, and of outcomes completed in it.
    pub offered_rps: f64,
    pub achieved_rps: f64,
    /// End-to-end latency from intended send time: well-formed requests answered on the output
    /// topic (`latency`), priority-topic requests, dead letters, and everything.
    pub latency: Percentiles,
    pub priority: Percentiles,
    pub dead_letter: Percentiles,
    pub all: Percentiles,
    /// `(quantile, ms)` of `latency`, for the spectrum picture.
    pub spectrum: Vec<(f64, f64)>,
    /// Latency per second of the step (warm-up included), by intended send time.
    #[serde(default)]
    pub timeline: Vec<Window>,
    /// Mean rows per batch, where result records say (Sluice and the peer do).
    pub mean_batch: Option<f64>,
    /// Largest batch size seen and its mean inference time (ms), where result records say.
    pub largest_batch: Option<(u32, f64)>,
    /// How far the producer itself fell behind its schedule (the generator's own health).
    pub max_send_lag_ms: f64,
    pub late_sends: u64,
    /// Seconds from the last intended send until every outcome was in (or the timeout).
    pub drain_s: f64,
    /// Whether the step counts as sustained, and why not (set by the sweep).
    pub sustained: Option<bool>,
    pub verdict: String,
    /// Which part of the sweep ran it: `grid`, `bisect` or `half` (set by the sweep).
    #[serde(default)]
    pub phase: String,
}

struct SendContext {
    failed: Mutex<Vec<usize>>,
}

impl ClientContext for SendContext {
    crate::kafka::oauth::refresh_oauth_token!();
}

impl ProducerContext for SendContext {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        if let Err((e, _)) = result {
            tracing::debug!(seq, error = %e, "load record not delivered");
            if let Ok(mut f) = self.failed.lock() {
                f.push(seq);
            }
        }
    }
}

fn client(bootstrap: &str, id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap).set("broker.address.family", "v4").set("client.id", id);
    c
}

fn epoch_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// A fresh run id (8 hex digits): keys are `<run>-<seq>`, so records of earlier runs are told apart.
fn run_id() -> String {
    let mut rng =
        super::schedule::SplitMix64::new(epoch_ns() ^ u64::from(std::process::id()) << 32);
    format!("{:08x}", rng.next_u64() as u32)
}

/// Parses `<run>-<seq>`; None for other runs' keys.
pub fn parse_key(key: &[u8], run: &str) -> Option<usize> {
    let key = std::str::from_utf8(key).ok()?;
    let (r, seq) = key.split_once('-')?;
    if r != run {
        return None;
    }
    seq.parse().ok()
}

/// Reads `"name":<integer>` from a JSON result without parsing all of it (embeddings are large).
pub fn json_uint(value: &[u8], name: &str) -> Option<u64> {
    let pat = format!("\"{name}\":");
    let at = value.windows(pat.len()).position(|w| w == pat.as_bytes())? + pat.len();
    let digits: &[u8] = &value[at..];
    let digits = &digits[digits.iter().take_while(|b| b.is_ascii_whitespace()).count()..];
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&digits[..n]).ok()?.parse().ok()
}

struct KafkaSink<'a> {
    producer: &'a BaseProducer<SendContext>,
    workload: &'a Workload,
    plan: &'a [Planned],
    target: &'a Target,
    run: &'a str,
    origin_epoch_ns: u64,
    key: String,
    value: Vec<u8>,
}

impl Sink for KafkaSink<'_> {
    fn try_send(&mut self, seq: usize, intended_ns: u64) -> bool {
        use std::fmt::Write;
        let p = &self.plan[seq];
        self.key.clear();
        let _ = write!(self.key, "{}-{seq}", self.run);
        self.workload.render(p, &self.key, &mut self.value);
        let stamp = (self.origin_epoch_ns + intended_ns).to_string();
        let headers = OwnedHeaders::new()
            .insert(Header { key: INTENDED_HEADER, value: Some(stamp.as_str()) });
        let topic = if p.priority { &self.target.priority_topic } else { &self.target.input_topic };
        let rec = BaseRecord::with_opaque_to(topic, seq)
            .key(self.key.as_str())
            .payload(&self.value)
            .headers(headers);
        match self.producer.send(rec) {
            Ok(()) => true,
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                _,
            )) => false,
            Err((e, _)) => {
                tracing::warn!(seq, error = %e, "load record refused by the client");
                if let Ok(mut f) = self.producer.context().failed.lock() {
                    f.push(seq);
                }
                true
            }
        }
    }

    fn service(&mut self) {
        self.producer.poll(Duration::ZERO);
    }
}

/// Creates the topics if missing and assigns a consumer to every partition of the output and
/// dead-letter topics at their current end, so that only what comes after is read.
fn collector(target: &Target, run: &str) -> Result<BaseConsumer> {
    let admin_cfg = client(&target.bootstrap, &format!("sluice-loadgen-{run}-admin"));
    let mut topics = vec![
        target.input_topic.as_str(),
        target.priority_topic.as_str(),
        target.output_topic.as_str(),
        target.dlq_topic.as_str(),
    ];
    // The same topic may serve twice (output = input measures the broker alone).
    topics.sort_unstable();
    topics.dedup();
    admin::ensure_topics(&admin_cfg, &topics, 4, Duration::from_secs(10))
        .map_err(LoadgenError::topics("creating the topics"))?;
    let consumer: BaseConsumer =
        client(&target.bootstrap, &format!("sluice-loadgen-{run}-collector"))
            .set("group.id", format!("sluice-loadgen-{run}"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "5")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(LoadgenError::kafka("creating the collector"))?;
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(LoadgenError::kafka("reading topic metadata"))?;
    let mut tpl = TopicPartitionList::new();
    let mut outs = vec![&target.output_topic, &target.dlq_topic];
    outs.dedup();
    for t in outs {
        let Some(mt) = md.topics().iter().find(|mt| mt.name() == t.as_str()) else {
            return Err(LoadgenError::MissingTopic(t.clone()));
        };
        for p in mt.partitions() {
            // Start at the high watermark (a broker that reports it too low only makes the
            // collector skip a few old records as foreign).
            let (_, high) = consumer
                .fetch_watermarks(t, p.id(), Duration::from_secs(10))
                .map_err(LoadgenError::kafka(format!("watermarks of {t}/{}", p.id())))?;
            tpl.add_partition_offset(t, p.id(), Offset::Offset(high))?;
        }
    }
    consumer.assign(&tpl).map_err(LoadgenError::kafka("assigning the output partitions"))?;
    Ok(consumer)
}

/// Runs one step and returns what it measured. `stop` ends it early (what was sent is still
/// drained and checked).
pub fn run_step(target: &Target, spec: &StepSpec, stop: &AtomicBool) -> Result<StepResult> {
    let run = run_id();
    let duration_ns = spec.duration.as_nanos() as u64;
    let intended: Arc<[u64]> = intended_times(
        spec.rate,
        spec.arrival,
        duration_ns,
        spec.workload.seed ^ spec.rate.to_bits(),
    )
    .into();
    let plan: Arc<[Planned]> = spec.workload.plan(intended.len()).into();
    let consumer = collector(target, &run)?;
    let producer: BaseProducer<SendContext> =
        client(&target.bootstrap, &format!("sluice-loadgen-{run}-producer"))
            .set("linger.ms", "5")
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "1048576")
            .set("message.max.bytes", "8388608")
            .create_with_context(SendContext { failed: Mutex::new(Vec::new()) })
            .map_err(LoadgenError::kafka("creating the load producer"))?;

    // Start a little in the future so both threads are running at t = 0.
    let origin = Instant::now() + Duration::from_millis(200);
    let origin_epoch_ns = epoch_ns() + 200_000_000;
    let done = AtomicBool::new(false);
    let sent = AtomicUsize::new(0);
    let warmup_ns = (spec.warmup.as_nanos() as u64).min(duration_ns);
    let mut rec = Recorder::new(intended.clone(), plan.clone(), warmup_ns);
    let send_end_ns = intended.last().map_or(0, |t| t + 1);

    let (send_stats, drain_s) = std::thread::scope(|s| -> Result<(SendStats, f64)> {
        let collector = std::thread::Builder::new()
            .name("loadgen-collector".into())
            .spawn_scoped(s, || {
                let clock = RealClock::new(origin);
                loop {
                    match consumer.poll(Duration::from_millis(20)) {
                        Some(Ok(m)) => {
                            let now = clock.now_ns();
                            match m.key().and_then(|k| parse_key(k, &run)) {
                                None => rec.on_foreign(),
                                Some(seq) => {
                                    let (kind, facts) = if m.topic() == target.dlq_topic {
                                        (OutcomeKind::DeadLetter, ResultFacts::default())
                                    } else {
                                        let v = m.payload().unwrap_or_default();
                                        let facts = ResultFacts {
                                            batch_size: json_uint(v, "batch_size")
                                                .map(|b| b as u32),
                                            infer_us: json_uint(v, "infer"),
                                        };
                                        (OutcomeKind::Result, facts)
                                    };
                                    rec.on_outcome(seq, kind, now, facts);
                                }
                            }
                        }
                        Some(Err(e)) => tracing::warn!(error = %e, "collector"),
                        None => {}
                    }
                    if done.load(Ordering::SeqCst) {
                        rec.set_sent(sent.load(Ordering::SeqCst));
                        let now = clock.now_ns();
                        let since_end = now.saturating_sub(send_end_ns.min(now));
                        if rec.complete()
                            || since_end >= spec.drain_timeout.as_nanos() as u64
                            || (stop.load(Ordering::Relaxed) && since_end > 2_000_000_000)
                        {
                            break since_end as f64 / 1e9;
                        }
                    }
                }
            })
            .map_err(LoadgenError::Thread)?;
        let clock = RealClock::new(origin);
        let mut sink = KafkaSink {
            producer: &producer,
            workload: &spec.workload,
            plan: &plan,
            target,
            run: &run,
            origin_epoch_ns,
            key: String::new(),
            value: Vec::new(),
        };
        let stats = run_open_loop(&clock, &intended, &mut sink, stop);
        let _ = producer.flush(Duration::from_secs(30));
        sent.store(stats.sent, Ordering::SeqCst);
        done.store(true, Ordering::SeqCst);
        let drain = collector.join().map_err(|_| LoadgenError::CollectorPanicked)?;
        Ok((stats, drain))
    })?;
    close_in_background(consumer);
    let failed = producer.context().failed.lock().map(|f| f.clone()).unwrap_or_default();

    let window = rec.window_secs().max(1e-9);
    let sent_n = send_stats.sent;
    let missing =
        rec.missing().saturating_sub(failed.iter().filter(|&&s| s < sent_n).count() as u64);
    Ok(StepResult {
        rate: spec.rate,
        duration_s: spec.duration.as_secs_f64(),
        warmup_s: spec.warmup.as_secs_f64(),
        sent: sent_n as u64,
        send_failed: failed.len() as u64,
        results: rec.results_n,
        dead_letters: rec.dlq_n,
        hostile_sent: plan[..sent_n].iter().filter(|p| p.hostile.is_some()).count() as u64,
        unexpected_dead_letters: rec.unexpected_dlq,
        unexpected_results: rec.unexpected_results,
        missing,
        duplicates: rec.duplicates,
        foreign: rec.foreign,
        offered_rps: rec.due_in_window() as f64 / window,
        achieved_rps: rec.completed_in_window as f64 / window,
        latency: Percentiles::of(&rec.results),
        priority: Percentiles::of(&rec.priority),
        dead_letter: Percentiles::of(&rec.dead_letters),
        all: Percentiles::of(&rec.all),
        spectrum: spectrum(&rec.results),
        timeline: rec.timeline(),
        mean_batch: rec.mean_batch(),
        largest_batch: rec.largest_batch_infer(),
        max_send_lag_ms: send_stats.max_lag_ns as f64 / 1e6,
        late_sends: send_stats.late,
        drain_s,
        sustained: None,
        verdict: String::new(),
        phase: String::new(),
    })
}

/// Reads the output and dead-letter topics until nothing has arrived for `quiet`, or `max`
/// has passed: lets a system that fell behind work off its backlog before the next step.
pub fn quiesce(target: &Target, quiet: Duration, max: Duration) -> Result<Duration> {
    let consumer = collector(target, &run_id())?;
    let start = Instant::now();
    let mut last = Instant::now();
    while start.elapsed() < max && last.elapsed() < quiet {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(50)) {
            last = Instant::now();
        }
    }
    close_in_background(consumer);
    Ok(start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_this_run_only() {
        assert_eq!(parse_key(b"ab12cd34-17", "ab12cd34"), Some(17));
        assert_eq!(parse_key(b"ffffffff-17", "ab12cd34"), None);
        assert_eq!(parse_key(b"ab12cd34-x", "ab12cd34"), None);
        assert_eq!(parse_key(&[0xff, 0xfe], "ab12cd34"), None);
    }

    #[test]
    fn reads_integers_out_of_result_json() {
        let v = br#"{"id":"a","output":[[0.1,2]],"timing_us":{"queue":410,"infer": 2900,"total":4100},"batch_size":24}"#;
        assert_eq!(json_uint(v, "batch_size"), Some(24));
        assert_eq!(json_uint(v, "infer"), Some(2900));
        assert_eq!(json_uint(v, "missing"), None);
    }
}
