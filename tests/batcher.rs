//! Batcher policy: priority order, no starvation, row cap and token budget, length grouping,
//! deadline and watermark expiry, one model per batch.

mod common;

use std::time::Duration;

use common::{request, text_request, TestRepo};
use sluice::core::now_epoch_ms;
use sluice::core::BatchCaps;
use sluice::core::ErrorClass;
use sluice::core::{Limits, Priority};
use sluice::queue::batcher::Anchor;
use sluice::queue::Request;
use sluice::queue::{BatchPolicy, Batcher};

fn policy(max_rows: usize, max_tokens: usize) -> BatchPolicy {
    BatchPolicy {
        caps: BatchCaps { max_rows, max_tokens },
        priority_burst: 4,
        length_grouping: true,
        expire_late_after: None,
    }
}

fn ids(batch: &[Request]) -> Vec<String> {
    batch.iter().map(|r| r.id().to_string()).collect()
}

#[test]
fn priority_requests_are_served_first() {
    let repo = TestRepo::new();
    let mut dec = repo.decoder(Limits::default());
    let mut b = Batcher::new(policy(2, 10_000));
    for i in 0..3 {
        b.push(text_request(&mut dec, &format!("n{i}"), 3, Priority::Normal));
    }
    for i in 0..2 {
        b.push(text_request(&mut dec, &format!("p{i}"), 3, Priority::High));
    }
    let mut out = Vec::new();
    assert_eq!(b.next_batch(&mut out), Some(Anchor::Priority));
    assert_eq!(ids(&out), vec!["p0", "p1"]);
    // Priority drained: the normal lane goes on in arrival order.
    assert_eq!(b.next_batch(&mut out), Some(Anchor::Normal));
    assert_eq!(ids(&out), vec!["n0", "n1"]);
    assert_eq!(b.next_batch(&mut out), Some(Anchor::Normal));
    assert_eq!(ids(&out), vec!["n2"]);
    assert_eq!(b.next_batch(&mut out), None);
}

#[test]
fn priority_bursts_do_not_starve_the_normal_lane() {
    let repo = TestRepo::new();
    let mut dec = repo.decoder(Limits::default());
    let mut p = policy(1, 10_000);
    p.priority_burst = 2;
    let mut b = Batcher::new(p);
    b.push(text_request(&mut dec, "normal", 3, Priority::Normal));
    for i in 0..6 {
        b.push(text_request(&mut dec, &format!("p{i}"), 3, Priority::High));
    }
    let mut out = Vec::new();
    let mut order = Vec::new();
    while b.next_batch(&mut out).is_some() {
        order.extend(ids(&out));
    }
    assert_eq!(order, vec!["p0", "p1", "normal", "p2", "p3", "p4", "p5"]);
}

#[test]
fn batches_respect_row_cap_and_token_budget() {
    let repo = TestRepo::new();
    let mut dec = repo.decoder(Limits::default());
    // 10 words → 12 tokens with [CLS]/[SEP]; a budget of 40 padded tokens holds 3 of them.
    let mut b = Batcher::new(policy(8, 40));
    for i in 0..10 {
        b.push(text_request(&mut dec, &format!("r{i}"), 10, Priority::Normal));
    }
    let mut out = Vec::new();
    let mut seen = 0;
    while b.next_batch(&mut out).is_some() {
        let longest = out.iter().map(|r| r.max_tokens).max().unwrap_or(0) as usize;
        let rows: usize = out.iter().map(|r| r.items as usize).sum();
        assert!(longest * rows <= 40, "batch of {rows} × {longest} tokens exceeds the budget");
        assert!(rows <= 8);
        assert_eq!(rows, 3.min(10 - seen), "batches are filled as far as the budget allows");
        seen += rows;
    }
    assert_eq!(seen, 10);

    let mut b = Batcher::new(policy(4, 100_000));
    for i in 0..10 {
        b.push(text_request(&mut dec, &format!("r{i}"), 2, Priority::Normal));
    }
    b.next_batch(&mut out);
    assert_eq!(out.len(), 4, "row cap");
}

