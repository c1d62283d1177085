//! Exactly-once (`processing.guarantee: exactly_once`): the emit thread's Kafka transactions.
//!
//! One transaction holds, per input partition, the outcomes (results and dead letters) of a
//! contiguous run of input offsets **and** those offsets, sent with the consumer's group
//! metadata (KIP-98 transactions, KIP-447 fencing); the broker makes both visible, or
//! neither. Outcomes complete out of order (several lanes, priority, dead letters written
//! at intake), so the emit thread holds an outcome back until every earlier offset of its
//! partition has been released: an outcome is produced only when its offset is the first one
//! of its partition still in flight ([`CommitTracker::first_in_flight`]). The offsets a
//! transaction commits are therefore exactly those of the outcomes it holds.
//!
//! Boundaries: a transaction commits `commitIntervalMs` after it began or at `maxRecords`
//! outcomes, when the pipeline drains, and when the consumer is about to lose partitions
//! (the ingest thread's revocation asks through [`CommitRequest`] and waits).
//!
//! Failure: any error inside a transaction aborts it, and the emit thread ends with
//! [`RunError::Transaction`]. The control plane then restarts the pipeline, which reads
//! again from the last committed offsets: nothing of the aborted transaction is committed,
//! so it is all processed again (a rewind by restart: no in-flight state survives it). A
//! fatal error (this producer was fenced by a newer instance with the same
//! `transactional.id`) is not restarted: the pipeline fails with that cause. An outcome the
//! broker refused because of the record itself is remembered, and after the restart that
//! record's outcome is sent as the smallest dead letter (headers only), so no record can
//! abort transactions forever.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use parking_lot::Mutex;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};

use super::commit::{CommitPoint, CommitRequest, CommitTracker};
use crate::core::{Outcome, Source};
use crate::run::RunError;

/// The transaction settings (`streaming.inference.processing.transactions`).
#[derive(Debug, Clone)]
pub struct TxnSettings {
    pub interval: Duration,
    pub max_records: usize,
    /// Bound of each blocking transaction call (commit, abort, offsets).
    pub call_timeout: Duration,
}

/// Most record positions remembered as refused by the broker for their own sake.
const MAX_REFUSED: usize = 100_000;

/// Records whose outcome the broker refused because of the record itself (a transaction was
/// aborted for it): after the restart their outcome is sent as a headers-only dead letter.
/// Process-wide, because the pipeline that learned it is gone by the time it matters.
static REFUSED: Mutex<Option<HashSet<(String, i32, i64)>>> = parking_lot::const_mutex(None);

/// Remembers that `s`'s outcome was refused for its own sake.
pub fn remember_refused(s: &Source) {
    let mut r = REFUSED.lock();
    let set = r.get_or_insert_with(HashSet::new);
    if set.len() < MAX_REFUSED {
        set.insert((s.topic.to_string(), s.partition, s.offset));
    }
}

/// Whether `s`'s outcome was refused for its own sake before.
pub fn was_refused(s: &Source) -> bool {
    REFUSED
        .lock()
        .as_ref()
        .is_some_and(|set| set.contains(&(s.topic.to_string(), s.partition, s.offset)))
}

/// The emit thread's transaction state.
/// The consumer's group metadata, sent with each transaction's offsets (KIP-447 fencing).
pub type GroupMetadata = Box<dyn Fn() -> Option<ConsumerGroupMetadata> + Send>;

pub struct Transactions {
    group_metadata: GroupMetadata,
    /// Set when this state is dropped (the emit thread ended): a revocation then has no
    /// transaction to wait for.
    closed: Arc<std::sync::atomic::AtomicBool>,
    pub settings: TxnSettings,
    pub requests: Receiver<CommitRequest>,
    /// When the open transaction began (`None`: none is open).
    open: Option<Instant>,
    /// Outcomes produced in the open transaction.
    records: usize,
    /// Outcomes waiting for an earlier offset of their partition.
    held: HashMap<(Arc<str>, i32), BTreeMap<i64, Outcome>>,
}

