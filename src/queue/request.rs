//! The validated request as it travels through the rings, the batcher and a lane.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use crate::core::{route_key, BatchOutput, Envelope, Failure, IdText, InputKind, Outcome};
use crate::models::LoadedModel;

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
    /// The version was chosen by the model's routing (serving version or split), not named
    /// by the request: a routing change may send the request to another version while it
    /// waits (parked behind an open breaker).
    pub routed: bool,
}

impl Request {
    /// The request id.
    pub fn id(&self) -> &str {
        self.id.as_str(&self.env.payload)
    }

    /// The key the model's traffic split routes it by: its record key, else its id.
    pub fn route_key(&self) -> &[u8] {
        route_key(&self.env, self.id().as_bytes())
    }

    /// The raw JSON of `input` (the whole FlatBuffer for FlatBuffers requests).
    pub fn raw_input(&self) -> &[u8] {
        &self.env.payload[self.input.start as usize..self.input.end as usize]
    }
}

impl Request {
    /// Its outcome when it fails after being queued (expired, or its batch failed).
    pub fn into_failed(self, failure: Failure, started: Option<Instant>, infer_us: u64) -> Outcome {
        let model = self.model.id();
        Outcome::failed(self.env, self.id, model, failure, started, infer_us)
    }

    /// Its outcome when its batch computed it: rows `first_row..first_row + items` of `output`.
    pub fn into_success(
        self,
        output: Arc<BatchOutput>,
        first_row: u32,
        batch_size: u32,
        started: Instant,
        infer_us: u64,
    ) -> Outcome {
        let (model, rows) = (self.model.id(), self.items);
        Outcome::success(
            self.env, self.id, model, output, first_row, rows, batch_size, started, infer_us,
        )
    }
}
