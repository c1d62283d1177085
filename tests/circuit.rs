//! Circuit breakers per model version, on real lanes over real rings: a version whose
//! batches keep failing has its breaker opened, its requests parked (or dead-lettered as
//! `circuit_open`) instead of a flood of `inference` dead letters; other versions keep
//! flowing; after the cool-down a probe closes it and the parked requests are computed; a
//! failed probe doubles the cool-down; one bad request does not open a breaker. Nothing is
//! lost: every request ends with exactly one outcome.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{envelope, TestRepo};
use sluice::config::{CircuitBreakerConfig, CircuitOpenPolicy};
use sluice::core::{BatchCaps, BatchOutput, EngineStats, ErrorClass, HostStaging, OutputKind};
use sluice::core::{Limits, Outcome, Priority};
use sluice::execute::circuit::{CircuitSettings, CircuitState, Circuits};
use sluice::execute::executor::Executor;
use sluice::execute::lane::Lane;
use sluice::execute::{LaneSettings, LaneShared};
use sluice::models::{LoadedModel, ModelError};
use sluice::queue::{BatchPolicy, Rings};

/// Fails every batch of the models named in `broken` while `fail` is set, and any batch
/// holding a row whose first feature is `poison`; else returns each row's first feature.
struct Switchable {
    staging: HostStaging,
    fail: Arc<AtomicBool>,
    broken: &'static str,
    poison: f32,
    out: Option<Result<BatchOutput, ModelError>>,
}

impl Executor for Switchable {
    fn describe(&self) -> String {
        "switchable".into()
    }
    fn depth(&self) -> usize {
        1
    }
    fn staging(&mut self) -> &mut HostStaging {
        &mut self.staging
    }
    fn submit(&mut self, model: &Arc<LoadedModel>) -> Result<(), ModelError> {
        let st = &self.staging;
        let w = st.width.max(1);
        let firsts: Vec<f32> = st.features[..st.rows * w].chunks(w).map(|r| r[0]).collect();
        self.out = Some(if self.fail.load(Ordering::SeqCst) && &*model.name == self.broken {
            Err(ModelError::Inference("device fault (injected)".into()))
        } else if firsts.contains(&self.poison) {
            Err(ModelError::Panicked("this input breaks the model".into()))
        } else {
            Ok(BatchOutput { data: firsts, width: 1, kind: OutputKind::Vector })
        });
        Ok(())
    }
    fn collect(&mut self) -> Result<BatchOutput, ModelError> {
        self.out.take().unwrap_or_else(|| Err(ModelError::Inference("nothing submitted".into())))
    }
}

struct Rig {
    repo: TestRepo,
    rings: Arc<Rings>,
    circuits: Arc<Circuits>,
    rx: crossbeam_channel::Receiver<Outcome>,
    lane: Lane<Switchable>,
    fail: Arc<AtomicBool>,
    next: i64,
}

fn rig(cfg: CircuitBreakerConfig) -> Rig {
    let repo = TestRepo::new();
    repo.add_mlp("flaky", "1", vec![4], 3);
    repo.add_mlp("steady", "1", vec![4], 4);
    let rings = Arc::new(Rings::new(4096));
    let (tx, rx) = crossbeam_channel::unbounded();
    let circuits = Arc::new(Circuits::new(CircuitSettings::from(&cfg)));
    let shared = LaneShared {
        rings: rings.clone(),
        completions: tx,
        stats: Arc::new(EngineStats::new(1)),
        circuits: circuits.clone(),
        shadow: None,
    };
    let policy = BatchPolicy {
        caps: BatchCaps { max_rows: 8, max_tokens: 8 * 64 },
        ..BatchPolicy::default()
    };
    let settings = LaneSettings {
        index: 0,
        policy,
        max_retries: 1,
        idle_wait: Duration::from_millis(1),
        device_fault_limit: 3,
    };
    let fail = Arc::new(AtomicBool::new(true));
    let exec = Switchable {
        staging: HostStaging::default(),
        fail: fail.clone(),
        broken: "flaky",
        poison: -1.0,
        out: None,
    };
    let lane = Lane::new(exec, shared, settings);
    Rig { repo, rings, circuits, rx, lane, fail, next: 0 }
}

