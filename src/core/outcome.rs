//! One outcome per request: a result or a failure, with its timings.

use std::sync::Arc;
use std::time::Instant;

use super::envelope::{Envelope, IdText};
use super::output::BatchOutput;

/// Why a request became a dead letter (the `sluice.error.class` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Not decodable: bad JSON, bad UTF-8, bad FlatBuffer.
    Parse,
    /// Decodable, but a field is missing or has the wrong type or shape.
    Validation,
    /// The model or version does not exist.
    UnknownModel,
    /// Bigger than a configured limit.
    TooLarge,
    /// Its deadline (or the late-data watermark) passed before it was computed.
    Expired,
    /// The model failed on it, after retries.
    Inference,
    /// Its model version's circuit breaker is open (`whenOpen: dead_letter`): not computed.
    CircuitOpen,
}

impl ErrorClass {
    /// How many classes there are (the size of every per-class counter array).
    pub const COUNT: usize = 7;

    /// Every class, in [`index`](Self::index) order.
    pub const ALL: [ErrorClass; Self::COUNT] = [
        ErrorClass::Parse,
        ErrorClass::Validation,
        ErrorClass::UnknownModel,
        ErrorClass::TooLarge,
        ErrorClass::Expired,
        ErrorClass::Inference,
        ErrorClass::CircuitOpen,
    ];

    /// This class's position in [`ALL`](Self::ALL) (and in per-class counter arrays).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Parse => "parse",
            ErrorClass::Validation => "validation",
            ErrorClass::UnknownModel => "unknown_model",
            ErrorClass::TooLarge => "too_large",
            ErrorClass::Expired => "expired",
            ErrorClass::Inference => "inference",
            ErrorClass::CircuitOpen => "circuit_open",
        }
    }
}

/// The longest failure reason, in bytes. Reasons quote what they are about (a model name,
/// a header value, the parser's view of the input), and all of that comes from the record:
/// the cap keeps a hostile record from making its dead letter (or a log line) arbitrarily
/// large.
pub const MAX_REASON_BYTES: usize = 1024;

/// A failure with its class and a reason an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub class: ErrorClass,
    /// At most [`MAX_REASON_BYTES`] (plus a note saying how much was cut).
    pub reason: String,
}

impl Failure {
    /// A failure of `class` with `reason`, cut to [`MAX_REASON_BYTES`].
    pub fn new(class: ErrorClass, reason: impl Into<String>) -> Self {
        Failure { class, reason: bounded_reason(reason.into()) }
    }
}

/// `reason` when it is at most [`MAX_REASON_BYTES`] long; else its first
/// [`MAX_REASON_BYTES`] bytes (at a character boundary) and a note of the full length.
pub fn bounded_reason(mut reason: String) -> String {
    if reason.len() <= MAX_REASON_BYTES {
        return reason;
    }
    let full = reason.len();
    let mut cut = MAX_REASON_BYTES;
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    reason.truncate(cut);
    reason.push_str(&format!("… [reason cut to {cut} of {full} bytes]"));
    reason
}

/// Why an input is not acceptable, in words an operator can act on (it becomes the reason of
/// a `parse` or `validation` dead letter). The readers of request inputs (JSON, FlatBuffers,
/// tokenizers) return it; the decoder gives it its class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

impl InvalidInput {
    /// An error saying `why`.
    pub fn new(why: impl Into<String>) -> Self {
        InvalidInput(why.into())
    }
}

impl From<String> for InvalidInput {
    fn from(why: String) -> Self {
        InvalidInput(why)
    }
}

impl From<&str> for InvalidInput {
    fn from(why: &str) -> Self {
        InvalidInput(why.to_owned())
    }
}

impl From<InvalidInput> for String {
    fn from(e: InvalidInput) -> Self {
        e.0
    }
}

/// Microsecond timings of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// Arrival to the start of its batch.
    pub queue_us: u64,
    /// Its batch's staging and model time.
    pub infer_us: u64,
    /// Arrival to outcome.
    pub total_us: u64,
}

