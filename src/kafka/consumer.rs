//! The ingest thread: consumes the input and priority topics, decodes and validates each
//! record, queues it on its ring, pauses partitions while a ring is full, and commits the
//! acknowledged offsets.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Sender;
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::commit::{CommitPoint, CommitTracker};
use super::payload::payload_bytes;
use crate::emit::{ErrorClass, Failure, Outcome};
use crate::ingest::{ContentType, Decoder, Envelope, Priority, Request, Source};
use crate::queue::Rings;

/// Ingest counters.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub consumed: AtomicU64,
    pub rejected: AtomicU64,
    pub pauses: AtomicU64,
    pub rebalances: AtomicU64,
    pub commits: AtomicU64,
    pub commit_failures: AtomicU64,
}

/// State the consumer thread shares with its rebalance callbacks and the pipeline.
pub struct IngestShared {
    pub tracker: Arc<Mutex<CommitTracker>>,
    /// Requests consumed but not yet queued (their ring was full).
    pending: Mutex<VecDeque<Request>>,
    /// Currently assigned (topic, partition)s.
    pub assigned: Mutex<Vec<(String, i32)>>,
    pub paused: AtomicBool,
    pub revoke_timeout: Duration,
    pub stats: IngestStats,
}

impl IngestShared {
    /// Fresh shared state.
    pub fn new(tracker: Arc<Mutex<CommitTracker>>, revoke_timeout: Duration) -> Arc<Self> {
        Arc::new(IngestShared {
            tracker,
            pending: Mutex::new(VecDeque::new()),
            assigned: Mutex::new(Vec::new()),
            paused: AtomicBool::new(false),
            revoke_timeout,
            stats: IngestStats::default(),
        })
    }
}

/// The consumer's librdkafka context: runs the rebalance protocol's Sluice side.
pub struct IngestContext {
    pub shared: Arc<IngestShared>,
}

impl ClientContext for IngestContext {}

impl ConsumerContext for IngestContext {
    /// On revocation: drop the revoked partitions' not-yet-queued records (un-committed, the
    /// next owner reads them again), wait for their in-flight records' outcomes to be
    /// acknowledged, commit, and only then let the revocation complete.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else { return };
        self.shared.stats.rebalances.fetch_add(1, Ordering::Relaxed);
        let parts: Vec<(String, i32)> =
            tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        {
            let mut pending = self.shared.pending.lock();
            let mut tracker = self.shared.tracker.lock();
            pending.retain(|r| {
                let revoked = parts
                    .iter()
                    .any(|(t, p)| **t == *r.env.source.topic && *p == r.env.source.partition);
                if revoked {
                    tracker.forget(
                        &r.env.source.topic,
                        r.env.source.partition,
                        r.env.source.offset,
                    );
                }
                !revoked
            });
        }
        let deadline = Instant::now() + self.shared.revoke_timeout;
        loop {
            let left: usize = {
                let t = self.shared.tracker.lock();
                parts.iter().map(|(topic, p)| t.in_flight(topic, *p)).sum()
            };
            if left == 0 {
                break;
            }
            if Instant::now() > deadline {
                tracing::warn!(in_flight = left, "revocation timeout: committing what is acknowledged; the rest will be redelivered");
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let points: Vec<CommitPoint> = {
            let mut t = self.shared.tracker.lock();
            parts.iter().filter_map(|(topic, p)| t.remove(topic, *p)).collect()
        };
        commit_points(consumer, &points, CommitMode::Sync, &self.shared.stats);
        self.shared.assigned.lock().retain(|a| !parts.contains(a));
        tracing::info!(partitions = ?parts, "partitions revoked after draining and committing");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: Vec<(String, i32)> =
                    tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
                tracing::info!(partitions = ?parts, "partitions assigned");
                self.shared.assigned.lock().extend(parts);
                if self.shared.paused.load(Ordering::SeqCst) {
                    let _ = consumer.pause(tpl);
                }
            }
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// Commits `points` (next offsets to read).
pub fn commit_points(
    consumer: &BaseConsumer<IngestContext>,
    points: &[CommitPoint],
    mode: CommitMode,
    stats: &IngestStats,
) {
    if points.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for p in points {
        if tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.offset)).is_err() {
            continue;
        }
    }
    match consumer.commit(&tpl, mode) {
        Ok(()) => {
            stats.commits.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            stats.commit_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "offset commit failed; it is retried with the next commit");
        }
    }
}

/// What the ingest thread needs.
pub struct IngestThread {
    pub consumer: Arc<BaseConsumer<IngestContext>>,
    pub shared: Arc<IngestShared>,
    pub decoder: Decoder,
    pub rings: Arc<Rings>,
    pub completions: Sender<Outcome>,
    pub priority_topic: String,
    pub input_topic: String,
    pub commit_interval: Duration,
    pub stop: Arc<AtomicBool>,
}

fn content_type(msg: &rdkafka::message::BorrowedMessage<'_>) -> Result<ContentType, String> {
    let Some(headers) = msg.headers() else { return Ok(ContentType::Json) };
    for h in headers.iter() {
        if h.key.eq_ignore_ascii_case("content-type") {
            let v = h.value.unwrap_or(&[]);
            let v = std::str::from_utf8(v).unwrap_or("").trim();
            let base = v.split(';').next().unwrap_or("").trim();
            return match base {
                "" | "application/json" => Ok(ContentType::Json),
                "application/x-flatbuffers" => Ok(ContentType::FlatBuffers),
                other => Err(format!("unsupported content-type '{other}' (use application/json or application/x-flatbuffers)")),
            };
        }
    }
    Ok(ContentType::Json)
}