impl Rig {
    /// Queues `n` requests for `model` whose first feature is `first` (on partition 0 for
    /// `flaky`, 1 for the others).
    fn push(&mut self, model: &str, n: usize, first: f32) {
        let mut decoder = self.repo.decoder(Limits::default());
        for _ in 0..n {
            let i = self.next;
            self.next += 1;
            let p = Bytes::from(format!(
                r#"{{"id":"{model}-{i}","model":"{model}","input":[{first},1,2,3,4,5,6,7]}}"#
            ));
            let mut env = envelope(p, Priority::Normal, i);
            env.source.partition = i32::from(model != "flaky");
            let req = decoder.decode(env).unwrap_or_else(|(_, f)| panic!("rejected: {f:?}"));
            assert!(self.rings.push(req).is_ok());
        }
    }

    /// Steps the lane until it has nothing to do.
    fn run(&mut self) {
        while self.lane.step() {}
    }

    /// Steps the lane until `done` holds (it waits for a cool-down); fails after 60 s.
    fn run_until(&mut self, what: &str, done: impl Fn(&Circuits) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(&self.circuits) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            if !self.lane.step() {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    fn outcomes(&self) -> Vec<Outcome> {
        self.rx.try_iter().collect()
    }

    fn state(&self, model: &str) -> Option<CircuitState> {
        self.circuits.views().into_iter().find(|v| v.model == model).map(|v| v.state)
    }
}

fn quick(when_open: CircuitOpenPolicy) -> CircuitBreakerConfig {
    CircuitBreakerConfig {
        consecutive_failures: 3,
        cool_down_ms: 10,
        max_cool_down_ms: 1_000,
        when_open,
        ..CircuitBreakerConfig::default()
    }
}

fn by_id(outcomes: &[Outcome]) -> HashMap<String, Option<ErrorClass>> {
    let mut m = HashMap::new();
    for o in outcomes {
        let id = o.id().expect("an id").to_string();
        let prev = m.insert(id.clone(), o.failure().map(|f| f.class));
        assert!(prev.is_none(), "{id} has two outcomes");
    }
    m
}

#[test]
fn a_failing_version_parks_its_requests_then_a_probe_closes_the_breaker() {
    let mut r = rig(quick(CircuitOpenPolicy::Wait));
    r.push("flaky", 200, 1.0);
    r.push("steady", 100, 2.0);
    r.run();

    // Opened after 3 failed batches (8 rows at most each): at most 24 inference dead
    // letters, not 200; the rest of flaky's requests are parked, steady's all computed.
    let first = by_id(&r.outcomes());
    let inference = first.values().filter(|c| **c == Some(ErrorClass::Inference)).count();
    assert!((1..=24).contains(&inference), "{inference} inference dead letters");
    let steady_ok = first.iter().filter(|(id, c)| id.starts_with("steady") && c.is_none()).count();
    assert_eq!(steady_ok, 100, "the other version keeps flowing");
    assert_ne!(r.state("flaky"), Some(CircuitState::Closed));
    assert_eq!(r.circuits.parked() + inference, 200, "every flaky request parked or failed");
    let parts = r.circuits.parked_partitions();
    assert_eq!(parts.len(), 1, "only flaky's partition is paused: {parts:?}");
    assert_eq!(parts[0].1, 0);

    // Still broken: probes fail and the requests stay parked (no dead letters).
    let opened = r.circuits.opens.load(Ordering::Relaxed);
    r.run_until("a failed probe", |c| c.opens.load(Ordering::Relaxed) > opened);
    assert!(r.outcomes().is_empty(), "a failed probe dead-letters nothing");
    let view = r.circuits.views().into_iter().find(|v| v.model == "flaky").unwrap();
    assert_eq!(view.cool_down_ms, 20, "the cool-down doubled after the failed probe");

    // Fixed: the next probe closes the breaker and every parked request is computed.
    r.fail.store(false, Ordering::SeqCst);
    r.run_until("the breaker to close", |c| c.parked() == 0);
    r.run();
    let rest = by_id(&r.outcomes());
    assert_eq!(rest.len() + inference, 200);
    assert!(rest.values().all(Option::is_none), "every parked request computed");
    assert_eq!(r.state("flaky"), Some(CircuitState::Closed));
    assert!(first.keys().all(|k| !rest.contains_key(k)), "no request has two outcomes");
}

#[test]
fn dead_letter_mode_rejects_with_circuit_open_then_recovers() {
    let mut r = rig(quick(CircuitOpenPolicy::DeadLetter));
    r.push("flaky", 100, 1.0);
    r.run();
    let o = by_id(&r.outcomes());
    assert_eq!(o.len(), 100, "every request has its outcome at once");
    let open = o.values().filter(|c| **c == Some(ErrorClass::CircuitOpen)).count();
    let inference = o.values().filter(|c| **c == Some(ErrorClass::Inference)).count();
    assert!(inference <= 24 && open + inference == 100, "{inference} inference, {open} open");
    assert!(open > 0);
    assert_eq!(r.circuits.parked(), 0, "nothing parked in dead_letter mode");

    // Fixed: after the cool-down the next batch is the probe, and it closes the breaker.
    r.fail.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    while r.state("flaky") != Some(CircuitState::Closed) {
        assert!(Instant::now() < deadline, "the breaker never closed");
        std::thread::sleep(Duration::from_millis(15));
        r.push("flaky", 1, 1.0);
        r.run();
    }
    r.outcomes();
    r.push("flaky", 20, 1.0);
    r.run();
    assert!(r.outcomes().iter().all(|o| o.failure().is_none()), "closed: computed again");
}

#[test]
fn single_bad_requests_do_not_open_a_breaker() {
    let mut r = rig(quick(CircuitOpenPolicy::Wait));
    r.fail.store(false, Ordering::SeqCst);
    // One request in eight breaks the model (a panic: halving isolates it for free); the
    // rest compute.
    for i in 0..40 {
        r.push("steady", 7, i as f32 + 10.0);
        r.push("steady", 1, -1.0);
    }
    r.run();
    let o = by_id(&r.outcomes());
    assert_eq!(o.len(), 320);
    let failed = o.values().filter(|c| c.is_some()).count();
    assert_eq!(failed, 40, "only the bad requests fail");
    assert_ne!(r.state("steady"), Some(CircuitState::Open), "the breaker stays closed");
    assert_eq!(r.circuits.parked(), 0);
}

#[test]
fn a_disabled_breaker_dead_letters_every_failure() {
    let mut r = rig(CircuitBreakerConfig { enabled: false, ..quick(CircuitOpenPolicy::Wait) });
    r.push("flaky", 100, 1.0);
    r.run();
    let o = by_id(&r.outcomes());
    assert_eq!(o.len(), 100);
    assert!(o.values().all(|c| *c == Some(ErrorClass::Inference)));
    assert!(r.circuits.views().is_empty());
}

#[test]
fn parked_requests_of_revoked_partitions_and_at_drain_are_handed_back() {
    let mut r = rig(quick(CircuitOpenPolicy::Wait));
    r.push("flaky", 100, 1.0);
    r.run();
    let parked = r.circuits.parked();
    assert!(parked > 0);
    let none = r.circuits.take_parked_of(&[("some-other-topic".into(), 0)]);
    assert!(none.is_empty());
    let topic = r.circuits.parked_partitions()[0].0.to_string();
    let taken = r.circuits.take_parked_of(&[(topic, 0)]);
    assert_eq!(taken.len(), parked, "a revocation takes the partition's parked requests");
    assert_eq!(r.circuits.parked(), 0);
    assert!(r.circuits.parked_partitions().is_empty(), "nothing left to pause");
}
