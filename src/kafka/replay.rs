//! `sluice replay`: sends chosen dead letters back to the topic their request came from, after
//! the cause was fixed (README "Replaying dead letters").
//!
//! The dead-letter topic is read with `assign`, outside Sluice's consumer group (nothing is
//! committed), from the first offset of the selection up to the end offsets seen at the
//! start: dead letters written while the command runs (a replayed request failing again, say)
//! are never read by the same run. A dead letter matches when its class, its time (the dead
//! letter's Kafka timestamp) and its offset are within the selection. A matching one is
//! replayed as the original record (key, value, the headers it carries except Sluice's
//! `sluice.*` ones) with [`REPLAY_COUNT_HEADER`] one higher, to the topic named by its
//! `sluice.source.topic` header, which must be the configured input or priority topic. It is
//! skipped instead when it has already been replayed `maxReplays` times, when it is a cut
//! dead letter (it no longer holds the whole record), or when its source topic is not one
//! Sluice reads.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, DeliveryResult, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use super::client::{
    base_client_config, close_in_background, create, instance_name, largest_consumed_record,
    KafkaLayerError, DEAD_LETTER_OVERHEAD_BYTES,
};
use super::oauth::Plain;
use crate::config::Config;
use crate::core::{ErrorClass, REPLAY_COUNT_HEADER};

/// What to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Error classes to replay (`inference`, `unknown_model`, ...); empty: every class.
    pub classes: Vec<String>,
    /// Only dead letters written at or after this time (epoch milliseconds).
    pub since_ms: Option<i64>,
    /// Only dead letters written before this time (epoch milliseconds).
    pub until_ms: Option<i64>,
    /// Only this partition of the dead-letter topic.
    pub partition: Option<i32>,
    /// With `partition`: the first dead-letter offset to read.
    pub from_offset: Option<i64>,
    /// With `partition`: the last dead-letter offset to read (inclusive).
    pub to_offset: Option<i64>,
    /// Read and count, send nothing.
    pub dry_run: bool,
    /// Dead letters replayed this often already are skipped.
    pub max_replays: u32,
    /// How long to wait for the broker before giving up (the end offsets, a record).
    pub timeout: Duration,
}

/// One skipped dead letter, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LetterRef {
    pub partition: i32,
    pub offset: i64,
    /// Its replay count.
    pub replays: u32,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// The dead-letter topic.
    pub topic: String,
    /// Dead letters read.
    pub read: u64,
    /// Read and within the selection.
    pub matched: u64,
    /// Sent back and acknowledged by the broker (with `dry_run`: that would have been sent).
    pub replayed: u64,
    /// Matched, but already replayed `max_replays` times.
    pub skipped_by_limit: u64,
    /// Matched, but cut dead letters (they no longer hold the whole record).
    pub skipped_cut: u64,
    /// Matched, but their source topic is not the configured input or priority topic.
    pub skipped_foreign: u64,
    /// Sent, but the broker did not take them (the errors are logged).
    pub failed: u64,
    /// The first few dead letters skipped by the limit.
    pub limited: Vec<LetterRef>,
    /// Per partition: the first offset read and the end offset (exclusive) seen at the start.
    pub ranges: BTreeMap<i32, (i64, i64)>,
    /// Nothing was sent.
    pub dry_run: bool,
    /// The replay limit used.
    pub max_replays: u32,
}

/// How many skipped dead letters the summary names.
const NAMED_SKIPS: usize = 20;

impl fmt::Display for ReplaySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run { "would replay" } else { "replayed" };
        writeln!(
            f,
            "dead-letter topic {}: read {}, matched {}, {verb} {}, skipped by the limit ({} replays) {}, skipped as cut {}, skipped for a foreign source topic {}, failed {}",
            self.topic,
            self.read,
            self.matched,
            self.replayed,
            self.max_replays,
            self.skipped_by_limit,
            self.skipped_cut,
            self.skipped_foreign,
            self.failed
        )?;
        for (p, (from, end)) in &self.ranges {
            writeln!(f, "  partition {p}: offsets {from} .. {end} (end as at the start)")?;
        }
        for l in &self.limited {
            writeln!(
                f,
                "  not replayed again: partition {} offset {} (replayed {} times)",
                l.partition, l.offset, l.replays
            )?;
        }
        if self.skipped_by_limit as usize > self.limited.len() {
            writeln!(f, "  ... and {} more", self.skipped_by_limit as usize - self.limited.len())?;
        }
        Ok(())
    }
}

