//! The Kafka record source (thread `sluice-ingest`): consumes the input and priority topics,
//! offers each record to the engine's intake (which decodes, validates and queues it),
//! pauses the assignment while a ring is full, and commits the acknowledged offsets.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::client::{close_in_background, run_bounded};
use super::commit::{CommitPoint, CommitTracker};
use super::payload::message_bytes;
use super::probe::PartitionLag;
use crate::core::{
    ContentType, Envelope, ErrorClass, Failure, IngestStats, InvalidInput, Priority, Source,
};
use crate::queue::Request;
use crate::run::{Intake, RecordSource, RunError};

/// State the consumer thread shares with its rebalance callbacks and the pipeline.
pub struct SourceShared {
    pub tracker: Arc<Mutex<CommitTracker>>,
    /// Requests consumed but not yet queued (their ring was full), one queue per ring, so
    /// that a priority request never waits behind normal ones.
    pending: Mutex<Held>,
    /// Currently assigned (topic, partition)s.
    pub assigned: Mutex<Vec<(String, i32)>>,
    /// Whether any topic is paused for backpressure (the gauge).
    pub paused: AtomicBool,
    /// Topics whose partitions are paused because the ring they feed is full: the input topic
    /// (normal ring) and the priority topic (priority ring) independently.
    paused_topics: Mutex<Vec<String>>,
    /// Set once the pipeline has drained: what is still in flight then never completes.
    pub drained: AtomicBool,
    pub revoke_timeout: Duration,
    pub stats: Arc<IngestStats>,
}

/// Requests held back because their ring was full, per ring.
#[derive(Default)]
struct Held {
    priority: VecDeque<Request>,
    normal: VecDeque<Request>,
}

impl Held {
    fn queue_of(&mut self, p: Priority) -> &mut VecDeque<Request> {
        match p {
            Priority::High => &mut self.priority,
            Priority::Normal => &mut self.normal,
        }
    }

    /// Every held request, priority first.
    fn drain_all(&mut self) -> Vec<Request> {
        self.priority.drain(..).chain(self.normal.drain(..)).collect()
    }
}

impl SourceShared {
    /// Fresh shared state.
    pub fn new(tracker: Arc<Mutex<CommitTracker>>, revoke_timeout: Duration) -> Arc<Self> {
        Arc::new(SourceShared {
            tracker,
            pending: Mutex::new(Held::default()),
            assigned: Mutex::new(Vec::new()),
            paused: AtomicBool::new(false),
            paused_topics: Mutex::new(Vec::new()),
            drained: AtomicBool::new(false),
            revoke_timeout,
            stats: Arc::default(),
        })
    }
}

/// The consumer's librdkafka context: runs the rebalance protocol's Sluice side.
pub struct SourceContext {
    pub shared: Arc<SourceShared>,
}

impl ClientContext for SourceContext {}