/// What a finished transaction did, for the metrics.
pub struct Committed {
    pub records: usize,
    pub duration: Duration,
}

impl Transactions {
    /// Transaction state; `group_metadata` gives the consumer's, sent with each commit.
    pub fn new(
        group_metadata: GroupMetadata,
        settings: TxnSettings,
        requests: Receiver<CommitRequest>,
        closed: Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        Transactions {
            group_metadata,
            closed,
            settings,
            requests,
            open: None,
            records: 0,
            held: HashMap::new(),
        }
    }

    /// Outcomes held back, waiting for earlier offsets.
    pub fn held(&self) -> usize {
        self.held.values().map(BTreeMap::len).sum()
    }

    /// Whether the open transaction is due (its interval passed, or it is full).
    pub fn due(&self) -> bool {
        self.open.is_some_and(|t| {
            t.elapsed() >= self.settings.interval || self.records >= self.settings.max_records
        })
    }

    /// How long until the open transaction is due (for the emit thread's waits).
    pub fn due_in(&self) -> Option<Duration> {
        self.open.map(|t| self.settings.interval.saturating_sub(t.elapsed()))
    }

    /// Takes `o` in and returns the outcomes that may be produced now, in offset order (`o`
    /// and those it unblocks, if its offset is its partition's first in flight), and how
    /// many were dropped: an outcome whose record is no longer in flight (its partition was
    /// revoked: the next owner reads it again) is dropped. The caller acknowledges each
    /// returned outcome in the tracker as it produces it.
    pub fn admit(&mut self, o: Outcome, tracker: &Mutex<CommitTracker>) -> (Vec<Outcome>, usize) {
        let s = &o.env.source;
        let key = (s.topic.clone(), s.partition);
        if !tracker.lock().is_in_flight(&s.topic, s.partition, s.offset) {
            return (Vec::new(), 1);
        }
        self.held.entry(key.clone()).or_default().insert(s.offset, o);
        (self.release(&key, tracker), 0)
    }

    /// The held outcomes of `key` whose turn it is, in offset order.
    fn release(&mut self, key: &(Arc<str>, i32), tracker: &Mutex<CommitTracker>) -> Vec<Outcome> {
        let mut out = Vec::new();
        let Some(map) = self.held.get_mut(key) else { return out };
        let tracker = tracker.lock();
        // The tracker is acknowledged as outcomes are produced (by the caller), so the first
        // offset in flight moves on as `out` grows: walk the held map in order instead.
        let Some((mut next, blocked)) = tracker.first_in_flight(&key.0, key.1) else {
            return out;
        };
        if blocked {
            return out;
        }
        while let Some(o) = map.remove(&next) {
            out.push(o);
            // The next tracked offset after `next` (offsets need not be contiguous numbers:
            // compaction, transaction markers).
            match tracker.next_tracked_after(&key.0, key.1, next) {
                Some(n) => next = n,
                None => break,
            }
        }
        if map.is_empty() {
            self.held.remove(key);
        }
        out
    }

    /// Begins a transaction unless one is open.
    pub fn ensure_open<C: ProducerContext>(
        &mut self,
        producer: &BaseProducer<C>,
    ) -> Result<(), RunError> {
        if self.open.is_none() {
            producer.begin_transaction().map_err(|e| failure("beginning a transaction", &e))?;
            self.open = Some(Instant::now());
            self.records = 0;
        }
        Ok(())
    }

    /// Counts an outcome produced in the open transaction.
    pub fn produced(&mut self) {
        self.records += 1;
    }