/// What happened to a request.
#[derive(Debug)]
pub enum Verdict {
    /// Computed: rows `first_row..first_row + rows` of the batch output are its outputs.
    Success { output: Arc<BatchOutput>, first_row: u32, rows: u32, batch_size: u32 },
    /// Not computed, or failed.
    Failure(Failure),
}

/// Which model version computed (or was to compute) a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelId {
    pub name: Arc<str>,
    pub version: Arc<str>,
}

/// The single outcome of one record.
#[derive(Debug)]
pub struct Outcome {
    pub env: Envelope,
    pub id: Option<IdText>,
    /// The model version the request was resolved to (`None` when it never got that far).
    pub model: Option<ModelId>,
    pub verdict: Verdict,
    pub timings: Timings,
}

fn us(d: std::time::Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

impl Outcome {
    /// A failure for a record that never became a request.
    pub fn rejected(env: Envelope, failure: Failure) -> Self {
        let total = us(env.arrived.elapsed());
        Outcome {
            env,
            id: None,
            model: None,
            verdict: Verdict::Failure(failure),
            timings: Timings { queue_us: 0, infer_us: 0, total_us: total },
        }
    }

    /// A failure for a request that was queued (expired, or its batch failed): `started` is
    /// when its batch started, if it got one.
    pub fn failed(
        env: Envelope,
        id: IdText,
        model: ModelId,
        failure: Failure,
        started: Option<Instant>,
        infer_us: u64,
    ) -> Self {
        let now = Instant::now();
        let queue_us = us(started.unwrap_or(now).saturating_duration_since(env.arrived));
        let total_us = us(now.saturating_duration_since(env.arrived));
        Outcome {
            id: Some(id),
            model: Some(model),
            env,
            verdict: Verdict::Failure(failure),
            timings: Timings { queue_us, infer_us, total_us },
        }
    }

    /// A computed result: `rows` rows of `output` from `first_row` on are this request's.
    #[allow(clippy::too_many_arguments)]
    pub fn success(
        env: Envelope,
        id: IdText,
        model: ModelId,
        output: Arc<BatchOutput>,
        first_row: u32,
        rows: u32,
        batch_size: u32,
        started: Instant,
        infer_us: u64,
    ) -> Self {
        let now = Instant::now();
        let timings = Timings {
            queue_us: us(started.saturating_duration_since(env.arrived)),
            infer_us,
            total_us: us(now.saturating_duration_since(env.arrived)),
        };
        Outcome {
            id: Some(id),
            model: Some(model),
            env,
            verdict: Verdict::Success { output, first_row, rows, batch_size },
            timings,
        }
    }

    /// The request id, if the record got far enough to have one.
    pub fn id(&self) -> Option<&str> {
        self.id.as_ref().map(|i| i.as_str(&self.env.payload))
    }

    /// The failure, if any.
    pub fn failure(&self) -> Option<&Failure> {
        match &self.verdict {
            Verdict::Failure(f) => Some(f),
            Verdict::Success { .. } => None,
        }
    }
}

/// The message of a panic payload (`panic!` with a literal or a formatted string).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_bounded_at_a_character_boundary_and_say_so() {
        let short = Failure::new(ErrorClass::UnknownModel, "model \"m\" is not in the repository");
        assert_eq!(short.reason, "model \"m\" is not in the repository");

        // A 1 MB model name quoted in a reason, in two-byte characters so that the cut
        // falls inside one.
        let name = "é".repeat(500_000);
        let full = format!("model \"{name}\" is unknown");
        let full_len = full.len();
        let f = Failure::new(ErrorClass::UnknownModel, full);
        assert!(f.reason.len() <= MAX_REASON_BYTES + 64, "{} bytes", f.reason.len());
        assert!(f.reason.starts_with("model \"éé"));
        assert!(
            f.reason.ends_with(&format!("[reason cut to 1023 of {full_len} bytes]")),
            "{}",
            f.reason.chars().rev().take(60).collect::<String>().chars().rev().collect::<String>()
        );
        assert_eq!(bounded_reason("x".repeat(MAX_REASON_BYTES)).len(), MAX_REASON_BYTES);
    }
}