/// Counts the broker's answers to the replayed records.
struct ReplayContext {
    acked: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for ReplayContext {
    crate::kafka::oauth::refresh_oauth_token!();
}

impl ProducerContext for ReplayContext {
    type DeliveryOpaque = Box<(i32, i64)>;
    fn delivery(&self, result: &DeliveryResult<'_>, letter: Self::DeliveryOpaque) {
        match result {
            Ok(_) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                let (partition, offset) = *letter;
                tracing::error!(partition, offset, error = %e, "replaying the dead letter failed");
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Checks the class names of `opts` against Sluice's error classes.
fn check_classes(classes: &[String]) -> Result<BTreeSet<&'static str>, KafkaLayerError> {
    let mut out = BTreeSet::new();
    for c in classes {
        let c = c.trim();
        match ErrorClass::ALL.iter().find(|k| k.as_str() == c) {
            Some(k) => {
                out.insert(k.as_str());
            }
            None => {
                let known: Vec<&str> = ErrorClass::ALL.iter().map(|k| k.as_str()).collect();
                return Err(KafkaLayerError::Other(format!(
                    "unknown error class {c:?}: the classes are {}",
                    known.join(", ")
                )));
            }
        }
    }
    Ok(out)
}

fn header<'a>(m: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a str> {
    let hs = m.headers()?;
    hs.iter().find(|h| h.key == name).and_then(|h| std::str::from_utf8(h.value?).ok())
}

/// Replays the dead letters of `cfg`'s dead-letter topic that `opts` selects.
pub fn replay(cfg: &Config, opts: &ReplayOptions) -> Result<ReplaySummary, KafkaLayerError> {
    let classes = check_classes(&opts.classes)?;
    if opts.partition.is_none() && (opts.from_offset.is_some() || opts.to_offset.is_some()) {
        return Err(KafkaLayerError::Other(
            "--from-offset and --to-offset need --partition (offsets are per partition)".into(),
        ));
    }
    let topics = &cfg.kafka.topics.streaming;
    let dlq = topics.dlq.as_str();
    let instance = instance_name();

    let mut ccfg = base_client_config(cfg, &format!("{instance}-replay-consumer"))?;
    // A group id is needed to create a consumer; nothing is ever committed under it, and
    // `assign` (not `subscribe`) keeps it out of any group coordination.
    ccfg.set("group.id", format!("{}-replay", cfg.kafka.consumer.group))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        // Dead letters of exactly_once runs are transactional: only committed ones count.
        .set("isolation.level", "read_committed")
        .set(
            "receive.message.max.bytes",
            (largest_consumed_record(cfg) + DEAD_LETTER_OVERHEAD_BYTES).to_string(),
        );
    let consumer: BaseConsumer<Plain> = create(&ccfg, Plain)?;

    let result = run(cfg, opts, &classes, &consumer, dlq, &instance);
    close_in_background(consumer);
    result
}

fn producer(cfg: &Config, instance: &str) -> Result<BaseProducer<ReplayContext>, KafkaLayerError> {
    // Not `producer_config`: with exactly_once that would take the pipeline's
    // transactional.id and fence the running instance.
    let mut pcfg: ClientConfig = base_client_config(cfg, &format!("{instance}-replay-producer"))?;
    let max_message =
        (largest_consumed_record(cfg) + DEAD_LETTER_OVERHEAD_BYTES).min(1_000_000_000);
    pcfg.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.max.bytes", max_message.to_string())
        .set("linger.ms", cfg.kafka.producer.linger_ms.to_string())
        .set("message.timeout.ms", cfg.kafka.producer.delivery_timeout_ms.to_string())
        .set("compression.type", cfg.kafka.producer.compression.as_str());
    create(&pcfg, ReplayContext { acked: AtomicU64::new(0), failed: AtomicU64::new(0) })
}

/// The end offset of each partition: past the last record there is now. That is the high-water
/// mark of `highs`, except on brokers that report it short of the last batch's end (Tansu
/// reports the last batch's first offset + 1): the partition is read from the mark - 1 to
/// its end (the consumer's end-of-partition event), and the last offset read + 1 wins.
fn batch_ends(
    consumer: &BaseConsumer<Plain>,
    topic: &str,
    highs: &BTreeMap<i32, (i64, i64)>,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>, KafkaLayerError> {
    let mut ends: BTreeMap<i32, i64> = highs.iter().map(|(&p, &(_, high))| (p, high)).collect();
    let mut tpl = TopicPartitionList::new();
    for (&p, &(low, high)) in highs {
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Offset(high - 1))?;
        }
    }
    let mut waiting: BTreeSet<i32> =
        highs.iter().filter(|(_, (l, h))| h > l).map(|(&p, _)| p).collect();
    if waiting.is_empty() {
        return Ok(ends);
    }
    consumer.assign(&tpl)?;
    let mut last_progress = Instant::now();
    while !waiting.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            None if last_progress.elapsed() >= timeout => {
                return Err(KafkaLayerError::Other(format!(
                    "reading to the end of {topic}: no answer for {} s (partitions {waiting:?})",
                    timeout.as_secs()
                )))
            }
            None => {}
            Some(Ok(m)) => {
                last_progress = Instant::now();
                if let Some(e) = ends.get_mut(&m.partition()) {
                    *e = (*e).max(m.offset() + 1);
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                last_progress = Instant::now();
                waiting.remove(&p);
            }
            Some(Err(e)) => return Err(e.into()),
        }
    }
    consumer.unassign()?;
    Ok(ends)
}

