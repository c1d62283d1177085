//! Engine throughput: all-MiniLM-L6-v2 sentence embeddings through the real engine on CPU.
//!
//! For each batch size `b`: an [`Engine`] with one CPU lane and `BatchPolicy { max_rows: b }`,
//! fed every sentence of the sentence file as a JSON request decoded by
//! [`sluice::core::Decoder`] (on a submitter thread, as the Kafka consumer would), passes
//! over the file repeated until at least `--min-seconds` and one pass. Time runs from the
//! first submit of a pass until its last outcome is received; decoding, batching, staging
//! (tokenization), the model and pooling are all inside it.
//!
//! Reports sentences/s, real tokens/s, staging padding efficiency (`EngineStats`: real /
//! padded tokens of the staged batches; the CPU encoder computes only the real ones), mean
//! batch rows, batch time p50/p99, and useful GFLOP/s: per sequence of `L` real tokens,
//! `layers · L · (2(4H² + 2HI) + 4LH)` FLOPs (the linear layers plus QKᵀ and PV), against
//! the FP32 peak of the threads used, measured in the same run (module [`peak`]): an FMA loop
//! with 12 independent accumulator chains on every thread of the rayon pool the engine computes
//! on, all at once, best of `--peak-tries` runs of `--peak-seconds`, for each of AVX-512 and
//! AVX2+FMA the CPU has (a portable loop without either; the peak is the fastest kernel); once
//! before the first batch size and once after the last (clocks drift). % of peak is against the
//! higher of the two, or `--peak-gflops`.
//!
//! Usage: `cargo bench --bench engine_throughput -- [--batch-sizes 1,8,32,128]
//! [--min-seconds 5] [--json PATH] [--sentences PATH] [--models DIR] [--model minilm]
//! [--peak-gflops G] [--peak-seconds 1] [--peak-tries 3]`; each option also reads
//! `SLUICE_BENCH_<OPTION>` (`SLUICE_BENCH_JSON`, ...). Threads: `RAYON_NUM_THREADS` (the run
//! script sets 2). Needs `models/minilm/1` (`scripts/fetch-minilm.sh`).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice::core::BatchCaps;
use sluice::core::Outcome;
use sluice::core::{Envelope, Limits, Priority, Source};
use sluice::decode::Decoder;
use sluice::engine::{Engine, EngineSettings};
use sluice::models::cache::CacheSettings;
use sluice::models::{packed_bert, ModelCache, Repository};
use sluice::queue::BatchPolicy;

struct Options {
    batch_sizes: Vec<usize>,
    min_seconds: f64,
    json: Option<PathBuf>,
    sentences: PathBuf,
    models: PathBuf,
    model: String,
    /// Override for the peak % of peak is computed against (default: measured).
    peak_gflops: Option<f64>,
    peak_seconds: f64,
    peak_tries: usize,
}

fn options() -> Result<Options, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let env = |k: &str| std::env::var(format!("SLUICE_BENCH_{k}")).ok();
    let mut o = Options {
        batch_sizes: vec![1, 8, 32, 128],
        min_seconds: 5.0,
        json: None,
        sentences: root.join("benches/data/bench_sentences.txt"),
        models: root.join("models"),
        model: "minilm".into(),
        peak_gflops: None,
        peak_seconds: 1.0,
        peak_tries: 3,
    };
    let mut set = |key: &str, v: String| -> Result<(), String> {
        let bad = |e: &dyn std::fmt::Display| format!("--{key} {v:?}: {e}");
        match key {
            "batch-sizes" => {
                o.batch_sizes = v
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| bad(&e))?;
                if o.batch_sizes.is_empty() || o.batch_sizes.contains(&0) {
                    return Err(bad(&"batch sizes must be >= 1"));
                }
            }
            "min-seconds" => o.min_seconds = v.parse().map_err(|e| bad(&e))?,
            "json" => o.json = Some(v.into()),
            "sentences" => o.sentences = v.into(),
            "models" => o.models = v.into(),
            "model" => o.model = v,
            "peak-gflops" => {
                let g: f64 = v.parse().map_err(|e| bad(&e))?;
                if !g.is_finite() || g <= 0.0 {
                    return Err(bad(&"must be > 0"));
                }
                o.peak_gflops = Some(g);
            }
            "peak-seconds" => {
                o.peak_seconds = v.parse().map_err(|e| bad(&e))?;
                if !o.peak_seconds.is_finite() || o.peak_seconds <= 0.0 {
                    return Err(bad(&"must be > 0"));
                }
            }
            "peak-tries" => o.peak_tries = v.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown option --{key}")),
        }
        Ok(())
    };
    for key in [
        "batch-sizes",
        "min-seconds",
        "json",
        "sentences",
        "models",
        "model",
        "peak-gflops",
        "peak-seconds",
        "peak-tries",
    ] {
        if let Some(v) = env(&key.replace('-', "_").to_uppercase()) {
            set(key, v)?;
        }
    }
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--bench" {
            continue; // passed by `cargo bench`
        }
        let Some(key) = a.strip_prefix("--") else {
            return Err(format!("unexpected argument {a:?}"));
        };
        let (key, value) = match key.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (key.to_string(), args.next().ok_or_else(|| format!("--{key} needs a value"))?),
        };
        set(&key, value)?;
    }
    Ok(o)
}

