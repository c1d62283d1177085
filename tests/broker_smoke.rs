//! The test broker itself (README "Tests" describes it): topic admin, keyed records with headers through
//! 4 partitions, consumer-group commit and resume. Runs against `SLUICE_TEST_BROKER` when set,
//! otherwise against a fresh Tansu per test.

#[path = "common/broker.rs"]
mod broker;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use broker::{close_in_background, poll_records, Record, TestBroker};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

fn broker() -> TestBroker {
    TestBroker::start().unwrap_or_else(|e| panic!("no test broker: {e}"))
}

fn record(i: usize) -> Record {
    (
        Some(format!("key-{}", i % 97).into_bytes()),
        format!(r#"{{"id":"r{i}","model":"tiny-embed","input":"x"}}"#).into_bytes(),
        vec![
            ("content-type".to_string(), b"application/json".to_vec()),
            ("seq".to_string(), i.to_string().into_bytes()),
            ("empty".to_string(), Vec::new()),
        ],
    )
}

#[test]
fn thousand_keyed_records_through_four_partitions() {
    let b = broker();
    let topic = TestBroker::unique("smoke-roundtrip");
    b.create_topic(&topic, 4).unwrap();
    // Creating it again with the same count is fine; with another count it is an error.
    b.create_topic(&topic, 4).unwrap();
    assert!(b.create_topic(&topic, 3).is_err());
    assert_eq!(b.partitions(&topic).unwrap(), vec![0, 1, 2, 3]);

    let records: Vec<Record> = (0..1000).map(record).collect();
    let t = Instant::now();
    let acks = b.produce(&topic, &records, None).unwrap();
    let produce_time = t.elapsed();
    assert_eq!(acks.len(), 1000);

    // Acks: distinct, contiguous from 0 in every partition, and one partition per key.
    let mut per_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    let mut key_partition: HashMap<&[u8], i32> = HashMap::new();
    for ((key, _, _), &(p, o)) in records.iter().zip(&acks) {
        per_partition.entry(p).or_default().push(o);
        let first = *key_partition.entry(key.as_deref().unwrap()).or_insert(p);
        assert_eq!(first, p, "key {:?} went to two partitions", key);
    }
    assert_eq!(
        per_partition.len(),
        4,
        "97 keys should hash onto all 4 partitions: {per_partition:?}"
    );
    for (p, offsets) in &mut per_partition {
        offsets.sort_unstable();
        let want: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(*offsets, want, "partition {p} offsets");
    }
    // End offsets agree with the acks (on Tansu this needs the workaround in `end_offsets`).
    let counts: BTreeMap<i32, i64> =
        per_partition.iter().map(|(p, o)| (*p, o.len() as i64)).collect();
    assert_eq!(b.end_offsets(&topic).unwrap(), counts);

    let t = Instant::now();
    let got = b.consume(&topic, 1000, Duration::from_secs(30));
    let consume_time = t.elapsed();
    assert_eq!(got.len(), 1000, "consumed {} of 1000", got.len());
    let by_position: HashMap<(i32, i64), usize> =
        acks.iter().enumerate().map(|(i, &po)| (po, i)).collect();
    let mut seen = HashSet::new();
    for c in &got {
        assert!(seen.insert((c.partition, c.offset)), "({}, {}) read twice", c.partition, c.offset);
        let i = *by_position
            .get(&(c.partition, c.offset))
            .unwrap_or_else(|| panic!("({}, {}) was never produced", c.partition, c.offset));
        let (key, value, headers) = &records[i];
        assert_eq!(&c.key, key, "record {i} key");
        assert_eq!(&c.value, value, "record {i} value");
        assert_eq!(&c.headers, headers, "record {i} headers");
    }
    // Within a partition, records arrive in offset order.
    let mut last: HashMap<i32, i64> = HashMap::new();
    for c in &got {
        let prev = last.insert(c.partition, c.offset).unwrap_or(-1);
        assert!(c.offset > prev, "partition {} went from {prev} to {}", c.partition, c.offset);
    }
    // Nothing beyond what was produced.
    assert!(b.consume(&topic, 1001, Duration::from_millis(800)).len() == 1000);
    eprintln!("1000 records: produce {produce_time:?}, consume {consume_time:?}");
}

#[test]
fn group_commit_and_resume() {
    let b = broker();
    let topic = TestBroker::unique("smoke-group");
    let group = TestBroker::unique("smoke-group");
    b.create_topic(&topic, 2).unwrap();
    let records: Vec<Record> = (0..100).map(record).collect();
    let acks0 = b.produce(&topic, &records[..50], Some(0)).unwrap();
    let acks1 = b.produce(&topic, &records[50..], Some(1)).unwrap();
    assert!(acks0.iter().all(|&(p, _)| p == 0) && acks1.iter().all(|&(p, _)| p == 1));
    assert_eq!(
        b.committed_offsets(&group, &topic).unwrap(),
        BTreeMap::from([(0, None), (1, None)])
    );

    // First member: joins, reads everything (a new group starts at the earliest offset), commits
    // 20 on partition 0 and 35 on partition 1, leaves.
    let t = Instant::now();
    let first: BaseConsumer = b.consumer_config(&group).create().unwrap();
    first.subscribe(&[topic.as_str()]).unwrap();
    let got = poll_records(&first, 100, Instant::now() + Duration::from_secs(20));
    assert_eq!(got.len(), 100, "first member read {} of 100", got.len());
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(20)).unwrap();
    tpl.add_partition_offset(&topic, 1, Offset::Offset(35)).unwrap();
    first.commit(&tpl, CommitMode::Sync).unwrap();
    assert!(close_in_background(first, Duration::from_secs(10)), "first member did not close");
    let first_time = t.elapsed();
    assert_eq!(
        b.committed_offsets(&group, &topic).unwrap(),
        BTreeMap::from([(0, Some(20)), (1, Some(35))])
    );

    // Second member of the same group resumes exactly there.
    let t = Instant::now();
    let second: BaseConsumer = b.consumer_config(&group).create().unwrap();
    second.subscribe(&[topic.as_str()]).unwrap();
    let mut got = poll_records(&second, 45, Instant::now() + Duration::from_secs(20));
    got.extend(poll_records(&second, 1, Instant::now() + Duration::from_millis(500)));
    // It commits what it processed; a third look at the group shows the end.
    second.commit_consumer_state(CommitMode::Sync).unwrap();
    assert!(close_in_background(second, Duration::from_secs(10)), "second member did not close");
    let second_time = t.elapsed();
    let mut positions: Vec<(i32, i64)> = got.iter().map(|c| (c.partition, c.offset)).collect();
    positions.sort_unstable();
    let want: Vec<(i32, i64)> = (20..50).map(|o| (0, o)).chain((35..50).map(|o| (1, o))).collect();
    assert_eq!(positions, want, "second member resumed elsewhere");
    for c in &got {
        let i = if c.partition == 0 { c.offset as usize } else { 50 + c.offset as usize };
        assert_eq!(c.value, records[i].1);
        assert_eq!(c.headers, records[i].2);
    }
    assert_eq!(
        b.committed_offsets(&group, &topic).unwrap(),
        BTreeMap::from([(0, Some(50)), (1, Some(50))])
    );
    eprintln!("group: first member {first_time:?}, second member {second_time:?}");
}

