//! GPU throughput: MiniLM-shaped sentence embeddings through CUDA lanes, with the card's
//! physical limits measured beside them. Needs `--features cuda` and a GPU.
//!
//! 1. **Limits** of the card, measured: host↔device copy bandwidth from page-locked memory,
//!    device-to-device copy bandwidth (the memory-bound ceiling for our kernels), and the FP32
//!    GEMM rate of candle's matmul (cuBLAS) at 4096³.
//! 2. **Kernels** against the candle op sequences they replace, at MiniLM's hidden size:
//!    `pool_normalize` vs mask→mul→sum→div→sqr→sum→sqrt→max→div, and `batch_mask` vs a
//!    host-to-device copy of the mask plus `zeros_like`. Times per call (launch included) and
//!    the pool kernel's achieved bandwidth as a share of the device copy bandwidth.
//! 3. **Correctness**: the first 64 sentences through a GPU lane and a CPU lane, same weights;
//!    reports the worst cosine similarity.
//! 4. **Engine only**: an `Engine` with GPU lanes only (`streams` lanes on one device), fed
//!    every sentence as a JSON request decoded on a submitter thread, passes repeated for at
//!    least `--min-seconds`; sentences/s, real tokens/s, batch time p50/p99 and per-request
//!    latency p50/p95/p99/p99.9 (arrival to outcome, HdrHistogram; at saturation, so it
//!    includes queueing) by batch size × streams per device.
//! 5. **End to end**: `sluice batch` (JSONL file → decode → engine → rendered JSONL file) on
//!    the same lanes: records/s.
//!
//! The model: `<models>/<model>` when it exists (e.g. all-MiniLM-L6-v2 from
//! `scripts/fetch-minilm.sh`), else one of MiniLM's exact shape (hidden 384, 6 layers, 12
//! heads, intermediate 1536, 512 positions; random weights, fixed seed, Sluice's test
//! vocabulary) generated into a temporary directory.
//!
//! Usage: `cargo bench --features cuda --bench gpu_throughput -- [--batch-sizes 1,8,32,64,128]
//! [--streams 1,2,4] [--min-seconds 5] [--device 0] [--json PATH] [--markdown PATH]
//! [--sentences PATH] [--models DIR] [--model minilm] [--skip-e2e]`; each option also reads
//! `SLUICE_BENCH_<OPTION>`. `benches/run-gpu-bench.sh` runs it on a GPU machine.

#[path = "../tests/common/testkit.rs"]
mod testkit;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use candle_core::{DType, Device, Tensor, D};
use hdrhistogram::Histogram;
use sluice::core::{BatchCaps, Envelope, Limits, Outcome, PinnedBlock, Priority, Source, Verdict};
use sluice::decode::Decoder;
use sluice::engine::{Engine, EngineSettings, GpuLanes};
use sluice::execute::cuda::{device_count, Kernels, PinnedHostBlock};
use sluice::jsonl::BatchJob;
use sluice::models::cache::CacheSettings;
use sluice::models::{ModelCache, Repository};
use sluice::queue::BatchPolicy;
use testkit::{SeededRng, SeededRngExt, TinyBertSpec};

struct Options {
    batch_sizes: Vec<usize>,
    streams: Vec<usize>,
    min_seconds: f64,
    device: usize,
    json: Option<PathBuf>,
    markdown: Option<PathBuf>,
    sentences: PathBuf,
    models: PathBuf,
    model: String,
    skip_e2e: bool,
}

fn list(v: &str) -> Result<Vec<usize>, String> {
    v.split(',').map(|x| x.trim().parse::<usize>().map_err(|e| format!("{x:?}: {e}"))).collect()
}

