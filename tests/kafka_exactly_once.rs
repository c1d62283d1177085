//! `processing.guarantee: exactly_once` against a real broker, with `sluice serve` processes:
//! results, dead letters and input offsets commit together in Kafka transactions.
//!
//! How "exactly once" is checked, on any broker: tests/common/rawlog.rs reads the raw logs of
//! the input, output and dead-letter topics with plain Kafka requests (Fetch, READ_UNCOMMITTED,
//! up to the high-water mark), sees the COMMIT/ABORT control records the transaction
//! coordinator writes into each partition, and applies them itself: a transactional record
//! counts only once its producer's next marker on that partition is a COMMIT. Every outcome
//! (a result, or a dead letter) names its input record (`source_of`), so each input record
//! must have exactly one committed outcome: nothing lost, nothing duplicated. That runs in the
//! clean run, after SIGKILLs, after an injected abort and across rebalances; where a
//! transaction was aborted the raw log must also show it (abort markers, aborted records),
//! which proves the verifier saw the abort, and the counts are printed.
//!
//! Why the raw read: the test broker, Tansu, writes the markers but its `read_committed`
//! readers still see the records of aborted transactions, and librdkafka never hands control
//! records to an application. So the reader-side view (read_committed consumers) is only
//! compared with the raw one: on a broker that hides aborted records (`SLUICE_TEST_BROKER`
//! pointing at Apache Kafka, say) they must agree exactly; on Tansu the reader must see at
//! least every committed outcome, and what it shows beyond them is printed. Also checked: the
//! committed offsets reach the end of every partition, and a restart never redoes work below
//! a kill's committed offsets.
//!
//! The raw reader's own unit tests (no broker needed) are in the `raw_log_reader` module below:
//! `cargo test --test kafka_exactly_once raw_log_reader`.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::broker::{Consumed, TestBroker};
use common::kafka::{source_of, Record};
use common::rawlog::{self, LogRecord, TopicLog};
use common::serve::{
    join_and_leave_under_load, mlp_repo, records, result_ids, setup_with, Serve, Setup,
};

const EXACTLY_ONCE: &str =
    "    processing: {guarantee: exactly_once, transactions: {instanceId: a, commitIntervalMs: 100}}\n";