#[test]
fn produce_auto_creates_and_names_are_unique() {
    let b = broker();
    let a = TestBroker::unique("smoke auto/create");
    assert_ne!(a, TestBroker::unique("smoke auto/create"));
    assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)), "{a}");
    let acks = b.produce(&a, &[(None, b"hello".to_vec(), Vec::new())], None).unwrap();
    assert_eq!(acks.len(), 1);
    let got = b.consume(&a, 1, Duration::from_secs(10));
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].key.as_deref(), got[0].value.as_slice()), (None, &b"hello"[..]));
    assert!(got[0].headers.is_empty());
    let parts = b.partitions(&a).unwrap();
    eprintln!("auto-created topic has {} partition(s)", parts.len());
    assert!(!parts.is_empty());

    // Reading or looking up a topic that does not exist yields nothing and does not create it.
    let missing = TestBroker::unique("smoke-missing");
    assert!(b.consume(&missing, 1, Duration::from_millis(500)).is_empty());
    assert_eq!(b.partitions(&missing).unwrap(), Vec::<i32>::new());
    assert_eq!(b.end_offsets(&missing).unwrap(), BTreeMap::new());
}

#[test]
fn probe_and_process_lifetime() {
    let b = broker();
    let info = broker::probe(&b.bootstrap, Duration::from_secs(2)).unwrap();
    assert!(!info.brokers.is_empty());
    if !b.owns_process() {
        eprintln!("external broker {}: not checking the process lifetime", b.bootstrap);
        return;
    }
    assert!(b.is_tansu() && b.read_committed_gap().is_some());
    assert_eq!(info.cluster_id.as_deref(), Some(broker::TANSU_CLUSTER_ID));
    let log = b.log_path().unwrap().to_path_buf();
    assert!(log.exists());
    let addr = b.bootstrap.clone();
    drop(b);
    assert!(
        broker::probe(&addr, Duration::from_millis(500)).is_err(),
        "broker still answers after drop"
    );
    assert!(!log.exists(), "log kept after a passing test");

    // kill(): the broker goes away while the TestBroker lives on.
    let mut b = broker::TestBroker::start_tansu().unwrap();
    assert!(broker::probe(&b.bootstrap, Duration::from_secs(2)).is_ok());
    assert!(b.kill());
    assert!(
        broker::probe(&b.bootstrap, Duration::from_millis(500)).is_err(),
        "broker still answers after kill"
    );
    assert!(!b.kill());
}
