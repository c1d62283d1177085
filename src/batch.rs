//! Batch mode: JSONL in, JSONL out, through the same engine as the Kafka path.
//!
//! Each input line is one request (the Kafka record value); `source.topic` is the input file
//! name and `source.offset` the 1-based line number. Results go to the output file, failures
//! to the DLQ file, one line each: every input line has exactly one outcome. Outputs are in
//! completion order, not input order (batches group similar lengths); sort by
//! `source.offset` to restore it.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;

use crate::emit::render::write_result;
use crate::emit::{ErrorClass, Failure, Outcome};
use crate::engine::{Engine, EngineSettings};
use crate::ingest::{ContentType, Decoder, Envelope, Limits, Priority, Source};
use crate::models::ModelCache;

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

#[derive(Serialize)]
struct DeadLetterLine<'a> {
    error: ErrorRef<'a>,
    source: SourceRef<'a>,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
}

#[derive(Serialize)]
struct ErrorRef<'a> {
    class: &'a str,
    reason: &'a str,
}

#[derive(Serialize)]
struct SourceRef<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
}

/// Writes one dead-letter line: the original bytes (as text when valid UTF-8, else base64),
/// the error class and reason, and the source.
fn write_dead_letter(o: &Outcome, f: &Failure, w: &mut impl Write) -> std::io::Result<()> {
    let (value, value_base64) = match std::str::from_utf8(&o.env.payload) {
        Ok(s) => (Some(s), None),
        Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(&o.env.payload))),
    };
    let line = DeadLetterLine {
        error: ErrorRef { class: f.class.as_str(), reason: &f.reason },
        source: SourceRef {
            topic: &o.env.source.topic,
            partition: o.env.source.partition,
            offset: o.env.source.offset,
        },
        attempts: o.env.attempts,
        value,
        value_base64,
    };
    serde_json::to_writer(&mut *w, &line)?;
    w.write_all(b"\n")
}

