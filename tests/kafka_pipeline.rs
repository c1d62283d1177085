//! The streaming pipeline against a real Kafka-compatible broker (Tansu, or the broker named
//! by SLUICE_TEST_BROKER): exactly one outcome per input, priority first, every dead-letter
//! class, graceful restart without loss or duplicates. (Backpressure: tests/kafka_backpressure.rs.)

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::broker::TestBroker;
use common::kafka::{
    cache_for, committed, config, header, json, outcomes, setup, source_of, Record,
};
use common::TestRepo;
use sluice::pipeline::Pipeline;

#[test]
fn ten_thousand_requests_each_get_exactly_one_outcome_and_priority_goes_first() {
    let b = TestBroker::start().expect("broker");
    let repo = TestRepo::new();
    let t = setup(&b, "bulk", 4);
    let n_normal = 10_000usize;
    let n_prio = 300usize;
    let normal: Vec<Record> = (0..n_normal)
        .map(|i| {
            let body = if i % 5 == 0 {
                json(serde_json::json!({"id": format!("r{i}"), "model": "tiny-embed", "input": format!("the quick brown fox {i}")}))
            } else {
                json(serde_json::json!({"id": format!("r{i}"), "model": "tabular", "input": [i as f64, 1, 2, 3, 4, 5, 6, 7]}))
            };
            (Some(format!("k{i}").into_bytes()), body, vec![])
        })
        .collect();
    let sent = b.produce(&t.input, &normal, None).unwrap();
    let prio: Vec<Record> = (0..n_prio)
        .map(|i| (None, json(serde_json::json!({"id": format!("p{i}"), "model": "tabular", "input": [0, 0, 0, 0, 0, 0, 0, i as f64]})), vec![]))
        .collect();
    let sent_prio = b.produce(&t.priority, &prio, Some(0)).unwrap();
    // Which id lives at which (topic, partition, offset).
    let mut expected: HashMap<(String, i32, i64), String> = HashMap::new();
    for (i, (p, o)) in sent.iter().enumerate() {
        expected.insert((t.input.clone(), *p, *o), format!("r{i}"));
    }
    for (i, (p, o)) in sent_prio.iter().enumerate() {
        expected.insert((t.priority.clone(), *p, *o), format!("p{i}"));
    }

    let cfg = config(&b, &t, &repo.path());
    let pipeline = Pipeline::start(&cfg, cache_for(&cfg)).expect("pipeline starts");
    let total = n_normal + n_prio;
    let (out, dlq) = outcomes(&b, &t, total, Duration::from_secs(240));
    let report = pipeline.stop();
    assert!(
        dlq.is_empty(),
        "no dead letters expected, got {}: {:?}",
        dlq.len(),
        dlq.first().map(|d| &d.headers)
    );
    assert_eq!(out.len(), total, "one result per request (report {report:?})");

    let mut seen: HashMap<(String, i32, i64), usize> = HashMap::new();
    let mut prio_positions = Vec::new();
    let mut normal_positions = Vec::new();
    for (pos, c) in out.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_slice(&c.value).unwrap();
        let src = source_of(c, false);
        let id = v["id"].as_str().unwrap();
        assert_eq!(
            expected.get(&src).map(String::as_str),
            Some(id),
            "result {id} carries its request's source"
        );
        *seen.entry(src).or_default() += 1;
        // Key: the request key, or the id when there was none.
        let key = c.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned());
        if id.starts_with('p') {
            assert_eq!(key.as_deref(), Some(id));
            prio_positions.push(pos);
        } else {
            assert_eq!(key.as_deref(), Some(format!("k{}", &id[1..]).as_str()));
            normal_positions.push(pos);
            let width = if id[1..].parse::<usize>().unwrap() % 5 == 0 { 32 } else { 3 };
            assert_eq!(v["output"][0].as_array().unwrap().len(), width);
        }
    }
    assert_eq!(seen.len(), total, "every input has an outcome");
    assert!(seen.values().all(|n| *n == 1), "no duplicates without a crash");
    // Under a backlog, priority requests are served ahead of the normal lane.
    prio_positions.sort_unstable();
    let p95 = prio_positions[prio_positions.len() * 95 / 100];
    let normal_median = normal_positions[normal_positions.len() / 2];
    assert!(
        p95 < normal_median,
        "priority results should come early: p95 position {p95}, normal median {normal_median}"
    );
    // Everything was committed on the way out.
    let ends: Vec<i64> = (0..4)
        .map(|p| sent.iter().filter(|(pp, _)| *pp == p).map(|(_, o)| o + 1).max().unwrap_or(0))
        .collect();
    assert_eq!(committed(&b, &t, 4), ends, "committed offsets reach the end of each partition");
}