fn options() -> Result<Options, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut o = Options {
        batch_sizes: vec![1, 8, 32, 64, 128],
        streams: vec![1, 2, 4],
        min_seconds: 5.0,
        device: 0,
        json: None,
        markdown: None,
        sentences: root.join("benches/data/bench_sentences.txt"),
        models: root.join("models"),
        model: "minilm".into(),
        skip_e2e: false,
    };
    let mut set = |key: &str, v: String| -> Result<(), String> {
        let bad = |e: &dyn std::fmt::Display| format!("--{key} {v:?}: {e}");
        match key {
            "batch-sizes" => o.batch_sizes = list(&v).map_err(|e| bad(&e))?,
            "streams" => o.streams = list(&v).map_err(|e| bad(&e))?,
            "min-seconds" => o.min_seconds = v.parse().map_err(|e| bad(&e))?,
            "device" => o.device = v.parse().map_err(|e| bad(&e))?,
            "json" => o.json = Some(v.into()),
            "markdown" => o.markdown = Some(v.into()),
            "sentences" => o.sentences = v.into(),
            "models" => o.models = v.into(),
            "model" => o.model = v,
            "skip-e2e" => o.skip_e2e = v != "0" && v != "false",
            _ => return Err(format!("unknown option --{key}")),
        }
        Ok(())
    };
    for key in [
        "batch-sizes",
        "streams",
        "min-seconds",
        "device",
        "json",
        "markdown",
        "sentences",
        "models",
        "model",
        "skip-e2e",
    ] {
        if let Ok(v) =
            std::env::var(format!("SLUICE_BENCH_{}", key.replace('-', "_").to_uppercase()))
        {
            set(key, v)?;
        }
    }
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(a) = args.next() {
        let Some(key) = a.strip_prefix("--") else {
            return Err(format!("unexpected argument {a:?}"));
        };
        if key == "skip-e2e" {
            set(key, "1".into())?;
            continue;
        }
        let v = args.next().ok_or_else(|| format!("--{key} needs a value"))?;
        set(key, v)?;
    }
    if o.batch_sizes.is_empty()
        || o.streams.is_empty()
        || o.streams.contains(&0)
        || o.batch_sizes.contains(&0)
    {
        return Err("batch sizes and streams must be positive".into());
    }
    Ok(o)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("gpu_throughput: {e}");
        std::process::exit(1);
    }
}

type Res<T> = Result<T, String>;

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// The model repository: `<models>` when it holds `<model>`, else a generated MiniLM-shaped one.
fn repository(o: &Options, tmp: &Path) -> Res<(PathBuf, bool)> {
    if o.models.join(&o.model).join("model.toml").is_file() {
        return Ok((o.models.clone(), false));
    }
    let spec = TinyBertSpec {
        vocab_words: None,
        hidden: 384,
        layers: 6,
        heads: 12,
        intermediate: 1536,
        max_position: 512,
        max_seq_len: 256,
        pooling: "mean".into(),
        normalize: true,
    };
    eprintln!(
        "{} not found: generating a MiniLM-shaped model with random weights",
        o.models.join(&o.model).display()
    );
    testkit::write_bert_embedding(tmp, &o.model, "1", &spec, 0x6B0B).map_err(s)?;
    testkit::set_serving(tmp, &o.model, "1").map_err(s)?;
    Ok((tmp.to_path_buf(), true))
}

// ---------------------------------------------------------------------------------------------
// 1. Limits
// ---------------------------------------------------------------------------------------------

#[derive(serde::Serialize, Default)]
struct CardLimits {
    device_name: String,
    h2d_gb_s: f64,
    d2h_gb_s: f64,
    /// Bytes read + written per second by a device-to-device copy.
    d2d_gb_s: f64,
    gemm_n: usize,
    gemm_gflop_s: f64,
}

fn time_stream(
    stream: &Arc<cudarc::driver::CudaStream>,
    reps: usize,
    mut f: impl FnMut() -> Res<()>,
) -> Res<f64> {
    f()?;
    stream.synchronize().map_err(s)?;
    let t = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    stream.synchronize().map_err(s)?;
    Ok(t.elapsed().as_secs_f64() / reps as f64)
}