#[derive(serde::Deserialize)]
struct BertShape {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
}

/// Useful FLOPs of one sequence of `l` real tokens.
fn seq_flops(c: &BertShape, l: usize) -> f64 {
    let (h, i, l) = (c.hidden_size as f64, c.intermediate_size as f64, l as f64);
    c.num_hidden_layers as f64 * l * (2.0 * (4.0 * h * h + 2.0 * h * i) + 4.0 * l * h)
}

#[derive(serde::Serialize)]
struct Row {
    batch_size: usize,
    passes: usize,
    sentences: u64,
    seconds: f64,
    sentences_per_s: f64,
    tokens: u64,
    tokens_per_s: f64,
    padding_efficiency: f64,
    batches: u64,
    mean_batch_rows: f64,
    batch_ms_p50: f64,
    batch_ms_p99: f64,
    gflop: f64,
    gflop_per_s: f64,
    peak_pct: f64,
    load_avg_1m: [f64; 2],
    /// Share of encoder time per operation (packed CPU encoder only).
    profile: Vec<(&'static str, f64)>,
}

fn load_avg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn envelope(payload: Bytes, offset: i64, topic: &Arc<str>) -> Envelope {
    Envelope::new(payload, Source { topic: topic.clone(), partition: 0, offset }, Priority::Normal)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("engine_throughput: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let o = options()?;
    let text = std::fs::read_to_string(&o.sentences)
        .map_err(|e| format!("{}: {e}", o.sentences.display()))?;
    let sentences: Vec<&str> =
        text.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.is_empty()).collect();
    if sentences.is_empty() {
        return Err(format!("{}: no sentences", o.sentences.display()));
    }
    let repo = Repository::open(&o.models)
        .map_err(|e| format!("{}: {e} (run scripts/fetch-minilm.sh)", o.models.display()))?;
    let cache =
        Arc::new(ModelCache::new(repo, CacheSettings { capacity: 2, ttl: None, warmup_rows: 8 }));
    let model = cache.get(&o.model, None).map_err(|e| format!("model {}: {e}", o.model))?;
    let shape: BertShape = serde_json::from_str(
        &std::fs::read_to_string(model.dir.join("config.json")).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let threads = rayon::current_num_threads();
    let payloads: Vec<Bytes> = sentences
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Bytes::from(
                serde_json::json!({"id": format!("s{i}"), "model": o.model, "input": s})
                    .to_string(),
            )
        })
        .collect();
    let topic: Arc<str> = "bench".into();

    // Token counts (as the engine sees them) and the useful FLOPs of one pass.
    let probe_limits =
        Limits { caps: BatchCaps { max_rows: 1, max_tokens: 1 << 20 }, ..Limits::default() };
    let mut probe = Decoder::new(cache.clone(), probe_limits, None);
    let mut pass_tokens = 0u64;
    let mut pass_flops = 0f64;
    for (i, p) in payloads.iter().enumerate() {
        let req = probe
            .decode(envelope(p.clone(), i as i64, &topic))
            .map_err(|(_, f)| format!("sentence {i} rejected: {f:?}"))?;
        pass_tokens += req.max_tokens as u64;
        pass_flops += seq_flops(&shape, req.max_tokens as usize);
    }
    eprintln!(
        "{} sentences, {} tokens per pass (mean {:.1}), {:.3} GFLOP per pass; model {} loaded in {:?}, warm-up {:?}; {} rayon threads; {}",
        sentences.len(),
        pass_tokens,
        pass_tokens as f64 / sentences.len() as f64,
        pass_flops / 1e9,
        o.model,
        model.load_time,
        model.warmup_time,
        threads,
        cpu_model()
    );

