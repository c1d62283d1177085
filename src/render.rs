//! Rendering outcomes: the result record JSON and the dead-letter headers (README "Result
//! record" and "Dead letter" state the contract).

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use crate::core::{argmax, BatchOutput, Envelope, OutputKind};
use crate::core::{bounded_reason, Outcome, Source, Verdict, REPLAY_COUNT_HEADER};
use crate::execute::shadow::ShadowResult;

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
                let best = argmax(self.values);
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
    result_key_of(&o.env, o.id().unwrap_or(""))
}

/// The key of a record about the request of `env` with id `id`: its key, else the id.
pub fn result_key_of<'a>(env: &'a Envelope, id: &'a str) -> &'a [u8] {
    match &env.key {
        Some(k) => k,
        None => id.as_bytes(),
    }
}

#[derive(Serialize)]
struct ShadowRecord<'a> {
    id: &'a str,
    model: &'a str,
    primary_version: &'a str,
    shadow_version: &'a str,
    primary: OutputRows<'a>,
    shadow: OutputRows<'a>,
    agreement: Option<f64>,
    measure: &'a str,
    source: SourceRef<'a>,
}

/// Appends the shadow record JSON of `r` to `buf` (README "Shadow scoring").
pub fn write_shadow_result(r: &ShadowResult<'_>, buf: &mut Vec<u8>) -> bool {
    fn rows((out, first, rows): (&BatchOutput, usize, usize)) -> OutputRows<'_> {
        OutputRows { out, first, rows }
    }
    let rec = ShadowRecord {
        id: r.id,
        model: r.model,
        primary_version: r.primary_version,
        shadow_version: r.shadow_version,
        primary: rows(r.primary),
        shadow: rows(r.shadow),
        agreement: r.agreement.is_finite().then_some(r.agreement),
        measure: r.measure,
        source: SourceRef {
            topic: &r.env.source.topic,
            partition: r.env.source.partition,
            offset: r.env.source.offset,
        },
    };
    serde_json::to_writer(&mut *buf, &rec).is_ok()
}

/// The headers of a dead letter (see README "Dead letter"): the error's class and reason,
/// where the record came from, how often it was tried, and, for a dead letter that had to be
/// cut to be accepted, what the original key and value were.
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
    /// `sluice-replay-count`, kept from a replayed request.
    pub replays: Option<String>,
    /// The request's own headers (`content-type`, a trace id, ...), after Sluice's: all but
    /// `sluice.*` ones and the replay count, so that `sluice replay` restores the record.
    pub carried: Vec<(String, Vec<u8>)>,
    /// Set on a cut dead letter.
    pub original: Option<OriginalRecord>,
}

/// What a cut dead letter no longer carries whole: `sluice.original.key.bytes`,
/// `sluice.original.key.fnv1a64` (hex; absent when the record had no key) and
/// `sluice.original.value.bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginalRecord {
    pub key_bytes: String,
    pub key_fnv1a64: Option<String>,
    pub value_bytes: String,
}

impl OriginalRecord {
    /// The sizes (and key hash) of a record with `key` and a value of `value_bytes`.
    pub fn of(key: Option<&[u8]>, value_bytes: usize) -> Self {
        OriginalRecord {
            key_bytes: key.map_or(0, <[u8]>::len).to_string(),
            key_fnv1a64: key.map(|k| format!("{:016x}", fnv1a64(k))),
            value_bytes: value_bytes.to_string(),
        }
    }
}

/// FNV-1a, 64 bits: a stable, dependency-free fingerprint of a cut key (not a security
/// hash) so that an operator can match a cut dead letter with its input record.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

impl DeadLetterHeaders {
    /// The headers of a failed outcome; `None` for a result.
    pub fn of(o: &Outcome) -> Option<Self> {
        let f = o.failure()?;
        Some(Self::for_source(o, f.class.as_str(), f.reason.clone()))
    }

    /// [`of`](Self::of) for the Kafka dead-letter topic: a request replayed `max_replays`
    /// times or more gets a reason that starts by saying so (`sluice replay` skips it).
    pub fn with_replay_limit(o: &Outcome, max_replays: u32) -> Option<Self> {
        let mut h = Self::of(o)?;
        let n = o.env.replays;
        if n > 0 && n >= max_replays {
            h.reason = bounded_reason(format!(
                "replayed {n} times, the limit (streaming.inference.processing.maxReplays) is {max_replays}: not replayed again; {}",
                h.reason
            ));
        }
        Some(h)
    }

    /// The headers of a dead letter of `class` for the record of `o`, whatever its verdict
    /// (a result the broker refused becomes such a dead letter).
    pub fn for_source(o: &Outcome, class: &'static str, reason: String) -> Self {
        let mut h = Self::for_record(&o.env.source, o.env.attempts, class, reason);
        if let Some(hs) = &o.env.headers {
            hs.visit(&mut |k, v| {
                if !k.starts_with("sluice.") && k != REPLAY_COUNT_HEADER {
                    h.carried.push((k.to_owned(), v.to_vec()));
                }
            });
        }
        if o.env.replays > 0 {
            h.replays = Some(o.env.replays.to_string());
        }
        h
    }

    /// The headers of a dead letter of `class` for the input record at `source`, delivered
    /// `attempts` times.
    pub fn for_record(source: &Source, attempts: u32, class: &'static str, reason: String) -> Self {
        DeadLetterHeaders {
            class,
            reason,
            topic: source.topic.to_string(),
            partition: source.partition.to_string(),
            offset: source.offset.to_string(),
            attempts: attempts.to_string(),
            replays: None,
            carried: Vec::new(),
            original: None,
        }
    }

    /// `(name, value)` of Sluice's headers, in the order they are written (the
    /// [`carried`](Self::carried) ones follow).
    pub fn pairs(&self) -> Vec<(&'static str, &str)> {
        let mut v = vec![
            ("sluice.error.class", self.class),
            ("sluice.error.reason", &self.reason),
            ("sluice.source.topic", &self.topic),
            ("sluice.source.partition", &self.partition),
            ("sluice.source.offset", &self.offset),
            ("sluice.attempts", &self.attempts),
        ];
        if let Some(n) = &self.replays {
            v.push((REPLAY_COUNT_HEADER, n));
        }
        if let Some(o) = &self.original {
            v.push(("sluice.original.key.bytes", &o.key_bytes));
            if let Some(h) = &o.key_fnv1a64 {
                v.push(("sluice.original.key.fnv1a64", h));
            }
            v.push(("sluice.original.value.bytes", &o.value_bytes));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_published_test_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn a_cut_dead_letter_names_the_original_sizes() {
        let o = OriginalRecord::of(Some(b"foobar"), 2_000_000);
        assert_eq!(o.key_bytes, "6");
        assert_eq!(o.key_fnv1a64.as_deref(), Some("85944171f73967e8"));
        assert_eq!(o.value_bytes, "2000000");
        let none = OriginalRecord::of(None, 3);
        assert_eq!((none.key_bytes.as_str(), none.key_fnv1a64), ("0", None));
    }
}
