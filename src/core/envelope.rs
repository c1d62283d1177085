//! A record as it arrived (its envelope), where it came from, and how its input is encoded.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

/// Where a record came from: Kafka topic/partition/offset, or file name and line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

/// Which ring a request goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// From the priority topic: served first.
    High,
    /// Everything else.
    Normal,
}

/// The header in which `sluice replay` counts how often a record was sent back from the
/// dead-letter topic (a decimal number); dead letters of replayed records keep it.
pub const REPLAY_COUNT_HEADER: &str = "sluice-replay-count";

/// How the payload is encoded (the record's `content-type` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    Json,
    FlatBuffers,
}

/// The raw record and its delivery metadata. Every request, valid or not, keeps its envelope
/// until its outcome is emitted: a dead letter carries the original bytes unchanged.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub payload: Bytes,
    pub key: Option<Bytes>,
    pub source: Source,
    pub priority: Priority,
    pub content_type: ContentType,
    /// When Sluice received the record (start of every latency figure).
    pub arrived: Instant,
    /// The record's event time (Kafka timestamp), epoch milliseconds.
    pub event_time_ms: Option<i64>,
    /// Delivery attempts so far (1 on first receipt).
    pub attempts: u32,
    /// How often `sluice replay` has sent this record back from the dead-letter topic (its
    /// `sluice-replay-count` header; 0 for a record never replayed).
    pub replays: u32,
    /// The record's headers, when it had any (kept for its dead letter).
    pub headers: Option<Arc<dyn RecordHeaders>>,
}

/// The headers of the record a request came from, read only when it becomes a dead letter
/// (the Kafka source shares the consumed message, no copy).
pub trait RecordHeaders: Send + Sync {
    /// Calls `f` with each header's name and value (a null value as empty), in order.
    fn visit(&self, f: &mut dyn FnMut(&str, &[u8]));
}

impl fmt::Debug for dyn RecordHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut n = 0;
        self.visit(&mut |_, _| n += 1);
        write!(f, "RecordHeaders({n})")
    }
}

impl Envelope {
    /// A JSON record from `source` that arrived now, with no key, no event time, on its
    /// first delivery. Sources set the other fields they know.
    pub fn new(payload: Bytes, source: Source, priority: Priority) -> Self {
        Envelope {
            payload,
            key: None,
            source,
            priority,
            content_type: ContentType::Json,
            arrived: Instant::now(),
            event_time_ms: None,
            attempts: 1,
            replays: 0,
            headers: None,
        }
    }
}

/// The key a traffic split routes a request by: its record key (when not empty), else its id.
pub fn route_key<'a>(env: &'a Envelope, id: &'a [u8]) -> &'a [u8] {
    match env.key.as_deref() {
        Some(k) if !k.is_empty() => k,
        _ => id,
    }
}

/// A request id: borrowed from the payload when it had no JSON escapes (the common case),
/// owned otherwise.
#[derive(Debug, Clone)]
pub enum IdText {
    Span(Range<u32>),
    Owned(Box<str>),
}

impl IdText {
    /// The id as text, reading from `payload` when borrowed.
    pub fn as_str<'a>(&'a self, payload: &'a [u8]) -> &'a str {
        match self {
            IdText::Span(r) => payload
                .get(r.start as usize..r.end as usize)
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or(""),
            IdText::Owned(s) => s,
        }
    }
}

/// What a request's input is, and so how staging reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// The raw JSON `input` value at `Request::input`.
    Json,
    /// FlatBuffers `Texts`: strings tokenized at staging.
    FbTexts,
    /// FlatBuffers `TokenIds`: pre-tokenized rows copied as they are.
    FbTokens,
    /// FlatBuffers `Features`: feature rows copied as they are.
    FbFeatures,
}

/// Milliseconds since the Unix epoch.
pub fn now_epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