    let peak_start = peak::measure(o.peak_seconds, o.peak_tries);
    eprintln!("FP32 peak (start): {}", peak_start.describe());

    let mut rows = Vec::new();
    for &b in &o.batch_sizes {
        let max_tokens = b * 512;
        let caps = BatchCaps { max_rows: b, max_tokens };
        let policy = BatchPolicy { caps, ..BatchPolicy::default() };
        let settings = EngineSettings {
            cpu_lanes: 1,
            ring_capacity: 4096,
            policy,
            max_retries: 0,
            idle_wait: Duration::from_millis(1),
            ..EngineSettings::default()
        };
        let limits = Limits { caps, ..Limits::default() };
        let (tx, rx) = crossbeam_channel::bounded::<Outcome>(8192);
        let engine = Engine::start(&settings, tx).map_err(|e| e.to_string())?;
        let mut decoder = Decoder::new(cache.clone(), limits, None);

        // One pass: a submitter thread decodes and queues every sentence; this thread
        // receives the outcomes. Returns the pass's wall time.
        let pass = |decoder: &mut Decoder, count: usize| -> Result<Duration, String> {
            let started = Instant::now();
            let failed = std::thread::scope(|s| -> Result<usize, String> {
                let sub = s.spawn(|| -> Result<(), String> {
                    for (i, p) in payloads.iter().take(count).enumerate() {
                        let req = decoder
                            .decode(envelope(p.clone(), i as i64, &topic))
                            .map_err(|(_, f)| format!("sentence {i} rejected: {f:?}"))?;
                        engine.submit_wait(req).map_err(|_| "the lanes are gone".to_string())?;
                    }
                    Ok(())
                });
                let mut failed = 0;
                for _ in 0..count {
                    let o = rx
                        .recv_timeout(Duration::from_secs(120))
                        .map_err(|e| format!("waiting for outcomes: {e}"))?;
                    if let Some(f) = o.failure() {
                        if failed == 0 {
                            eprintln!("failure: {f:?}");
                        }
                        failed += 1;
                    }
                }
                sub.join().map_err(|_| "submitter panicked".to_string())??;
                Ok(failed)
            })?;
            if failed > 0 {
                return Err(format!("{failed} requests failed"));
            }
            Ok(started.elapsed())
        };

        // Warm-up (allocator, buffers at this batch size), not counted.
        pass(&mut decoder, (b * 4).min(payloads.len()))?;
        let stats = engine.stats().clone();
        let snap = |s: &sluice::core::EngineStats| {
            (
                s.batches.load(Ordering::Relaxed),
                s.rows.load(Ordering::Relaxed),
                s.real_tokens.load(Ordering::Relaxed),
                s.padded_tokens.load(Ordering::Relaxed),
            )
        };
        let before = snap(&stats);
        stats.batch_us.lock().reset();
        packed_bert::profile::enable(true);
        packed_bert::profile::take();
        let load_before = load_avg();
        let mut elapsed = Duration::ZERO;
        let mut passes = 0usize;
        while passes == 0 || elapsed.as_secs_f64() < o.min_seconds {
            elapsed += pass(&mut decoder, payloads.len())?;
            passes += 1;
        }
        let after = snap(&stats);
        let h = stats.batch_us.lock().clone();
        let prof = packed_bert::profile::take();
        packed_bert::profile::enable(false);
        let prof_total: f64 = prof.iter().map(|p| p.1).sum();
        let profile: Vec<(&'static str, f64)> = if prof_total > 0.0 {
            prof.iter().map(|&(n, t)| (n, t / prof_total)).collect()
        } else {
            Vec::new()
        };
        engine.shutdown();
        let secs = elapsed.as_secs_f64();
        let sents = (passes * payloads.len()) as u64;
        let tokens = passes as u64 * pass_tokens;
        let gflop = passes as f64 * pass_flops / 1e9;
        let batches = after.0 - before.0;
        let row = Row {
            batch_size: b,
            passes,
            sentences: sents,
            seconds: secs,
            sentences_per_s: sents as f64 / secs,
            tokens,
            tokens_per_s: tokens as f64 / secs,
            padding_efficiency: (after.2 - before.2) as f64
                / ((after.3 - before.3) as f64).max(1.0),
            batches,
            mean_batch_rows: (after.1 - before.1) as f64 / (batches as f64).max(1.0),
            batch_ms_p50: h.value_at_quantile(0.5) as f64 / 1000.0,
            batch_ms_p99: h.value_at_quantile(0.99) as f64 / 1000.0,
            gflop,
            gflop_per_s: gflop / secs,
            peak_pct: f64::NAN, // filled in once the end-of-run peak is known
            load_avg_1m: [load_before, load_avg()],
            profile,
        };
        eprintln!(
            "batch {:4}: {} sentences in {:.2} s = {:.1} sent/s, {:.0} tok/s, {:.1} GFLOP/s ({:.0}% of the start peak), mean batch {:.1} rows, p50 {:.1} ms, load {:.2}",
            b, row.sentences, secs, row.sentences_per_s, row.tokens_per_s, row.gflop_per_s,
            100.0 * row.gflop_per_s / o.peak_gflops.unwrap_or(peak_start.gflops),
            row.mean_batch_rows, row.batch_ms_p50, row.load_avg_1m[0]
        );
        if !row.profile.is_empty() {
            eprintln!(
                "            encoder time: {}",
                row.profile
                    .iter()
                    .map(|(n, f)| format!("{n} {:.1}%", f * 100.0))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        rows.push(row);
    }

    let peak_end = peak::measure(o.peak_seconds, o.peak_tries);
    eprintln!("FP32 peak (end):   {}", peak_end.describe());
    let measured = peak_start.gflops.max(peak_end.gflops);
    let (peak_gflops, peak_source) = match o.peak_gflops {
        Some(g) => (g, "override (--peak-gflops)"),
        None => (measured, "measured (higher of start and end)"),
    };
    for r in &mut rows {
        r.peak_pct = 100.0 * r.gflop_per_s / peak_gflops;
    }
    println!(
        "FP32 peak: {:.1} GFLOP/s, {}; measured start {:.1} ({:.1} per thread), end {:.1} ({:.1} per thread), {} threads, {}",
        peak_gflops,
        peak_source,
        peak_start.gflops,
        peak_start.gflops / peak_start.threads as f64,
        peak_end.gflops,
        peak_end.gflops / peak_end.threads as f64,
        peak_start.threads,
        peak_start.kernel
    );
    println!();

    println!("| batch | sentences/s | tokens/s | GFLOP/s | % of peak | staging padding eff. | mean rows | batch p50 ms | load 1m |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.1} | {:.0} | {:.1} | {:.0}% | {:.1}% | {:.1} | {:.1} | {:.2} |",
            r.batch_size,
            r.sentences_per_s,
            r.tokens_per_s,
            r.gflop_per_s,
            r.peak_pct,
            r.padding_efficiency * 100.0,
            r.mean_batch_rows,
            r.batch_ms_p50,
            r.load_avg_1m[0]
        );
    }
    if let Some(path) = &o.json {
        let doc = serde_json::json!({
            "system": "sluice",
            "model": o.model,
            "threads": threads,
            "cpu": cpu_model(),
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "peak_gflops": peak_gflops,
            "peak_source": peak_source,
            "peak_measured_gflops": measured,
            "peak_start": peak_start,
            "peak_end": peak_end,
            "sentences_file": o.sentences,
            "sentences_per_pass": payloads.len(),
            "tokens_per_pass": pass_tokens,
            "gflop_per_pass": pass_flops / 1e9,
            "results": rows,
        });
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(path, doc.to_string() + "\n")
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// The FP32 peak of the threads the engine runs on, measured: an FMA loop with 12 independent
/// accumulator chains (enough to cover FMA latency × pipes on current x86 cores), one copy per
/// rayon thread, all running at once.
mod peak {
    use std::hint::black_box;
    use std::sync::Barrier;
    use std::time::{Duration, Instant};

    /// Independent accumulator chains per kernel call.
    const CHAINS: usize = 12;
    /// Kernel iterations between clock reads (~0.1-1 ms).
    const CHUNK: u64 = 1 << 16;

    #[derive(Clone, Copy, Debug, PartialEq)]
    pub enum Kernel {
        #[cfg(target_arch = "x86_64")]
        Avx512,
        #[cfg(target_arch = "x86_64")]
        Avx2Fma,
        Portable,
    }

    impl Kernel {
        pub fn name(self) -> &'static str {
            match self {
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512 => "avx512f (12 × 16-lane _mm512_fmadd_ps)",
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2Fma => "avx2+fma (12 × 8-lane _mm256_fmadd_ps)",
                Kernel::Portable => "portable (12 × 8-lane a·x+b)",
            }
        }

        /// FLOPs of one iteration (one FMA = 2 FLOPs per lane).
        fn flops_per_iter(self) -> f64 {
            #[cfg(target_arch = "x86_64")]
            if self == Kernel::Avx512 {
                return (CHAINS * 16 * 2) as f64;
            }
            (CHAINS * 8 * 2) as f64
        }

        /// `iters` iterations; returns a value depending on every accumulator.
        fn run(self, iters: u64, seed: f32) -> f32 {
            match self {
                // SAFETY: only listed by `available()` when the CPU has the features.
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512 => unsafe { fma_avx512(iters, seed) },
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2Fma => unsafe { fma_avx2(iters, seed) },
                Kernel::Portable => fma_portable(iters, seed),
            }
        }
    }

    /// The SIMD kernels this CPU can run, widest first; the portable one when there is none.
    pub fn available() -> Vec<Kernel> {
        #[cfg(target_arch = "x86_64")]
        let simd: Vec<Kernel> = [
            (std::is_x86_feature_detected!("avx512f"), Kernel::Avx512),
            (
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"),
                Kernel::Avx2Fma,
            ),
        ]
        .into_iter()
        .filter_map(|(ok, k)| ok.then_some(k))
        .collect();
        #[cfg(not(target_arch = "x86_64"))]
        let simd: Vec<Kernel> = Vec::new();
        if simd.is_empty() {
            vec![Kernel::Portable]
        } else {
            simd
        }
    }

    // Each chain is x ← x·a + b with a = 1 - 1e-6, b = 1e-6: it stays near 1 (no overflow, no
    // denormals), and the inputs come through `black_box`, so nothing folds away.

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fma_avx2(iters: u64, seed: f32) -> f32 {
        use std::arch::x86_64::*;
        let a = _mm256_set1_ps(black_box(1.0 - 1e-6));
        let b = _mm256_set1_ps(black_box(1e-6));
        let mut acc: [__m256; CHAINS] =
            std::array::from_fn(|i| _mm256_set1_ps(seed + i as f32 * 1e-3));
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let mut s = _mm256_setzero_ps();
        for x in acc {
            s = _mm256_add_ps(s, x);
        }
        let mut out = [0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), s);
        out.iter().sum()
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn fma_avx512(iters: u64, seed: f32) -> f32 {
        use std::arch::x86_64::*;
        let a = _mm512_set1_ps(black_box(1.0 - 1e-6));
        let b = _mm512_set1_ps(black_box(1e-6));
        let mut acc: [__m512; CHAINS] =
            std::array::from_fn(|i| _mm512_set1_ps(seed + i as f32 * 1e-3));
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        let mut s = _mm512_setzero_ps();
        for x in acc {
            s = _mm512_add_ps(s, x);
        }
        _mm512_reduce_add_ps(s)
    }

    /// Plain Rust: `mul_add` where the target has FMA in its baseline (aarch64), multiply +
    /// add elsewhere (counted as 2 FLOPs all the same).
    fn fma_portable(iters: u64, seed: f32) -> f32 {
        let a = black_box(1.0f32 - 1e-6);
        let b = black_box(1e-6f32);
        let mut acc: [[f32; 8]; CHAINS] = std::array::from_fn(|i| [seed + i as f32 * 1e-3; 8]);
        for _ in 0..iters {
            for chain in acc.iter_mut() {
                for x in chain.iter_mut() {
                    #[cfg(target_arch = "aarch64")]
                    {
                        *x = x.mul_add(a, b);
                    }
                    #[cfg(not(target_arch = "aarch64"))]
                    {
                        *x = *x * a + b;
                    }
                }
            }
        }
        acc.iter().flatten().sum()
    }

    /// One timed run: `kernel` on every thread of the current rayon pool at once, for about
    /// `seconds`. Returns (total GFLOP/s over the common wall window, GFLOP/s per thread).
    fn once(kernel: Kernel, seconds: f64) -> (f64, Vec<f64>) {
        let threads = rayon::current_num_threads();
        let barrier = Barrier::new(threads);
        let limit = Duration::from_secs_f64(seconds);
        let runs = rayon::broadcast(|ctx| {
            barrier.wait();
            let start = Instant::now();
            let mut iters = 0u64;
            let mut sink = 0f32;
            loop {
                sink += kernel.run(black_box(CHUNK), black_box(1.0 + ctx.index() as f32));
                iters += CHUNK;
                if start.elapsed() >= limit {
                    break;
                }
            }
            let end = Instant::now();
            black_box(sink);
            (start, end, iters as f64 * kernel.flops_per_iter())
        });
        let first = runs.iter().map(|r| r.0).min().expect("at least one thread");
        let last = runs.iter().map(|r| r.1).max().expect("at least one thread");
        let wall = (last - first).as_secs_f64();
        let total = runs.iter().map(|r| r.2).sum::<f64>() / wall / 1e9;
        let per_thread = runs.iter().map(|r| r.2 / (r.1 - r.0).as_secs_f64() / 1e9).collect();
        (total, per_thread)
    }

    /// One kernel's measurement: best of the tries, all threads at once.
    #[derive(Clone, Debug, serde::Serialize)]
    pub struct KernelPeak {
        pub kernel: &'static str,
        /// GFLOP/s of the best try, all threads together (FLOPs over the common wall window).
        pub gflops: f64,
        /// Per thread, in that best try.
        pub per_thread_gflops: Vec<f64>,
        pub tries_gflops: Vec<f64>,
    }

    #[derive(Clone, Debug, serde::Serialize)]
    pub struct Peak {
        /// The kernel that measured highest; `gflops` and `per_thread_gflops` are its.
        pub kernel: &'static str,
        pub threads: usize,
        pub gflops: f64,
        pub per_thread_gflops: Vec<f64>,
        pub tries_gflops: Vec<f64>,
        /// Length of each try.
        pub seconds: f64,
        /// Every kernel measured (the SIMD ones this CPU has; portable only without them).
        pub kernels: Vec<KernelPeak>,
        pub load_avg_1m: f64,
    }

    /// Times every available SIMD kernel (the portable one only when there is none) `tries`
    /// times for `seconds` each, tries interleaved across kernels, and keeps each kernel's best.
    pub fn measure(seconds: f64, tries: usize) -> Peak {
        let kernels = available();
        let mut results: Vec<KernelPeak> = kernels
            .iter()
            .map(|k| KernelPeak {
                kernel: k.name(),
                gflops: 0.0,
                per_thread_gflops: Vec::new(),
                tries_gflops: Vec::new(),
            })
            .collect();
        for _ in 0..tries.max(1) {
            for (k, r) in kernels.iter().zip(results.iter_mut()) {
                let (total, per_thread) = once(*k, seconds);
                r.tries_gflops.push(total);
                if total > r.gflops {
                    r.gflops = total;
                    r.per_thread_gflops = per_thread;
                }
            }
        }
        let best = results
            .iter()
            .max_by(|a, b| a.gflops.total_cmp(&b.gflops))
            .expect("at least one kernel")
            .clone();
        Peak {
            kernel: best.kernel,
            threads: rayon::current_num_threads(),
            gflops: best.gflops,
            per_thread_gflops: best.per_thread_gflops,
            tries_gflops: best.tries_gflops,
            seconds,
            kernels: results,
            load_avg_1m: super::load_avg(),
        }
    }

    impl Peak {
        pub fn describe(&self) -> String {
            format!(
                "{:.1} GFLOP/s on {} threads ({} per thread; tries {}) with {}; all kernels: {}; load {:.2}",
                self.gflops,
                self.threads,
                self.per_thread_gflops.iter().map(|g| format!("{g:.1}")).collect::<Vec<_>>().join(" + "),
                self.tries_gflops.iter().map(|g| format!("{g:.1}")).collect::<Vec<_>>().join(", "),
                self.kernel,
                self.kernels
                    .iter()
                    .map(|k| format!("{} {:.1}", k.kernel.split(' ').next().unwrap_or(k.kernel), k.gflops))
                    .collect::<Vec<_>>()
                    .join(", "),
                self.load_avg_1m
            )
        }
    }
}
