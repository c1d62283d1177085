//! The offline JSONL mode (`sluice batch`): a JSONL file in, JSONL files out, through the
//! same engine and run loop as the Kafka path.
//!
//! Each input line is one request (the Kafka record value); `source.topic` is the input file
//! name and `source.offset` the 1-based line number. Results go to the output file, failures
//! to the DLQ file, one line each: every input line has exactly one outcome. Outputs are in
//! completion order, not input order (batches group similar lengths); sort by
//! `source.offset` to restore it.

pub mod sink;
pub mod source;

use std::fs::File;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::core::{EmitStats, IngestStats, Limits};
use crate::decode::Decoder;
use crate::engine::EngineSettings;
use crate::models::{ModelCache, ModelError};
use crate::run::{RunError, Running};

pub use sink::{JsonlSink, LineFile};
pub use source::JsonlSource;

/// Why a batch job could not run.
#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    /// The default model could not be loaded (checked before reading starts).
    #[error("model '{name}': {source}")]
    Model { name: String, source: ModelError },
    /// A file could not be opened or created.
    #[error("{what} {path}: {source}")]
    File { what: &'static str, path: PathBuf, source: std::io::Error },
    /// Reading, computing or writing failed.
    #[error(transparent)]
    Run(#[from] RunError),
}

/// What to run.
pub struct BatchJob {
    pub cache: Arc<ModelCache>,
    /// Model for lines without a `model` field; loaded (and checked) before reading starts.
    pub model: String,
    pub input: PathBuf,
    pub output: PathBuf,
    pub dlq: PathBuf,
    pub engine: EngineSettings,
    pub limits: Limits,
    /// Show a progress bar (only on a terminal).
    pub progress: bool,
}

/// What happened.
#[derive(Debug, Clone, Serialize)]
pub struct BatchSummary {
    pub lines: u64,
    pub results: u64,
    pub dead_letters: u64,
    /// (class, count) for each class with at least one dead letter.
    pub dead_letters_by_class: Vec<(String, u64)>,
    pub seconds: f64,
    pub records_per_s: f64,
    pub batches: u64,
    pub mean_batch_rows: f64,
    pub batch_ms_p50: f64,
    pub batch_ms_p99: f64,
    /// Real tokens / padded tokens (1.0 = no padding).
    pub padding_efficiency: f64,
}

impl std::fmt::Display for BatchSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "lines {}  results {}  dead letters {}",
            self.lines, self.results, self.dead_letters
        )?;
        for (c, n) in &self.dead_letters_by_class {
            writeln!(f, "  {c}: {n}")?;
        }
        writeln!(f, "{:.2} s, {:.1} records/s", self.seconds, self.records_per_s)?;
        write!(
            f,
            "{} batches, mean {:.1} rows, batch time p50 {:.2} ms p99 {:.2} ms, padding efficiency {:.1}%",
            self.batches,
            self.mean_batch_rows,
            self.batch_ms_p50,
            self.batch_ms_p99,
            self.padding_efficiency * 100.0
        )
    }
}

/// Runs a batch job to completion.
pub fn run(job: BatchJob) -> Result<BatchSummary, JsonlError> {
    let started = Instant::now();
    // Fail fast on a missing model rather than dead-lettering every line.
    job.cache
        .get(&job.model, None)
        .map_err(|source| JsonlError::Model { name: job.model.clone(), source })?;
    let file = |what, path: &Path, r: std::io::Result<File>| {
        r.map_err(|source| JsonlError::File { what, path: path.to_path_buf(), source })
    };
    // A file is read once: a line parked behind an open circuit breaker would never get an
    // outcome, so an open breaker dead-letters (`circuit_open`) instead of waiting.
    let mut engine = job.engine.clone();
    engine.circuit.when_open = crate::config::CircuitOpenPolicy::DeadLetter;
    let input = file("opening input", &job.input, File::open(&job.input))?;
    let out = file("creating output", &job.output, File::create(&job.output))?;
    let dlq = file("creating DLQ file", &job.dlq, File::create(&job.dlq))?;
    let topic: Arc<str> = job
        .input
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "input".into())
        .into();
    let progress = job.progress && std::io::stderr().is_terminal();
    let source = JsonlSource::new(input, topic, job.limits.max_record_bytes, progress);
    let emit = Arc::new(EmitStats::default());
    let sink = JsonlSink::new(LineFile::new(out), LineFile::new(dlq), emit.clone());
    let ingest = Arc::new(IngestStats::default());
    let decoder = Decoder::new(job.cache.clone(), job.limits.clone(), Some(job.model.clone()));
    let running =
        Running::start(Box::new(source), Box::new(sink), &engine, decoder, ingest.clone())?;
    let stats = running.engine_stats().clone();
    running.finish()?;

    let seconds = started.elapsed().as_secs_f64();
    let lines = ingest.consumed.load(Ordering::SeqCst);
    let h = stats.batch_us.lock().clone();
    let by_class = emit.dead_letters_by_class();
    Ok(BatchSummary {
        lines,
        results: emit.results.load(Ordering::SeqCst),
        dead_letters: emit.dead_letters.load(Ordering::SeqCst),
        dead_letters_by_class: by_class.iter().map(|(c, n)| (c.as_str().to_string(), *n)).collect(),
        seconds,
        records_per_s: lines as f64 / seconds.max(1e-9),
        batches: stats.batches.load(Ordering::Relaxed),
        mean_batch_rows: stats.mean_batch_rows(),
        batch_ms_p50: h.value_at_quantile(0.5) as f64 / 1000.0,
        batch_ms_p99: h.value_at_quantile(0.99) as f64 / 1000.0,
        padding_efficiency: stats.padding_efficiency(),
    })
}

/// The default DLQ path for an output file: `OUT.dlq.jsonl` beside it.
pub fn default_dlq_path(output: &Path) -> PathBuf {
    let mut s = output.as_os_str().to_owned();
    s.push(".dlq.jsonl");
    PathBuf::from(s)
}
