//! A panic inside a model is an outcome, not a stall: the batch counts as failed, halving
//! isolates the one request that triggers it (dead-lettered as `inference` with the panic's
//! message), every other request gets its result, and the lane keeps serving.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{envelope, TestRepo};
use sluice::core::{BatchCaps, BatchOutput, EngineStats, ErrorClass, HostStaging, OutputKind};
use sluice::core::{Limits, Outcome, Priority};
use sluice::execute::executor::Executor;
use sluice::execute::lane::Lane;
use sluice::execute::{LaneSettings, LaneShared};
use sluice::models::{LoadedModel, ModelError};
use sluice::queue::{BatchPolicy, Rings};

/// Panics on any batch holding a row of more than `poison_above` tokens; else returns each
/// row's token count.
struct Panicky {
    staging: HostStaging,
    poison_above: u32,
    out: Option<BatchOutput>,
}

impl Executor for Panicky {
    fn describe(&self) -> String {
        "panicky".into()
    }
    fn depth(&self) -> usize {
        1
    }
    fn staging(&mut self) -> &mut HostStaging {
        &mut self.staging
    }
    fn submit(&mut self, _model: &Arc<LoadedModel>) -> Result<(), ModelError> {
        let st = &self.staging;
        let rows = &st.row_tokens[..st.rows];
        if rows.iter().any(|&n| n > self.poison_above) {
            panic!("poisoned row in a batch of {}", st.rows);
        }
        self.out = Some(BatchOutput {
            data: rows.iter().map(|&n| n as f32).collect(),
            width: 1,
            kind: OutputKind::Vector,
        });
        Ok(())
    }
    fn collect(&mut self) -> Result<BatchOutput, ModelError> {
        self.out.take().ok_or_else(|| ModelError::Inference("nothing submitted".into()))
    }
}

#[test]
fn a_panicking_model_fails_only_the_request_that_triggers_it_and_the_lane_goes_on() {
    let repo = TestRepo::new();
    let rings = Arc::new(Rings::new(256));
    let (tx, rx) = crossbeam_channel::unbounded();
    let stats = Arc::new(EngineStats::new(1));
    let shared = LaneShared {
        rings: rings.clone(),
        completions: tx,
        stats: stats.clone(),
        circuits: Default::default(),
        shadow: None,
    };
    let policy = BatchPolicy {
        caps: BatchCaps { max_rows: 64, max_tokens: 64 * 64 },
        ..BatchPolicy::default()
    };
    let settings = LaneSettings {
        index: 0,
        policy,
        max_retries: 1,
        idle_wait: std::time::Duration::from_millis(1),
        device_fault_limit: 3,
    };
    let exec = Panicky { staging: HostStaging::default(), poison_above: 8, out: None };
    let mut lane = Lane::new(exec, shared, settings);
    let mut decoder = repo.decoder(Limits::default());
    let mut push = |i: usize, text: &str| {
        let p = Bytes::from(format!(r#"{{"id":"r{i}","model":"tiny-embed","input":"{text}"}}"#));
        let req = decoder
            .decode(envelope(p, Priority::Normal, i as i64))
            .unwrap_or_else(|(_, f)| panic!("rejected: {f:?}"));
        assert!(rings.push(req).is_ok());
    };
    for i in 0..32 {
        push(
            i,
            if i == 13 { "the quick brown fox jumps over the lazy dog again" } else { "the fox" },
        );
    }
    while lane.step() {}
    let outcomes: Vec<Outcome> = rx.try_iter().collect();
    assert_eq!(outcomes.len(), 32, "one outcome per request");
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.failure().is_some()).collect();
    assert_eq!(failed.len(), 1, "only the poisoned request fails");
    assert_eq!(failed[0].id(), Some("r13"));
    let f = failed[0].failure().expect("a failure");
    assert_eq!(f.class, ErrorClass::Inference);
    assert!(f.reason.contains("panicked: poisoned row"), "{}", f.reason);

    // The same lane serves the next requests.
    for i in 100..110 {
        push(i, "the fox");
    }
    while lane.step() {}
    let after: Vec<Outcome> = rx.try_iter().collect();
    assert_eq!(after.len(), 10);
    assert!(after.iter().all(|o| o.failure().is_none()), "the lane still computes");
}
