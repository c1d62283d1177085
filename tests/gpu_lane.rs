//! GPU lanes end to end: the same requests through a CUDA lane and a CPU lane give the same
//! outputs (cosine ≥ 0.9999 per row) for an embedding model (the asynchronous, double-
//! buffered path with Sluice's kernels), a classifier and a tabular model (candle on the
//! lane's stream); the lane reports its device memory; the engine's start-up errors are clear.
//! Needs `--features cuda`; without a GPU each test prints why it skips (or checks the error).

#[cfg(feature = "cuda")]
mod common;

#[cfg(not(feature = "cuda"))]
#[test]
fn needs_the_cuda_feature() {
    eprintln!("skipping: built without the `cuda` feature (run `cargo test --features cuda --test gpu_lane`)");
}

#[cfg(feature = "cuda")]
mod cuda {

    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Duration;

    use super::common::{envelope, TestRepo};
    use bytes::Bytes;
    use sluice::core::{BatchCaps, EngineStats};
    use sluice::core::{Limits, Priority};
    use sluice::core::{Outcome, Verdict};
    use sluice::engine::{Engine, EngineSettings, GpuLanes};
    use sluice::execute::cuda::{device_count, CudaExecutor};
    use sluice::execute::executor::Executor;
    use sluice::execute::lane::Lane;
    use sluice::execute::{CpuExecutor, LaneSettings, LaneShared};
    use sluice::queue::{BatchPolicy, Rings};

    fn have_gpu() -> bool {
        match device_count() {
            Ok(0) => {
                eprintln!("skipping: no CUDA device (the driver reports none)");
                false
            }
            Err(e) => {
                eprintln!("skipping: no CUDA device ({e})");
                false
            }
            Ok(_) => true,
        }
    }

    fn payloads(model: &str) -> Vec<Bytes> {
        let texts = [
            "the cat",
            "a quick brown fox jumps over the lazy dog",
            "hello",
            "the the the the the the the the the",
            "sluice moves records",
        ];
        (0..40)
            .map(|i| {
                let input = if model == "tabular" {
                    format!("[{i},1,2,3,4,5,6,{}]", i % 5)
                } else {
                    format!("\"{} {i}\"", texts[i % texts.len()])
                };
                Bytes::from(format!(r#"{{"id":"{model}-{i}","model":"{model}","input":{input}}}"#))
            })
            .collect()
    }

    /// Runs every payload through one lane over `executor`; returns (id, output row) by id.
    fn serve<E: Executor>(
        repo: &TestRepo,
        executor: E,
        stats: Arc<EngineStats>,
        payloads: &[Bytes],
    ) -> Vec<(String, Vec<f32>)> {
        let rings = Arc::new(Rings::new(256));
        let (tx, rx) = crossbeam_channel::unbounded::<Outcome>();
        let shared = LaneShared {
            rings: rings.clone(),
            completions: tx,
            stats,
            circuits: Default::default(),
            shadow: None,
        };
        // Small batches: several in flight, so both staging slots are used in turn.
        let policy = BatchPolicy {
            caps: BatchCaps { max_rows: 6, max_tokens: 6 * 64 },
            ..BatchPolicy::default()
        };
        let settings = LaneSettings {
            index: 0,
            policy,
            max_retries: 1,
            idle_wait: Duration::from_millis(1),
            device_fault_limit: 3,
        };
        let mut decoder = repo.decoder(Limits::default());
        for (i, p) in payloads.iter().enumerate() {
            let req = decoder
                .decode(envelope(p.clone(), Priority::Normal, i as i64))
                .unwrap_or_else(|(_, f)| panic!("rejected: {f:?}"));
            assert!(rings.push(req).is_ok());
        }
        rings.close();
        Lane::new(executor, shared, settings).run();
        let mut rows: Vec<(String, Vec<f32>)> = rx
            .try_iter()
            .map(|o| {
                let id = o.id().unwrap_or_default().to_string();
                match &o.verdict {
                    Verdict::Success { output, first_row, .. } => {
                        (id, output.row(*first_row as usize).to_vec())
                    }
                    Verdict::Failure(f) => panic!("{id} failed: {f:?}"),
                }
            })
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(rows.len(), payloads.len(), "one outcome per request");
        rows
    }

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (na * nb).max(1e-12)
    }

    #[test]
    fn gpu_lane_matches_cpu_lane() {
        if !have_gpu() {
            return;
        }
        let repo = TestRepo::new();
        for model in ["tiny-embed", "tiny-sentiment", "tabular"] {
            let p = payloads(model);
            let cpu = serve(
                &repo,
                CpuExecutor::new(BatchCaps { max_rows: 6, max_tokens: 6 * 64 }),
                Arc::new(EngineStats::new(1)),
                &p,
            );
            let stats = Arc::new(EngineStats::new(1));
            let gpu = CudaExecutor::new(
                0,
                0,
                BatchCaps { max_rows: 6, max_tokens: 6 * 64 },
                stats.clone(),
                0,
            )
            .expect("CUDA lane starts on device 0");
            let gpu = serve(&repo, gpu, stats.clone(), &p);
            let worst = cpu.iter().zip(&gpu).map(|((ia, a), (ib, b))| {
                assert_eq!(ia, ib);
                assert_eq!(a.len(), b.len(), "{ia}: output width");
                cosine(a, b)
            });
            let worst = worst.fold(1f32, f32::min);
            println!("{model}: worst cosine(gpu, cpu) over {} requests = {worst}", p.len());
            assert!(worst >= 0.9999, "{model}: GPU and CPU outputs differ (cosine {worst})");
            let mem = &stats.lane_memory[0];
            assert!(
                mem.total_bytes.load(Ordering::Relaxed) > 0
                    && mem.used_bytes.load(Ordering::Relaxed) > 0,
                "the lane reports device memory"
            );
        }
    }

    #[test]
    fn engine_runs_cpu_and_gpu_lanes_together_or_fails_clearly() {
        let settings = EngineSettings {
            cpu_lanes: 1,
            gpu: GpuLanes { devices: vec![0], streams_per_device: 2 },
            ..EngineSettings::default()
        };
        let (tx, _rx) = crossbeam_channel::unbounded();
        match Engine::start(&settings, tx) {
            Ok(engine) => {
                assert!(have_gpu(), "GPU lanes started, so there is a GPU");
                assert_eq!(engine.stats().lane_memory.len(), 3, "1 CPU lane + 2 GPU lanes");
                engine.shutdown();
            }
            Err(e) => {
                assert!(!have_gpu(), "a machine with a GPU must start GPU lanes: {e}");
                let msg = e.to_string();
                println!("engine start without a GPU: {msg}");
                assert!(
                    msg.contains("GPU lane 1 (cuda:0/stream0)")
                        && msg.contains("cannot open CUDA device 0"),
                    "{msg}"
                );
            }
        }
    }
}