    /// Commits the open transaction with the offsets acknowledged in `tracker` since the
    /// last one (and drops held outcomes of partitions no longer tracked). `Ok(None)` when
    /// none was open.
    pub fn commit<C: ProducerContext>(
        &mut self,
        producer: &BaseProducer<C>,
        tracker: &Mutex<CommitTracker>,
    ) -> Result<Option<Committed>, RunError> {
        {
            let tracker = tracker.lock();
            self.held.retain(|(t, p), _| tracker.is_tracked(t, *p));
        }
        let Some(began) = self.open else { return Ok(None) };
        #[cfg(feature = "fault-injection")]
        if self.records > 0 {
            // The transaction's outcomes reach the broker first, as when a real commit fails.
            let _ = producer.flush(self.settings.call_timeout);
            injected_failure()?;
        }
        let timeout = self.settings.call_timeout;
        let points: Vec<CommitPoint> = tracker.lock().take_commits();
        if !points.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for p in &points {
                tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.offset))
                    .map_err(|e| failure("listing the transaction's offsets", &e))?;
            }
            let Some(cgm) = (self.group_metadata)() else {
                return Err(RunError::Transaction {
                    cause: "the consumer has no group metadata to commit offsets with".into(),
                    fatal: false,
                });
            };
            producer
                .send_offsets_to_transaction(&tpl, &cgm, timeout)
                .map_err(|e| failure("adding the input offsets to the transaction", &e))?;
        }
        let mut tries = 0;
        loop {
            match producer.commit_transaction(timeout) {
                Ok(()) => break,
                Err(KafkaError::Transaction(e)) if e.is_retriable() && tries < 3 => {
                    tries += 1;
                    tracing::warn!(error = %e, "transaction commit will be retried");
                }
                Err(e) => return Err(failure("committing the transaction", &e)),
            }
        }
        let mut tracker = tracker.lock();
        for p in &points {
            tracker.commit_confirmed(&p.topic, p.partition, p.offset);
        }
        drop(tracker);
        self.open = None;
        Ok(Some(Committed {
            records: std::mem::take(&mut self.records),
            duration: began.elapsed(),
        }))
    }

    /// Aborts the open transaction (after an error; best effort: a fenced or failed producer
    /// cannot, and the broker aborts it at `transaction.timeout.ms` anyway).
    pub fn abort<C: ProducerContext>(&mut self, producer: &BaseProducer<C>) {
        if self.open.take().is_some() {
            if let Err(e) = producer.abort_transaction(self.settings.call_timeout) {
                tracing::warn!(error = %e, "aborting the transaction failed; the broker aborts it at its timeout");
            }
        }
        self.held.clear();
    }
}

/// Test builds: `SLUICE_TEST_FAIL_TRANSACTION=K` fails the commit of the K-th transaction
/// that holds outcomes (counted across pipeline restarts in the process) once, as an
/// abortable error.
#[cfg(feature = "fault-injection")]
fn injected_failure() -> Result<(), RunError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COMMITS: AtomicU64 = AtomicU64::new(0);
    let n = COMMITS.fetch_add(1, Ordering::Relaxed) + 1;
    let at = std::env::var("SLUICE_TEST_FAIL_TRANSACTION").ok().and_then(|v| v.parse::<u64>().ok());
    if at == Some(n) {
        return Err(RunError::Transaction {
            cause: format!(
                "injected failure of transaction commit {n} (SLUICE_TEST_FAIL_TRANSACTION)"
            ),
            fatal: false,
        });
    }
    Ok(())
}