impl ConsumerContext for SourceContext {
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
            let held = &mut *pending;
            for queue in [&mut held.priority, &mut held.normal] {
                queue.retain(|r| {
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
        }
        // Once the pipeline has drained (or given up at its deadline), nothing in flight can
        // still complete: the revocation of the final close does not wait for it.
        let wait = if self.shared.drained.load(Ordering::SeqCst) {
            Duration::ZERO
        } else {
            self.shared.revoke_timeout
        };
        let deadline = Instant::now() + wait;
        loop {
            let left: usize = {
                let t = self.shared.tracker.lock();
                parts.iter().map(|(topic, p)| t.in_flight(topic, *p)).sum()
            };
            if left == 0 {
                break;
            }
            if Instant::now() >= deadline {
                if !wait.is_zero() {
                    tracing::warn!(in_flight = left, "revocation timeout: committing what is acknowledged; the rest will be redelivered");
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let points: Vec<CommitPoint> = {
            let mut t = self.shared.tracker.lock();
            parts.iter().filter_map(|(topic, p)| t.remove(topic, *p)).collect()
        };
        commit_points(consumer, &points, CommitMode::Sync, &self.shared);
        self.shared.assigned.lock().retain(|a| !parts.contains(a));
        tracing::info!(partitions = ?parts, "partitions revoked after draining and committing");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: Vec<(String, i32)> =
                    tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
                tracing::info!(partitions = ?parts, "partitions assigned");
                self.shared.assigned.lock().extend(parts.iter().cloned());
                // New partitions of a paused topic start paused too.
                let paused = self.shared.paused_topics.lock().clone();
                let mut to_pause = TopicPartitionList::new();
                for (t, p) in parts.iter().filter(|(t, _)| paused.contains(t)) {
                    to_pause.add_partition(t, *p);
                }
                if to_pause.count() > 0 {
                    let _ = consumer.pause(&to_pause);
                }
            }
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// Commits `points` (next offsets to read). A commit counts as done only once the broker
/// confirms it, so Sluice commits synchronously (off the polling thread): rust-rdkafka does
/// not report the results of asynchronous ones (its issue #856). A failed one is offered
/// again by the tracker's next `take_commits`, so it is retried even if its partition stays
/// idle.
pub fn commit_points(
    consumer: &BaseConsumer<SourceContext>,
    points: &[CommitPoint],
    mode: CommitMode,
    shared: &SourceShared,
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
    match (consumer.commit(&tpl, mode), mode) {
        (Ok(()), CommitMode::Sync) => settle_commit(shared, Ok(()), &tpl),
        // Confirmed (or not) later, in the commit callback.
        (Ok(()), CommitMode::Async) => {}
        (Err(e), _) => settle_commit(shared, Err(e), &tpl),
    }
}

/// The commit thread: every `every`, commits what the tracker offers (synchronously), until
/// `stop` is closed.
fn commit_loop(
    consumer: &BaseConsumer<SourceContext>,
    shared: &SourceShared,
    every: Duration,
    stop: &crossbeam_channel::Receiver<()>,
) {
    while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = stop.recv_timeout(every) {
        let points = shared.tracker.lock().take_commits();
        commit_points(consumer, &points, CommitMode::Sync, shared);
    }
}

/// Books the broker's answer to a commit of `tpl`.
fn settle_commit(shared: &SourceShared, result: KafkaResult<()>, tpl: &TopicPartitionList) {
    let mut tracker = shared.tracker.lock();
    let mut failed = 0usize;
    for e in tpl.elements() {
        let Some(offset) = e.offset().to_raw() else { continue };
        if result.is_ok() && e.error().is_ok() {
            tracker.commit_confirmed(e.topic(), e.partition(), offset);
        } else {
            tracker.commit_failed(e.topic(), e.partition(), offset);
            failed += 1;
        }
    }
    drop(tracker);
    if failed == 0 {
        shared.stats.commits.fetch_add(1, Ordering::Relaxed);
    } else {
        shared.stats.commit_failures.fetch_add(1, Ordering::Relaxed);
        let error =
            result.err().map(|e| e.to_string()).unwrap_or_else(|| "per-partition error".into());
        tracing::warn!(partitions = failed, %error, "offset commit failed; it is sent again with the next commit");
    }
}

/// Most offsets the commit tracker holds (consumed, not yet committable) before the source
/// stops reading: about 64 MiB of bookkeeping.
pub const MAX_TRACKED_OFFSETS: usize = 1_000_000;

/// The Kafka record source: what the ingest thread needs.
pub struct KafkaSource {
    pub consumer: Arc<BaseConsumer<SourceContext>>,
    pub shared: Arc<SourceShared>,
    pub priority_topic: String,
    pub input_topic: String,
    pub commit_interval: Duration,
    /// `kafka.consumer.maxHeldBytes`.
    pub max_held_bytes: u64,
}

fn content_type(msg: &rdkafka::message::BorrowedMessage<'_>) -> Result<ContentType, InvalidInput> {
    let Some(headers) = msg.headers() else { return Ok(ContentType::Json) };
    for h in headers.iter() {
        if h.key.eq_ignore_ascii_case("content-type") {
            let v = h.value.unwrap_or(&[]);
            let v = std::str::from_utf8(v).unwrap_or("").trim();
            let base = v.split(';').next().unwrap_or("").trim();
            return match base {
                "" | "application/json" => Ok(ContentType::Json),
                "application/x-flatbuffers" => Ok(ContentType::FlatBuffers),
                other => Err(format!("unsupported content-type '{other}' (use application/json or application/x-flatbuffers)").into()),
            };
        }
    }
    Ok(ContentType::Json)
}

impl RecordSource for KafkaSource {
    fn thread_name(&self) -> &'static str {
        "sluice-ingest"
    }

    /// Polls until `stop` is set; then queues what it holds and returns.
    fn run(self: Box<Self>, mut intake: Intake, stop: &AtomicBool) -> Result<(), RunError> {
        let input: Arc<str> = self.input_topic.as_str().into();
        let priority: Arc<str> = self.priority_topic.as_str().into();
        // Commits run on a thread of their own, synchronously, so that each one's result is
        // known (rust-rdkafka does not report asynchronous commits' results: its issue #856)
        // and a slow coordinator never stalls polling.
        let (stop_commits, commit_stop_rx) = crossbeam_channel::bounded::<()>(0);
        let committer = {
            let (consumer, shared, every) =
                (self.consumer.clone(), self.shared.clone(), self.commit_interval);
            std::thread::Builder::new()
                .name("sluice-commit".into())
                .spawn(move || commit_loop(&consumer, &shared, every, &commit_stop_rx))
                .map_err(|source| RunError::Spawn { name: "sluice-commit", source })?
        };
        let mut last_poll_error: Option<Instant> = None;
        tracing::info!(input = %input, priority = %priority, "ingest started");
        let consumer = self.consumer.clone();
        while !stop.load(Ordering::SeqCst) {
            let (prio_held, normal_held) = self.flush_pending(&intake);
            // At the memory bound nothing more is read until what is held drains. The commit
            // tracker counts too: while one outcome is held back (a broker failure), every
            // offset behind it stays tracked, so at MAX_TRACKED_OFFSETS reading stops as well.
            let full = self.shared.stats.held_bytes.load(Ordering::Relaxed) >= self.max_held_bytes
                || self.shared.tracker.lock().tracked() >= MAX_TRACKED_OFFSETS;
            let (prio_held, normal_held) = (prio_held || full, normal_held || full);
            self.set_paused(&priority, prio_held);
            self.set_paused(&input, normal_held);
            // Both rings full: let the lanes make room, then poll without waiting (heartbeats,
            // rebalances). One ring full: its topic is paused and the other one's records keep
            // coming, so poll briefly. Neither: poll normally.
            let wait = if full {
                // Paused for memory: nothing arrives; poll only to keep the group alive.
                5
            } else if prio_held && normal_held {
                intake.rings().wait_for_space(Duration::from_millis(5));
                0
            } else if prio_held || normal_held {
                5
            } else {
                50
            };
            match consumer.poll(Duration::from_millis(wait)) {
                None => {}
                Some(Err(e))
                    if last_poll_error.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) =>
                {
                    tracing::warn!(error = %e, "consumer error");
                    last_poll_error = Some(Instant::now());
                }
                Some(Err(_)) => {}
                Some(Ok(msg)) => {
                    let (topic, prio) = if msg.topic() == &*priority {
                        (priority.clone(), Priority::High)
                    } else {
                        (input.clone(), Priority::Normal)
                    };
                    self.handle(msg, topic, prio, &mut intake);
                }
            }
        }
        // The committer ends after the commit it may be making; one stuck on a broker that is
        // gone is left behind (Pipeline::stop makes the final commit within the deadline).
        drop(stop_commits);
        if crate::engine::wait_until(Instant::now() + Duration::from_secs(5), || {
            committer.is_finished()
        }) {
            let _ = committer.join();
        } else {
            tracing::warn!("the commit thread is still waiting on the broker; left behind");
        }
        // Stopping: everything consumed gets an outcome, so queue what is held. At the drain
        // deadline the rings hand requests back: those stay uncommitted (processed again
        // after a restart).
        let held: Vec<Request> = self.shared.pending.lock().drain_all();
        let mut left = 0usize;
        for r in held {
            if intake.queue_wait(r).is_err() {
                left += 1;
            }
        }
        if left > 0 {
            tracing::warn!(records = left, "drain deadline passed: held records left uncommitted");
        }
        tracing::info!("ingest stopped");
        Ok(())
    }
}

impl KafkaSource {
    fn handle(
        &self,
        msg: rdkafka::message::BorrowedMessage<'_>,
        topic: Arc<str>,
        priority: Priority,
        intake: &mut Intake,
    ) {
        let source = Source { topic, partition: msg.partition(), offset: msg.offset() };
        self.shared.tracker.lock().track(&source.topic, source.partition, source.offset);
        let ct = content_type(&msg);
        let event_time_ms = msg.timestamp().to_millis();
        let (key, payload) = message_bytes(&self.consumer, msg, &self.shared.stats);
        let mut env = Envelope::new(payload, source, priority);
        env.key = key;
        env.event_time_ms = event_time_ms;
        match ct {
            Err(reason) => intake.reject_unread(env, Failure::new(ErrorClass::Parse, reason)),
            Ok(content_type) => {
                env.content_type = content_type;
                let Some(req) = intake.decode(env) else { return };
                let mut pending = self.shared.pending.lock();
                // Behind requests already held for its ring, a request waits its turn
                // (arrival order); a priority request never waits behind normal ones.
                let held = pending.queue_of(req.env.priority);
                if !held.is_empty() {
                    held.push_back(req);
                } else if let Err(back) = intake.queue(req) {
                    held.push_back(back);
                }
            }
        }
    }

    /// Moves held requests onto the rings, priority first; returns whether some are still
    /// held (priority, normal).
    fn flush_pending(&self, intake: &Intake) -> (bool, bool) {
        let mut pending = self.shared.pending.lock();
        let flush = |queue: &mut VecDeque<Request>| {
            while let Some(r) = queue.pop_front() {
                if let Err(back) = intake.queue(r) {
                    queue.push_front(back);
                    return true;
                }
            }
            false
        };
        let prio = flush(&mut pending.priority);
        let normal = flush(&mut pending.normal);
        (prio, normal)
    }

    /// Pauses (or resumes) the assigned partitions of `topic`: only the partitions that feed
    /// a full ring stop, so a backlog of normal requests never holds priority ones back.
    fn set_paused(&self, topic: &str, paused: bool) {
        let is_paused = self.shared.paused_topics.lock().iter().any(|t| t == topic);
        if is_paused == paused {
            return;
        }
        let Ok(assignment) = self.consumer.assignment() else { return };
        let mut tpl = TopicPartitionList::new();
        for e in assignment.elements().iter().filter(|e| e.topic() == topic) {
            tpl.add_partition(topic, e.partition());
        }
        let r = if tpl.count() == 0 {
            Ok(())
        } else if paused {
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        };
        match r {
            Ok(()) => {
                let mut topics = self.shared.paused_topics.lock();
                if paused {
                    topics.push(topic.to_owned());
                    self.shared.stats.pauses.fetch_add(1, Ordering::Relaxed);
                } else {
                    topics.retain(|t| t != topic);
                }
                self.shared.paused.store(!topics.is_empty(), Ordering::SeqCst);
                tracing::debug!(
                    topic,
                    paused,
                    "backpressure: {}",
                    if paused { "paused" } else { "resumed" }
                );
            }
            Err(e) => tracing::warn!(topic, error = %e, "pause/resume failed"),
        }
    }
}

/// The pipeline's hold on the consumer outside the ingest thread: lag, the final commit and
/// closing. (The ingest thread polls; these calls only read positions and commit.)
pub struct SourceHandle {
    /// Always `Some` until the handle is dropped: the drop moves this last reference to the
    /// close thread, so that librdkafka's close (which can hang) runs there, not here.
    pub(super) consumer: Option<Arc<BaseConsumer<SourceContext>>>,
    pub shared: Arc<SourceShared>,
}

impl SourceHandle {
    /// Consumer lag of every assigned partition: its high watermark (asked from the broker,
    /// within `budget` in all) minus the consumer's position. Before the first record of a
    /// partition is fetched, the group's committed offset (or the low watermark) stands in for
    /// the position. Blocking: call it off the hot path, now and then.
    pub fn consumer_lag(&self, budget: Duration) -> Vec<PartitionLag> {
        let deadline = Instant::now() + budget;
        let left =
            || deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(1));
        let Some(consumer) = &self.consumer else { return Vec::new() };
        let assigned = self.shared.assigned.lock().clone();
        let valid = |o: rdkafka::Offset| o.to_raw().filter(|o| *o >= 0);
        let positions = consumer.position().ok();
        let mut lags: Vec<PartitionLag> = assigned
            .into_iter()
            .map(|(topic, partition)| {
                let position = positions
                    .as_ref()
                    .and_then(|t| t.find_partition(&topic, partition))
                    .and_then(|e| valid(e.offset()));
                PartitionLag { topic, partition, position, high_watermark: None, lag: None }
            })
            .collect();
        let unknown: Vec<usize> = (0..lags.len()).filter(|i| lags[*i].position.is_none()).collect();
        if !unknown.is_empty() && !left().is_zero() {
            let mut tpl = rdkafka::TopicPartitionList::new();
            for i in &unknown {
                tpl.add_partition(&lags[*i].topic, lags[*i].partition);
            }
            if let Ok(got) = consumer.committed_offsets(tpl, left()) {
                for i in unknown {
                    let l = &mut lags[i];
                    l.position =
                        got.find_partition(&l.topic, l.partition).and_then(|e| valid(e.offset()));
                }
            }
        }
        for l in &mut lags {
            if left().is_zero() {
                break;
            }
            if let Ok((low, high)) = consumer.fetch_watermarks(&l.topic, l.partition, left()) {
                l.high_watermark = Some(high);
                let position = *l.position.get_or_insert(low);
                l.lag = Some((high - position).max(0));
            }
        }
        lags
    }

    /// Commits every acknowledged offset synchronously (the last step of a drain), and
    /// reports partitions with records left without an outcome. Waits at most `limit` for the
    /// broker: a synchronous commit to a broker that is gone does not return by itself. It
    /// runs on a helper thread ([`run_bounded`]); one still waiting at `limit` is left to
    /// finish or fail on its own (those offsets are then read again after a restart).
    pub fn commit_acknowledged_within(&self, limit: Duration) {
        let points = self.shared.tracker.lock().take_commits();
        let blocked = self.shared.tracker.lock().blocked();
        if !blocked.is_empty() {
            tracing::warn!(
                ?blocked,
                "partitions with records left without an outcome: not committed past them"
            );
        }
        let Some(consumer) = self.consumer.clone() else { return };
        if points.is_empty() {
            return;
        }
        let shared = self.shared.clone();
        let until = Instant::now() + limit;
        // A failed commit is offered again by the tracker: retry it until `limit`.
        let retry_until_confirmed = move || {
            let mut points = points;
            loop {
                commit_points(&consumer, &points, CommitMode::Sync, &shared);
                points = shared.tracker.lock().take_commits();
                if points.is_empty() || Instant::now() >= until {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        };
        match run_bounded("sluice-final-commit", limit, retry_until_confirmed) {
            Ok(true) => {}
            Ok(false) => tracing::error!(
                waited_ms = limit.as_millis() as u64,
                "final offset commit got no answer from the broker in time; leaving it (those records are processed again after a restart)"
            ),
            Err(e) => tracing::error!(error = %e, "could not spawn the final commit thread"),
        }
    }

    /// Leaves the consumer group.
    pub fn unsubscribe(&self) {
        if let Some(c) = &self.consumer {
            c.unsubscribe();
        }
    }
}

impl Drop for SourceHandle {
    fn drop(&mut self) {
        // Closed off-thread: librdkafka's destroy can hang (rust-rdkafka #509). The ingest
        // thread has been joined by now, so this is the last reference and the close itself
        // runs on the close thread.
        if let Some(c) = self.consumer.take() {
            close_in_background(c);
        }
    }
}