/// Reads one line of at most `limit` bytes (newline excluded). Returns `None` at EOF,
/// `Some(Ok(line))`, or `Some(Err(prefix))` for a line over the limit (the rest is skipped).
fn read_line(
    r: &mut impl BufRead,
    limit: usize,
) -> std::io::Result<Option<Result<Vec<u8>, Vec<u8>>>> {
    let mut buf = Vec::new();
    let n = r.by_ref().take(limit as u64 + 2).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    let ended = buf.last() == Some(&b'\n');
    if ended {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    if buf.len() > limit {
        if !ended {
            // Skip the rest of the oversized line without holding it in memory.
            let mut sink = Vec::with_capacity(64 * 1024);
            loop {
                sink.clear();
                let m = r.by_ref().take(64 * 1024).read_until(b'\n', &mut sink)?;
                if m == 0 || sink.last() == Some(&b'\n') {
                    break;
                }
            }
        }
        buf.truncate(1024);
        return Ok(Some(Err(buf)));
    }
    Ok(Some(Ok(buf)))
}

/// Runs a batch job to completion.
pub fn run(job: BatchJob) -> anyhow::Result<BatchSummary> {
    let started = Instant::now();
    // Fail fast on a missing model rather than dead-lettering every line.
    job.cache.get(&job.model, None).with_context(|| format!("model '{}'", job.model))?;
    let input =
        File::open(&job.input).with_context(|| format!("opening input {}", job.input.display()))?;
    let input_len = input.metadata().map(|m| m.len()).unwrap_or(0);
    let topic: Arc<str> = job
        .input
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "input".into())
        .into();
    let mut out = BufWriter::new(
        File::create(&job.output)
            .with_context(|| format!("creating output {}", job.output.display()))?,
    );
    let mut dlq = BufWriter::new(
        File::create(&job.dlq)
            .with_context(|| format!("creating DLQ file {}", job.dlq.display()))?,
    );

    let (tx, rx) = crossbeam_channel::bounded::<Outcome>(job.engine.ring_capacity.max(64));
    let engine = Engine::start(&job.engine, tx.clone()).context("starting lanes")?;
    let total = AtomicU64::new(0);
    let reader_done = AtomicBool::new(false);
    let bar = (job.progress && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(input_len);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {per_sec} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });

    let mut results = 0u64;
    let mut by_class = [0u64; ErrorClass::ALL.len()];
    let mut buf = Vec::with_capacity(4096);
    let outcome = std::thread::scope(|s| -> anyhow::Result<()> {
        let reader = std::thread::Builder::new().name("sluice-batch-reader".into()).spawn_scoped(s, || -> anyhow::Result<()> {
            let result = (|| -> anyhow::Result<()> {
                let mut decoder = Decoder::new(job.cache.clone(), job.limits.clone(), Some(job.model.clone()));
                let mut r = BufReader::with_capacity(1 << 20, input);
                let mut line_no = 0i64;
                let mut bytes_read = 0u64;
                while let Some(line) = read_line(&mut r, job.limits.max_record_bytes).context("reading input")? {
                    line_no += 1;
                    let (payload, oversized) = match line {
                        Ok(l) => (l, false),
                        Err(prefix) => (prefix, true),
                    };
                    bytes_read += payload.len() as u64 + 1;
                    let env = Envelope {
                        payload: Bytes::from(payload),
                        key: None,
                        source: Source { topic: topic.clone(), partition: 0, offset: line_no },
                        priority: Priority::Normal,
                        content_type: ContentType::Json,
                        arrived: Instant::now(),
                        event_time_ms: None,
                        attempts: 1,
                    };
                    total.fetch_add(1, Ordering::SeqCst);
                    if oversized {
                        let f = Failure::new(
                            ErrorClass::TooLarge,
                            format!("line is longer than {} bytes (streaming.inference.limits.maxRecordBytes); value holds its first 1024 bytes", job.limits.max_record_bytes),
                        );
                        let _ = tx.send(Outcome::rejected(env, f));
                    } else if env.payload.iter().all(|b| b.is_ascii_whitespace()) {
                        let _ = tx.send(Outcome::rejected(env, Failure::new(ErrorClass::Parse, "empty line")));
                    } else {
                        match decoder.decode(env) {
                            Ok(req) => engine.submit_wait(req),
                            Err((env, f)) => {
                                let _ = tx.send(Outcome::rejected(env, f));
                            }
                        }
                    }
                    if let Some(b) = &bar {
                        b.set_position(bytes_read);
                    }
                }
                Ok(())
            })();
            reader_done.store(true, Ordering::SeqCst);
            result
        })?;

        let mut written = 0u64;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(o) => {
                    written += 1;
                    match o.failure() {
                        None => {
                            buf.clear();
                            if write_result(&o, &mut buf) {
                                buf.push(b'\n');
                                out.write_all(&buf).context("writing output")?;
                                results += 1;
                            }
                        }
                        Some(f) => {
                            let idx =
                                ErrorClass::ALL.iter().position(|c| *c == f.class).unwrap_or(0);
                            by_class[idx] += 1;
                            write_dead_letter(&o, f, &mut dlq).context("writing DLQ")?;
                        }
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
            if reader_done.load(Ordering::SeqCst) && written == total.load(Ordering::SeqCst) {
                break;
            }
            if reader.is_finished() && !reader_done.load(Ordering::SeqCst) {
                break;
            }
        }
        match reader.join() {
            Ok(r) => r,
            Err(_) => anyhow::bail!("the reader thread panicked"),
        }
    });
    let stats = engine.stats().clone();
    engine.shutdown();
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    outcome?;
    out.flush().context("writing output")?;
    dlq.flush().context("writing DLQ")?;

    let seconds = started.elapsed().as_secs_f64();
    let lines = total.load(Ordering::SeqCst);
    let h = stats.batch_us.lock().clone();
    Ok(BatchSummary {
        lines,
        results,
        dead_letters: by_class.iter().sum(),
        dead_letters_by_class: ErrorClass::ALL
            .iter()
            .zip(by_class)
            .filter(|(_, n)| *n > 0)
            .map(|(c, n)| (c.as_str().to_string(), n))
            .collect(),
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
