//! The Kafka record source (thread `sluice-ingest`): consumes the input and priority topics,
//! offers each record to the engine's intake (which decodes, validates and queues it),
//! pauses the assignment while a ring is full, and commits the acknowledged offsets.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    REPLAY_COUNT_HEADER,
};
use crate::execute::circuit::Circuits;
use crate::models::{LoadDone, ModelKey};
use crate::queue::Request;
use crate::run::{Intake, Intaken, RecordSource, RunError};

/// State the consumer thread shares with its rebalance callbacks and the pipeline.
pub struct SourceShared {
    pub tracker: Arc<Mutex<CommitTracker>>,
    /// Requests consumed but not yet queued (their ring was full), one queue per ring, so
    /// that a priority request never waits behind normal ones.
    pending: Mutex<Held>,
    /// Currently assigned (topic, partition)s.
    pub assigned: Mutex<Vec<(String, i32)>>,
    /// Whether any partition is paused for backpressure (the gauge).
    pub paused: AtomicBool,
    /// Topics whose partitions are all paused because the ring they feed is full (the input
    /// topic: the normal ring; the priority topic: the priority ring) or memory is at its
    /// bound. New partitions of such a topic start paused.
    paused_topics: Mutex<Vec<String>>,
    /// The partitions paused now (whole topics above, plus those whose records wait for a
    /// model load while the wait queue is full).
    paused_parts: Mutex<HashSet<(String, i32)>>,
    /// Bumped by every rebalance: the ingest loop then reconciles what is paused.
    assignment_epoch: AtomicU64,
    /// Set once the pipeline has drained: what is still in flight then never completes.
    pub drained: AtomicBool,
    /// Set when the ingest thread stops polling (stopping): the drain poller takes over.
    pub ingest_stopped: AtomicBool,
    pub revoke_timeout: Duration,
    pub stats: Arc<IngestStats>,
    /// Exactly-once: offsets are committed inside the emit thread's transactions, never by
    /// the consumer; a revocation asks the emit thread to commit through this channel.
    pub transactions: Option<crossbeam_channel::Sender<super::commit::CommitRequest>>,
    /// Exactly-once: set once the emit thread's transactions are gone (it ended).
    pub transactions_closed: Arc<AtomicBool>,
    /// The engine's circuit breakers (set when the ingest thread starts): a revocation
    /// drops the revoked partitions' parked requests.
    pub circuits: std::sync::OnceLock<Arc<Circuits>>,
}

/// Requests held back because their ring was full, per ring, and records waiting for their
/// model to load.
#[derive(Default)]
struct Held {
    priority: VecDeque<Request>,
    normal: VecDeque<Request>,
    /// Records whose model version is loading on the loader thread, in arrival order.
    waiting: VecDeque<(Envelope, ModelKey)>,
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
    pub fn new(
        tracker: Arc<Mutex<CommitTracker>>,
        revoke_timeout: Duration,
        transactions: Option<crossbeam_channel::Sender<super::commit::CommitRequest>>,
    ) -> Arc<Self> {
        Arc::new(SourceShared {
            tracker,
            pending: Mutex::new(Held::default()),
            assigned: Mutex::new(Vec::new()),
            paused: AtomicBool::new(false),
            paused_topics: Mutex::new(Vec::new()),
            paused_parts: Mutex::new(HashSet::new()),
            assignment_epoch: AtomicU64::new(0),
            drained: AtomicBool::new(false),
            ingest_stopped: AtomicBool::new(false),
            revoke_timeout,
            stats: Arc::default(),
            transactions,
            transactions_closed: Arc::default(),
            circuits: std::sync::OnceLock::new(),
        })
    }
}

/// The consumer's librdkafka context: runs the rebalance protocol's Sluice side.
pub struct SourceContext {
    pub shared: Arc<SourceShared>,
}

impl ClientContext for SourceContext {
    crate::kafka::oauth::refresh_oauth_token!();
}