#[test]
fn every_dead_letter_class_lands_in_the_dlq_and_neighbours_are_unaffected() {
    let b = TestBroker::start().expect("broker");
    let repo = TestRepo::new();
    // A model that cannot load: its failure is an `inference` dead letter.
    let broken = repo.path().join("broken/1");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("sluice.toml"),
        "kind = \"mlp\"\ninputs = 2\n[[layers]]\nweight = \"w\"\n",
    )
    .unwrap();
    let t = setup(&b, "dlq", 2);
    let ok = |i: usize| {
        (
            None,
            json(
                serde_json::json!({"id": format!("ok{i}"), "model": "tabular", "input": [1, 2, 3, 4, 5, 6, 7, 8]}),
            ),
            vec![],
        )
    };
    let fb = vec![("content-type".to_string(), b"application/x-flatbuffers".to_vec())];
    let bad: Vec<(&str, Record)> = vec![
        ("parse", (None, b"{not json".to_vec(), vec![])),
        ("parse", (None, b"\xff\xfe invalid utf-8".to_vec(), vec![])),
        (
            "parse",
            (None, br#"{"id":"n","model":"tabular","input":[NaN,1,2,3,4,5,6,7]}"#.to_vec(), vec![]),
        ),
        ("parse", (None, b"\x10\x00\x00\x00garbage-flatbuffer".to_vec(), fb)),
        ("parse", (None, b"{}".to_vec(), vec![("content-type".into(), b"text/csv".to_vec())])),
        ("validation", (None, br#"{"id":"v","model":"tabular","input":[1,2]}"#.to_vec(), vec![])),
        (
            "validation",
            (None, br#"{"id":null,"model":"tabular","input":[1,2,3,4,5,6,7,8]}"#.to_vec(), vec![]),
        ),
        (
            "validation",
            (
                None,
                format!(
                    r#"{{"id":"deep","model":"tiny-embed","input":{}{}}}"#,
                    "[".repeat(1500),
                    "]".repeat(1500)
                )
                .into_bytes(),
                vec![],
            ),
        ),
        (
            "unknown_model",
            (Some(b"key-u".to_vec()), br#"{"id":"u","model":"nope","input":"x"}"#.to_vec(), vec![]),
        ),
        (
            "too_large",
            (
                None,
                format!(r#"{{"id":"big","model":"tiny-embed","input":"{}"}}"#, "x".repeat(5000))
                    .into_bytes(),
                vec![],
            ),
        ),
        (
            "expired",
            (
                None,
                br#"{"id":"e","model":"tabular","input":[1,2,3,4,5,6,7,8],"deadline_ms":1}"#
                    .to_vec(),
                vec![],
            ),
        ),
        ("inference", (None, br#"{"id":"i","model":"broken","input":[1,2]}"#.to_vec(), vec![])),
    ];
    let mut records = Vec::new();
    let mut expect_class: Vec<Option<&str>> = Vec::new();
    for (i, (class, rec)) in bad.into_iter().enumerate() {
        records.push(ok(2 * i));
        expect_class.push(None);
        records.push(rec);
        expect_class.push(Some(class));
    }
    records.push(ok(999));
    expect_class.push(None);
    let sent = b.produce(&t.input, &records, Some(0)).unwrap();

    let mut cfg = config(&b, &t, &repo.path());
    cfg.streaming.inference.limits.max_record_bytes = 4096;
    let pipeline = Pipeline::start(&cfg, cache_for(&cfg)).expect("pipeline starts");
    let n_bad = expect_class.iter().filter(|c| c.is_some()).count();
    let (out, dlq) = outcomes(&b, &t, records.len(), Duration::from_secs(120));
    pipeline.stop();
    assert_eq!(out.len(), records.len() - n_bad);
    assert_eq!(dlq.len(), n_bad);
    let by_offset: BTreeMap<i64, usize> =
        sent.iter().enumerate().map(|(i, (_, o))| (*o, i)).collect();
    for d in &dlq {
        let (topic, partition, offset) = source_of(d, true);
        assert_eq!((topic.as_str(), partition), (t.input.as_str(), 0));
        let i = by_offset[&offset];
        assert_eq!(header(d, "sluice.error.class"), expect_class[i], "record {i}");
        assert!(!header(d, "sluice.error.reason").unwrap_or("").is_empty());
        assert!(header(d, "sluice.attempts").is_some());
        assert_eq!(d.value, records[i].1, "dead letter carries the original bytes");
        assert_eq!(d.key, records[i].0, "and the original key");
    }
    for o in &out {
        let (_, _, offset) = source_of(o, false);
        assert_eq!(expect_class[by_offset[&offset]], None, "only the valid records have results");
    }
}

#[test]
fn a_record_over_max_record_bytes_is_dead_lettered_whole_and_commits_go_on() {
    let b = TestBroker::start().expect("broker");
    let repo = TestRepo::new();
    let t = setup(&b, "huge", 1);
    let ok = |i: usize| {
        (
            None,
            json(
                serde_json::json!({"id": format!("ok{i}"), "model": "tabular", "input": [1, 2, 3, 4, 5, 6, 7, 8]}),
            ),
            vec![],
        )
    };
    // 1.5 MB: over maxRecordBytes (1 MiB by default). The broker took it as input, so it
    // takes its dead letter whole too: Sluice's own producer never cuts it.
    let huge = format!(r#"{{"id":"huge","model":"tabular","input":"{}"}}"#, "h".repeat(1_500_000))
        .into_bytes();
    let records: Vec<Record> =
        vec![ok(0), (Some(b"huge-key".to_vec()), huge.clone(), vec![]), ok(1)];
    b.produce(&t.input, &records, Some(0)).unwrap();
    let cfg = config(&b, &t, &repo.path());
    let pipeline = Pipeline::start(&cfg, cache_for(&cfg)).expect("pipeline starts");
    let (out, dlq) = outcomes(&b, &t, 3, Duration::from_secs(60));
    let report = pipeline.stop();
    assert_eq!(out.len(), 2, "both neighbours answered");
    assert_eq!(dlq.len(), 1);
    let d = &dlq[0];
    assert_eq!(header(d, "sluice.error.class"), Some("too_large"));
    let reason = header(d, "sluice.error.reason").unwrap_or_default();
    assert!(reason.contains("maxRecordBytes"), "{reason}");
    assert!(d.value[..] == huge[..], "the dead letter carries the whole record");
    assert_eq!(header(d, "sluice.original.value.bytes"), None, "not cut");
    assert_eq!(d.key.as_deref(), Some(&b"huge-key"[..]));
    assert_eq!(
        committed(&b, &t, 1),
        vec![3],
        "the partition's commits were not blocked ({report:?})"
    );
}

#[test]
fn graceful_restart_loses_nothing_and_duplicates_nothing() {
    let b = TestBroker::start().expect("broker");
    let repo = TestRepo::new();
    let t = setup(&b, "restart", 2);
    let cfg = config(&b, &t, &repo.path());
    let n = 3000usize;
    let records: Vec<Record> = (0..n).map(|i| (None, json(serde_json::json!({"id": format!("r{i}"), "model": "tabular", "input": [i as f64, 0, 0, 0, 0, 0, 0, 0]})), vec![])).collect();
    // First run: consume part of a stream that is still being produced.
    let first = Pipeline::start(&cfg, cache_for(&cfg)).expect("first run");
    b.produce(&t.input, &records[..n / 2], None).unwrap();
    let (o1, d1) = outcomes(&b, &t, n / 4, Duration::from_secs(60));
    assert!(o1.len() + d1.len() >= n / 4);
    let r1 = first.stop();
    b.produce(&t.input, &records[n / 2..], None).unwrap();
    // Second run: the same group picks up where the first one committed.
    let second = Pipeline::start(&cfg, cache_for(&cfg)).expect("second run");
    let (out, dlq) = outcomes(&b, &t, n, Duration::from_secs(120));
    let r2 = second.stop();
    assert!(dlq.is_empty());
    let mut count: HashMap<String, usize> = HashMap::new();
    for o in &out {
        let v: serde_json::Value = serde_json::from_slice(&o.value).unwrap();
        *count.entry(v["id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    assert_eq!(count.len(), n, "nothing lost (runs: {r1:?}, {r2:?})");
    assert!(
        count.values().all(|c| *c == 1),
        "a graceful stop commits everything it emitted: no duplicates"
    );
    assert!(r1.consumed > 0 && r2.consumed > 0, "both runs did work");
}

#[test]
fn metrics_snapshots_reach_the_metrics_topic_and_count_what_was_consumed() {
    let b = TestBroker::start().expect("broker");
    let repo = TestRepo::new();
    let t = setup(&b, "metrics", 1);
    let cfg = config(&b, &t, &repo.path());
    let recs: Vec<Record> = (0..20)
        .map(|i| {
            let body = serde_json::json!({"id": format!("m{i}"), "model": "tabular", "input": [i as f64, 1, 2, 3, 4, 5, 6, 7]});
            (None, json(body), vec![])
        })
        .collect();
    b.produce(&t.input, &recs, None).unwrap();
    let pipeline = Pipeline::start(&cfg, cache_for(&cfg)).expect("pipeline starts");
    // Every record's outcome first, so a later snapshot has counted them all.
    let out = b.consume(&t.output, recs.len(), Duration::from_secs(60));
    assert_eq!(out.len(), recs.len());
    // Snapshots come every second (reportingIntervalSeconds: 1); read until one has seen all
    // 20 records (an earlier one may have been taken before they were consumed).
    let mut seen = 0usize;
    let mut last = serde_json::Value::Null;
    for n in 1..=30 {
        let snaps = b.consume(&t.metrics, n, Duration::from_secs(5));
        if let Some(s) = snaps.last() {
            last = serde_json::from_slice(&s.value).expect("a snapshot is JSON");
            seen = snaps.len();
            if last["consumed"].as_u64() == Some(recs.len() as u64) {
                break;
            }
        }
    }
    assert!(seen > 0, "no metrics snapshot was written");
    assert_eq!(last["consumed"].as_u64(), Some(recs.len() as u64), "{last}");
    assert_eq!(last["results"].as_u64(), Some(recs.len() as u64), "{last}");
    assert_eq!(last["dead_letters"].as_u64(), Some(0), "{last}");
    assert!(last["instance"].as_str().is_some_and(|s| s.starts_with("sluice-")), "{last}");
    assert!(last["latency_ms"]["end_to_end"].is_object(), "{last}");
    for s in b.consume(&t.metrics, seen, Duration::from_secs(5)) {
        assert!(!s.value.is_empty(), "an empty metrics record was written");
    }
    pipeline.stop();
}

#[test]
fn held_record_bytes_stay_under_max_held_bytes_and_return_to_zero() {
    let b = TestBroker::start().expect("broker");
    let repo = TestRepo::new();
    repo.add_mlp("slowish", "1", vec![512, 512], 3);
    let t = setup(&b, "held", 2);
    // 1,500 records of ~16 KiB (24 MiB) against a bound of 1 MiB.
    let pad = "x".repeat(16 * 1024);
    let records: Vec<Record> = (0..1500)
        .map(|i| {
            let body = json(serde_json::json!({"id": format!("h{i}"), "model": "slowish", "input": [i as f64, 0, 0, 0, 0, 0, 0, 0], "pad": pad}));
            (Some(format!("key-{i}").into_bytes()), body, vec![])
        })
        .collect();
    let largest = records.iter().map(|r| r.1.len() + 16).max().unwrap_or(0) as u64;
    b.produce(&t.input, &records, None).unwrap();
    let mut cfg = config(&b, &t, &repo.path());
    cfg.kafka.consumer.max_held_bytes = 1024 * 1024;
    let pipeline = Pipeline::start(&cfg, cache_for(&cfg)).expect("pipeline starts");
    let stats = pipeline.source().stats.clone();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (peak, (out, dlq)) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                peak = peak.max(stats.held_bytes.load(std::sync::atomic::Ordering::Relaxed));
                std::thread::sleep(Duration::from_micros(200));
            }
            peak
        });
        let got = outcomes(&b, &t, records.len(), Duration::from_secs(240));
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (sampler.join().unwrap(), got)
    });
    let report = pipeline.stop();
    assert_eq!(out.len() + dlq.len(), records.len(), "every record answered ({report:?})");
    assert!(dlq.is_empty());
    assert!(peak > 0, "the gauge counted the records");
    assert!(
        peak <= 1024 * 1024 + largest,
        "held bytes peaked at {peak}, over the 1 MiB bound plus one record ({largest})"
    );
    assert_eq!(
        stats.held_bytes.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "every record's bytes were released"
    );
}
