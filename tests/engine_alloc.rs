//! No per-request heap allocation on the hot path in steady state.
//!
//! A counting global allocator (per thread, so parallel tests do not interfere) measures a
//! warm loop that decodes records, queues them on the rings, lets a lane form a batch, stage
//! token ids straight into its staging buffer, run it, and emit one outcome per request
//! through the completion channel. The lane is driven on the test thread (`Lane::step`), so
//! every allocation of the loop is counted.
//!
//! - With an executor that does no model work of its own, a batch of 64 requests allocates
//!   exactly as much as a batch of 8: the per-batch output buffer and its `Arc`, nothing per
//!   request.
//! - With the real candle models, allocations per batch (candle's tensors) also do not grow
//!   with the number of requests in it.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{envelope, TestRepo};
use sluice::core::BatchCaps;
use sluice::core::EngineStats;
use sluice::core::HostStaging;
use sluice::core::Outcome;
use sluice::core::{BatchOutput, OutputKind};
use sluice::core::{Limits, Priority};
use sluice::decode::Decoder;
use sluice::execute::executor::Executor;
use sluice::execute::lane::Lane;
use sluice::execute::{CpuExecutor, LaneSettings, LaneShared};
use sluice::models::{LoadedModel, ModelError};
use sluice::queue::{BatchPolicy, Rings};

#[global_allocator]
static GLOBAL: common::alloc::Counting = common::alloc::Counting;
use common::alloc::counted;

/// Reads the staged batch and returns one row per input: the row's token count (text) or
/// the sum of its features (tabular). The output vector is the only allocation, per batch.
struct StagingProbe {
    staging: HostStaging,
    out: Option<BatchOutput>,
}

impl Executor for StagingProbe {
    fn describe(&self) -> String {
        "probe".into()
    }
    fn depth(&self) -> usize {
        1
    }
    fn staging(&mut self) -> &mut HostStaging {
        &mut self.staging
    }
    fn submit(&mut self, _model: &Arc<LoadedModel>) -> Result<(), ModelError> {
        let st = &self.staging;
        let data: Vec<f32> = if st.seq_len > 0 {
            st.row_tokens[..st.rows].iter().map(|&n| n as f32).collect()
        } else {
            st.features.chunks(st.width).take(st.rows).map(|r| r.iter().sum()).collect()
        };
        self.out = Some(BatchOutput { data, width: 1, kind: OutputKind::Vector });
        Ok(())
    }
    fn collect(&mut self) -> Result<BatchOutput, ModelError> {
        self.out.take().ok_or_else(|| ModelError::Inference("nothing submitted".into()))
    }
}

struct Rig<E: Executor> {
    lane: Lane<E>,
    rings: Arc<Rings>,
    rx: crossbeam_channel::Receiver<Outcome>,
    decoder: Decoder,
}

impl<E: Executor> Rig<E> {
    fn new(repo: &TestRepo, executor: E) -> Self {
        let rings = Arc::new(Rings::new(256));
        let (tx, rx) = crossbeam_channel::bounded(256);
        let shared = LaneShared {
            rings: rings.clone(),
            completions: tx,
            stats: Arc::new(EngineStats::new(1)),
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
            max_retries: 0,
            idle_wait: std::time::Duration::from_millis(1),
            device_fault_limit: 3,
        };
        Rig {
            lane: Lane::new(executor, shared, settings),
            rings,
            rx,
            // The streaming path's decoder: models resolved through the cache's non-loading
            // lookup (a miss waits for the loader threads; the warm-up rounds take it).
            decoder: repo.decoder(Limits::default()).with_background_loads().unwrap(),
        }
    }

    /// Decodes, queues and serves `payloads` as one batch.
    fn round(&mut self, payloads: Vec<Bytes>) {
        let n = payloads.len();
        for (i, p) in payloads.into_iter().enumerate() {
            let req = match self.decoder.decode(envelope(p, Priority::Normal, i as i64)) {
                Ok(r) => r,
                Err((_, f)) => panic!("rejected: {f:?}"),
            };
            assert!(self.rings.push(req).is_ok());
        }
        assert!(self.lane.step(), "a batch was formed");
        for _ in 0..n {
            let o = self.rx.try_recv().expect("one outcome per request");
            assert!(o.failure().is_none(), "request failed: {:?}", o.failure());
        }
        assert!(self.rx.try_recv().is_err(), "exactly one outcome per request");
    }
}

fn text_payloads(n: usize, round: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| {
            let words =
                ["the cat", "a quick brown fox jumps", "the the the the the the the"][i % 3];
            Bytes::from(format!(
                r#"{{"id":"r{round}-{i}","model":"tiny-embed","input":"{words}"}}"#
            ))
        })
        .collect()
}

fn tabular_payloads(n: usize, round: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| {
            Bytes::from(format!(
                r#"{{"id":"t{round}-{i}","model":"tabular","version":"1","input":[{i},1,2,3,4,5,6,7.5]}}"#
            ))
        })
        .collect()
}

#[test]
fn engine_path_allocates_per_batch_not_per_request() {
    let repo = TestRepo::new();
    for make in [text_payloads as fn(usize, usize) -> Vec<Bytes>, tabular_payloads] {
        let mut rig = Rig::new(&repo, StagingProbe { staging: HostStaging::default(), out: None });
        // Warm up: buffers grow to their steady-state size, the model loads.
        for r in 0..3 {
            rig.round(make(64, r));
            rig.round(make(8, r));
        }
        let p64 = make(64, 10);
        let p8 = make(8, 11);
        let (_, a64) = counted(|| rig.round(p64));
        let (_, a8) = counted(|| rig.round(p8));
        println!("allocations: batch of 64 requests = {a64}, batch of 8 = {a8}");
        assert_eq!(a64, a8, "allocations must not depend on the number of requests in a batch");
        assert!(a64 <= 4, "per-batch allocations should be a handful (output + Arc), got {a64}");
    }
}

#[test]
fn candle_mlp_allocates_per_batch_not_per_request() {
    // The BERT kinds are not asserted here: candle's CPU batched matmul allocates per
    // (row × head) slice inside the model (see ARCHITECTURE.md, "Allocation"); Sluice's own
    // part of that path is covered by the test above.
    let repo = TestRepo::new();
    for make in [tabular_payloads as fn(usize, usize) -> Vec<Bytes>] {
        let mut rig =
            Rig::new(&repo, CpuExecutor::new(BatchCaps { max_rows: 64, max_tokens: 64 * 64 }));
        for r in 0..3 {
            rig.round(make(64, r));
            rig.round(make(8, r));
        }
        let p64 = make(64, 10);
        let p8 = make(8, 11);
        let (_, a64) = counted(|| rig.round(p64));
        let (_, a8) = counted(|| rig.round(p8));
        println!("allocations with candle: batch of 64 requests = {a64}, batch of 8 = {a8}");
        // candle allocates one storage per tensor op; the count must not grow with requests
        // (56 more requests would add at least 56 if anything were per request).
        assert!(a64 < a8 + 28, "allocations grew with the number of requests: {a8} -> {a64}");
    }
}
