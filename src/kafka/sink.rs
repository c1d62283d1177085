//! The Kafka outcome sink (thread `sluice-emit`): one result per request to the output topic,
//! one dead letter per failed request to the DLQ topic, metrics snapshots to the metrics
//! topic; the broker's acknowledgements feed the commit tracker.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use parking_lot::Mutex;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig,
};
use rdkafka::ClientContext;

use super::commit::CommitTracker;
use super::txn::{self, Transactions};
use crate::core::{bounded_reason, EmitStats, ErrorClass, Outcome, Source};
use crate::render::{result_key, write_result, DeadLetterHeaders, OriginalRecord};
use crate::run::{OutcomeSink, RunError};
use crate::telemetry::metrics::OutcomeMetrics;

/// A dead letter sent in place of a refused outcome carries at most this many leading bytes
/// of the request's value.
pub const CUT_VALUE_BYTES: usize = 64 * 1024;

/// How much of its record an outcome still carries. When the broker (or the client) refuses
/// an outcome because of the record itself, it is sent again one step smaller: an outcome
/// whose record is refused can never block its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// The outcome as rendered: the result, or the dead letter with the whole request.
    Whole,
    /// A dead letter with the key cut to `kafka.producer.deadLetterKeyBytes` and the value
    /// to [`CUT_VALUE_BYTES`].
    Cut,
    /// A dead letter of headers only: no key, an empty value.
    Bare,
}

/// A record being produced, kept until it is acknowledged so it can be sent again.
pub struct PendingRecord {
    topic: Arc<str>,
    key: Option<Bytes>,
    value: Bytes,
    headers: Option<DeadLetterHeaders>,
    /// The input record whose outcome this is (None for metrics reports).
    source: Option<Source>,
    /// The input record's key and value (shared, not copied), to build a smaller dead
    /// letter from if this record is refused.
    request: Option<(Option<Bytes>, Bytes)>,
    /// For a result: the input record's delivery attempts, for the dead letter it becomes if
    /// it is refused (its headers are only built then, not for every result).
    if_refused: Option<u32>,
    shape: Shape,
    attempts: u32,
}

/// Whether the broker or the client refused a record because of the record itself (so that
/// sending it again as it is can never succeed), as opposed to a failure of the broker, the
/// network or the configuration, which heals by itself or by an operator's hand.
pub fn refused_for_the_record(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

struct Retry {
    at: Instant,
    rec: Box<PendingRecord>,
}

impl PartialEq for Retry {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at
    }
}
impl Eq for Retry {}
impl PartialOrd for Retry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Retry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.at.cmp(&o.at)
    }
}

/// The producer's librdkafka context: delivery reports land here (on the emit thread,
/// inside `poll`).
pub struct SinkContext {
    pub tracker: Arc<Mutex<CommitTracker>>,
    pub stats: Arc<EmitStats>,
    failed: Mutex<Vec<(Box<PendingRecord>, KafkaError)>>,
    /// Sources whose outcomes were acknowledged in the current `poll`, booked into the
    /// tracker together afterwards ([`SinkContext::settle_acks`]): one lock of the tracker,
    /// which the ingest and commit threads share, per poll instead of one per record.
    acks: Mutex<Vec<Source>>,
}

impl SinkContext {
    /// A context acknowledging into `tracker`.
    pub fn new(tracker: Arc<Mutex<CommitTracker>>, stats: Arc<EmitStats>) -> Self {
        SinkContext { tracker, stats, failed: Mutex::new(Vec::new()), acks: Mutex::new(Vec::new()) }
    }

    /// Books the acknowledgements collected since the last call into the commit tracker.
    /// Every `poll` or `flush` of the producer is followed by this call.
    pub fn settle_acks(&self) {
        let mut acks = self.acks.lock();
        if acks.is_empty() {
            return;
        }
        let mut tracker = self.tracker.lock();
        for s in acks.drain(..) {
            tracker.ack(&s.topic, s.partition, s.offset);
        }
    }
}

impl ClientContext for SinkContext {
    crate::kafka::oauth::refresh_oauth_token!();
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Box<PendingRecord>;

    fn delivery(&self, result: &DeliveryResult<'_>, rec: Box<PendingRecord>) {
        match result {
            Ok(_) => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                let mut rec = rec;
                if let Some(s) = rec.source.take() {
                    self.acks.lock().push(s);
                }
            }
            Err((e, _)) => self.failed.lock().push((rec, e.clone())),
        }
    }
}

