//! The load generator's own logic, in simulated time: intended-time bookkeeping, the recorder's
//! checks, and why an open-loop measure shows a stall that a closed-loop one hides.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use sluice::loadgen::open_loop::{run_open_loop, Clock, SimClock, Sink};
use sluice::loadgen::recorder::{OutcomeKind, Percentiles, Recorder, ResultFacts};
use sluice::loadgen::schedule::{intended_times, Arrival};
use sluice::loadgen::workload::{Payload, Planned, Workload};

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;

/// A system that answers in 1 ms, except that it stalls (answers nothing) from `stall_from`
/// for `stall_len`; what arrives during the stall is answered when it ends.
fn completion(arrival: u64, stall_from: u64, stall_len: u64) -> u64 {
    let start = if (stall_from..stall_from + stall_len).contains(&arrival) {
        stall_from + stall_len
    } else {
        arrival
    };
    start + MS
}

fn plan(n: usize) -> Arc<[Planned]> {
    let w = Workload {
        model: "m".into(),
        payload: Payload::Tabular { width: 2 },
        hostile_share: 0.0,
        priority_share: 0.0,
        seed: 1,
    };
    w.plan(n).into()
}

/// Sends into the stalling system and records each outcome at its completion time.
struct StallingSystem<'a> {
    clock: &'a SimClock,
    rec: &'a mut Recorder,
    stall_from: u64,
    stall_len: u64,
    /// Latency a closed-loop tool would record: from the actual send.
    from_actual_send: hdrhistogram::Histogram<u64>,
}

impl Sink for StallingSystem<'_> {
    fn try_send(&mut self, seq: usize, _intended_ns: u64) -> bool {
        let now = self.clock.now_ns();
        let done = completion(now, self.stall_from, self.stall_len);
        self.rec.on_outcome(
            seq,
            OutcomeKind::Result,
            done,
            ResultFacts { batch_size: Some(1), infer_us: Some(1000) },
        );
        let _ = self.from_actual_send.record(((done - now) / 1000).max(1));
        true
    }
    fn service(&mut self) {}
}

#[test]
fn a_stalled_system_shows_in_open_loop_p99_and_is_hidden_by_a_closed_loop() {
    // 1,000 requests/s for 10 s; the system stalls for 500 ms at t = 5 s.
    let intended: Arc<[u64]> = intended_times(1000.0, Arrival::Fixed, 10 * SEC, 1).into();
    let n = intended.len();
    let mut rec = Recorder::new(intended.clone(), plan(n), 0);
    let clock = SimClock::default();
    let mut sys = StallingSystem {
        clock: &clock,
        rec: &mut rec,
        stall_from: 5 * SEC,
        stall_len: 500 * MS,
        from_actual_send: sluice::core::new_histogram(),
    };
    let stats = run_open_loop(&clock, &intended, &mut sys, &AtomicBool::new(false));
    assert_eq!(stats.sent, n);
    let open = Percentiles::of(&rec.results);
    assert_eq!(open.count, n as u64);
    assert!(rec.complete());
    assert_eq!(rec.missing(), 0);
    // 500 of 10,000 requests (5%) waited for the stall to end: up to 500 ms.
    assert!(open.p99_ms >= 400.0, "open-loop p99 {} ms must show the stall", open.p99_ms);
    assert!(open.max_ms >= 499.0);
    assert!(open.p50_ms <= 1.1);

    // The closed-loop view of the same system: send, wait for the answer, send the next.
    // During the stall it sends one request, so one sample in thousands sees the stall.
    let mut closed = sluice::core::new_histogram();
    let mut t = 0;
    while t < 10 * SEC {
        let done = completion(t, 5 * SEC, 500 * MS);
        closed.record((done - t) / 1000).unwrap();
        t = done;
    }
    let closed = Percentiles::of(&closed);
    assert!(closed.p99_ms <= 1.1, "closed-loop p99 {} ms hides the stall", closed.p99_ms);
    assert!(closed.max_ms >= 499.0, "the stall is only in its max");
}

/// A client whose send blocks for `block` at record `at` (a full queue, a descheduled thread).
struct BlockingClient<'a> {
    clock: &'a SimClock,
    rec: &'a mut Recorder,
    at: usize,
    block: u64,
    from_actual_send: hdrhistogram::Histogram<u64>,
}

impl Sink for BlockingClient<'_> {
    fn try_send(&mut self, seq: usize, _intended_ns: u64) -> bool {
        if seq == self.at {
            self.clock.advance(self.block);
        }
        let now = self.clock.now_ns();
        self.rec.on_outcome(seq, OutcomeKind::Result, now + MS, ResultFacts::default());
        let _ = self.from_actual_send.record(1000);
        true
    }
    fn service(&mut self) {}
}

#[test]
fn a_stalled_producer_charges_the_records_it_sent_late() {
    let intended: Arc<[u64]> = intended_times(2000.0, Arrival::Fixed, 5 * SEC, 1).into();
    let n = intended.len();
    let mut rec = Recorder::new(intended.clone(), plan(n), 0);
    let clock = SimClock::default();
    let mut client = BlockingClient {
        clock: &clock,
        rec: &mut rec,
        at: 4000,
        block: 300 * MS,
        from_actual_send: sluice::core::new_histogram(),
    };
    let stats = run_open_loop(&clock, &intended, &mut client, &AtomicBool::new(false));
    assert_eq!(stats.sent, n);
    // The records due during the 300 ms block (600 of them) went out at once after it, late.
    assert!(stats.max_lag_ns >= 300 * MS);
    assert!(stats.late >= 590, "late sends {}", stats.late);
    // Measured from the actual send, nothing would show.
    assert!(Percentiles::of(&client.from_actual_send).max_ms <= 1.1);
    let p = Percentiles::of(&rec.results);
    assert!(p.p99_ms >= 200.0, "p99 {} ms", p.p99_ms);
}

