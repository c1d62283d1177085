//! The request as it travels through the rings, batcher and lanes.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::models::LoadedModel;

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

/// A validated request, ready to queue.
#[derive(Debug)]
pub struct Request {
    pub env: Envelope,
    pub id: IdText,
    pub model: Arc<LoadedModel>,
    /// Byte range of the raw `input` JSON value inside the payload (JSON), or the whole
    /// payload (FlatBuffers: staging re-reads it through `ingest::flatbuf`).
    pub input: Range<u32>,
    /// How the input is encoded.
    pub input_kind: InputKind,
    /// Inputs in the request (rows it adds to a batch).
    pub items: u32,
    /// Longest input in tokens, specials included (1 for tabular models).
    pub max_tokens: u32,
    /// Epoch milliseconds after which the request is `expired` instead of computed.
    pub deadline_ms: Option<u64>,
    /// Arrival order, used by the batcher to find the oldest request.
    pub seq: u64,
}

impl Request {
    /// The request id.
    pub fn id(&self) -> &str {
        self.id.as_str(&self.env.payload)
    }

    /// The raw JSON of `input` (the whole FlatBuffer for FlatBuffers requests).
    pub fn raw_input(&self) -> &[u8] {
        &self.env.payload[self.input.start as usize..self.input.end as usize]
    }

    /// Padded tokens this request would add to a batch of sequence length `seq`.
    pub fn cost_at(&self, seq: u32) -> u64 {
        self.items as u64 * seq as u64
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