/// Renders one metrics snapshot (the metrics topic's record value).
pub type MetricsRenderer = Box<dyn Fn() -> Vec<u8> + Send>;

/// The Kafka outcome sink: what the emit thread needs.
pub struct KafkaSink {
    pub producer: BaseProducer<SinkContext>,
    /// Per-outcome counters and latency histograms (shared with the control plane's registry).
    pub outcomes: Arc<OutcomeMetrics>,
    pub output_topic: Arc<str>,
    pub dlq_topic: Arc<str>,
    pub metrics_topic: Arc<str>,
    /// Renders a metrics snapshot; `None` disables reports.
    pub metrics: Option<(Duration, MetricsRenderer)>,
    pub max_attempts: u32,
    /// `kafka.producer.deadLetterKeyBytes`.
    pub dead_letter_key_bytes: usize,
    /// `streaming.inference.processing.maxReplays`: a dead letter of a request replayed this
    /// often says so in its reason.
    pub max_replays: u32,
    /// Exactly-once: the transactions (`None`: at-least-once).
    pub txn: Option<Transactions>,
}

/// The next outcome of a burst: the first (`took == 0`) waits up to `wait`, the rest are
/// taken only if already there (`Timeout` ends the burst).
fn next_outcome(
    completions: &Receiver<Outcome>,
    took: usize,
    wait: Duration,
) -> Result<Outcome, RecvTimeoutError> {
    if took == 0 {
        return completions.recv_timeout(wait);
    }
    completions.try_recv().map_err(|e| match e {
        crossbeam_channel::TryRecvError::Empty => RecvTimeoutError::Timeout,
        crossbeam_channel::TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
    })
}

/// The longest wait between two sends of one record.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// 200 ms after the first failed send, doubling, at most [`MAX_BACKOFF`].
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(7))).min(MAX_BACKOFF)
}