#[test]
fn warm_up_is_checked_but_not_measured() {
    let intended: Arc<[u64]> = intended_times(100.0, Arrival::Fixed, 2 * SEC, 1).into();
    let mut rec = Recorder::new(intended.clone(), plan(intended.len()), SEC);
    for (seq, &t) in intended.iter().enumerate() {
        rec.on_outcome(seq, OutcomeKind::Result, t + 5 * MS, ResultFacts::default());
    }
    assert!(rec.complete());
    assert_eq!(rec.results_n, 200);
    assert_eq!(rec.results.len(), 100, "only the second second is measured");
    assert_eq!(rec.due_in_window(), 100);
}

/// The timeline shows latency per second of intended send time, warm-up included: a stall in
/// the third second shows there and only there.
#[test]
fn the_timeline_places_a_stall_in_its_second() {
    let intended: Arc<[u64]> = intended_times(100.0, Arrival::Fixed, 4 * SEC, 1).into();
    let mut rec = Recorder::new(intended.clone(), plan(intended.len()), SEC);
    for (seq, &t) in intended.iter().enumerate() {
        let late = if (2 * SEC..3 * SEC).contains(&t) { 300 * MS } else { 5 * MS };
        rec.on_outcome(seq, OutcomeKind::Result, t + late, ResultFacts::default());
    }
    let tl = rec.timeline();
    assert_eq!(tl.iter().map(|w| w.start_s).collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert!(tl.iter().all(|w| w.count == 100), "{tl:?}");
    for w in &tl {
        let stalled = w.start_s == 2;
        assert_eq!(w.p99_ms >= 299.0, stalled, "{w:?}");
        assert!(w.p99_ms <= 301.0 && w.p50_ms >= 4.9, "{w:?}");
    }
}

#[test]
fn the_checker_counts_missing_duplicate_foreign_and_misrouted_outcomes() {
    let intended: Arc<[u64]> = intended_times(1000.0, Arrival::Fixed, SEC, 1).into();
    let n = intended.len();
    let w = Workload {
        model: "m".into(),
        payload: Payload::Text { long_share: 0.0 },
        hostile_share: 0.2,
        priority_share: 0.3,
        seed: 9,
    };
    let plan: Arc<[Planned]> = w.plan(n).into();
    let mut rec = Recorder::new(intended.clone(), plan.clone(), 0);
    for seq in 0..n - 3 {
        let kind =
            if plan[seq].hostile.is_some() { OutcomeKind::DeadLetter } else { OutcomeKind::Result };
        rec.on_outcome(
            seq,
            kind,
            intended[seq] + 2 * MS,
            ResultFacts { batch_size: Some(4), infer_us: Some(3000) },
        );
    }
    assert!(!rec.complete());
    assert_eq!(rec.missing(), 3);
    rec.on_outcome(0, OutcomeKind::Result, SEC, ResultFacts::default());
    assert_eq!(rec.duplicates, 1);
    rec.on_outcome(n + 5, OutcomeKind::Result, SEC, ResultFacts::default());
    rec.on_foreign();
    assert_eq!(rec.foreign, 2);
    let good = (0..n).rev().find(|&s| plan[s].hostile.is_none()).unwrap();
    let bad = (0..n).rev().find(|&s| plan[s].hostile.is_some()).unwrap();
    rec.set_sent(n);
    assert_eq!(rec.unexpected_dlq + rec.unexpected_results, 0);
    if good >= n - 3 {
        rec.on_outcome(good, OutcomeKind::DeadLetter, SEC, ResultFacts::default());
        assert_eq!(rec.unexpected_dlq, 1);
    }
    if bad >= n - 3 {
        rec.on_outcome(bad, OutcomeKind::Result, SEC, ResultFacts::default());
        assert_eq!(rec.unexpected_results, 1);
    }
    for seq in n - 3..n {
        rec.on_outcome(seq, OutcomeKind::Result, SEC, ResultFacts::default());
    }
    assert!(rec.complete());
    assert_eq!(rec.missing(), 0);
    assert_eq!(rec.mean_batch(), Some(4.0));
    assert_eq!(rec.largest_batch_infer(), Some((4, 3.0)));
    // Priority requests are measured on their own as well.
    assert!(!rec.priority.is_empty() && rec.priority.len() < rec.results.len());
}

#[test]
fn a_stopped_run_expects_only_what_it_sent() {
    let intended: Arc<[u64]> = intended_times(1000.0, Arrival::Fixed, SEC, 1).into();
    let clock = SimClock::default();
    struct Counting(usize);
    impl Sink for Counting {
        fn try_send(&mut self, _: usize, _: u64) -> bool {
            self.0 += 1;
            true
        }
        fn service(&mut self) {}
    }
    let stop = AtomicBool::new(true);
    let stats = run_open_loop(&clock, &intended, &mut Counting(0), &stop);
    assert_eq!(stats.sent, 0);
    let mut rec = Recorder::new(intended.clone(), plan(intended.len()), 0);
    rec.set_sent(0);
    assert!(rec.complete());
    assert_eq!(clock.now_ns(), 0);
}