impl IngestThread {
    /// Runs until `stop` is set; then queues what it holds and returns.
    pub fn run(mut self) {
        let input: Arc<str> = self.input_topic.as_str().into();
        let priority: Arc<str> = self.priority_topic.as_str().into();
        let mut last_commit = Instant::now();
        let mut last_poll_error: Option<Instant> = None;
        tracing::info!(input = %input, priority = %priority, "ingest started");
        let consumer = self.consumer.clone();
        while !self.stop.load(Ordering::SeqCst) {
            let backlog = self.flush_pending();
            self.set_paused(backlog);
            if backlog {
                // Let the lanes make room; the consumer keeps polling (heartbeats, rebalances).
                self.rings.wait_for_space(Duration::from_millis(5));
            }
            match consumer.poll(Duration::from_millis(if backlog { 0 } else { 50 })) {
                None => {}
                Some(Err(e))
                    if last_poll_error.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) =>
                {
                    tracing::warn!(error = %e, "consumer error");
                    last_poll_error = Some(Instant::now());
                }
                Some(Err(_)) => {}
                Some(Ok(msg)) => {
                    let topic =
                        if msg.topic() == &*priority { priority.clone() } else { input.clone() };
                    self.handle(msg, topic);
                }
            }
            if last_commit.elapsed() >= self.commit_interval {
                let points = self.shared.tracker.lock().take_commits();
                commit_points(&self.consumer, &points, CommitMode::Async, &self.shared.stats);
                last_commit = Instant::now();
            }
        }
        // Stopping: everything consumed gets an outcome, so queue what is held.
        let held: Vec<Request> = self.shared.pending.lock().drain(..).collect();
        for r in held {
            self.rings.push_wait(r);
        }
        tracing::info!("ingest stopped");
    }

    fn handle(&mut self, msg: rdkafka::message::BorrowedMessage<'_>, topic: Arc<str>) {
        self.shared.stats.consumed.fetch_add(1, Ordering::Relaxed);
        let priority =
            if *topic == *self.priority_topic { Priority::High } else { Priority::Normal };
        let source = Source { topic, partition: msg.partition(), offset: msg.offset() };
        self.shared.tracker.lock().track(&source.topic, source.partition, source.offset);
        let key = msg.key().map(Bytes::copy_from_slice);
        let ct = content_type(&msg);
        let event_time_ms = msg.timestamp().to_millis();
        let payload = payload_bytes(&self.consumer, msg);
        let env = Envelope {
            payload,
            key,
            source,
            priority,
            content_type: *ct.as_ref().unwrap_or(&ContentType::Json),
            arrived: Instant::now(),
            event_time_ms,
            attempts: 1,
        };
        let decoded = match ct {
            Err(reason) => Err((env, Failure::new(ErrorClass::Parse, reason))),
            Ok(_) if env.payload.is_empty() => {
                Err((env, Failure::new(ErrorClass::Parse, "empty record value")))
            }
            Ok(_) => self.decoder.decode(env),
        };
        match decoded {
            Ok(req) => {
                let mut pending = self.shared.pending.lock();
                if pending.is_empty() {
                    if let Err(back) = self.rings.push(req) {
                        pending.push_back(back);
                    }
                } else {
                    pending.push_back(req);
                }
            }
            Err((env, f)) => {
                self.shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
                let _ = self.completions.send(Outcome::rejected(env, f));
            }
        }
    }

    /// Moves held requests onto the rings; true if some are still held.
    fn flush_pending(&mut self) -> bool {
        let mut pending = self.shared.pending.lock();
        while let Some(r) = pending.pop_front() {
            if let Err(back) = self.rings.push(r) {
                pending.push_front(back);
                return true;
            }
        }
        false
    }

    fn set_paused(&self, paused: bool) {
        if self.shared.paused.load(Ordering::SeqCst) == paused {
            return;
        }
        let Ok(assignment) = self.consumer.assignment() else { return };
        let r = if paused {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        match r {
            Ok(()) => {
                self.shared.paused.store(paused, Ordering::SeqCst);
                if paused {
                    self.shared.stats.pauses.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(
                    paused,
                    "backpressure: partitions {}",
                    if paused { "paused" } else { "resumed" }
                );
            }
            Err(e) => tracing::warn!(error = %e, "pause/resume failed"),
        }
    }
}

/// Drops a client on a helper thread and waits up to 10 s: librdkafka's destroy can hang
/// (rust-rdkafka #509). A hung close is logged and abandoned; the process exit ends it.
pub fn close_in_background<T: Send + 'static>(client: T) {
    let (tx, rx) = crossbeam_channel::bounded::<()>(1);
    let spawned = std::thread::Builder::new().name("sluice-kafka-close".into()).spawn(move || {
        drop(client);
        let _ = tx.send(());
    });
    match spawned {
        Ok(h) => {
            if rx.recv_timeout(Duration::from_secs(10)).is_ok() {
                let _ = h.join();
            } else {
                tracing::warn!("closing a Kafka client did not finish within 10 s; abandoning it");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not spawn the close thread"),
    }
}
