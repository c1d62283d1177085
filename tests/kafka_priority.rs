//! Priority never waits behind normal work, against a real broker: while the only lane is
//! held busy and the normal ring is full (its topic paused, normal requests held at ingest),
//! priority records are still consumed and queued on the priority ring; once the lane is
//! released every record gets exactly one outcome and both topics are committed to their end.
//!
//! The busy lane is test-only model behaviour (a `[testing]` table: a batch that holds until
//! a gate file exists), available in builds with the `fault-injection` feature, which the
//! README's test command enables. Nothing here depends on timing to pass: the lane is held
//! until the test has seen what it checks.

mod common;

#[cfg(feature = "fault-injection")]
#[test]
fn priority_records_are_queued_while_the_normal_ring_is_full_and_its_lane_busy() {
    use std::collections::HashMap;
    use std::io::Write;
    use std::time::{Duration, Instant};

    use common::broker::TestBroker;
    use common::kafka::{cache_for, config, json, outcomes, setup, source_of, Record};
    use common::TestRepo;
    use sluice::pipeline::Pipeline;

    let b = TestBroker::start().expect("broker");
    let repo = TestRepo::new();
    repo.add_mlp("held", "1", vec![4], 9);
    let gate = repo.path().join("release-lane");
    let spec = repo.path().join("held/1/sluice.toml");
    let mut f = std::fs::OpenOptions::new().append(true).open(spec).unwrap();
    writeln!(
        f,
        "\n[testing]\nhold_on_first_feature = -1.0\nhold_gate = {:?}",
        gate.display().to_string()
    )
    .unwrap();
    let t = setup(&b, "prio-busy", 2);
    let rec = |id: String, model: &str, first: f64| -> Record {
        (
            None,
            json(
                serde_json::json!({"id": id, "model": model, "input": [first, 1, 2, 3, 4, 5, 6, 7]}),
            ),
            vec![],
        )
    };
    // 150 normal records on each input partition: every partition has records to commit.
    let mut sent: Vec<(String, i32, i64)> = Vec::new();
    for p in 0..2 {
        let normal: Vec<Record> =
            (0..150).map(|i| rec(format!("n{p}-{i}"), "held", -1.0)).collect();
        sent.extend(
            b.produce(&t.input, &normal, Some(p))
                .unwrap()
                .into_iter()
                .map(|(p, o)| (t.input.clone(), p, o)),
        );
    }
    let mut cfg = config(&b, &t, &repo.path());
    cfg.streaming.inference.batching.ring_capacity = 16;
    cfg.streaming.inference.lanes.cpu.count = 1;
    let cache = cache_for(&cfg);
    cache.get("held", None).unwrap();
    cache.get("tabular", None).unwrap();
    let pipeline = Pipeline::start(&cfg, cache).expect("pipeline starts");

    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait("the normal ring is full", &|| {
        let (_, n, cap) = pipeline.ring_depths();
        n == cap
    });
    let prio: Vec<Record> = (0..5).map(|i| rec(format!("p{i}"), "tabular", i as f64)).collect();
    sent.extend(
        b.produce(&t.priority, &prio, None)
            .unwrap()
            .into_iter()
            .map(|(p, o)| (t.priority.clone(), p, o)),
    );
    // The input topic is paused for the full normal ring; the priority topic is not.
    wait("the priority records are queued on the priority ring", &|| pipeline.ring_depths().0 == 5);
    assert_eq!(pipeline.ring_depths().1, 16, "the normal ring stays full while the lane is held");

    std::fs::write(&gate, b"").unwrap();
    let (out, dlq) = outcomes(&b, &t, sent.len(), Duration::from_secs(180));
    assert!(dlq.is_empty(), "no dead letters");
    let mut seen: HashMap<(String, i32, i64), usize> = HashMap::new();
    for c in &out {
        *seen.entry(source_of(c, false)).or_default() += 1;
    }
    for s in &sent {
        assert_eq!(seen.get(s).copied().unwrap_or(0), 1, "{s:?}: one outcome");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let ends_reached = || {
        [&t.input, &t.priority].iter().all(|topic| {
            let ends = b.end_offsets(topic).unwrap();
            let c = b.committed_offsets(&t.group, topic).unwrap();
            ends.iter().all(|(p, e)| c.get(p).copied().flatten() == Some(*e))
        })
    };
    while !ends_reached() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    pipeline.stop();
    b.assert_committed_to_end(&t.group, &t.input);
    b.assert_committed_to_end(&t.group, &t.priority);
}

#[cfg(not(feature = "fault-injection"))]
#[test]
fn the_priority_test_needs_the_fault_injection_feature() {
    eprintln!("SKIPPED: the busy-lane priority test needs `--features fault-injection` (scripts/test.sh passes it)");
}
