//! Model faults in a running pipeline, against a real broker: a model load that takes as long
//! as the test wants does not stop the stream (the load runs on the loader thread; only the
//! record that needs it waits), a model that panics on one request dead-letters that request
//! alone, and weights that fail to load are dead-lettered, then load once fixed on disk,
//! without a restart. Every record gets exactly one outcome and the committed offsets reach
//! the end of every partition.
//!
//! The slow load and the panic are test-only model behaviour (a `[testing]` table in the
//! model's sluice.toml), available only in builds with the `fault-injection` feature, which
//! the README's test command enables. Nothing here depends on timing to pass.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::broker::{Consumed, TestBroker};
use common::kafka::{cache_for, committed, config, header, json, outcomes, setup, source_of};
use common::kafka::{Record, Topics};
use common::TestRepo;
use sluice::pipeline::Pipeline;

fn record(id: &str, model: &str, first: f64) -> Record {
    (
        Some(id.as_bytes().to_vec()),
        json(serde_json::json!({"id": id, "model": model, "input": [first, 1, 2, 3, 4, 5, 6, 7]})),
        vec![],
    )
}

/// Appends a `[testing]` table to `name`/`version`'s sluice.toml.
#[cfg(feature = "fault-injection")]
fn add_testing(repo: &TestRepo, name: &str, version: &str, table: &str) {
    use std::io::Write;
    let path = repo.path().join(name).join(version).join("sluice.toml");
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    writeln!(f, "\n[testing]\n{table}").unwrap();
}

/// Outcomes per input (partition, offset): each must have exactly one.
fn assert_one_outcome_each(
    t: &Topics,
    sent: &[(i32, i64)],
    out: &[Consumed],
    dlq: &[Consumed],
) -> HashMap<(i32, i64), String> {
    let mut seen: HashMap<(i32, i64), Vec<String>> = HashMap::new();
    for c in out {
        let (topic, p, o) = source_of(c, false);
        assert_eq!(topic, t.input);
        seen.entry((p, o)).or_default().push("result".into());
    }
    for d in dlq {
        let (topic, p, o) = source_of(d, true);
        assert_eq!(topic, t.input);
        let reason = header(d, "sluice.error.reason").unwrap_or_default().to_string();
        seen.entry((p, o)).or_default().push(format!("dead letter: {reason}"));
    }
    for at in sent {
        let n = seen.get(at).map_or(0, Vec::len);
        assert_eq!(n, 1, "record at {at:?} has {n} outcomes: {:?}", seen.get(at));
    }
    assert_eq!(seen.len(), sent.len(), "outcomes of records that were not sent");
    seen.into_iter().map(|(k, mut v)| (k, v.remove(0))).collect()
}

fn ends(sent: &[(i32, i64)], partitions: i32) -> Vec<i64> {
    (0..partitions)
        .map(|p| sent.iter().filter(|(pp, _)| *pp == p).map(|(_, o)| o + 1).max().unwrap_or(0))
        .collect()
}

/// Waits (up to 60 s) for the group's commits to reach the end of both input partitions,
/// stops the pipeline, and asserts that they did.
fn stop_once_committed_to_end(b: &TestBroker, t: &Topics, sent: &[(i32, i64)], pipeline: Pipeline) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed(b, t, 2) != ends(sent, 2) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let report = pipeline.stop();
    assert_eq!(committed(b, t, 2), ends(sent, 2), "commits reach the end ({report:?})");
}