fn run(
    cfg: &Config,
    opts: &ReplayOptions,
    classes: &BTreeSet<&'static str>,
    consumer: &BaseConsumer<Plain>,
    dlq: &str,
    instance: &str,
) -> Result<ReplaySummary, KafkaLayerError> {
    let topics = &cfg.kafka.topics.streaming;
    let md = consumer.fetch_metadata(Some(dlq), opts.timeout).map_err(|e| {
        KafkaLayerError::Other(format!(
            "reading the metadata of the dead-letter topic {dlq}: {e} (are kafka.bootstrap.servers and kafka.security right? the log above says why a connection failed)"
        ))
    })?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .find(|t| t.name() == dlq && t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        return Err(KafkaLayerError::Other(format!("the dead-letter topic {dlq} does not exist")));
    }
    if let Some(p) = opts.partition {
        if !partitions.contains(&p) {
            return Err(KafkaLayerError::Other(format!(
                "the dead-letter topic {dlq} has no partition {p} (it has {})",
                partitions.len()
            )));
        }
    }

    let mut summary = ReplaySummary {
        topic: dlq.to_owned(),
        dry_run: opts.dry_run,
        max_replays: opts.max_replays,
        ..ReplaySummary::default()
    };
    // The end offsets as they are now: the run stops there.
    let mut highs = BTreeMap::new();
    for p in partitions.into_iter().filter(|p| opts.partition.is_none_or(|q| q == *p)) {
        let (low, high) = consumer.fetch_watermarks(dlq, p, opts.timeout).map_err(|e| {
            KafkaLayerError::Other(format!("reading the end offsets of {dlq} partition {p}: {e}"))
        })?;
        highs.insert(p, (low, high));
    }
    let ends = batch_ends(consumer, dlq, &highs, opts.timeout)?;
    let mut tpl = TopicPartitionList::new();
    let mut open: BTreeMap<i32, i64> = BTreeMap::new();
    for (&p, &(low, _)) in &highs {
        let high = ends.get(&p).copied().unwrap_or(low);
        let from = opts.from_offset.unwrap_or(low).max(low);
        let end = opts.to_offset.map_or(high, |t| t.saturating_add(1).min(high));
        summary.ranges.insert(p, (from, end));
        if from < end {
            tpl.add_partition_offset(dlq, p, Offset::Offset(from))?;
            open.insert(p, end);
        }
    }
    if open.is_empty() {
        return Ok(summary);
    }
    consumer.assign(&tpl)?;
    let producer = if opts.dry_run { None } else { Some(producer(cfg, instance)?) };

    let mut last_progress = Instant::now();
    while !open.is_empty() {
        let Some(polled) = consumer.poll(Duration::from_millis(200)) else {
            if last_progress.elapsed() >= opts.timeout {
                let left: Vec<String> = open.keys().map(i32::to_string).collect();
                return Err(KafkaLayerError::Other(format!(
                    "nothing read from {dlq} for {} s (partitions {} not at their end offsets); {} replayed so far: is the broker reachable?",
                    opts.timeout.as_secs(),
                    left.join(", "),
                    producer.as_ref().map_or(0, |p| p.context().acked.load(Ordering::Relaxed))
                )));
            }
            if let Some(p) = &producer {
                p.poll(Duration::ZERO);
            }
            continue;
        };
        last_progress = Instant::now();
        let m = match polled {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(p)) => {
                open.remove(&p);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let (p, offset) = (m.partition(), m.offset());
        let Some(&end) = open.get(&p) else { continue };
        if offset >= end {
            open.remove(&p);
            continue;
        }
        if offset + 1 >= end {
            open.remove(&p);
        }
        summary.read += 1;
        let class = header(&m, "sluice.error.class").unwrap_or("");
        if !classes.is_empty() && !classes.contains(class) {
            continue;
        }
        let at = m.timestamp().to_millis();
        if opts.since_ms.is_some_and(|s| at.is_none_or(|t| t < s))
            || opts.until_ms.is_some_and(|u| at.is_none_or(|t| t >= u))
        {
            continue;
        }
        summary.matched += 1;
        let replays: u32 =
            header(&m, REPLAY_COUNT_HEADER).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        if replays >= opts.max_replays {
            summary.skipped_by_limit += 1;
            if summary.limited.len() < NAMED_SKIPS {
                summary.limited.push(LetterRef { partition: p, offset, replays });
            }
            continue;
        }
        if header(&m, "sluice.original.value.bytes").is_some() {
            summary.skipped_cut += 1;
            tracing::warn!(
                partition = p,
                offset,
                "a cut dead letter (it no longer holds the whole record): not replayed"
            );
            continue;
        }
        let source = header(&m, "sluice.source.topic").unwrap_or("");
        if source != topics.input && source != topics.priority {
            summary.skipped_foreign += 1;
            tracing::warn!(partition = p, offset, source, "the dead letter's source topic is not the configured input or priority topic: not replayed");
            continue;
        }
        let Some(producer) = &producer else {
            summary.replayed += 1;
            continue;
        };
        let next = (replays + 1).to_string();
        let mut headers = OwnedHeaders::new();
        if let Some(hs) = m.headers() {
            for h in hs.iter() {
                if !h.key.starts_with("sluice.") && h.key != REPLAY_COUNT_HEADER {
                    headers = headers.insert(Header { key: h.key, value: h.value });
                }
            }
        }
        headers = headers.insert(Header { key: REPLAY_COUNT_HEADER, value: Some(next.as_str()) });
        let mut rec = BaseRecord::with_opaque_to(source, Box::new((p, offset)))
            .payload(m.payload().unwrap_or(&[]))
            .headers(headers);
        if let Some(k) = m.key() {
            rec = rec.key(k);
        }
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    producer.poll(Duration::from_millis(100));
                    rec = back;
                }
                Err((e, _)) => {
                    return Err(KafkaLayerError::Other(format!(
                        "replaying partition {p} offset {offset} to {source}: {e}"
                    )))
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    if let Some(producer) = producer {
        let flushed = producer.flush(opts.timeout.max(Duration::from_millis(
            cfg.kafka.producer.delivery_timeout_ms.saturating_add(5_000),
        )));
        let ctx = producer.context();
        summary.replayed = ctx.acked.load(Ordering::Relaxed);
        summary.failed = ctx.failed.load(Ordering::Relaxed);
        close_in_background(producer);
        flushed.map_err(|e| {
            KafkaLayerError::Other(format!(
                "waiting for the broker to take the replayed records: {e} ({} taken so far)",
                summary.replayed
            ))
        })?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_checked() {
        assert_eq!(
            check_classes(&["inference".into(), " unknown_model".into()]).unwrap(),
            BTreeSet::from(["inference", "unknown_model"])
        );
        let e = check_classes(&["inferance".into()]).unwrap_err().to_string();
        assert!(e.contains("unknown error class \"inferance\"") && e.contains("too_large"), "{e}");
    }

    #[test]
    fn summary_names_what_was_skipped() {
        let s = ReplaySummary {
            topic: "dlq".into(),
            read: 5,
            matched: 3,
            replayed: 1,
            skipped_by_limit: 2,
            limited: vec![LetterRef { partition: 0, offset: 7, replays: 3 }],
            ranges: BTreeMap::from([(0, (0, 9))]),
            max_replays: 3,
            ..ReplaySummary::default()
        };
        let text = s.to_string();
        for needle in [
            "read 5, matched 3, replayed 1, skipped by the limit (3 replays) 2",
            "partition 0: offsets 0 .. 9",
            "partition 0 offset 7 (replayed 3 times)",
            "... and 1 more",
        ] {
            assert!(text.contains(needle), "{needle} not in {text}");
        }
    }
}