impl Drop for Transactions {
    fn drop(&mut self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The run error of a failed transaction call: fatal (fenced: a newer instance owns this
/// `transactional.id`) or abortable.
pub fn failure(what: &str, e: &KafkaError) -> RunError {
    let fatal = match e {
        KafkaError::Transaction(r) => r.is_fatal(),
        _ => false,
    } || e.rdkafka_error_code().is_some_and(|c| {
        use rdkafka::error::RDKafkaErrorCode as C;
        matches!(
            c,
            C::Fatal
                | C::Fenced
                | C::ProducerFenced
                | C::InvalidProducerEpoch
                | C::TransactionalIdAuthorizationFailed
        )
    });
    let cause = if fatal {
        format!("{what}: {e} (fatal: another instance with the same transactional.id took over, or the producer cannot continue; give every instance its own streaming.inference.processing.transactions.instanceId)")
    } else {
        format!("{what}: {e}")
    };
    RunError::Transaction { cause, fatal }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Envelope, ErrorClass, Failure, Priority};
    use bytes::Bytes;

    fn outcome(topic: &Arc<str>, partition: i32, offset: i64) -> Outcome {
        let source = Source { topic: topic.clone(), partition, offset };
        let env = Envelope::new(Bytes::new(), source, Priority::Normal);
        Outcome::rejected(env, Failure::new(ErrorClass::Parse, "test"))
    }

    fn txns() -> Transactions {
        let settings = TxnSettings {
            interval: Duration::from_millis(100),
            max_records: 10,
            call_timeout: Duration::from_secs(1),
        };
        Transactions::new(Box::new(|| None), settings, crossbeam_channel::never(), Arc::default())
    }

    /// Admits `o` and acknowledges what it releases, as the emit thread does once it has
    /// produced them; returns the released offsets.
    fn admit(t: &mut Transactions, tracker: &Mutex<CommitTracker>, o: Outcome) -> Vec<i64> {
        let (ready, _) = t.admit(o, tracker);
        let offsets: Vec<i64> = ready.iter().map(|o| o.env.source.offset).collect();
        for o in &ready {
            let s = &o.env.source;
            tracker.lock().ack(&s.topic, s.partition, s.offset);
        }
        offsets
    }

    #[test]
    fn outcomes_are_released_in_offset_order_per_partition() {
        let topic: Arc<str> = "in".into();
        let tracker = Mutex::new(CommitTracker::new());
        // Offsets 10, 11, 13 (12 is a transaction marker or compacted away) on partition 0,
        // and 5 on partition 1.
        for o in [10, 11, 13] {
            tracker.lock().track(&topic, 0, o);
        }
        tracker.lock().track(&topic, 1, 5);
        let mut t = txns();
        assert!(admit(&mut t, &tracker, outcome(&topic, 0, 13)).is_empty(), "13 waits for 10, 11");
        assert!(admit(&mut t, &tracker, outcome(&topic, 0, 11)).is_empty(), "11 waits for 10");
        assert_eq!(admit(&mut t, &tracker, outcome(&topic, 1, 5)), [5], "partition 1 is free");
        assert_eq!(t.held(), 2);
        assert_eq!(admit(&mut t, &tracker, outcome(&topic, 0, 10)), [10, 11, 13]);
        assert_eq!(t.held(), 0);
        // What a transaction would commit now: exactly past the released outcomes.
        let mut points = tracker.lock().take_commits();
        points.sort_by_key(|p| p.partition);
        let got: Vec<(i32, i64)> = points.iter().map(|p| (p.partition, p.offset)).collect();
        assert_eq!(got, [(0, 14), (1, 6)]);
    }

    #[test]
    fn outcomes_of_revoked_partitions_are_dropped_not_produced() {
        let topic: Arc<str> = "in".into();
        let tracker = Mutex::new(CommitTracker::new());
        tracker.lock().track(&topic, 0, 1);
        tracker.lock().track(&topic, 0, 2);
        let mut t = txns();
        assert!(admit(&mut t, &tracker, outcome(&topic, 0, 2)).is_empty());
        // Revoked: the partition is forgotten; its held and late outcomes go nowhere.
        tracker.lock().remove(&topic, 0);
        let (ready, dropped) = t.admit(outcome(&topic, 0, 1), &tracker);
        assert!(ready.is_empty());
        assert_eq!(dropped, 1);
        assert!(t.commit(&rdkafka_free_producer(), &tracker).is_ok_and(|c| c.is_none()));
        assert_eq!(t.held(), 0, "held outcomes of revoked partitions are dropped at commit");
    }

    /// A producer that never connects (no transaction is open, so none is used).
    fn rdkafka_free_producer() -> BaseProducer<rdkafka::producer::DefaultProducerContext> {
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .create()
            .expect("a client needs no broker to be created")
    }
}