#[test]
fn similar_lengths_are_grouped_and_the_oldest_is_always_served() {
    let repo = TestRepo::new();
    let mut dec = repo.decoder(Limits::default());
    let lens = [5, 40, 6, 42, 7, 41];
    let mut grouped = Batcher::new(policy(3, 100_000));
    let mut fifo = Batcher::new(BatchPolicy { length_grouping: false, ..policy(3, 100_000) });
    for (i, &n) in lens.iter().enumerate() {
        grouped.push(text_request(&mut dec, &format!("r{i}"), n, Priority::Normal));
        fifo.push(text_request(&mut dec, &format!("r{i}"), n, Priority::Normal));
    }
    let mut out = Vec::new();
    grouped.next_batch(&mut out);
    assert_eq!(ids(&out), vec!["r0", "r2", "r4"]);
    grouped.next_batch(&mut out);
    assert_eq!(ids(&out), vec!["r1", "r3", "r5"]);
    fifo.next_batch(&mut out);
    assert_eq!(ids(&out), vec!["r0", "r1", "r2"], "without grouping, arrival order");
}

#[test]
fn expired_requests_leave_without_being_batched() {
    let repo = TestRepo::new();
    let mut dec = repo.decoder(Limits::default());
    let now = now_epoch_ms();
    let soon = now + 3_600_000;
    let mut b = Batcher::new(policy(8, 10_000));
    b.push(request(
        &mut dec,
        &format!(r#"{{"id":"late","model":"tiny-embed","input":"x","deadline_ms":{soon}}}"#),
        Priority::Normal,
        0,
    ));
    b.push(request(
        &mut dec,
        r#"{"id":"fine","model":"tiny-embed","input":"y"}"#,
        Priority::Normal,
        1,
    ));
    let mut expired = Vec::new();
    b.take_expired(now, &mut expired);
    assert!(expired.is_empty(), "nothing has expired yet");
    b.take_expired(soon + 1, &mut expired);
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].0.id(), "late");
    assert_eq!(expired[0].1.class, ErrorClass::Expired);
    let mut out = Vec::new();
    b.next_batch(&mut out);
    assert_eq!(ids(&out), vec!["fine"]);
}

#[test]
fn late_records_expire_under_the_expire_watermark_policy() {
    let repo = TestRepo::new();
    let mut dec = repo.decoder(Limits::default());
    let mut b = Batcher::new(BatchPolicy {
        expire_late_after: Some(Duration::from_secs(2)),
        ..policy(8, 10_000)
    });
    let mut r =
        request(&mut dec, r#"{"id":"old","model":"tiny-embed","input":"x"}"#, Priority::Normal, 0);
    r.env.event_time_ms = Some(1_000_000);
    b.push(r);
    let mut expired = Vec::new();
    b.take_expired(1_001_500, &mut expired);
    assert!(expired.is_empty(), "1.5 s late is within the 2 s watermark");
    b.take_expired(1_003_000, &mut expired);
    assert_eq!(expired.len(), 1);
    assert!(expired[0].1.reason.contains("watermark"));
}

#[test]
fn a_batch_holds_one_model() {
    let repo = TestRepo::new();
    let mut dec = repo.decoder(Limits::default());
    let mut b = Batcher::new(policy(8, 10_000));
    b.push(text_request(&mut dec, "t0", 3, Priority::Normal));
    b.push(request(
        &mut dec,
        r#"{"id":"x0","model":"tabular","input":[1,2,3,4,5,6,7,8]}"#,
        Priority::Normal,
        1,
    ));
    b.push(text_request(&mut dec, "t1", 3, Priority::Normal));
    let mut out = Vec::new();
    b.next_batch(&mut out);
    assert_eq!(ids(&out), vec!["t0", "t1"]);
    b.next_batch(&mut out);
    assert_eq!(ids(&out), vec!["x0"]);
}