fn measure_limits(device: usize) -> Res<CardLimits> {
    let ctx = cudarc::driver::CudaContext::new(device).map_err(s)?;
    let stream = ctx.new_stream().map_err(s)?;
    let bytes = 256usize << 20;
    let n = bytes / 4;
    let mut host = PinnedHostBlock::<f32>::new(&ctx, n).map_err(s)?;
    let mut dev = stream.alloc_zeros::<f32>(n).map_err(s)?;
    let mut dev2 = stream.alloc_zeros::<f32>(n).map_err(s)?;
    let h2d = time_stream(&stream, 5, || stream.memcpy_htod(host.as_slice(), &mut dev).map_err(s))?;
    let d2h = time_stream(&stream, 5, || stream.memcpy_dtoh(&dev, host.as_mut_slice()).map_err(s))?;
    let d2d = time_stream(&stream, 10, || stream.memcpy_dtod(&dev, &mut dev2).map_err(s))?;
    let gemm_n = 4096;
    let cd = Device::new_cuda_with_stream(device).map_err(s)?;
    let a = Tensor::randn(0f32, 1.0, (gemm_n, gemm_n), &cd).map_err(s)?;
    let b = Tensor::randn(0f32, 1.0, (gemm_n, gemm_n), &cd).map_err(s)?;
    let cs = match &cd {
        Device::Cuda(c) => c.cuda_stream(),
        _ => return Err("not a CUDA device".into()),
    };
    let gemm = time_stream(&cs, 10, || a.matmul(&b).map(|_| ()).map_err(s))?;
    Ok(CardLimits {
        device_name: ctx.name().unwrap_or_default(),
        h2d_gb_s: bytes as f64 / h2d / 1e9,
        d2h_gb_s: bytes as f64 / d2h / 1e9,
        d2d_gb_s: 2.0 * bytes as f64 / d2d / 1e9,
        gemm_n,
        gemm_gflop_s: 2.0 * (gemm_n as f64).powi(3) / gemm / 1e9,
    })
}

// ---------------------------------------------------------------------------------------------
// 2. Kernels vs candle
// ---------------------------------------------------------------------------------------------

#[derive(serde::Serialize)]
struct KernelRow {
    kernel: &'static str,
    rows: usize,
    seq: usize,
    hidden: usize,
    ours_us: f64,
    candle_us: f64,
    speedup: f64,
    /// Bytes the kernel must move (real tokens read + output written) per second.
    ours_gb_s: f64,
    /// `ours_gb_s` as a share of the measured device-to-device copy bandwidth.
    of_copy_bandwidth: f64,
}