impl SourceContext {
    /// Drops the requests of `parts` parked behind open circuit breakers: uncommitted, the
    /// next owner reads them again.
    fn forget_parked(&self, parts: &[(String, i32)]) {
        let Some(circuits) = self.shared.circuits.get() else { return };
        let dropped = circuits.take_parked_of(parts);
        if dropped.is_empty() {
            return;
        }
        let mut tracker = self.shared.tracker.lock();
        for r in &dropped {
            tracker.forget(&r.env.source.topic, r.env.source.partition, r.env.source.offset);
        }
        tracing::info!(requests = dropped.len(), "revocation: requests parked behind an open circuit breaker are left for the next owner");
    }
}

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
            // Records of the revoked partitions that are held or wait for a model: never
            // queued, so dropped un-committed (the next owner reads them again).
            let mut keep = |src: &Source| {
                let revoked = parts.iter().any(|(t, p)| **t == *src.topic && *p == src.partition);
                if revoked {
                    tracker.forget(&src.topic, src.partition, src.offset);
                }
                !revoked
            };
            held.priority.retain(|r| keep(&r.env.source));
            held.normal.retain(|r| keep(&r.env.source));
            held.waiting.retain(|(env, _)| keep(&env.source));
        }
        self.forget_parked(&parts);
        self.shared.paused_parts.lock().retain(|a| !parts.contains(a));
        self.shared.assignment_epoch.fetch_add(1, Ordering::SeqCst);
        // Partitions lost (the session expired: the broker is gone, or this member was
        // fenced) belong to someone else already: a commit would be refused, and waiting for
        // their in-flight outcomes helps no one. Forget them; what they held is read again.
        if consumer.assignment_lost() {
            {
                let mut t = self.shared.tracker.lock();
                for (topic, p) in &parts {
                    t.remove(topic, *p);
                }
            }
            self.shared.assigned.lock().retain(|a| !parts.contains(a));
            tracing::warn!(partitions = ?parts, "partitions lost (session expired): not committed; their records are read again by the next owner");
            return;
        }
        // Once the pipeline has drained (or given up at its deadline), nothing in flight can
        // still complete: the revocation of the final close does not wait for it.
        // Nor does it wait when the emit thread is gone (exactly-once: its transaction
        // failed): nothing in flight can complete.
        let wait = if self.shared.drained.load(Ordering::SeqCst)
            || self.shared.transactions_closed.load(Ordering::SeqCst)
        {
            Duration::ZERO
        } else {
            self.shared.revoke_timeout
        };
        let deadline = Instant::now() + wait;
        loop {
            // A lane may park another request of these partitions meanwhile.
            self.forget_parked(&parts);
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
        if let Some(txns) = &self.shared.transactions {
            // Exactly-once: the emit thread commits its open transaction, which holds these
            // partitions' outcomes and offsets; then they are forgotten here, so that
            // outcomes of theirs still in flight are dropped, not produced.
            let (reply, answer) = crossbeam_channel::bounded(1);
            let committed = txns.send(super::commit::CommitRequest { reply }).is_ok()
                && answer
                    .recv_timeout(self.shared.revoke_timeout.max(Duration::from_secs(1)))
                    .unwrap_or(false);
            let mut t = self.shared.tracker.lock();
            for (topic, p) in &parts {
                t.remove(topic, *p);
            }
            drop(t);
            self.shared.assigned.lock().retain(|a| !parts.contains(a));
            tracing::info!(partitions = ?parts, committed, "partitions revoked after committing the open transaction");
            return;
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
                if to_pause.count() > 0 && consumer.pause(&to_pause).is_ok() {
                    let mut now_paused = self.shared.paused_parts.lock();
                    now_paused.extend(parts.iter().filter(|(t, _)| paused.contains(t)).cloned());
                }
                self.shared.assignment_epoch.fetch_add(1, Ordering::SeqCst);
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

/// The record's `sluice-replay-count` header ([`REPLAY_COUNT_HEADER`]): how often `sluice
/// replay` sent it back. Absent or not a number: 0.
fn replay_count(msg: &rdkafka::message::BorrowedMessage<'_>) -> u32 {
    let Some(headers) = msg.headers() else { return 0 };
    headers
        .iter()
        .find(|h| h.key == REPLAY_COUNT_HEADER)
        .and_then(|h| std::str::from_utf8(h.value.unwrap_or(&[])).ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
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
        // and a slow coordinator never stalls polling. Exactly-once has none: its offsets
        // are committed inside the emit thread's transactions.
        let (stop_commits, commit_stop_rx) = crossbeam_channel::bounded::<()>(0);
        let committer = if self.shared.transactions.is_some() {
            None
        } else {
            let (consumer, shared, every) =
                (self.consumer.clone(), self.shared.clone(), self.commit_interval);
            let h = std::thread::Builder::new()
                .name("sluice-commit".into())
                .spawn(move || commit_loop(&consumer, &shared, every, &commit_stop_rx))
                .map_err(|source| RunError::Spawn { name: "sluice-commit", source })?;
            Some(h)
        };
        let _ = self.shared.circuits.set(intake.circuits().clone());
        let mut last_poll_error: Option<Instant> = None;
        tracing::info!(input = %input, priority = %priority, "ingest started");
        let consumer = self.consumer.clone();
        // What the loop last asked to be paused, and under which assignment.
        let mut applied: Option<(PauseWish, u64)> = None;
        let max_waiting = intake.rings().capacity();
        while !stop.load(Ordering::SeqCst) {
            self.resume_loaded(&mut intake);
            intake.reroute_parked();
            let (prio_held, normal_held) = self.flush_pending(&intake);
            // At the memory bound nothing more is read until what is held drains. The commit
            // tracker counts too: while one outcome is held back (a broker failure), every
            // offset behind it stays tracked, so at MAX_TRACKED_OFFSETS reading stops as well.
            let full = self.shared.stats.held_bytes.load(Ordering::Relaxed) >= self.max_held_bytes
                || self.shared.tracker.lock().tracked() >= MAX_TRACKED_OFFSETS;
            let wish = PauseWish {
                priority: prio_held || full,
                normal: normal_held || full,
                waiting: self.waiting_partitions_if_full(max_waiting),
                circuit: intake.circuits().parked_partitions(),
                all: false,
            };
            // Both rings full: let the lanes make room, then poll without waiting (heartbeats,
            // rebalances). One ring full: its topic is paused and the other one's records keep
            // coming, so poll briefly. Neither: poll normally.
            let wait = if full {
                // Paused for memory: nothing arrives; poll only to keep the group alive.
                5
            } else if wish.priority && wish.normal {
                intake.rings().wait_for_space(Duration::from_millis(5));
                0
            } else if wish.priority || wish.normal {
                5
            } else if self.shared.stats.waiting_for_model.load(Ordering::Relaxed) > 0 {
                // Records wait for a model load: look for its end often.
                20
            } else {
                // A record ends the wait at once; the timeout only paces the loop's other
                // duties (stop, held records, finished loads) when nothing arrives.
                200
            };
            let epoch = self.shared.assignment_epoch.load(Ordering::SeqCst);
            if applied.as_ref().is_none_or(|(w, e)| *w != wish || *e != epoch) {
                applied = self.apply_pauses(&wish, &priority, &input).then_some((wish, epoch));
            }
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
                    // A burst: the records librdkafka already holds are taken one after the
                    // other, without the housekeeping above (load completions, held records,
                    // pause reconciliation: several locks) between every two of them. The
                    // burst ends when nothing more is ready, at BURST records, at stop, or
                    // when held records reach the memory bound.
                    let mut flowing = self.dispatch(msg, &priority, &input, &mut intake);
                    for _ in 1..BURST {
                        if !flowing
                            || stop.load(Ordering::Relaxed)
                            || self.shared.stats.held_bytes.load(Ordering::Relaxed)
                                >= self.max_held_bytes
                        {
                            break;
                        }
                        match consumer.poll(Duration::ZERO) {
                            Some(Ok(msg)) => {
                                flowing = self.dispatch(msg, &priority, &input, &mut intake);
                            }
                            Some(Err(e)) => {
                                tracing::debug!(error = %e, "consumer error in a burst");
                                break;
                            }
                            None => break,
                        }
                    }
                }
            }
        }
        // Nothing more is read: every assigned partition is paused, and from here on the
        // drain poller (Pipeline::stop) polls the consumer, so that heartbeats and rebalances
        // are served while the pipeline drains.
        let everything = PauseWish { all: true, ..PauseWish::default() };
        self.apply_pauses(&everything, &priority, &input);
        self.shared.ingest_stopped.store(true, Ordering::SeqCst);
        // The committer ends after the commit it may be making; one stuck on a broker that is
        // gone is left behind (Pipeline::stop makes the final commit within the deadline).
        drop(stop_commits);
        if let Some(committer) = committer {
            if crate::engine::wait_until(Instant::now() + Duration::from_secs(5), || {
                committer.is_finished()
            }) {
                let _ = committer.join();
            } else {
                tracing::warn!("the commit thread is still waiting on the broker; left behind");
            }
        }
        // Records waiting for a model load get it first (the loads in progress finish), unless
        // the drain deadline passes: then they stay uncommitted.
        loop {
            let waiting = self.shared.pending.lock().waiting.len();
            if waiting == 0 {
                break;
            }
            if intake.rings().is_abandoned() {
                tracing::warn!(
                    records = waiting,
                    "drain deadline passed: records waiting for a model load left uncommitted"
                );
                break;
            }
            if let Some(done) = intake.wait_for_load(Duration::from_millis(50)) {
                self.resume_waiting(&mut intake, &done);
            }
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

/// Most records the ingest loop takes in one burst, between two rounds of its housekeeping.
const BURST: usize = 256;

/// What the ingest loop wants paused.
#[derive(Debug, Default, PartialEq)]
struct PauseWish {
    /// The priority topic (its ring is full, or memory is at its bound).
    priority: bool,
    /// The input topic (likewise, for the normal ring).
    normal: bool,
    /// Partitions whose records wait for a model load, while the wait queue is full.
    waiting: Vec<(Arc<str>, i32)>,
    /// Partitions with requests parked behind an open circuit breaker.
    circuit: Vec<(Arc<str>, i32)>,
    /// Everything assigned (stopping).
    all: bool,
}

impl KafkaSource {
    /// Hands one consumed record to [`Self::handle`] with its topic and lane. Returns
    /// whether it flowed: queued onto its ring or answered at once (a dead letter); `false`
    /// when it was held behind a full ring or parked for a model load, which ends a burst so
    /// that the loop's pause reconciliation sees it before another record is read.
    fn dispatch(
        &self,
        msg: rdkafka::message::BorrowedMessage<'_>,
        priority: &Arc<str>,
        input: &Arc<str>,
        intake: &mut Intake,
    ) -> bool {
        let (topic, prio) = if msg.topic() == &**priority {
            (priority.clone(), Priority::High)
        } else {
            (input.clone(), Priority::Normal)
        };
        self.handle(msg, topic, prio, intake)
    }

    fn handle(
        &self,
        msg: rdkafka::message::BorrowedMessage<'_>,
        topic: Arc<str>,
        priority: Priority,
        intake: &mut Intake,
    ) -> bool {
        let source = Source { topic, partition: msg.partition(), offset: msg.offset() };
        self.shared.tracker.lock().track(&source.topic, source.partition, source.offset);
        let ct = content_type(&msg);
        let replays = replay_count(&msg);
        let event_time_ms = msg.timestamp().to_millis();
        let (key, payload, headers) = message_bytes(&self.consumer, msg, &self.shared.stats);
        let mut env = Envelope::new(payload, source, priority);
        env.key = key;
        env.event_time_ms = event_time_ms;
        env.replays = replays;
        env.headers = headers;
        match ct {
            Err(reason) => {
                intake.reject_unread(env, Failure::new(ErrorClass::Parse, reason));
                true
            }
            Ok(content_type) => {
                env.content_type = content_type;
                let r = intake.try_decode(env);
                self.place(r, intake)
            }
        }
    }

    /// Puts a decoded record where it goes: onto its ring, behind requests already held for
    /// that ring (arrival order; a priority request never waits behind normal ones), or
    /// among the records waiting for their model to load. Returns whether it went straight
    /// onto its ring (or was rejected): see [`Self::dispatch`].
    fn place(&self, r: Intaken, intake: &Intake) -> bool {
        match r {
            Intaken::Rejected => true,
            Intaken::Request(req) => {
                let mut pending = self.shared.pending.lock();
                let held = pending.queue_of(req.env.priority);
                if !held.is_empty() {
                    held.push_back(req);
                    false
                } else if let Err(back) = intake.queue(req) {
                    held.push_back(back);
                    false
                } else {
                    true
                }
            }
            Intaken::Waiting(env, key) => {
                let mut pending = self.shared.pending.lock();
                if pending.waiting.is_empty() {
                    tracing::info!(model = %key, "records wait for a model load (loader thread); the rest keep flowing");
                }
                pending.waiting.push_back((env, key));
                self.shared
                    .stats
                    .waiting_for_model
                    .store(pending.waiting.len() as u64, Ordering::Relaxed);
                false
            }
        }
    }

    /// Decodes the records whose model load finished (with the model it loaded, or as dead
    /// letters if it failed) and places them.
    fn resume_loaded(&self, intake: &mut Intake) {
        for done in intake.loads_finished() {
            self.resume_waiting(intake, &done);
        }
    }

    fn resume_waiting(&self, intake: &mut Intake, done: &LoadDone) {
        let mine: Vec<Envelope> = {
            let mut pending = self.shared.pending.lock();
            let (mine, rest): (VecDeque<_>, VecDeque<_>) =
                std::mem::take(&mut pending.waiting).into_iter().partition(|(_, k)| *k == done.key);
            pending.waiting = rest;
            self.shared
                .stats
                .waiting_for_model
                .store(pending.waiting.len() as u64, Ordering::Relaxed);
            mine.into_iter().map(|(env, _)| env).collect()
        };
        for env in mine {
            let r = intake.resume(env, done);
            self.place(r, intake);
        }
    }

    /// The partitions of the records waiting for a model load, once the wait queue holds
    /// `max` records (then those partitions pause; the others keep flowing).
    fn waiting_partitions_if_full(&self, max: usize) -> Vec<(Arc<str>, i32)> {
        let pending = self.shared.pending.lock();
        if pending.waiting.len() < max {
            return Vec::new();
        }
        let mut parts: Vec<(Arc<str>, i32)> = pending
            .waiting
            .iter()
            .map(|(env, _)| (env.source.topic.clone(), env.source.partition))
            .collect();
        parts.sort();
        parts.dedup();
        parts
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

    /// Pauses exactly the assigned partitions `wish` names and resumes the others: a full
    /// ring pauses only the topic that feeds it, a full wait queue only the partitions whose
    /// records wait. Returns whether every pause and resume took effect.
    fn apply_pauses(&self, wish: &PauseWish, priority: &str, input: &str) -> bool {
        let assigned = self.shared.assigned.lock().clone();
        let want: HashSet<(String, i32)> = assigned
            .into_iter()
            .filter(|(t, p)| {
                wish.all
                    || (wish.priority && t == priority)
                    || (wish.normal && t == input)
                    || wish.waiting.iter().any(|(wt, wp)| **wt == **t && wp == p)
                    || wish.circuit.iter().any(|(wt, wp)| **wt == **t && wp == p)
            })
            .collect();
        let mut now = self.shared.paused_parts.lock();
        let tpl_of = |parts: &mut dyn Iterator<Item = &(String, i32)>| {
            let mut tpl = TopicPartitionList::new();
            for (t, p) in parts {
                tpl.add_partition(t, *p);
            }
            tpl
        };
        let to_pause = tpl_of(&mut want.difference(&now));
        let to_resume = tpl_of(&mut now.difference(&want));
        let mut ok = true;
        if to_pause.count() > 0 {
            match self.consumer.pause(&to_pause) {
                Ok(()) => {
                    now.extend(want.iter().cloned());
                    self.shared.stats.pauses.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pausing partitions failed");
                    ok = false;
                }
            }
        }
        if to_resume.count() > 0 {
            match self.consumer.resume(&to_resume) {
                Ok(()) => now.retain(|x| want.contains(x)),
                Err(e) => {
                    tracing::warn!(error = %e, "resuming partitions failed");
                    ok = false;
                }
            }
        }
        let mut topics = self.shared.paused_topics.lock();
        topics.clear();
        if wish.priority || wish.all {
            topics.push(priority.to_owned());
        }
        if wish.normal || wish.all {
            topics.push(input.to_owned());
        }
        self.shared.paused.store(!now.is_empty(), Ordering::SeqCst);
        tracing::debug!(paused = now.len(), ?wish, "backpressure: paused partitions reconciled");
        ok
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
        if self.shared.transactions.is_some() {
            // Exactly-once: the emit thread's last transaction committed what was settled.
            return;
        }
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

    /// Starts polling the consumer once the ingest thread has stopped (every assigned
    /// partition is paused by then), until the returned poller is dropped: heartbeats,
    /// rebalance callbacks and `max.poll.interval.ms` are served while the pipeline drains.
    /// A record that still arrives is not processed (it is not tracked, so no commit passes
    /// it: it is read again later).
    pub fn drain_poller(&self) -> Option<DrainPoller> {
        let consumer = self.consumer.clone()?;
        let shared = self.shared.clone();
        let (stop, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let poll = move || {
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                stop_rx.recv_timeout(Duration::from_millis(100))
            {
                if !shared.ingest_stopped.load(Ordering::SeqCst) {
                    continue;
                }
                for _ in 0..64 {
                    match consumer.poll(Duration::ZERO) {
                        None => break,
                        Some(Ok(m)) => tracing::debug!(topic = m.topic(), partition = m.partition(), offset = m.offset(),
                            "record fetched while stopping: not processed (read again after a restart)"),
                        Some(Err(e)) => tracing::debug!(error = %e, "consumer error while draining"),
                    }
                }
            }
        };
        match std::thread::Builder::new().name("sluice-drain-poll".into()).spawn(poll) {
            Ok(thread) => Some(DrainPoller { stop: Some(stop), thread: Some(thread) }),
            Err(e) => {
                tracing::warn!(error = %e, "could not spawn the drain poller; the consumer is not polled while draining");
                None
            }
        }
    }

    /// Leaves the consumer group.
    pub fn unsubscribe(&self) {
        if let Some(c) = &self.consumer {
            c.unsubscribe();
        }
    }
}

/// The thread that polls the consumer while the pipeline drains; dropping it stops and joins
/// it (a poll inside a rebalance callback ends within `revokeTimeoutMs`).
pub struct DrainPoller {
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for DrainPoller {
    fn drop(&mut self) {
        self.stop = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
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
