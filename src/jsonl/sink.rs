//! The JSONL outcome sink (thread `sluice-jsonl-writer`): results to one file, dead letters
//! to another, one line each.

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use base64::Engine as _;
use crossbeam_channel::Receiver;
use serde::Serialize;

use crate::core::{EmitStats, Failure, Outcome};
use crate::render::write_result;
use crate::run::{OutcomeSink, RunError};

/// A file written in whole lines. Writes go to a buffer; once it holds 64 KiB, the complete
/// lines in it are written out. When writing fails (a full disk, a file-size limit), the file
/// is cut back to its last complete line before the error is returned, so an output file
/// never ends in a partial line.
pub struct LineFile {
    file: std::fs::File,
    buf: Vec<u8>,
    /// Bytes of the file known to be complete lines.
    good: u64,
}

/// Bytes [`LineFile`] gathers before it writes.
const LINE_FILE_CHUNK: usize = 64 * 1024;

impl LineFile {
    /// Writes into `file` (new and empty, e.g. from `File::create`).
    pub fn new(file: std::fs::File) -> Self {
        LineFile { file, buf: Vec::with_capacity(LINE_FILE_CHUNK * 2), good: 0 }
    }

    /// Writes `self.buf[..n]` (whole lines); on failure cuts the file back to `good`.
    fn write_out(&mut self, n: usize) -> std::io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        if let Err(e) = self.file.write_all(&self.buf[..n]) {
            // Best effort: the error that matters is the write's.
            let _ = self.file.set_len(self.good);
            return Err(e);
        }
        self.good += n as u64;
        self.buf.drain(..n);
        Ok(())
    }
}

impl Write for LineFile {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= LINE_FILE_CHUNK {
            let whole = self.buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            self.write_out(whole)?;
        }
        Ok(data.len())
    }

    /// Writes every complete line; a trailing partial line stays buffered.
    fn flush(&mut self) -> std::io::Result<()> {
        let whole = self.buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        self.write_out(whole)?;
        self.file.flush()
    }
}

/// Writes results and dead letters as JSON lines.
pub struct JsonlSink<W: Write + Send + 'static> {
    out: W,
    dlq: W,
    stats: Arc<EmitStats>,
}

impl<W: Write + Send + 'static> JsonlSink<W> {
    /// A sink writing results to `out` and dead letters to `dlq`, counting into `stats`.
    pub fn new(out: W, dlq: W, stats: Arc<EmitStats>) -> Self {
        JsonlSink { out, dlq, stats }
    }
}

fn write_err(stage: &'static str) -> impl Fn(std::io::Error) -> RunError {
    move |e| RunError::Stage { stage, reason: e.to_string() }
}

impl<W: Write + Send + 'static> OutcomeSink for JsonlSink<W> {
    fn thread_name(&self) -> &'static str {
        "sluice-jsonl-writer"
    }

    /// Batch mode has no drain deadline: `abandon` is never set, and every outcome is written.
    fn run(
        self: Box<Self>,
        outcomes: Receiver<Outcome>,
        _abandon: &AtomicBool,
    ) -> Result<(), RunError> {
        let JsonlSink { mut out, mut dlq, stats } = *self;
        let mut buf = Vec::with_capacity(4096);
        // Ends when every sender (the source's intake and every lane) is gone.
        for o in outcomes {
            match o.failure() {
                None => {
                    buf.clear();
                    if !write_result(&o, &mut buf) {
                        tracing::error!(line = o.env.source.offset, "could not render a result");
                        continue;
                    }
                    buf.push(b'\n');
                    out.write_all(&buf).map_err(write_err("writing output"))?;
                }
                Some(f) => write_dead_letter(&o, f, &mut dlq).map_err(write_err("writing DLQ"))?,
            }
            stats.count(&o);
        }
        out.flush().map_err(write_err("writing output"))?;
        dlq.flush().map_err(write_err("writing DLQ"))?;
        Ok(())
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
