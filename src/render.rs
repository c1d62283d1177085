//! Rendering outcomes: the result record JSON and the dead-letter headers (README "Result
//! record" and "Dead letter" state the contract).

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use crate::core::{BatchOutput, OutputKind};
use crate::core::{Outcome, Verdict};

struct OutputRows<'a> {
    out: &'a BatchOutput,
    first: usize,
    rows: usize,
}

struct Row<'a> {
    kind: &'a OutputKind,
    values: &'a [f32],
}

impl Serialize for Row<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.kind {
            OutputKind::Classification(labels) => {
                let best = self
                    .values
                    .iter()
                    .enumerate()
                    .fold(
                        (0usize, f32::NEG_INFINITY),
                        |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
                    )
                    .0;
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("label", labels.get(best).map(String::as_str).unwrap_or(""))?;
                m.serialize_entry("scores", self.values)?;
                m.end()
            }
            OutputKind::Embedding | OutputKind::Vector => self.values.serialize(s),
        }
    }
}

impl Serialize for OutputRows<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.rows))?;
        for r in self.first..self.first + self.rows {
            seq.serialize_element(&Row { kind: &self.out.kind, values: self.out.row(r) })?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct SourceRef<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
}

#[derive(Serialize)]
struct TimingRef {
    queue: u64,
    infer: u64,
    total: u64,
}

#[derive(Serialize)]
struct ResultRecord<'a> {
    id: &'a str,
    model: &'a str,
    version: &'a str,
    output: OutputRows<'a>,
    source: SourceRef<'a>,
    timing_us: TimingRef,
    batch_size: u32,
}

/// Appends the result record JSON of a successful outcome to `buf`. Returns false (writing
/// nothing) for a failed outcome.
pub fn write_result(o: &Outcome, buf: &mut Vec<u8>) -> bool {
    let Verdict::Success { output, first_row, rows, batch_size } = &o.verdict else { return false };
    let Some(model) = &o.model else { return false };
    let rec = ResultRecord {
        id: o.id().unwrap_or(""),
        model: &model.name,
        version: &model.version,
        output: OutputRows { out: output, first: *first_row as usize, rows: *rows as usize },
        source: SourceRef {
            topic: &o.env.source.topic,
            partition: o.env.source.partition,
            offset: o.env.source.offset,
        },
        timing_us: TimingRef {
            queue: o.timings.queue_us,
            infer: o.timings.infer_us,
            total: o.timings.total_us,
        },
        batch_size: *batch_size,
    };
    // Writing into a Vec cannot fail for I/O reasons, and every field serializes.
    serde_json::to_writer(&mut *buf, &rec).is_ok()
}

/// The result record's key: the request key, or the id when the request had none.
pub fn result_key(o: &Outcome) -> &[u8] {
    match &o.env.key {
        Some(k) => k,
        None => o.id().unwrap_or("").as_bytes(),
    }
}

/// The headers of a dead letter (see README "Dead letter"): the error's class and reason,
/// where the record came from, and how often it was tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterHeaders {
    /// `sluice.error.class`.
    pub class: &'static str,
    /// `sluice.error.reason`.
    pub reason: String,
    /// `sluice.source.topic`, `sluice.source.partition`, `sluice.source.offset`.
    pub topic: String,
    pub partition: String,
    pub offset: String,
    /// `sluice.attempts`.
    pub attempts: String,
}

impl DeadLetterHeaders {
    /// The headers of a failed outcome; `None` for a result.
    pub fn of(o: &Outcome) -> Option<Self> {
        let f = o.failure()?;
        Some(DeadLetterHeaders {
            class: f.class.as_str(),
            reason: f.reason.clone(),
            topic: o.env.source.topic.to_string(),
            partition: o.env.source.partition.to_string(),
            offset: o.env.source.offset.to_string(),
            attempts: o.env.attempts.to_string(),
        })
    }

    /// `(name, value)` of every header, in the order they are written.
    pub fn pairs(&self) -> [(&'static str, &str); 6] {
        [
            ("sluice.error.class", self.class),
            ("sluice.error.reason", &self.reason),
            ("sluice.source.topic", &self.topic),
            ("sluice.source.partition", &self.partition),
            ("sluice.source.offset", &self.offset),
            ("sluice.attempts", &self.attempts),
        ]
    }
}