/// The demo models plus `gated`/1, whose load waits until the returned file exists.
#[cfg(feature = "fault-injection")]
fn gated_repo() -> (TestRepo, std::path::PathBuf) {
    let repo = TestRepo::new();
    repo.add_mlp("gated", "1", vec![4], 5);
    let gate = repo.path().join("gate-open");
    add_testing(&repo, "gated", "1", &format!("load_gate = {:?}", gate.display().to_string()));
    (repo, gate)
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_model_load_does_not_stop_the_stream_only_its_records_wait() {
    let b = TestBroker::start().expect("broker");
    let (repo, gate) = gated_repo();
    let t = setup(&b, "gated-load", 2);
    // The gated record first, on both partitions, then 400 records of a loaded model.
    let mut records = vec![record("g0", "gated", 1.0), record("g1", "gated", 1.0)];
    records.extend((0..400).map(|i| record(&format!("n{i}"), "tabular", i as f64)));
    let sent = b.produce(&t.input, &records, None).unwrap();
    let cfg = config(&b, &t, &repo.path());
    let pipeline = Pipeline::start(&cfg, cache_for(&cfg)).expect("pipeline starts");

    // Every other record gets its result while the load is held open.
    let (out, dlq) = outcomes(&b, &t, 400, Duration::from_secs(120));
    assert_eq!(
        dlq.len(),
        0,
        "no dead letters: {:?}",
        dlq.iter().map(|d| header(d, "sluice.error.reason")).collect::<Vec<_>>()
    );
    assert_eq!(out.len(), 400, "the stream flows while a model loads");
    let waiting = &pipeline.source().stats.waiting_for_model;
    assert_eq!(waiting.load(std::sync::atomic::Ordering::Relaxed), 2, "the gated records wait");
    // The records behind the waiting ones are committed only up to them.
    let c = committed(&b, &t, 2);
    for (p, g) in [(sent[0].0, sent[0].1), (sent[1].0, sent[1].1)] {
        assert!(c[p as usize] <= g, "committed past a waiting record: {c:?} vs {g}");
    }

    std::fs::write(&gate, b"").unwrap();
    let (out, dlq) = outcomes(&b, &t, records.len(), Duration::from_secs(120));
    let seen = assert_one_outcome_each(&t, &sent, &out, &dlq);
    assert_eq!(seen[&sent[0]], "result");
    assert_eq!(seen[&sent[1]], "result");
    stop_once_committed_to_end(&b, &t, &sent, pipeline);
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_full_wait_queue_pauses_only_the_partitions_whose_records_wait() {
    let b = TestBroker::start().expect("broker");
    let (repo, gate) = gated_repo();
    let t = setup(&b, "wait-full", 2);
    // Partition 0: far more records waiting for the gated model than the wait queue holds
    // (a ring's capacity, 16 here), then normal ones; partition 1: normal ones only.
    let mut p0: Vec<Record> = (0..200).map(|i| record(&format!("g{i}"), "gated", 1.0)).collect();
    p0.extend((0..100).map(|i| record(&format!("a{i}"), "tabular", i as f64)));
    let p1: Vec<Record> = (0..300).map(|i| record(&format!("b{i}"), "tabular", i as f64)).collect();
    let mut sent = b.produce(&t.input, &p0, Some(0)).unwrap();
    sent.extend(b.produce(&t.input, &p1, Some(1)).unwrap());
    let mut cfg = config(&b, &t, &repo.path());
    cfg.streaming.inference.batching.ring_capacity = 16;
    let cache = cache_for(&cfg);
    cache.get("tabular", None).unwrap();
    let pipeline = Pipeline::start(&cfg, cache).expect("pipeline starts");

    // Partition 1 flows to its end while partition 0 waits for the load.
    let deadline = Instant::now() + Duration::from_secs(120);
    let p1_results = || {
        let (out, _) = outcomes(&b, &t, 300, Duration::from_secs(5));
        out.iter().filter(|c| source_of(c, false).1 == 1).count()
    };
    while p1_results() < 300 {
        assert!(Instant::now() < deadline, "partition 1 stopped behind partition 0's wait");
    }
    let stats = &pipeline.source().stats;
    assert!(stats.pauses.load(std::sync::atomic::Ordering::Relaxed) >= 1, "partition 0 paused");
    let (out, _) = outcomes(&b, &t, 300, Duration::from_secs(5));
    assert!(
        out.iter().all(|c| source_of(c, false).1 == 1),
        "no record of partition 0 has an outcome while its first records wait"
    );

    std::fs::write(&gate, b"").unwrap();
    let (out, dlq) = outcomes(&b, &t, sent.len(), Duration::from_secs(180));
    assert_one_outcome_each(&t, &sent, &out, &dlq);
    assert_eq!(dlq.len(), 0);
    stop_once_committed_to_end(&b, &t, &sent, pipeline);
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_model_that_panics_on_one_request_dead_letters_that_request_alone() {
    let b = TestBroker::start().expect("broker");
    let repo = TestRepo::new();
    repo.add_mlp("panicky", "1", vec![4], 6);
    add_testing(&repo, "panicky", "1", "panic_on_first_feature = -666.0");
    let t = setup(&b, "panicky", 2);
    let records: Vec<Record> = (0..1000)
        .map(|i| record(&format!("p{i}"), "panicky", if i == 500 { -666.0 } else { i as f64 }))
        .collect();
    let sent = b.produce(&t.input, &records, None).unwrap();
    let cfg = config(&b, &t, &repo.path());
    let pipeline = Pipeline::start(&cfg, cache_for(&cfg)).expect("pipeline starts");
    let (out, dlq) = outcomes(&b, &t, records.len(), Duration::from_secs(180));
    let seen = assert_one_outcome_each(&t, &sent, &out, &dlq);
    let poisoned = &seen[&sent[500]];
    assert!(poisoned.contains("panicked"), "{poisoned}");
    assert_eq!(dlq.len(), 1, "only the poisoned request fails");
    assert_eq!(header(&dlq[0], "sluice.error.class"), Some("inference"));
    assert!(pipeline.is_healthy(), "the lane keeps serving");
    stop_once_committed_to_end(&b, &t, &sent, pipeline);
}

/// A version that fails every batch while a flag file exists: its circuit breaker opens,
/// its records wait (their partition paused, nothing dead-lettered beyond the batches that
/// opened it) while another model's partition flows to its end, and once the fault clears a
/// probe closes the breaker and every waiting record gets its result, without a restart.
#[cfg(feature = "fault-injection")]
#[test]
fn an_open_circuit_holds_a_failing_version_and_recovers_without_a_restart() {
    use sluice::execute::circuit::CircuitState;
    let b = TestBroker::start().expect("broker");
    let repo = TestRepo::new();
    repo.add_mlp("flaky", "1", vec![4], 8);
    let flag = repo.path().join("flaky-is-broken");
    std::fs::write(&flag, b"").unwrap();
    add_testing(
        &repo,
        "flaky",
        "1",
        &format!("fail_while_exists = {:?}", flag.display().to_string()),
    );
    let t = setup(&b, "circuit", 2);
    // Partition 0: the failing version; partition 1: a healthy model.
    let p0: Vec<Record> = (0..300).map(|i| record(&format!("f{i}"), "flaky", i as f64)).collect();
    let p1: Vec<Record> = (0..300).map(|i| record(&format!("s{i}"), "tabular", i as f64)).collect();
    let mut sent = b.produce(&t.input, &p0, Some(0)).unwrap();
    sent.extend(b.produce(&t.input, &p1, Some(1)).unwrap());
    let mut cfg = config(&b, &t, &repo.path());
    cfg.streaming.inference.batching.max_batch_rows = 8;
    cfg.streaming.inference.processing.max_retries = 1;
    let cb = &mut cfg.streaming.inference.processing.circuit_breaker;
    cb.cool_down_ms = 100;
    cb.max_cool_down_ms = 400;
    let limit = (cb.consecutive_failures * 8) as usize;
    let pipeline = Pipeline::start(&cfg, cache_for(&cfg)).expect("pipeline starts");

    // The healthy partition flows to its end while the breaker holds the failing version.
    let deadline = Instant::now() + Duration::from_secs(120);
    let p1_results = || {
        let (out, _) = outcomes(&b, &t, 300, Duration::from_secs(5));
        out.iter().filter(|c| source_of(c, false).1 == 1).count()
    };
    while p1_results() < 300 {
        assert!(Instant::now() < deadline, "partition 1 stopped behind the failing version");
    }
    let circuits = pipeline.circuits().expect("running").clone();
    common::wait_for("the breaker to open with requests parked", Duration::from_secs(60), || {
        (circuits.parked() > 0).then_some(())
    });
    let view = circuits.views().into_iter().find(|v| v.model == "flaky").expect("flaky's breaker");
    assert_ne!(view.state, CircuitState::Closed, "{view:?}");
    assert!(view.last_error.contains("fail_while_exists"), "{view:?}");
    let (_, dlq) = outcomes(&b, &t, 600, Duration::from_secs(3));
    assert!(
        dlq.len() <= limit,
        "no dead-letter flood: {} dead letters (at most the {limit} that opened it)",
        dlq.len()
    );
    assert!(dlq.iter().all(|d| header(d, "sluice.error.class") == Some("inference")));
    let c = committed(&b, &t, 2);
    assert!(c[0] < 300, "partition 0 is not committed past the waiting records: {c:?}");

    // The fault clears: a probe closes the breaker and every waiting record is computed.
    std::fs::remove_file(&flag).unwrap();
    let (out, dlq) = outcomes(&b, &t, sent.len(), Duration::from_secs(180));
    assert_one_outcome_each(&t, &sent, &out, &dlq);
    assert!(dlq.len() <= limit);
    let view = circuits.views().into_iter().find(|v| v.model == "flaky").expect("flaky's breaker");
    assert_eq!(view.state, CircuitState::Closed, "{view:?}");
    assert_eq!(circuits.parked(), 0);
    assert!(pipeline.is_healthy());
    stop_once_committed_to_end(&b, &t, &sent, pipeline);
}

#[cfg(not(feature = "fault-injection"))]
#[test]
fn slow_load_and_panic_tests_need_the_fault_injection_feature() {
    eprintln!(
        "SKIPPED: the slow-load and panicking-model tests need `--features fault-injection` (scripts/test.sh passes it)"
    );
}

#[test]
fn weights_that_fail_to_load_are_dead_lettered_then_load_once_fixed_without_a_restart() {
    let b = TestBroker::start().expect("broker");
    let repo = TestRepo::new();
    repo.add_mlp("fragile", "1", vec![4], 7);
    let weights = repo.path().join("fragile/1/model.safetensors");
    let good = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, b"broken weights").unwrap();
    let t = setup(&b, "fragile", 2);
    let cfg = config(&b, &t, &repo.path());
    let cache = cache_for(&cfg);
    let pipeline = Pipeline::start(&cfg, cache.clone()).expect("pipeline starts");

    let first: Vec<Record> = (0..50).map(|i| record(&format!("b{i}"), "fragile", 1.0)).collect();
    let mut sent = b.produce(&t.input, &first, None).unwrap();
    let (out, dlq) = outcomes(&b, &t, first.len(), Duration::from_secs(120));
    assert_eq!((out.len(), dlq.len()), (0, 50), "broken weights: every record dead-lettered");
    for d in &dlq {
        let reason = header(d, "sluice.error.reason").unwrap_or_default();
        assert!(reason.contains("could not be loaded"), "{reason}");
    }
    let failures = cache.stats.load_failures.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        (1..=6).contains(&failures),
        "failed loads are remembered, not retried per record ({failures})"
    );

    // Fixed on disk: records sent from now on get results once the backoff has passed.
    std::fs::write(&weights, &good).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut i = 0;
    loop {
        sent.extend(
            b.produce(&t.input, &[record(&format!("f{i}"), "fragile", 2.0)], None).unwrap(),
        );
        i += 1;
        let (out, _) = outcomes(&b, &t, sent.len(), Duration::from_secs(30));
        if !out.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the fixed model never loaded");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (out, dlq) = outcomes(&b, &t, sent.len(), Duration::from_secs(60));
    assert_one_outcome_each(&t, &sent, &out, &dlq);
    stop_once_committed_to_end(&b, &t, &sent, pipeline);
}
