//! Poison records mixed into normal ones, against a real broker: huge keys, ids, model names,
//! versions and header values, thousands of headers, a huge input array. Each record gets
//! exactly one outcome (a result, or a dead letter whose reason is bounded), no partition is
//! blocked, and the committed offsets reach the end of every partition.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::broker::TestBroker;
use common::kafka::{
    cache_for, committed, config, header, json, outcomes, setup, source_of, Record,
};
use common::TestRepo;
use sluice::pipeline::Pipeline;

fn normal(i: usize) -> Record {
    (
        Some(format!("k{i}").into_bytes()),
        json(
            serde_json::json!({"id": format!("n{i}"), "model": "tabular", "input": [i as f64, 1, 2, 3, 4, 5, 6, 7]}),
        ),
        vec![],
    )
}

/// The poison records: (what, record).
fn poison() -> Vec<(&'static str, Record)> {
    let mb = |c: char, n: usize| c.to_string().repeat(n);
    let tab = |id: &str| {
        json(serde_json::json!({"id": id, "model": "tabular", "input": [1, 2, 3, 4, 5, 6, 7, 8]}))
    };
    vec![
        ("0.9 MB key", (Some(mb('k', 900_000).into_bytes()), tab("p-key-0.9"), vec![])),
        ("1.4 MB key", (Some(mb('K', 1_400_000).into_bytes()), tab("p-key-1.4"), vec![])),
        (
            "1 MB id",
            (
                None,
                json(
                    serde_json::json!({"id": mb('i', 1_000_000), "model": "tabular", "input": [1, 2, 3, 4, 5, 6, 7, 8]}),
                ),
                vec![],
            ),
        ),
        (
            "1 MB model name",
            (
                None,
                json(
                    serde_json::json!({"id": "p-model", "model": mb('m', 1_000_000), "input": [1]}),
                ),
                vec![],
            ),
        ),
        (
            "1 MB version",
            (
                None,
                json(
                    serde_json::json!({"id": "p-version", "model": "tabular", "version": mb('v', 1_000_000), "input": [1, 2, 3, 4, 5, 6, 7, 8]}),
                ),
                vec![],
            ),
        ),
        (
            "1 MB content-type",
            (None, tab("p-ctype"), vec![("content-type".into(), mb('c', 1_000_000).into_bytes())]),
        ),
        (
            "1 MB custom header",
            (None, tab("p-header"), vec![("x-custom".into(), mb('h', 1_000_000).into_bytes())]),
        ),
        (
            "5,000 headers",
            (None, tab("p-headers"), (0..5000).map(|i| (format!("h{i}"), b"v".to_vec())).collect()),
        ),
        (
            "100,000 empty strings",
            (
                None,
                json(
                    serde_json::json!({"id": "p-empties", "model": "tiny-embed", "input": vec![""; 100_000]}),
                ),
                vec![],
            ),
        ),
    ]
}

#[test]
fn poison_records_each_get_one_outcome_and_commits_reach_the_end_of_every_partition() {
    let b = TestBroker::start().expect("broker");
    let repo = TestRepo::new();
    let t = setup(&b, "poison", 2);
    let poison = poison();
    // Poison records spread among 10,000 normal ones, on both partitions.
    let mut records = Vec::new();
    let mut what_at = HashMap::new();
    let mut next_poison = poison.into_iter();
    for i in 0..10_000 {
        if i % 1000 == 500 {
            if let Some((what, r)) = next_poison.next() {
                what_at.insert(records.len(), what);
                records.push(r);
            }
        }
        records.push(normal(i));
    }
    for (what, r) in next_poison {
        what_at.insert(records.len(), what);
        records.push(r);
    }
    let sent = b.produce(&t.input, &records, None).unwrap();
    let cfg = config(&b, &t, &repo.path());
    let pipeline = Pipeline::start(&cfg, cache_for(&cfg)).expect("pipeline starts");
    let (out, dlq) = outcomes(&b, &t, records.len(), Duration::from_secs(240));
    let report = pipeline.stop();

    let mut seen: HashMap<(String, i32, i64), usize> = HashMap::new();
    for c in &out {
        *seen.entry(source_of(c, false)).or_default() += 1;
    }
    for d in &dlq {
        *seen.entry(source_of(d, true)).or_default() += 1;
        let reason = header(d, "sluice.error.reason").unwrap_or_default();
        assert!(reason.len() <= 1200, "reason bounded: {} bytes", reason.len());
    }
    for (i, (p, o)) in sent.iter().enumerate() {
        let n = seen.get(&(t.input.clone(), *p, *o)).copied().unwrap_or(0);
        let what = what_at.get(&i).copied().unwrap_or("a normal record");
        assert_eq!(n, 1, "{what} at {p}/{o}: {n} outcomes (report {report:?})");
    }
    assert_eq!(seen.len(), records.len());
    let normal_results = out
        .iter()
        .filter(|c| {
            let v: serde_json::Value = serde_json::from_slice(&c.value).unwrap_or_default();
            v["id"].as_str().is_some_and(|id| id.starts_with('n'))
        })
        .count();
    assert_eq!(normal_results, 10_000, "every normal record got its result");
    let ends: Vec<i64> = (0..2)
        .map(|p| sent.iter().filter(|(pp, _)| *pp == p).map(|(_, o)| o + 1).max().unwrap_or(0))
        .collect();
    assert_eq!(committed(&b, &t, 2), ends, "commits reach the end");
}