/// Distinct ids among results and dead letters (a dead letter's id: its record's key).
fn outcome_ids(b: &TestBroker, s: &Setup, n: usize, timeout: Duration) -> HashMap<String, usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut count = result_ids(b, &s.output, 0, Duration::ZERO);
        for d in b.consume(&s.dlq, usize::MAX, Duration::from_secs(2)) {
            let key = String::from_utf8_lossy(d.key.as_deref().unwrap_or_default()).to_string();
            *count.entry(key).or_default() += 1;
        }
        if count.len() >= n || Instant::now() >= deadline {
            return count;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `n` requests, every 10th of them malformed JSON (a dead letter) keyed by its id.
fn mixed(from: usize, to: usize) -> Vec<Record> {
    let mut rs = records(from, to);
    for (i, r) in rs.iter_mut().enumerate() {
        let id = format!("r{}", from + i);
        if (from + i).is_multiple_of(10) {
            *r = (
                Some(id.clone().into_bytes()),
                format!("{{\"id\":\"{id}\", not json").into_bytes(),
                vec![],
            );
        } else {
            r.0 = Some(id.into_bytes());
        }
    }
    rs
}

fn duplicates(ids: &HashMap<String, usize>) -> usize {
    ids.values().map(|c| c - 1).sum()
}

fn assert_all(ids: &HashMap<String, usize>, n: usize, log: &str) {
    let missing: Vec<String> =
        (0..n).map(|i| format!("r{i}")).filter(|id| !ids.contains_key(id)).collect();
    assert!(
        missing.is_empty(),
        "lost {} records, e.g. {:?}\n{log}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

/// The raw logs of a test's topics with the transaction markers applied (common/rawlog.rs),
/// and the committed outcomes (results and dead letters) of each input record.
struct RawView {
    input: TopicLog,
    output: TopicLog,
    dlq: TopicLog,
    /// Committed outcomes per input record (partition, offset).
    per_input: HashMap<(i32, i64), usize>,
}

impl RawView {
    fn read(b: &TestBroker, s: &Setup) -> RawView {
        let read = |topic: &str| {
            rawlog::read_topic(&b.bootstrap, topic, Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("raw read of {topic}: {e}"))
        };
        let (input, output, dlq) = (read(&s.input), read(&s.output), read(&s.dlq));
        let mut per_input: HashMap<(i32, i64), usize> = HashMap::new();
        for (log, is_dlq) in [(&output, false), (&dlq, true)] {
            for r in &log.committed {
                let (topic, p, o) = source_of(&consumed(r), is_dlq);
                assert_eq!(
                    topic, s.input,
                    "outcome {}/{} names another input topic",
                    r.partition, r.offset
                );
                *per_input.entry((p, o)).or_default() += 1;
            }
        }
        RawView { input, output, dlq, per_input }
    }

    fn outcome_logs(&self) -> [&TopicLog; 2] {
        [&self.output, &self.dlq]
    }

    /// Records of aborted transactions among results and dead letters.
    fn aborted(&self) -> usize {
        self.outcome_logs().iter().map(|l| l.aborted).sum()
    }

    fn abort_markers(&self) -> usize {
        self.outcome_logs().iter().map(|l| l.abort_markers).sum()
    }

    fn commit_markers(&self) -> usize {
        self.outcome_logs().iter().map(|l| l.commit_markers).sum()
    }

    /// Records of transactions still undecided (no marker yet).
    fn open(&self) -> usize {
        self.outcome_logs().iter().map(|l| l.open.len()).sum()
    }

    /// Input records without a committed outcome.
    fn missing(&self) -> Vec<(i32, i64)> {
        self.input
            .committed
            .iter()
            .map(|r| (r.partition, r.offset))
            .filter(|k| !self.per_input.contains_key(k))
            .collect()
    }

    /// Input records with more than one committed outcome, and how many.
    fn duplicated(&self) -> Vec<((i32, i64), usize)> {
        let mut d: Vec<_> =
            self.per_input.iter().filter(|(_, c)| **c > 1).map(|(k, c)| (*k, *c)).collect();
        d.sort();
        d
    }

    /// Committed outcomes whose input record is not in the input topic.
    fn strays(&self) -> Vec<(i32, i64)> {
        let inputs: std::collections::HashSet<(i32, i64)> =
            self.input.committed.iter().map(|r| (r.partition, r.offset)).collect();
        let mut s: Vec<_> =
            self.per_input.keys().filter(|k| !inputs.contains(k)).copied().collect();
        s.sort();
        s
    }

    fn summary(&self) -> String {
        format!(
            "commit markers {}, abort markers {}, aborted records {}, open records {}\n  {}\n  {}\n  {}",
            self.commit_markers(),
            self.abort_markers(),
            self.aborted(),
            self.open(),
            self.output.summary(),
            self.dlq.summary(),
            self.input.summary()
        )
    }
}

fn consumed(r: &LogRecord) -> Consumed {
    Consumed {
        key: r.key.clone(),
        value: r.value.clone(),
        headers: r.headers.clone(),
        partition: r.partition,
        offset: r.offset,
    }
}

/// Asserts, from the raw logs, that each of the `n` input records has exactly one committed
/// outcome: none lost, none duplicated (an outcome of an aborted transaction does not count).
/// Markers can land a little after a transaction's commit returned, so it reads until every
/// input has an outcome and no transaction is open, for up to a minute.
fn assert_one_committed_outcome_each(b: &TestBroker, s: &Setup, n: usize, log: &str) -> RawView {
    let deadline = Instant::now() + Duration::from_secs(60);
    let raw = loop {
        let raw = RawView::read(b, s);
        if (raw.open() == 0 && raw.missing().is_empty()) || Instant::now() >= deadline {
            break raw;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("raw log: {}", raw.summary());
    assert_eq!(raw.input.committed.len(), n, "input records in the raw log\n{}", raw.summary());
    let missing = raw.missing();
    assert!(
        missing.is_empty(),
        "{} input records have no committed outcome, e.g. {:?}\n{}\n{log}",
        missing.len(),
        &missing[..missing.len().min(10)],
        raw.summary()
    );
    let dups = raw.duplicated();
    assert!(
        dups.is_empty(),
        "{} input records have more than one committed outcome, e.g. {:?}\n{}\n{log}",
        dups.len(),
        &dups[..dups.len().min(10)],
        raw.summary()
    );
    let strays = raw.strays();
    assert!(strays.is_empty(), "outcomes of unknown input records: {strays:?}");
    assert_eq!(raw.open(), 0, "transactions left open after the run\n{}\n{log}", raw.summary());
    raw
}

/// The reader-side view (read_committed consumers) against the raw one. Where the broker hides
/// aborted records they must agree exactly; on Tansu the reader sees at least every committed
/// outcome, and what it shows beyond them (aborted outcomes) is printed.
fn reader_agrees_with_raw(b: &TestBroker, s: &Setup, raw: &RawView) {
    let reader = outcomes_per_input(b, s);
    let exact = b.read_committed_gap().is_none();
    let mut differ: Vec<((i32, i64), usize, usize)> = reader
        .keys()
        .chain(raw.per_input.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|k| {
            (*k, reader.get(k).copied().unwrap_or(0), raw.per_input.get(k).copied().unwrap_or(0))
        })
        .filter(|(_, seen, committed)| if exact { seen != committed } else { seen < committed })
        .collect();
    differ.truncate(10);
    assert!(
        differ.is_empty(),
        "reader-side and raw views disagree ((partition, offset), reader, raw), e.g. {differ:?}\n{}",
        raw.summary()
    );
    let extra = reader.values().sum::<usize>().saturating_sub(raw.per_input.values().sum());
    match b.read_committed_gap() {
        None => println!("the read_committed reader agrees with the raw log"),
        Some(reason) => println!(
            "reader-side view: {extra} outcomes beyond the committed ones ({reason}); the raw log has {} aborted and {} open records",
            raw.aborted(),
            raw.open()
        ),
    }
}

#[test]
fn a_clean_exactly_once_run_has_one_outcome_per_record_and_commits_to_the_end() {
    let b = TestBroker::start().expect("broker");
    let repo = mlp_repo();
    let s = setup_with(&b, &repo, "eos-clean", 3, EXACTLY_ONCE);
    let n = 3000;
    b.produce(&s.input, &mixed(0, n), None).unwrap();
    let mut p = Serve::start(&s.config);
    let ids = outcome_ids(&b, &s, n, Duration::from_secs(180));
    assert_all(&ids, n, &p.log());
    // No transaction was aborted, so even a reader that shows aborted records sees each
    // outcome once.
    assert_eq!(duplicates(&ids), 0, "duplicates without an abort:\n{}", p.log());
    p.signal("-TERM");
    let status = p.wait(Duration::from_secs(60)).expect("exits after SIGTERM");
    assert!(status.success(), "{}", p.log());
    let log = p.log();
    assert!(log.contains("exactly_once: transactions initialised"), "{log}");
    assert!(!log.contains("transaction aborted"), "{log}");
    b.assert_committed_to_end(&s.group, &s.input);
    let raw = assert_one_committed_outcome_each(&b, &s, n, &log);
    assert_eq!(
        (raw.abort_markers(), raw.aborted()),
        (0, 0),
        "a clean run aborts nothing\n{}",
        raw.summary()
    );
    assert!(raw.commit_markers() > 0, "outcomes written in transactions\n{}", raw.summary());
    reader_agrees_with_raw(&b, &s, &raw);
}

/// How often each input record (partition, offset) has an outcome among results and dead
/// letters.
fn outcomes_per_input(b: &TestBroker, s: &Setup) -> HashMap<(i32, i64), usize> {
    let mut count: HashMap<(i32, i64), usize> = HashMap::new();
    for c in b.consume(&s.output, usize::MAX, Duration::from_secs(3)) {
        let (_, p, o) = source_of(&c, false);
        *count.entry((p, o)).or_default() += 1;
    }
    for c in b.consume(&s.dlq, usize::MAX, Duration::from_secs(3)) {
        let (_, p, o) = source_of(&c, true);
        *count.entry((p, o)).or_default() += 1;
    }
    count
}

#[test]
fn sigkill_in_exactly_once_loses_nothing_and_resumes_from_the_last_transaction() {
    let b = TestBroker::start().expect("broker");
    let repo = mlp_repo();
    let s = setup_with(&b, &repo, "eos-kill", 2, EXACTLY_ONCE);
    // Records keep arriving (a producer thread) while each instance runs, so that each kill
    // lands mid-stream, with a transaction open.
    let rounds = 3;
    let next = std::sync::atomic::AtomicUsize::new(0);
    // The group's committed offsets right after each kill.
    let mut committed_at_kill: Vec<std::collections::BTreeMap<i32, Option<i64>>> = Vec::new();
    for round in 0..rounds {
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let from = next.load(std::sync::atomic::Ordering::SeqCst);
                    b.produce(&s.input, &mixed(from, from + 200), None).unwrap();
                    next.store(from + 200, std::sync::atomic::Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
            let p = Serve::start(&s.config);
            let want = next.load(std::sync::atomic::Ordering::SeqCst) + 2000;
            let seen = outcome_ids(&b, &s, want, Duration::from_secs(120));
            assert!(seen.len() >= want, "round {round}: no progress:\n{}", p.log());
            p.signal("-KILL");
            drop(p);
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        committed_at_kill.push(b.committed_offsets(&s.group, &s.input).unwrap());
    }
    let n = next.load(std::sync::atomic::Ordering::SeqCst);
    // The last instance (same transactional.id) fences the killed one's open transaction and
    // goes on from the committed offsets.
    let mut last = Serve::start(&s.config);
    let ids = outcome_ids(&b, &s, n, Duration::from_secs(240));
    assert_all(&ids, n, &last.log());
    println!("{rounds} SIGKILLs: {} ids, {} seen more than once", ids.len(), duplicates(&ids));
    // Offsets commit only with the transaction holding their outcomes, and a restart goes
    // on from them: a record below a kill's committed offset is never processed again, so
    // a record has at most one outcome more than the kills that found it uncommitted (the
    // extra ones being outcomes of aborted transactions, which Tansu's readers still see).
    let per_input = outcomes_per_input(&b, &s);
    for ((p, o), count) in &per_input {
        let uncommitted_at = committed_at_kill
            .iter()
            .filter(|c| c.get(p).copied().flatten().is_none_or(|c| c <= *o))
            .count();
        assert!(
            *count <= 1 + uncommitted_at,
            "record {p}/{o} has {count} outcomes but was uncommitted at only {uncommitted_at} kills: committed work was done again ({committed_at_kill:?})"
        );
    }
    assert!(
        committed_at_kill.iter().any(|c| c.values().any(|o| o.is_some_and(|o| o > 0))),
        "the kills all came before the first commit: nothing was tested ({committed_at_kill:?})"
    );
    last.terminate();
    b.assert_committed_to_end(&s.group, &s.input);
    let raw = assert_one_committed_outcome_each(&b, &s, n, &last.log());
    println!(
        "after {rounds} SIGKILLs: {} commit markers, {} abort markers, {} aborted records",
        raw.commit_markers(),
        raw.abort_markers(),
        raw.aborted()
    );
    // Each kill left a transaction open; the next instance's initialisation aborts it.
    assert!(
        raw.abort_markers() > 0 || raw.aborted() > 0,
        "{rounds} kills mid-stream, yet the raw log shows no aborted transaction\n{}",
        raw.summary()
    );
    reader_agrees_with_raw(&b, &s, &raw);
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_failed_transaction_is_aborted_and_its_records_are_processed_again() {
    let b = TestBroker::start().expect("broker");
    let repo = mlp_repo();
    let s = setup_with(&b, &repo, "eos-abort", 2, EXACTLY_ONCE);
    let n = 2000;
    b.produce(&s.input, &mixed(0, n), None).unwrap();
    // The first transaction that holds outcomes fails at its commit (an abortable error).
    let mut p = Serve::start_with_env(&s.config, &[("SLUICE_TEST_FAIL_TRANSACTION", "1")]);
    let ids = outcome_ids(&b, &s, n, Duration::from_secs(180));
    assert_all(&ids, n, &p.log());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !p.log().contains("partitions assigned") || !p.log().contains("transaction_restart") {
        assert!(Instant::now() < deadline, "no restart after the abort:\n{}", p.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = p.log();
    assert!(log.contains("injected failure of transaction commit 1"), "{log}");
    assert!(log.contains("restarting the pipeline from the last committed offsets"), "{log}");
    // The restarted pipeline's transactions commit up to the end of the input; then every
    // outcome it wrote is there to count.
    let ends = b.end_offsets(&s.input).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let committed = b.committed_offsets(&s.group, &s.input).unwrap();
        if ends.iter().all(|(p, e)| committed.get(p).copied().flatten() == Some(*e)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "commits did not reach the end: {committed:?}\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let ids = outcome_ids(&b, &s, n, Duration::from_secs(60));
    println!("after an aborted transaction: {} seen more than once by a reader", duplicates(&ids));
    p.terminate();
    b.assert_committed_to_end(&s.group, &s.input);
    // The aborted transaction held outcomes, and its records were processed again: every
    // input has exactly one committed outcome, and the raw log holds the aborted ones.
    let raw = assert_one_committed_outcome_each(&b, &s, n, &p.log());
    println!(
        "after an injected abort: {} commit markers, {} abort markers, {} aborted records",
        raw.commit_markers(),
        raw.abort_markers(),
        raw.aborted()
    );
    assert!(
        raw.abort_markers() > 0 && raw.aborted() > 0,
        "the aborted transaction's outcomes are not in the raw log as aborted\n{}",
        raw.summary()
    );
    reader_agrees_with_raw(&b, &s, &raw);
}

#[test]
fn a_second_instance_joining_and_leaving_under_load_duplicates_nothing() {
    let b = TestBroker::start().expect("broker");
    let repo = mlp_repo();
    let s = setup_with(&b, &repo, "eos-churn", 4, EXACTLY_ONCE);
    let mut a = Serve::start(&s.config);
    let mut next = 0;
    let mut produce = |n: usize| {
        b.produce(&s.input, &mixed(next, next + n), None).unwrap();
        next += n;
    };
    produce(500);
    // A second instance, with its own instance id (its own transactional.id).
    let c = Serve::start_with_env(
        &s.config,
        &[("SLUICE_STREAMING_INFERENCE_PROCESSING_TRANSACTIONS_INSTANCE_ID", "b")],
    );
    let c_log = join_and_leave_under_load(c, &mut produce);
    let ids = outcome_ids(&b, &s, next, Duration::from_secs(240));
    assert_all(&ids, next, &a.log());
    let logs = format!("A:\n{}\nB:\n{c_log}", a.log());
    assert!(!logs.contains("transaction aborted"), "{logs}");
    // Revocation commits the open transaction first, and outcomes of revoked partitions
    // still in flight are dropped, not produced: no duplicate even on Tansu.
    assert_eq!(duplicates(&ids), 0, "duplicates across the rebalances:\n{logs}");
    a.terminate();
    b.assert_committed_to_end(&s.group, &s.input);
    let raw = assert_one_committed_outcome_each(&b, &s, next, &logs);
    reader_agrees_with_raw(&b, &s, &raw);
}

#[test]
fn a_second_instance_with_the_same_transactional_id_fences_the_first() {
    let b = TestBroker::start().expect("broker");
    let repo = mlp_repo();
    let s = setup_with(&b, &repo, "eos-fence", 2, EXACTLY_ONCE);
    b.produce(&s.input, &mixed(0, 1000), None).unwrap();
    let mut first = Serve::start(&s.config);
    let seen = outcome_ids(&b, &s, 1000, Duration::from_secs(120));
    assert_all(&seen, 1000, &first.log());
    // Same config, so the same instanceId and transactional.id: a misconfigured
    // deployment, or the "restarted" instance while the old one still runs (a zombie). Its
    // initialisation fences the first; the first learns it at its next transaction (the
    // records below, or its next metrics snapshot).
    let mut second = Serve::start(&s.config);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !second.log().contains("transactions initialised") {
        assert!(
            Instant::now() < deadline,
            "second instance did not start:
{}",
            second.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let n = 3000;
    b.produce(&s.input, &mixed(1000, n), None).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !first.log().contains("pipeline failed") {
        assert!(
            Instant::now() < deadline,
            "the first instance was not fenced:\nFIRST:\n{}\nSECOND:\n{}",
            first.log(),
            second.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = first.log();
    assert!(log.contains("transaction failed for good"), "{log}");
    assert!(log.contains("fenced"), "the cause says it was fenced:\n{log}");
    assert!(log.contains("instanceId"), "the cause names the setting to fix:\n{log}");
    assert!(!log.contains("transaction_restart"), "a fenced instance is not restarted:\n{log}");
    // What is not asserted here: that the group then hands every partition to the second
    // instance. On Tansu it does not: after the fenced member stops mid-rebalance, the group
    // assigned nothing for minutes, even to a fresh member started after both had exited
    // (README "Tests"). The fenced instance's committed offsets are checked instead: they
    // never pass what its transactions committed (no record below them is lost: each has an
    // outcome).
    first.signal("-TERM");
    assert!(first.wait(Duration::from_secs(60)).is_some(), "the fenced instance exits on SIGTERM");
    second.signal("-TERM");
    let _ = second.wait(Duration::from_secs(60));
    let committed = b.committed_offsets(&s.group, &s.input).unwrap();
    let per_input = outcomes_per_input(&b, &s);
    for (p, c) in &committed {
        for o in 0..c.unwrap_or(0) {
            assert!(per_input.contains_key(&(*p, o)), "{p}/{o} committed without an outcome");
        }
    }
    // The raw log: the fencing left no transaction open (the broker aborted the fenced
    // instance's open one, or it had none), and no input has two committed outcomes.
    let raw = RawView::read(&b, &s);
    println!("raw log after the fencing: {}", raw.summary());
    assert_eq!(raw.open(), 0, "a transaction left open by the fencing\n{}", raw.summary());
    let dups = raw.duplicated();
    assert!(
        dups.is_empty(),
        "committed twice across the fencing: {:?}",
        &dups[..dups.len().min(10)]
    );
}

/// Unit tests of the raw log reader (tests/common/rawlog.rs): the marker logic on synthetic
/// batches, and batch splitting and decoding on encoded ones. No broker needed.
mod raw_log_reader {
    use crate::common::rawlog::*;
    use bytes::Bytes;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    fn rec(offset: i64) -> LogRecord {
        LogRecord {
            partition: 0,
            offset,
            key: None,
            value: format!("v{offset}").into_bytes(),
            headers: vec![],
        }
    }

    fn data(pid: i64, transactional: bool, offsets: &[i64]) -> Batch {
        Batch {
            producer_id: pid,
            transactional,
            control: false,
            records: offsets.iter().map(|&o| rec(o)).collect(),
        }
    }

    fn marker(pid: i64, offset: i64, commit: bool) -> Batch {
        let mut r = rec(offset);
        r.key = Some(vec![0, 0, 0, u8::from(commit)]);
        r.value = vec![0, 0, 0, 0, 0, 0];
        Batch { producer_id: pid, transactional: true, control: true, records: vec![r] }
    }

    fn applied(batches: Vec<Batch>) -> TopicLog {
        let mut log = TopicLog::default();
        apply_markers(&mut log, batches).expect("valid batches");
        log
    }

    fn offsets(rs: &[LogRecord]) -> Vec<i64> {
        rs.iter().map(|r| r.offset).collect()
    }

    #[test]
    fn a_committed_transaction_is_visible() {
        let log = applied(vec![data(7, true, &[0, 1]), data(7, true, &[2]), marker(7, 3, true)]);
        assert_eq!(offsets(&log.committed), [0, 1, 2]);
        assert_eq!((log.aborted, log.open.len()), (0, 0));
        assert_eq!((log.commit_markers, log.abort_markers), (1, 0));
    }

    #[test]
    fn an_aborted_transaction_is_dropped_and_counted() {
        let log = applied(vec![data(7, true, &[0, 1, 2]), marker(7, 3, false)]);
        assert!(log.committed.is_empty());
        assert_eq!((log.aborted, log.open.len()), (3, 0));
        assert_eq!((log.commit_markers, log.abort_markers), (0, 1));
    }

    #[test]
    fn interleaved_producers_are_decided_by_their_own_markers() {
        let log = applied(vec![
            data(1, true, &[0, 1]),
            data(2, true, &[2, 3]),
            data(1, true, &[4]),
            marker(2, 5, true),
            marker(1, 6, false),
            data(1, true, &[7]),
            data(2, true, &[8]),
            marker(1, 9, true),
        ]);
        // Producer 1: 0, 1, 4 aborted, 7 committed; producer 2: 2, 3 committed, 8 still open.
        assert_eq!(offsets(&log.committed), [2, 3, 7]);
        assert_eq!(log.aborted, 3);
        assert_eq!(offsets(&log.open), [8]);
        assert_eq!((log.commit_markers, log.abort_markers), (2, 1));
    }

    #[test]
    fn an_open_transaction_is_not_committed() {
        let log = applied(vec![
            data(3, true, &[0, 1]),
            marker(4, 2, true), // another producer's marker decides nothing of producer 3
        ]);
        assert!(log.committed.is_empty());
        assert_eq!(offsets(&log.open), [0, 1]);
        assert_eq!(log.aborted, 0);
    }

    #[test]
    fn non_transactional_records_are_always_visible() {
        let log = applied(vec![
            data(-1, false, &[0, 1]),
            data(5, true, &[2]),
            data(9, false, &[3]), // idempotent, not transactional
            marker(5, 4, false),
            data(-1, false, &[5]),
            marker(5, 6, false), // a marker with nothing pending
        ]);
        assert_eq!(offsets(&log.committed), [0, 1, 3, 5]);
        assert_eq!((log.aborted, log.abort_markers), (1, 2));
        assert!(log.open.is_empty());
    }

    #[test]
    fn partitions_add_up_and_a_bad_control_key_is_an_error() {
        let mut log = TopicLog::default();
        apply_markers(&mut log, vec![data(1, true, &[0]), marker(1, 1, true)]).unwrap();
        let mut p1 = data(1, true, &[0]);
        p1.records[0].partition = 1;
        apply_markers(&mut log, vec![p1]).unwrap();
        assert_eq!(log.committed.len(), 1);
        assert_eq!(log.open.len(), 1);
        let mut bad = marker(1, 1, true);
        bad.records[0].key = Some(vec![0]);
        assert!(apply_markers(&mut TopicLog::default(), vec![bad]).is_err());
    }

    /// Encodes one v2 batch the way a broker stores it.
    fn encoded(
        pid: i64,
        transactional: bool,
        control: bool,
        records: &[(i64, Vec<u8>)],
    ) -> Vec<u8> {
        let records: Vec<Record> = records
            .iter()
            .map(|(offset, key)| {
                let mut r = Record {
                    transactional,
                    control,
                    delete_horizon: false,
                    partition_leader_epoch: 0,
                    producer_id: pid,
                    producer_epoch: 0,
                    timestamp_type: TimestampType::Creation,
                    offset: *offset,
                    sequence: *offset as i32,
                    timestamp: 1_700_000_000_000,
                    key: Some(Bytes::from(key.clone())),
                    value: Some(Bytes::from(format!("value {offset}"))),
                    headers: Default::default(),
                };
                r.headers.insert(StrBytes::from_static_str("h"), Some(Bytes::from_static(b"x")));
                r
            })
            .collect();
        let mut buf = Vec::new();
        let options = RecordEncodeOptions { version: 2, compression: Compression::None };
        RecordBatchEncoder::encode(&mut buf, &records, &options).expect("encode");
        buf
    }

    #[test]
    fn fetched_bytes_decode_into_batches_and_a_cut_last_batch_is_left_for_the_next_fetch() {
        let commit_key = vec![0, 0, 0, 1];
        let mut bytes = encoded(11, true, false, &[(0, b"a".to_vec()), (1, b"b".to_vec())]);
        bytes.extend(encoded(11, true, true, &[(2, commit_key)]));
        bytes.extend(encoded(-1, false, false, &[(3, b"c".to_vec())]));
        let whole = bytes.len();
        bytes.extend(encoded(12, true, false, &[(4, b"d".to_vec()), (5, b"e".to_vec())]));
        for cut in [whole, whole + 5, whole + 30, bytes.len() - 1] {
            let (raw, truncated) = split_batches(&Bytes::copy_from_slice(&bytes[..cut])).unwrap();
            assert_eq!(raw.len(), 3, "cut at {cut}");
            assert_eq!(truncated, cut > whole, "cut at {cut}");
            assert_eq!(
                raw.iter().map(|b| (b.base_offset, b.last_offset)).collect::<Vec<_>>(),
                [(0, 1), (2, 2), (3, 3)]
            );
        }
        let (raw, truncated) = split_batches(&Bytes::from(bytes)).unwrap();
        assert!(!truncated);
        assert_eq!(raw.len(), 4);
        let batches: Vec<Batch> = raw.iter().map(|b| decode_batch(b, 2).unwrap()).collect();
        assert!(batches[1].control && batches[1].transactional);
        assert_eq!(batches[0].producer_id, 11);
        assert_eq!(batches[0].records[1].key.as_deref(), Some(&b"b"[..]));
        assert_eq!(batches[0].records[1].value, b"value 1");
        assert_eq!(batches[0].records[1].headers, [("h".to_string(), b"x".to_vec())]);
        assert_eq!(batches[0].records[1].partition, 2);
        let log = applied(batches);
        assert_eq!(offsets(&log.committed), [0, 1, 3]);
        assert_eq!(offsets(&log.open), [4, 5]);
        assert_eq!(log.commit_markers, 1);
    }

    #[test]
    fn a_fetch_loop_skips_a_cut_batch_and_gets_it_whole_from_the_next_offset() {
        let first = encoded(11, true, false, &[(0, b"a".to_vec()), (1, b"b".to_vec())]);
        let mut head = first.clone();
        head.extend(encoded(11, true, true, &[(2, vec![0, 0, 0, 1])]));
        head.extend(encoded(-1, false, false, &[(3, b"c".to_vec())]));
        let last = encoded(12, true, false, &[(4, b"d".to_vec()), (5, b"e".to_vec())]);
        let mut cut = head.clone();
        cut.extend_from_slice(&last[..last.len() / 2]);

        // The first response ends in half a batch: three whole ones, then fetch from 4.
        let one = take_batches(&Bytes::from(cut), 0, 0, 6).unwrap();
        assert!(one.truncated);
        assert_eq!((one.batches.len(), one.next), (3, 4));
        // A response with only a cut batch makes no progress (the caller asks for more).
        let stuck = take_batches(&Bytes::copy_from_slice(&last[..20]), 0, 4, 6).unwrap();
        assert!(stuck.truncated && stuck.batches.is_empty() && stuck.next == 4);
        // An empty response neither.
        let empty = take_batches(&Bytes::new(), 0, 4, 6).unwrap();
        assert!(!empty.truncated && empty.batches.is_empty() && empty.next == 4);
        // The next one has it whole.
        let two = take_batches(&Bytes::from(last.clone()), 0, one.next, 6).unwrap();
        assert_eq!((two.batches.len(), two.next, two.truncated), (1, 6, false));
        let log = applied(one.batches.into_iter().chain(two.batches).collect());
        assert_eq!(offsets(&log.committed), [0, 1, 3]);
        assert_eq!(offsets(&log.open), [4, 5]);

        // A response may start before the fetch offset and end past the high-water mark:
        // only records in [next, end) count, and what was already read is skipped.
        let mut all = head;
        all.extend(last);
        let part = take_batches(&Bytes::from(all), 0, 1, 5).unwrap();
        let got: Vec<Vec<i64>> = part.batches.iter().map(|b| offsets(&b.records)).collect();
        assert_eq!(got, [vec![1], vec![2], vec![3], vec![4]]);
        assert_eq!(part.next, 6);
        let again = take_batches(&Bytes::from(first), 0, 2, 5).unwrap();
        assert!(again.batches.is_empty() && again.next == 2);
    }

    #[test]
    fn a_corrupt_batch_is_an_error() {
        let mut bytes = encoded(1, false, false, &[(0, b"k".to_vec())]);
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let (raw, _) = split_batches(&Bytes::from(bytes)).unwrap();
        assert!(decode_batch(&raw[0], 0).is_err(), "CRC mismatch detected");
        let mut short = encoded(1, false, false, &[(0, b"k".to_vec())]);
        short[8..12].copy_from_slice(&3i32.to_be_bytes());
        assert!(split_batches(&Bytes::from(short)).is_err());
    }
}
