//! Out-of-memory batches are split and retried, not lost.
//!
//! An executor that reports `ModelError::OutOfMemory` for batches above a row limit stands in
//! for a GPU running out of memory (the CUDA executor maps `CUDA_ERROR_OUT_OF_MEMORY` and
//! `CUBLAS_STATUS_ALLOC_FAILED` to that error). The lane must halve such batches until they
//! fit, without spending `maxRetries` on the splits, and give every request its result.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use common::{envelope, TestRepo};
use sluice::core::BatchCaps;
use sluice::core::EngineStats;
use sluice::core::HostStaging;
use sluice::core::{BatchOutput, OutputKind};
use sluice::core::{ErrorClass, Outcome};
use sluice::core::{Limits, Priority};
use sluice::execute::executor::Executor;
use sluice::execute::lane::Lane;
use sluice::execute::{LaneSettings, LaneShared};
use sluice::models::{LoadedModel, ModelError};
use sluice::queue::{BatchPolicy, Rings};

/// Fails with out-of-memory when a batch has more than `fits` rows; else returns each row's
/// token count.
struct TightMemory {
    staging: HostStaging,
    fits: usize,
    out: Option<Result<BatchOutput, ModelError>>,
    largest_ok: usize,
}

impl Executor for TightMemory {
    fn describe(&self) -> String {
        "tight-memory".into()
    }
    fn depth(&self) -> usize {
        1
    }
    fn staging(&mut self) -> &mut HostStaging {
        &mut self.staging
    }
    fn submit(&mut self, _model: &Arc<LoadedModel>) -> Result<(), ModelError> {
        let st = &self.staging;
        self.out = Some(if st.rows > self.fits {
            Err(ModelError::OutOfMemory(format!(
                "DriverError(CUDA_ERROR_OUT_OF_MEMORY) for {} rows",
                st.rows
            )))
        } else {
            self.largest_ok = self.largest_ok.max(st.rows);
            Ok(BatchOutput {
                data: st.row_tokens[..st.rows].iter().map(|&n| n as f32).collect(),
                width: 1,
                kind: OutputKind::Vector,
            })
        });
        Ok(())
    }
    fn collect(&mut self) -> Result<BatchOutput, ModelError> {
        self.out.take().unwrap_or_else(|| Err(ModelError::Inference("nothing submitted".into())))
    }
}

fn run(requests: usize, fits: usize, max_retries: u32) -> (Vec<Outcome>, Arc<EngineStats>, usize) {
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
        max_retries,
        idle_wait: std::time::Duration::from_millis(1),
        device_fault_limit: 3,
    };
    let exec = TightMemory { staging: HostStaging::default(), fits, out: None, largest_ok: 0 };
    let mut lane = Lane::new(exec, shared, settings);
    let mut decoder = repo.decoder(Limits::default());
    for i in 0..requests {
        let p = Bytes::from(format!(
            r#"{{"id":"r{i}","model":"tiny-embed","input":"the quick brown fox"}}"#
        ));
        let req = decoder
            .decode(envelope(p, Priority::Normal, i as i64))
            .unwrap_or_else(|(_, f)| panic!("rejected: {f:?}"));
        assert!(rings.push(req).is_ok());
    }
    while lane.step() {}
    let outcomes: Vec<Outcome> = rx.try_iter().collect();
    let largest = lane_largest(&lane);
    (outcomes, stats, largest)
}

fn lane_largest(lane: &Lane<TightMemory>) -> usize {
    lane.executor().largest_ok
}

#[test]
fn an_out_of_memory_batch_is_split_until_it_fits_without_spending_retries() {
    // 64 requests, 5 rows fit: 64 -> 32 -> 16 -> 8 -> 4 rows. maxRetries 0 would dead-letter
    // a batch on its first ordinary failure; out-of-memory splits must not count.
    let (outcomes, stats, largest) = run(64, 5, 0);
    assert_eq!(outcomes.len(), 64, "one outcome per request");
    let failed: Vec<_> = outcomes.iter().filter_map(|o| o.failure()).collect();
    assert!(failed.is_empty(), "no request may be lost to out-of-memory: {failed:?}");
    assert!(
        (4..=5).contains(&largest),
        "batches were halved down to what fits, largest ran: {largest}"
    );
    assert!(stats.oom_splits.load(Ordering::Relaxed) >= 4, "splits are counted");
}

#[test]
fn a_single_request_that_never_fits_is_dead_lettered_after_its_retries() {
    let (outcomes, stats, _) = run(1, 0, 2);
    assert_eq!(outcomes.len(), 1);
    let f = outcomes[0].failure().expect("dead letter");
    assert_eq!(f.class, ErrorClass::Inference);
    assert!(f.reason.contains("out of device memory"), "{}", f.reason);
    assert_eq!(stats.oom_splits.load(Ordering::Relaxed), 0, "a single request cannot be split");
}