impl OutcomeSink for KafkaSink {
    fn thread_name(&self) -> &'static str {
        "sluice-emit"
    }

    /// Runs until the completion channel is closed and every record is settled, or until
    /// `abandon` is set (the drain deadline): then what is unacknowledged stays uncommitted.
    fn run(
        mut self: Box<Self>,
        completions: Receiver<Outcome>,
        abandon: &AtomicBool,
    ) -> Result<(), RunError> {
        if let Some(tx) = self.txn.take() {
            return self.run_transactional(tx, completions, abandon);
        }
        let mut retries: BinaryHeap<Reverse<Retry>> = BinaryHeap::new();
        let mut closed = false;
        let mut last_metrics = Instant::now();
        let mut buf = Vec::with_capacity(4096);
        loop {
            // Take outcomes in bursts (a new outcome wakes the wait at once). With records in
            // flight, wake every 10 ms to serve their delivery reports (they only settle
            // commits and free memory; results are already on their way); with nothing in
            // flight there is nothing to serve, so wait up to the next retry, at most 250 ms:
            // an idle pipeline's emit thread wakes 4 times a second, and one whose broker is
            // gone (outcomes in flight for as long as it is) 100 times.
            let idle_wait = if self.producer.in_flight_count() > 0 {
                Duration::from_millis(10)
            } else {
                let next_retry = retries
                    .peek()
                    .map(|r| r.0.at.saturating_duration_since(Instant::now()))
                    .unwrap_or(Duration::from_millis(250));
                next_retry.clamp(Duration::from_millis(1), Duration::from_millis(250))
            };
            let mut took = 0;
            while took < 512 {
                match next_outcome(&completions, took, idle_wait) {
                    Ok(o) => {
                        took += 1;
                        self.emit(o, &mut buf, &mut retries);
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            // Draining (no more outcomes can come): wait for acknowledgements instead of
            // spinning; the next retry's time bounds the wait.
            let wait = if closed {
                retries.peek().map_or(Duration::from_millis(50), |r| {
                    r.0.at.saturating_duration_since(Instant::now()).min(Duration::from_millis(50))
                })
            } else {
                Duration::ZERO
            };
            self.producer.poll(wait);
            self.producer.context().settle_acks();
            self.settle_failures(&mut retries);
            while retries.peek().is_some_and(|r| r.0.at <= Instant::now()) {
                if let Some(Reverse(r)) = retries.pop() {
                    self.stats().delivery_retries.fetch_add(1, Ordering::Relaxed);
                    self.send(r.rec, &mut retries);
                }
            }
            if let Some(rec) = self.metrics_report(&mut last_metrics) {
                self.send(rec, &mut retries);
            }
            if closed && self.producer.in_flight_count() == 0 && retries.is_empty() {
                break;
            }
            if abandon.load(Ordering::SeqCst) {
                tracing::warn!(
                    in_flight = self.producer.in_flight_count(),
                    retrying = retries.len(),
                    "drain deadline passed: emit stops with outcomes unacknowledged (their offsets stay uncommitted)"
                );
                break;
            }
        }
        if abandon.load(Ordering::SeqCst) {
            // Nothing more will be waited for: drop what is queued or in flight, so that
            // destroying the producer does not wait on a broker that is gone.
            self.producer.purge(PurgeConfig::default().queue().inflight());
            self.producer.poll(Duration::ZERO);
        } else {
            let _ = self.producer.flush(Duration::from_secs(10));
        }
        self.producer.context().settle_acks();
        tracing::info!("emit stopped");
        Ok(())
    }
}

impl KafkaSink {
    fn stats(&self) -> &EmitStats {
        &self.producer.context().stats
    }

    /// The metrics topic's next report, when one is due (an empty render means the figures
    /// are not there yet: the pipeline is still starting).
    fn metrics_report(&self, last: &mut Instant) -> Option<Box<PendingRecord>> {
        let (every, render) = self.metrics.as_ref()?;
        if last.elapsed() < *every {
            return None;
        }
        let value = render();
        if value.is_empty() {
            return None;
        }
        *last = Instant::now();
        self.stats().metrics_reports.fetch_add(1, Ordering::Relaxed);
        Some(Box::new(PendingRecord {
            topic: self.metrics_topic.clone(),
            key: None,
            value: Bytes::from(value),
            headers: None,
            source: None,
            request: None,
            if_refused: None,
            shape: Shape::Whole,
            attempts: 1,
        }))
    }

    fn emit(&self, o: Outcome, buf: &mut Vec<u8>, retries: &mut BinaryHeap<Reverse<Retry>>) {
        if let Some(rec) = self.record_of(o, buf) {
            self.send(rec, retries);
        }
    }

    /// Counts `o` and renders the record it becomes (`None`: a result that could not be
    /// rendered, logged).
    fn record_of(&self, o: Outcome, buf: &mut Vec<u8>) -> Option<Box<PendingRecord>> {
        self.outcomes.record(&o);
        self.stats().count(&o);
        let source = Some(o.env.source.clone());
        let request = Some((o.env.key.clone(), o.env.payload.clone()));
        let rec = match o.failure() {
            None => {
                buf.clear();
                if !write_result(&o, buf) {
                    tracing::error!(offset = o.env.source.offset, "could not render a result");
                    return None;
                }
                PendingRecord {
                    topic: self.output_topic.clone(),
                    // The request's key is shared, not copied; only an id-as-key is.
                    key: Some(match &o.env.key {
                        Some(k) => k.clone(),
                        None => Bytes::copy_from_slice(result_key(&o)),
                    }),
                    value: Bytes::copy_from_slice(buf),
                    headers: None,
                    source,
                    request,
                    if_refused: Some(o.env.attempts),
                    shape: Shape::Whole,
                    attempts: 1,
                }
            }
            Some(f) => {
                tracing::debug!(class = f.class.as_str(), reason = %f.reason, topic = %o.env.source.topic,
                    partition = o.env.source.partition, offset = o.env.source.offset, "dead letter");
                PendingRecord {
                    topic: self.dlq_topic.clone(),
                    key: o.env.key.clone(),
                    value: o.env.payload.clone(),
                    headers: DeadLetterHeaders::with_replay_limit(&o, self.max_replays),
                    source,
                    request,
                    if_refused: None,
                    shape: Shape::Whole,
                    attempts: 1,
                }
            }
        };
        Some(Box::new(rec))
    }

    /// The emit loop of `exactly_once` (see `kafka/txn.rs`): outcomes are produced in
    /// offset order per partition inside transactions that also commit their offsets. Any
    /// failure aborts the open transaction and ends the thread with
    /// [`RunError::Transaction`] (the control plane restarts the pipeline from the last
    /// committed offsets); nothing is retried inside a transaction.
    fn run_transactional(
        &self,
        mut tx: Transactions,
        completions: Receiver<Outcome>,
        abandon: &AtomicBool,
    ) -> Result<(), RunError> {
        let mut buf = Vec::with_capacity(4096);
        let mut last_metrics = Instant::now();
        let r =
            self.transactional_loop(&mut tx, &completions, abandon, &mut buf, &mut last_metrics);
        match r {
            Ok(()) => {
                tracing::info!("emit stopped");
                Ok(())
            }
            Err(e) => {
                let (cause, fatal) = match &e {
                    RunError::Transaction { cause, fatal } => (cause.clone(), *fatal),
                    other => (other.to_string(), false),
                };
                if !fatal {
                    tx.abort(&self.producer);
                }
                self.producer.purge(PurgeConfig::default().queue().inflight());
                self.producer.poll(Duration::ZERO);
                self.stats().txn_aborted.fetch_add(1, Ordering::Relaxed);
                *self.stats().txn_failure.lock() = Some((cause.clone(), fatal));
                if fatal {
                    tracing::error!(%cause, "transaction failed for good: the pipeline stops (not restarted)");
                } else {
                    tracing::error!(%cause, "transaction aborted: nothing of it is committed; the pipeline restarts from the last committed offsets");
                }
                Err(RunError::Transaction { cause, fatal })
            }
        }
    }

    fn transactional_loop(
        &self,
        tx: &mut Transactions,
        completions: &Receiver<Outcome>,
        abandon: &AtomicBool,
        buf: &mut Vec<u8>,
        last_metrics: &mut Instant,
    ) -> Result<(), RunError> {
        let ctx = self.producer.context();
        let mut closed = false;
        loop {
            let wait = tx.due_in().unwrap_or(Duration::from_millis(250)).clamp(
                Duration::from_millis(1),
                Duration::from_millis(if closed { 1 } else { 250 }),
            );
            let mut took = 0;
            while took < 512 && !closed {
                match next_outcome(completions, took, wait) {
                    Ok(o) => {
                        took += 1;
                        let (ready, dropped) = tx.admit(o, &ctx.tracker);
                        if dropped > 0 {
                            self.stats().txn_dropped.fetch_add(dropped as u64, Ordering::Relaxed);
                        }
                        for o in ready {
                            let source = o.env.source.clone();
                            let Some(mut rec) = self.record_of(o, buf) else { continue };
                            if txn::was_refused(&source) {
                                rec = self.bare(rec)?;
                            }
                            tx.ensure_open(&self.producer)?;
                            self.send_in_transaction(rec)?;
                            ctx.tracker.lock().ack(&source.topic, source.partition, source.offset);
                            tx.produced();
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => closed = true,
                }
            }
            self.producer.poll(Duration::ZERO);
            ctx.settle_acks();
            self.check_deliveries()?;
            if let Some(rec) = self.metrics_report(last_metrics) {
                tx.ensure_open(&self.producer)?;
                self.send_in_transaction(rec)?;
            }
            let asked: Vec<crossbeam_channel::Sender<bool>> =
                tx.requests.try_iter().map(|r| r.reply).collect();
            if tx.due() || !asked.is_empty() || closed {
                let committed = tx.commit(&self.producer, &ctx.tracker);
                ctx.settle_acks();
                let ok = committed.is_ok();
                for reply in asked {
                    let _ = reply.send(ok);
                }
                if let Some(c) = committed? {
                    self.stats().txn_committed.fetch_add(1, Ordering::Relaxed);
                    self.outcomes.observe_transaction(c.records, c.duration);
                }
            }
            if closed {
                let held = tx.held();
                if held > 0 {
                    tracing::warn!(outcomes = held, "outcomes waiting for an earlier record's outcome at stop: not produced, their offsets stay uncommitted");
                }
                return Ok(());
            }
            if abandon.load(Ordering::SeqCst) {
                return Err(RunError::Transaction {
                    cause: "drain deadline passed with a transaction open".into(),
                    fatal: false,
                });
            }
        }
    }

    /// Fails the transaction if a delivery failed (its record is remembered if the broker
    /// refused it for its own sake, so that it cannot fail the next transaction too).
    fn check_deliveries(&self) -> Result<(), RunError> {
        let failed: Vec<_> = std::mem::take(&mut *self.producer.context().failed.lock());
        let Some((rec, e)) = failed.into_iter().next() else { return Ok(()) };
        if let Some(s) = &rec.source {
            if refused_for_the_record(&e) {
                txn::remember_refused(s);
            }
        }
        Err(txn::failure(&format!("delivering an outcome to {}", rec.topic), &e))
    }

    /// `rec` as a headers-only dead letter (its record's outcome was refused before).
    fn bare(&self, rec: Box<PendingRecord>) -> Result<Box<PendingRecord>, RunError> {
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        let mut rec = rec;
        while rec.shape != Shape::Bare {
            rec = self.smaller(rec, &e).map_err(|_| RunError::Transaction {
                cause: "an outcome could not be made smaller".into(),
                fatal: false,
            })?;
        }
        Ok(rec)
    }

    /// Hands a record to librdkafka inside the open transaction, waiting (polling) while its
    /// queue is full; a record the client refuses for its size is sent smaller at once.
    fn send_in_transaction(&self, rec: Box<PendingRecord>) -> Result<(), RunError> {
        let mut rec = rec;
        loop {
            match self.try_send(rec) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    self.producer.poll(Duration::from_millis(5));
                    self.producer.context().settle_acks();
                    self.check_deliveries()?;
                }
                Err((e, back)) if refused_for_the_record(&e) && back.source.is_some() => {
                    self.stats().cut_outcomes.fetch_add(1, Ordering::Relaxed);
                    rec = self
                        .smaller(back, &e)
                        .map_err(|_| txn::failure("producing an outcome", &e))?;
                }
                Err((e, _)) => return Err(txn::failure("producing an outcome", &e)),
            }
        }
    }

    /// One `send` of `rec`; on failure the error and the record.
    fn try_send(&self, rec: Box<PendingRecord>) -> Result<(), (KafkaError, Box<PendingRecord>)> {
        let topic = rec.topic.clone();
        let key = rec.key.clone();
        let value = rec.value.clone();
        let headers = rec.headers.as_ref().map(|hs| {
            let pairs = hs.pairs();
            let own = pairs.iter().fold(
                OwnedHeaders::new_with_capacity(pairs.len() + hs.carried.len()),
                |h, (k, v)| h.insert(Header { key: k, value: Some(v.as_bytes()) }),
            );
            hs.carried.iter().fold(own, |h, (k, v)| h.insert(Header { key: k, value: Some(v) }))
        });
        let mut record = BaseRecord::with_opaque_to(&topic, rec).payload(&value[..]);
        if let Some(k) = &key {
            record = record.key(&k[..]);
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        self.producer.send(record).map_err(|(e, back)| (e, back.delivery_opaque))
    }

    /// Hands a record to librdkafka, waiting (polling) while its queue is full.
    fn send(&self, rec: Box<PendingRecord>, retries: &mut BinaryHeap<Reverse<Retry>>) {
        let mut rec = rec;
        loop {
            match self.try_send(rec) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    self.producer.poll(Duration::from_millis(5));
                    self.producer.context().settle_acks();
                    self.settle_failures(retries);
                }
                Err((e, back)) => {
                    self.fail(back, e, retries);
                    return;
                }
            }
        }
    }

    fn settle_failures(&self, retries: &mut BinaryHeap<Reverse<Retry>>) {
        let failed: Vec<_> = std::mem::take(&mut *self.producer.context().failed.lock());
        for (rec, e) in failed {
            self.fail(rec, e, retries);
        }
    }

    fn fail(
        &self,
        mut rec: Box<PendingRecord>,
        e: KafkaError,
        retries: &mut BinaryHeap<Reverse<Retry>>,
    ) {
        if refused_for_the_record(&e) && rec.source.is_some() {
            match self.smaller(rec, &e) {
                Ok(smaller) => {
                    self.stats().cut_outcomes.fetch_add(1, Ordering::Relaxed);
                    retries.push(Reverse(Retry { at: Instant::now(), rec: smaller }));
                    return;
                }
                // Even headers alone were refused: that is the broker's doing (a topic limit
                // below a few kilobytes); retry below like any broker failure.
                Err(bare) => rec = bare,
            }
        }
        let Some(s) = rec.source.clone() else {
            if rec.attempts >= self.max_attempts {
                tracing::warn!(topic = %rec.topic, error = %e, "metrics report could not be delivered; dropped");
                return;
            }
            rec.attempts += 1;
            retries.push(Reverse(Retry { at: Instant::now() + backoff(rec.attempts), rec }));
            return;
        };
        let wait = backoff(rec.attempts);
        if rec.attempts == self.max_attempts {
            self.stats().undeliverable.fetch_add(1, Ordering::Relaxed);
            tracing::error!(topic = %rec.topic, source_topic = %s.topic, partition = s.partition, offset = s.offset,
                attempts = rec.attempts, error = %e,
                "outcome still undelivered after kafka.producer.maxAttempts sends; retrying every {} s, and its partition's commits wait for it",
                MAX_BACKOFF.as_secs());
        } else {
            tracing::warn!(topic = %rec.topic, attempt = rec.attempts, retry_in_ms = wait.as_millis() as u64, error = %e, "delivery failed; retrying");
        }
        rec.attempts = rec.attempts.saturating_add(1);
        retries.push(Reverse(Retry { at: Instant::now() + wait, rec }));
    }

    /// The next smaller shape of a refused outcome (see [`Shape`]); `Err` hands back a record
    /// that is already bare.
    fn smaller(
        &self,
        mut rec: Box<PendingRecord>,
        e: &KafkaError,
    ) -> Result<Box<PendingRecord>, Box<PendingRecord>> {
        let (key, value) = rec.request.clone().unwrap_or_default();
        let original = OriginalRecord::of(key.as_deref(), value.len());
        let what = if rec.headers.is_none() { "result" } else { "dead letter" };
        let mut headers = match (rec.headers.take(), rec.if_refused.take()) {
            (Some(h), _) => h,
            (None, Some(attempts)) => {
                let Some(source) = &rec.source else { return Err(rec) };
                let reason = format!(
                    "the result ({} bytes, key {} bytes) was refused by the broker or client",
                    rec.value.len(),
                    rec.key.as_ref().map_or(0, Bytes::len)
                );
                DeadLetterHeaders::for_record(
                    source,
                    attempts,
                    ErrorClass::TooLarge.as_str(),
                    reason,
                )
            }
            (None, None) => return Err(rec),
        };
        let reason = std::mem::take(&mut headers.reason);
        match rec.shape {
            Shape::Whole => {
                let kb = self.dead_letter_key_bytes;
                let cut_key = key.map(|k| k.slice(..k.len().min(kb)));
                let cut_value = value.slice(..value.len().min(CUT_VALUE_BYTES));
                headers.reason = bounded_reason(format!(
                    "{reason}; {what} refused ({e}), sent as a dead letter cut to {} of {} key bytes and {} of {} value bytes (sluice.original.* headers)",
                    cut_key.as_ref().map_or(0, Bytes::len),
                    original.key_bytes,
                    cut_value.len(),
                    original.value_bytes,
                ));
                tracing::warn!(source_topic = ?rec.source.as_ref().map(|s| s.topic.clone()),
                    offset = ?rec.source.as_ref().map(|s| s.offset), error = %e,
                    key_bytes = %original.key_bytes, value_bytes = %original.value_bytes,
                    "{what} refused because of the record's size; sending a cut dead letter instead");
                rec.key = cut_key;
                rec.value = cut_value;
                rec.shape = Shape::Cut;
                // The request's own headers may be what made it too large; a cut dead letter
                // is not replayed anyway.
                headers.carried.clear();
            }
            Shape::Cut => {
                headers.reason = bounded_reason(format!(
                    "{reason}; the cut dead letter was refused too ({e}): headers only"
                ));
                tracing::warn!(error = %e, "cut dead letter refused; sending headers only");
                rec.key = None;
                rec.value = Bytes::new();
                rec.shape = Shape::Bare;
            }
            Shape::Bare => {
                headers.reason = reason;
                rec.headers = Some(headers);
                return Err(rec);
            }
        }
        headers.original = Some(original);
        rec.headers = Some(headers);
        rec.topic = self.dlq_topic.clone();
        rec.attempts = 1;
        Ok(rec)
    }
}
