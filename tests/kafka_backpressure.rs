//! Backpressure against a real broker: a deliberately slow model and a fast producer keep
//! resident memory bounded, pause the consumer's partitions, and lose nothing. Alone in its
//! test binary because it measures the whole process's resident memory.
//!
//! The slow model is an MLP with three hidden layers of 1024: a few milliseconds of real work
//! per batch of 16, many times what decoding a record costs the consumer, so the rings fill.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::broker::TestBroker;
use common::kafka::{cache_for, config, json, outcomes, setup, Record};
use common::TestRepo;
use sluice::pipeline::Pipeline;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn a_slow_model_and_a_fast_producer_keep_memory_bounded_without_loss() {
    let b = TestBroker::start().expect("broker");
    let repo = TestRepo::new();
    repo.add_mlp("slow", "1", vec![1024, 1024, 1024], 3);
    let t = setup(&b, "slow", 2);
    // 4,000 records of ~16 KiB: 64 MiB of backlog, far more than the rings may hold.
    let n = 4000usize;
    let pad = "x".repeat(16 * 1024);
    let records: Vec<Record> = (0..n)
        .map(|i| (None, json(serde_json::json!({"id": format!("r{i}"), "model": "slow", "input": [i as f64, 0, 0, 0, 0, 0, 0, 0], "pad": pad})), vec![]))
        .collect();
    b.produce(&t.input, &records, None).unwrap();
    drop(records);
    let mut cfg = config(&b, &t, &repo.path());
    cfg.streaming.inference.batching.ring_capacity = 32;
    cfg.streaming.inference.batching.max_batch_rows = 16;
    // Loaded before the baseline: the bound below is about the backlog, not the model's 8 MiB
    // of weights.
    let cache = cache_for(&cfg);
    cache.get("slow", None).expect("the slow model loads");
    let baseline = rss_kib();
    let pipeline = Pipeline::start(&cfg, cache).expect("pipeline starts");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peak = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = 0;
            while !stop.load(Ordering::SeqCst) {
                peak = peak.max(rss_kib());
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        let (out, dlq) = outcomes(&b, &t, n, Duration::from_secs(240));
        stop.store(true, Ordering::SeqCst);
        assert!(dlq.is_empty());
        let mut ids: Vec<String> = out
            .iter()
            .map(|o| {
                serde_json::from_slice::<serde_json::Value>(&o.value).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "no loss");
        sampler.join().unwrap()
    });
    let pauses = pipeline.source().stats.pauses.load(Ordering::Relaxed);
    pipeline.stop();
    assert!(pauses > 0, "the consumer paused its partitions while the rings were full");
    let growth_mib = peak.saturating_sub(baseline) / 1024;
    println!(
        "baseline {} MiB, peak {} MiB, growth {growth_mib} MiB, pauses {pauses}",
        baseline / 1024,
        peak / 1024
    );
    assert!(growth_mib < 48, "resident memory grew by {growth_mib} MiB with 64 MiB of backlog");
}
