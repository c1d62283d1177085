//! The JSONL record source (thread `sluice-jsonl-reader`): one request per line of a file.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::core::{Envelope, ErrorClass, Failure, Priority, Source};
use crate::run::{Intake, RecordSource, RunError};

/// Bytes of an over-long line kept in its dead letter.
const OVERSIZED_PREFIX_BYTES: usize = 1024;

/// Reads a JSONL file; every line becomes one record (`topic` = file name, `offset` = line
/// number, partition 0).
pub struct JsonlSource {
    input: File,
    topic: Arc<str>,
    max_record_bytes: usize,
    progress: Option<indicatif::ProgressBar>,
}

impl JsonlSource {
    /// A source over `input`; `progress` shows a progress bar on stderr.
    pub fn new(input: File, topic: Arc<str>, max_record_bytes: usize, progress: bool) -> Self {
        let progress = progress.then(|| {
            let len = input.metadata().map(|m| m.len()).unwrap_or(0);
            let b = indicatif::ProgressBar::new(len);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {per_sec} eta {eta} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        JsonlSource { input, topic, max_record_bytes, progress }
    }
}

impl RecordSource for JsonlSource {
    fn thread_name(&self) -> &'static str {
        "sluice-jsonl-reader"
    }

    fn run(self: Box<Self>, mut intake: Intake, stop: &AtomicBool) -> Result<(), RunError> {
        let JsonlSource { input, topic, max_record_bytes, progress } = *self;
        let mut r = BufReader::with_capacity(1 << 20, input);
        let mut line_no = 0i64;
        let mut bytes_read = 0u64;
        let result = loop {
            if stop.load(Ordering::SeqCst) {
                break Ok(());
            }
            let line = match read_line(&mut r, max_record_bytes) {
                Ok(Some(line)) => line,
                Ok(None) => break Ok(()),
                Err(e) => {
                    break Err(RunError::Stage { stage: "reading input", reason: e.to_string() })
                }
            };
            line_no += 1;
            let source = Source { topic: topic.clone(), partition: 0, offset: line_no };
            match line {
                Ok(l) => {
                    bytes_read += l.len() as u64 + 1;
                    let env = Envelope::new(Bytes::from(l), source, Priority::Normal);
                    if intake.offer_wait(env).is_err() {
                        break Err(RunError::Stage {
                            stage: "reading input",
                            reason: format!("stopped at line {line_no}: the lanes are gone"),
                        });
                    }
                }
                Err(prefix) => {
                    bytes_read += prefix.len() as u64 + 1;
                    let env = Envelope::new(Bytes::from(prefix), source, Priority::Normal);
                    let reason = format!(
                        "line is longer than {max_record_bytes} bytes (streaming.inference.limits.maxRecordBytes); value holds its first {OVERSIZED_PREFIX_BYTES} bytes"
                    );
                    intake.reject_unread(env, Failure::new(ErrorClass::TooLarge, reason));
                }
            }
            if let Some(b) = &progress {
                b.set_position(bytes_read);
            }
        };
        if let Some(b) = &progress {
            b.finish_and_clear();
        }
        result
    }
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
        buf.truncate(OVERSIZED_PREFIX_BYTES);
        return Ok(Some(Err(buf)));
    }
    Ok(Some(Ok(buf)))
}