fn kernel_rows(device: usize, d2d_gb_s: f64) -> Res<Vec<KernelRow>> {
    let cd = Device::new_cuda_with_stream(device).map_err(s)?;
    let Device::Cuda(cuda) = &cd else { return Err("not a CUDA device".into()) };
    let stream = cuda.cuda_stream();
    let kernels = Kernels::compile(stream.context()).map_err(s)?;
    let mut rng = SeededRng::new(3);
    let mut out = Vec::new();
    let hidden = 384;
    for &(rows, seq) in &[(32usize, 64usize), (128, 64), (128, 128), (256, 256)] {
        let lens: Vec<u32> =
            (0..rows).map(|_| (seq / 2 + rng.below(seq as u64 / 2 + 1) as usize) as u32).collect();
        let real: usize = lens.iter().map(|&n| n as usize).sum();
        let states_t = Tensor::randn(0f32, 1.0, (rows, seq, hidden), &cd).map_err(s)?;
        let (storage, layout) = states_t.storage_and_layout();
        let candle_core::Storage::Cuda(cs) = &*storage else {
            return Err("states not on GPU".into());
        };
        let (start, end) = layout.contiguous_offsets().ok_or("not contiguous")?;
        let states = cs.as_cuda_slice::<f32>().map_err(s)?.slice(start..end);
        let d_lens = stream.clone_htod(&lens).map_err(s)?;
        let mut d_out = stream.alloc_zeros::<f32>(rows * hidden).map_err(s)?;
        let ours = time_stream(&stream, 200, || {
            kernels
                .pool_normalize(
                    &stream,
                    &states,
                    &d_lens.slice(..),
                    &mut d_out,
                    (rows, seq, hidden),
                    true,
                    true,
                )
                .map_err(s)
        })?;
        // The candle sequence it replaces (mask built from the staged mask tensor).
        let mask_host: Vec<u32> =
            (0..rows * seq).map(|i| u32::from(i % seq < lens[i / seq] as usize)).collect();
        let mask = Tensor::from_vec(mask_host, (rows, seq), &cd).map_err(s)?;
        let candle_seq = || -> candle_core::Result<Tensor> {
            let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let summed = states_t.broadcast_mul(&m)?.sum(1)?;
            let counts = m.sum(1)?.clamp(1f32, f32::MAX)?;
            let mean = summed.broadcast_div(&counts)?;
            let norm = mean.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
            mean.broadcast_div(&norm)
        };
        let candle = time_stream(&stream, 200, || candle_seq().map(|_| ()).map_err(s))?;
        let moved = ((real + rows) * hidden * 4 + rows * 4) as f64;
        let gbs = moved / ours / 1e9;
        out.push(KernelRow {
            kernel: "pool_normalize",
            rows,
            seq,
            hidden,
            ours_us: ours * 1e6,
            candle_us: candle * 1e6,
            speedup: candle / ours,
            ours_gb_s: gbs,
            of_copy_bandwidth: gbs / d2d_gb_s,
        });
        drop(storage);

        // batch_mask vs copying the staged mask up and candle's zeros_like for type ids.
        let mut d_mask = stream.alloc_zeros::<u32>(rows * seq).map_err(s)?;
        let mut d_types = stream.alloc_zeros::<u32>(rows * seq).map_err(s)?;
        let ours = time_stream(&stream, 200, || {
            kernels
                .batch_mask(&stream, &d_lens.slice(..), &mut d_mask, &mut d_types, (rows, seq))
                .map_err(s)
        })?;
        let mut pinned_mask =
            PinnedHostBlock::<u32>::new(stream.context(), rows * seq).map_err(s)?;
        pinned_mask.as_mut_slice().fill(1);
        let ids = Tensor::zeros((rows, seq), DType::U32, &cd).map_err(s)?;
        let candle = time_stream(&stream, 200, || {
            stream.memcpy_htod(pinned_mask.as_slice(), &mut d_mask).map_err(s)?;
            ids.zeros_like().map(|_| ()).map_err(s)
        })?;
        let moved = (rows * 4 + 2 * rows * seq * 4) as f64;
        let gbs = moved / ours / 1e9;
        out.push(KernelRow {
            kernel: "batch_mask",
            rows,
            seq,
            hidden: 0,
            ours_us: ours * 1e6,
            candle_us: candle * 1e6,
            speedup: candle / ours,
            ours_gb_s: gbs,
            of_copy_bandwidth: gbs / d2d_gb_s,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// 3-5. Engine
// ---------------------------------------------------------------------------------------------

fn envelope(payload: Bytes, offset: i64, topic: &Arc<str>) -> Envelope {
    Envelope::new(payload, Source { topic: topic.clone(), partition: 0, offset }, Priority::Normal)
}

struct Bench {
    payloads: Vec<Bytes>,
    topic: Arc<str>,
}

struct Pass {
    elapsed: Duration,
    latency: Histogram<u64>,
    rows: Vec<(usize, Vec<f32>)>,
}

impl Bench {
    fn settings(&self, b: usize, gpu: GpuLanes, cpu_lanes: usize) -> (EngineSettings, Limits) {
        let max_tokens = b * 512;
        let caps = BatchCaps { max_rows: b, max_tokens };
        let policy = BatchPolicy { caps, ..BatchPolicy::default() };
        let settings = EngineSettings {
            cpu_lanes,
            gpu,
            ring_capacity: 4096,
            policy,
            max_retries: 0,
            idle_wait: Duration::from_millis(1),
            ..EngineSettings::default()
        };
        (settings, Limits { caps, ..Limits::default() })
    }

    /// One pass of the first `count` payloads through `engine`; keeps outputs when `keep`.
    fn pass(
        &self,
        engine: &Engine,
        rx: &crossbeam_channel::Receiver<Outcome>,
        decoder: &mut Decoder,
        count: usize,
        keep: bool,
    ) -> Res<Pass> {
        let started = Instant::now();
        let mut latency = sluice::core::stats::new_histogram();
        let mut rows = Vec::new();
        std::thread::scope(|sc| -> Res<()> {
            let sub = sc.spawn(|| -> Res<()> {
                for (i, p) in self.payloads.iter().take(count).enumerate() {
                    let req = decoder
                        .decode(envelope(p.clone(), i as i64, &self.topic))
                        .map_err(|(_, f)| format!("sentence {i} rejected: {f:?}"))?;
                    engine.submit_wait(req).map_err(|_| "the lanes are gone".to_string())?;
                }
                Ok(())
            });
            // Receive every outcome even after a failure, so the submitter never blocks.
            let mut first_failure = None;
            for _ in 0..count {
                let o = rx
                    .recv_timeout(Duration::from_secs(300))
                    .map_err(|e| format!("waiting for outcomes: {e}"))?;
                let _ = latency.record(o.timings.total_us.max(1));
                match &o.verdict {
                    Verdict::Failure(f) => {
                        first_failure.get_or_insert_with(|| format!("request failed: {f:?}"));
                    }
                    Verdict::Success { output, first_row, .. } if keep => {
                        rows.push((
                            o.env.source.offset as usize,
                            output.row(*first_row as usize).to_vec(),
                        ));
                    }
                    Verdict::Success { .. } => {}
                }
            }
            sub.join().map_err(|_| "submitter panicked".to_string())??;
            first_failure.map_or(Ok(()), Err)
        })?;
        Ok(Pass { elapsed: started.elapsed(), latency, rows })
    }
}

#[derive(serde::Serialize)]
struct EngineRow {
    streams: usize,
    batch_size: usize,
    sentences: u64,
    seconds: f64,
    sentences_per_s: f64,
    tokens_per_s: f64,
    mean_batch_rows: f64,
    batch_ms_p50: f64,
    batch_ms_p99: f64,
    latency_ms_p50: f64,
    latency_ms_p95: f64,
    latency_ms_p99: f64,
    latency_ms_p999: f64,
    gpu_memory_used_mib: f64,
}

#[derive(serde::Serialize)]
struct E2eRow {
    streams: usize,
    batch_size: usize,
    records: u64,
    seconds: f64,
    records_per_s: f64,
    batch_ms_p99: f64,
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}

fn run() -> Res<()> {
    let o = options()?;
    let n =
        device_count().map_err(|e| format!("no CUDA device ({e}); this benchmark needs a GPU"))?;
    if o.device >= n {
        return Err(format!("--device {} but the driver reports {n} device(s)", o.device));
    }
    let tmp = tempfile::tempdir().map_err(s)?;
    let (models, generated) = repository(&o, tmp.path())?;
    let text = std::fs::read_to_string(&o.sentences)
        .map_err(|e| format!("{}: {e}", o.sentences.display()))?;
    let sentences: Vec<&str> =
        text.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.is_empty()).collect();
    let repo = Repository::open(&models).map_err(s)?;
    let cache =
        Arc::new(ModelCache::new(repo, CacheSettings { capacity: 2, ttl: None, warmup_rows: 8 }));
    cache.get(&o.model, None).map_err(|e| format!("model {}: {e}", o.model))?;
    let payloads: Vec<Bytes> = sentences
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Bytes::from(
                serde_json::json!({"id": format!("s{i}"), "model": o.model, "input": t})
                    .to_string(),
            )
        })
        .collect();
    let bench = Bench { payloads, topic: "bench".into() };

    eprintln!("measuring the card's limits");
    let limits = measure_limits(o.device)?;
    eprintln!(
        "{}: H2D {:.1} GB/s, D2H {:.1} GB/s (pinned), D2D {:.0} GB/s (read+write), FP32 GEMM {}³ {:.0} GFLOP/s",
        limits.device_name, limits.h2d_gb_s, limits.d2h_gb_s, limits.d2d_gb_s, limits.gemm_n, limits.gemm_gflop_s
    );
    let kernels = kernel_rows(o.device, limits.d2d_gb_s)?;
    for k in &kernels {
        eprintln!("{:>14} {}x{}x{}: ours {:.1} µs, candle {:.1} µs ({:.1}x), {:.0} GB/s = {:.0}% of copy bandwidth", k.kernel, k.rows, k.seq, k.hidden, k.ours_us, k.candle_us, k.speedup, k.ours_gb_s, 100.0 * k.of_copy_bandwidth);
    }

    // Correctness: GPU lane vs CPU lane on the same weights.
    let check = 64.min(bench.payloads.len());
    let outputs = |gpu: GpuLanes, cpu: usize| -> Res<Vec<(usize, Vec<f32>)>> {
        let (settings, lim) = bench.settings(16, gpu, cpu);
        let (tx, rx) = crossbeam_channel::bounded::<Outcome>(8192);
        let engine = Engine::start(&settings, tx).map_err(s)?;
        let mut dec = Decoder::new(cache.clone(), lim, None);
        let mut p = bench.pass(&engine, &rx, &mut dec, check, true)?;
        engine.shutdown();
        p.rows.sort_by_key(|r| r.0);
        Ok(p.rows)
    };
    let cpu_rows = outputs(GpuLanes::default(), 1)?;
    let gpu_rows = outputs(GpuLanes { devices: vec![o.device], streams_per_device: 1 }, 0)?;
    let worst_cosine =
        cpu_rows.iter().zip(&gpu_rows).map(|(a, b)| cosine(&a.1, &b.1)).fold(1f32, f32::min);
    eprintln!(
        "correctness: worst cosine(GPU lane, CPU lane) over {check} sentences = {worst_cosine:.6}"
    );

    let mut engine_rows = Vec::new();
    let mut e2e_rows = Vec::new();
    let jsonl = tmp.path().join("input.jsonl");
    std::fs::write(
        &jsonl,
        bench
            .payloads
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned() + "\n")
            .collect::<String>()
            .repeat(4),
    )
    .map_err(s)?;
    for &streams in &o.streams {
        for &b in &o.batch_sizes {
            let gpu = GpuLanes { devices: vec![o.device], streams_per_device: streams };
            let (settings, lim) = bench.settings(b, gpu.clone(), 0);
            let (tx, rx) = crossbeam_channel::bounded::<Outcome>(8192);
            let engine = Engine::start(&settings, tx).map_err(s)?;
            let mut dec = Decoder::new(cache.clone(), lim, None);
            bench.pass(
                &engine,
                &rx,
                &mut dec,
                (b * 4 * streams).min(bench.payloads.len()),
                false,
            )?;
            let stats = engine.stats().clone();
            let snap = |st: &sluice::core::EngineStats| {
                (
                    st.batches.load(Ordering::Relaxed),
                    st.rows.load(Ordering::Relaxed),
                    st.real_tokens.load(Ordering::Relaxed),
                )
            };
            let before = snap(&stats);
            stats.batch_us.lock().reset();
            let mut latency = sluice::core::stats::new_histogram();
            let (mut elapsed, mut passes) = (Duration::ZERO, 0usize);
            while passes == 0 || elapsed.as_secs_f64() < o.min_seconds {
                let p = bench.pass(&engine, &rx, &mut dec, bench.payloads.len(), false)?;
                elapsed += p.elapsed;
                let _ = latency.add(&p.latency);
                passes += 1;
            }
            let after = snap(&stats);
            let h = stats.batch_us.lock().clone();
            let mem = stats
                .lane_memory
                .iter()
                .map(|m| m.used_bytes.load(Ordering::Relaxed))
                .max()
                .unwrap_or(0);
            engine.shutdown();
            let secs = elapsed.as_secs_f64();
            let sents = (passes * bench.payloads.len()) as u64;
            let batches = after.0 - before.0;
            let q = |h: &Histogram<u64>, x: f64| h.value_at_quantile(x) as f64 / 1000.0;
            let row = EngineRow {
                streams,
                batch_size: b,
                sentences: sents,
                seconds: secs,
                sentences_per_s: sents as f64 / secs,
                tokens_per_s: (after.2 - before.2) as f64 / secs,
                mean_batch_rows: (after.1 - before.1) as f64 / (batches as f64).max(1.0),
                batch_ms_p50: q(&h, 0.5),
                batch_ms_p99: q(&h, 0.99),
                latency_ms_p50: q(&latency, 0.5),
                latency_ms_p95: q(&latency, 0.95),
                latency_ms_p99: q(&latency, 0.99),
                latency_ms_p999: q(&latency, 0.999),
                gpu_memory_used_mib: mem as f64 / (1u64 << 20) as f64,
            };
            eprintln!(
                "engine streams {streams} batch {b:4}: {:.0} sent/s, {:.0} tok/s, batch p50 {:.2} ms p99 {:.2} ms, latency p50 {:.1} p99 {:.1} p99.9 {:.1} ms",
                row.sentences_per_s, row.tokens_per_s, row.batch_ms_p50, row.batch_ms_p99, row.latency_ms_p50, row.latency_ms_p99, row.latency_ms_p999
            );
            engine_rows.push(row);

            if !o.skip_e2e {
                let (settings, lim) = bench.settings(b, gpu, 0);
                let job = BatchJob {
                    cache: cache.clone(),
                    model: o.model.clone(),
                    input: jsonl.clone(),
                    output: tmp.path().join("out.jsonl"),
                    dlq: tmp.path().join("dlq.jsonl"),
                    engine: settings,
                    limits: lim,
                    progress: false,
                };
                let sum = sluice::jsonl::run(job).map_err(|e| format!("{e:#}"))?;
                if sum.dead_letters > 0 {
                    return Err(format!(
                        "end to end: {} dead letters ({:?})",
                        sum.dead_letters, sum.dead_letters_by_class
                    ));
                }
                eprintln!(
                    "e2e    streams {streams} batch {b:4}: {:.0} records/s",
                    sum.records_per_s
                );
                e2e_rows.push(E2eRow {
                    streams,
                    batch_size: b,
                    records: sum.results,
                    seconds: sum.seconds,
                    records_per_s: sum.records_per_s,
                    batch_ms_p99: sum.batch_ms_p99,
                });
            }
        }
    }

    let mut md = String::new();
    md += &format!(
        "# GPU benchmark: {} ({})\n\n",
        limits.device_name,
        if generated { "MiniLM-shaped model, random weights" } else { "model from the repository" }
    );
    md += &format!("Correctness: worst cosine(GPU lane, CPU lane) over {check} sentences = {worst_cosine:.6}\n\n");
    md += "## Limits (measured)\n\n| H2D GB/s | D2H GB/s | D2D GB/s (r+w) | FP32 GEMM GFLOP/s |\n|---:|---:|---:|---:|\n";
    md += &format!(
        "| {:.1} | {:.1} | {:.0} | {:.0} |\n\n",
        limits.h2d_gb_s, limits.d2h_gb_s, limits.d2d_gb_s, limits.gemm_gflop_s
    );
    md += "## Kernels vs candle\n\n| kernel | rows×seq×hidden | ours µs | candle µs | speed-up | ours GB/s | % of D2D |\n|---|---|---:|---:|---:|---:|---:|\n";
    for k in &kernels {
        md += &format!(
            "| {} | {}×{}×{} | {:.1} | {:.1} | {:.1}× | {:.0} | {:.0}% |\n",
            k.kernel,
            k.rows,
            k.seq,
            k.hidden,
            k.ours_us,
            k.candle_us,
            k.speedup,
            k.ours_gb_s,
            100.0 * k.of_copy_bandwidth
        );
    }
    md += "\n## Engine only (decode + engine)\n\n| streams | batch | sentences/s | tokens/s | mean rows | batch p50 ms | batch p99 ms | p50 ms | p95 ms | p99 ms | p99.9 ms | GPU MiB |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for r in &engine_rows {
        md += &format!(
            "| {} | {} | {:.0} | {:.0} | {:.1} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |\n",
            r.streams, r.batch_size, r.sentences_per_s, r.tokens_per_s, r.mean_batch_rows, r.batch_ms_p50, r.batch_ms_p99, r.latency_ms_p50, r.latency_ms_p95, r.latency_ms_p99, r.latency_ms_p999, r.gpu_memory_used_mib
        );
    }
    if !e2e_rows.is_empty() {
        md += "\n## End to end (`sluice batch`: JSONL → JSONL)\n\n| streams | batch | records/s | batch p99 ms |\n|---:|---:|---:|---:|\n";
        for r in &e2e_rows {
            md += &format!(
                "| {} | {} | {:.0} | {:.2} |\n",
                r.streams, r.batch_size, r.records_per_s, r.batch_ms_p99
            );
        }
    }
    println!("{md}");
    if let Some(path) = &o.markdown {
        std::fs::write(path, &md).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &o.json {
        let doc = serde_json::json!({
            "system": "sluice-gpu",
            "model": o.model,
            "generated_model": generated,
            "device": o.device,
            "limits": limits,
            "kernels": kernels,
            "correctness_worst_cosine": worst_cosine,
            "sentences_per_pass": bench.payloads.len(),
            "engine": engine_rows,
            "end_to_end": e2e_rows,
        });
        std::fs::write(path, doc.to_string() + "\n")
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
