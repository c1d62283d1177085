//! Degraded mode of the lanes, with an injected executor failure (CI has no GPU): a lane
//! whose device keeps failing (a sticky CUDA error, a lost device) is taken out of service
//! after `gpu.laneFailureLimit` faults in a row; the batches it held go back to the rings and
//! another lane computes them (no dead letter, no retry spent); with `gpu.cpuFallback` the
//! same lane goes on as a CPU lane.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{envelope, TestRepo};
use sluice::core::{BatchCaps, BatchOutput, EngineStats, HostStaging, LaneState};
use sluice::core::{Limits, Outcome, Priority};
use sluice::engine::{serve_lane, NO_FALLBACK};
use sluice::execute::executor::Executor;
use sluice::execute::lane::{Lane, LaneExit};
use sluice::execute::{CpuExecutor, LaneSettings, LaneShared};
use sluice::models::{LoadedModel, ModelError};
use sluice::queue::{BatchPolicy, Rings};

/// A GPU lane whose device is gone: every batch fails with a sticky CUDA error.
struct LostDevice {
    staging: HostStaging,
    submitted: usize,
}

impl Executor for LostDevice {
    fn describe(&self) -> String {
        "cuda:0/stream0 (injected fault)".into()
    }
    fn depth(&self) -> usize {
        2
    }
    fn staging(&mut self) -> &mut HostStaging {
        &mut self.staging
    }
    fn submit(&mut self, _model: &Arc<LoadedModel>) -> Result<(), ModelError> {
        self.submitted += 1;
        Ok(())
    }
    fn collect(&mut self) -> Result<BatchOutput, ModelError> {
        let e = candle_core::Error::Msg(
            "DriverError(CUDA_ERROR_ILLEGAL_ADDRESS, \"an illegal memory access was encountered\")"
                .into(),
        );
        Err(ModelError::from(e))
    }
}

const CAPS: BatchCaps = BatchCaps { max_rows: 8, max_tokens: 8 * 64 };

struct Rig {
    repo: TestRepo,
    rings: Arc<Rings>,
    stats: Arc<EngineStats>,
    shared: LaneShared,
    rx: crossbeam_channel::Receiver<Outcome>,
}

fn rig() -> Rig {
    let repo = TestRepo::new();
    let rings = Arc::new(Rings::new(4096));
    let (tx, rx) = crossbeam_channel::unbounded();
    let stats = Arc::new(EngineStats::new(2));
    let shared = LaneShared {
        rings: rings.clone(),
        completions: tx,
        stats: stats.clone(),
        circuits: Default::default(),
        shadow: None,
    };
    Rig { repo, rings, stats, shared, rx }
}

fn settings(index: usize) -> LaneSettings {
    LaneSettings {
        index,
        policy: BatchPolicy { caps: CAPS, ..BatchPolicy::default() },
        max_retries: 1,
        idle_wait: Duration::from_millis(1),
        device_fault_limit: 3,
    }
}

impl Rig {
    fn push(&self, n: usize) {
        let mut decoder = self.repo.decoder(Limits::default());
        for i in 0..n {
            let p = Bytes::from(format!(
                r#"{{"id":"t{i}","model":"tabular","input":[{i},1,2,3,4,5,6,7]}}"#
            ));
            let req = decoder
                .decode(envelope(p, Priority::Normal, i as i64))
                .unwrap_or_else(|(_, f)| panic!("rejected: {f:?}"));
            assert!(self.rings.push(req).is_ok());
        }
    }

    fn lost_device_lane(&self) -> Lane<LostDevice> {
        let exec = LostDevice { staging: HostStaging::default(), submitted: 0 };
        Lane::new(exec, self.shared.clone(), settings(0))
    }

    fn cpu_lane(&self, index: usize) -> Lane<CpuExecutor> {
        Lane::new(CpuExecutor::new(CAPS), self.shared.clone(), settings(index))
    }

    /// Every outcome so far: all must be results, one per id.
    fn all_results(&self, n: usize) {
        let outcomes: Vec<Outcome> = self.rx.try_iter().collect();
        assert_eq!(outcomes.len(), n, "one outcome per request");
        let failed: Vec<_> = outcomes.iter().filter_map(|o| o.failure()).collect();
        assert!(failed.is_empty(), "no dead letter for the device's fault: {failed:?}");
        let mut ids: Vec<&str> = outcomes.iter().filter_map(|o| o.id()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n, "no request computed twice");
    }
}

#[test]
fn a_lane_whose_device_fails_leaves_service_and_another_lane_computes_its_work() {
    let r = rig();
    r.push(300);
    // The failing lane runs alone first, so it certainly takes batches.
    let exit = r.lost_device_lane().run();
    match &exit {
        LaneExit::OutOfService(why) => {
            assert!(why.contains("device faults in a row"), "{why}");
            assert!(why.contains("CUDA_ERROR_ILLEGAL_ADDRESS"), "{why}");
        }
        other => panic!("the lane should have left service: {other:?}"),
    }
    assert_eq!(r.stats.lane_states()[0], LaneState::OutOfService);
    assert_eq!(r.rx.try_iter().count(), 0, "nothing dead-lettered, nothing lost");
    assert_eq!(r.rings.depths().1, 300, "every request is back on the ring");

    // The remaining lane computes all of it.
    r.rings.close();
    assert_eq!(r.cpu_lane(1).run(), LaneExit::Finished);
    r.all_results(300);
    assert_eq!(r.stats.lanes_in_service(), 1);
}

#[test]
fn with_cpu_fallback_the_failed_lane_goes_on_as_a_cpu_lane() {
    let r = rig();
    r.push(200);
    r.rings.close();
    let (shared, caps) = (r.shared.clone(), CAPS);
    let fallback = move || Lane::new(CpuExecutor::new(caps), shared, settings(0));
    let exit = serve_lane(r.lost_device_lane(), Some(fallback));
    assert_eq!(exit, LaneExit::Finished, "the fallback lane drained the rings");
    assert_eq!(r.stats.lane_states()[0], LaneState::CpuFallback);
    r.all_results(200);
}

#[test]
fn without_fallback_the_lane_ends_out_of_service() {
    let r = rig();
    r.push(50);
    let exit = serve_lane(r.lost_device_lane(), NO_FALLBACK);
    assert!(matches!(exit, LaneExit::OutOfService(_)), "{exit:?}");
    assert_eq!(r.stats.lanes_in_service(), 1, "lane 1 (never started) still counts");
}

#[test]
fn sticky_cuda_errors_are_device_faults_and_others_are_not() {
    let from = |m: &str| ModelError::from(candle_core::Error::Msg(m.into()));
    assert!(from("DriverError(CUDA_ERROR_LAUNCH_FAILED, \"unspecified launch failure\")")
        .is_device_fault());
    assert!(from("CUDA_ERROR_DEVICE_UNAVAILABLE").is_device_fault());
    assert!(!from("shape mismatch in matmul").is_device_fault());
    assert!(from("CUDA_ERROR_OUT_OF_MEMORY").is_out_of_memory());
}
