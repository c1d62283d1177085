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
//! the CPU's peak (`--peak-gflops`, default 166: 2 cores × 2.6 GHz × 32 FP32 FLOP/cycle).
//!
//! Usage: `cargo bench --bench engine_throughput -- [--batch-sizes 1,8,32,128]
//! [--min-seconds 5] [--json PATH] [--sentences PATH] [--models DIR] [--model minilm]
//! [--peak-gflops 166]`; each option also reads `SLUICE_BENCH_<OPTION>` (`SLUICE_BENCH_JSON`,
//! ...). Threads: `RAYON_NUM_THREADS` (the run script sets 2). Needs `models/minilm/1`
//! (`scripts/fetch-minilm.sh`).

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
    peak_gflops: f64,
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
        peak_gflops: 166.0,
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
            "peak-gflops" => o.peak_gflops = v.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown option --{key}")),
        }
        Ok(())
    };
    for key in ["batch-sizes", "min-seconds", "json", "sentences", "models", "model", "peak-gflops"]
    {
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
            peak_pct: 100.0 * gflop / secs / o.peak_gflops,
            load_avg_1m: [load_before, load_avg()],
            profile,
        };
        eprintln!(
            "batch {:4}: {} sentences in {:.2} s = {:.1} sent/s, {:.0} tok/s, {:.1} GFLOP/s ({:.0}% of peak), mean batch {:.1} rows, p50 {:.1} ms, load {:.2}",
            b, row.sentences, secs, row.sentences_per_s, row.tokens_per_s, row.gflop_per_s, row.peak_pct, row.mean_batch_rows, row.batch_ms_p50, row.load_avg_1m[0]
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
            "peak_gflops": o.peak_gflops,
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
