//! Decoding and validating one record against its model.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::flatbuf;
use super::json::{for_each_feature_row, for_each_text};
use crate::core::{now_epoch_ms, ContentType, Envelope, IdText, InputKind, InvalidInput, Limits};
use crate::core::{ErrorClass, Failure};
use crate::models::wordpiece::TokenScratch;
use crate::models::{LoadedModel, ModelCache, ModelError, ModelInput};
use crate::queue::Request;

/// A JSON string borrowed from the payload when it has no escapes. (serde's own
/// `Option<Cow<str>>` always allocates, which the hot path cannot afford.)
struct JsonStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for JsonStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = JsonStr<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    model: Option<JsonStr<'a>>,
    #[serde(borrow)]
    version: Option<JsonStr<'a>>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
    deadline_ms: Option<u64>,
}

/// Decodes records into requests. One per ingest thread: it owns reusable scratch space, so
/// validating a request allocates nothing in steady state beyond what JSON escapes need.
pub struct Decoder {
    cache: Arc<ModelCache>,
    limits: Limits,
    default_model: Option<String>,
    scratch: TokenScratch,
    row_buf: Vec<f32>,
    seq: u64,
}

fn fail(class: ErrorClass, reason: impl Into<String>) -> Failure {
    Failure::new(class, reason)
}

/// Where `inner` (a sub-slice of `outer`) starts and ends inside `outer`.
fn span_in(outer: &[u8], inner: &[u8]) -> Option<std::ops::Range<u32>> {
    let start = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    let end = start + inner.len();
    if end > outer.len() || end > u32::MAX as usize {
        return None;
    }
    Some(start as u32..end as u32)
}

fn json_failure(e: serde_json::Error) -> Failure {
    use serde_json::error::Category;
    let msg = e.to_string();
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            fail(ErrorClass::Parse, format!("invalid JSON: {msg}"))
        }
        Category::Data => {
            if msg.contains("expected struct RawRequest") {
                fail(ErrorClass::Validation, "request must be a JSON object")
            } else {
                fail(ErrorClass::Validation, msg)
            }
        }
    }
}

impl Decoder {
    /// A decoder resolving models through `cache`. `default_model` serves requests without a
    /// `model` field (batch mode's `--model`); the Kafka path requires the field.
    pub fn new(cache: Arc<ModelCache>, limits: Limits, default_model: Option<String>) -> Self {
        Decoder {
            cache,
            limits,
            default_model,
            scratch: TokenScratch::default(),
            row_buf: Vec::new(),
            seq: 0,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Decodes and validates one record; on failure the envelope comes back with the reason.
    pub fn decode(&mut self, env: Envelope) -> Result<Request, (Envelope, Failure)> {
        match self.decode_inner(&env) {
            Ok(parts) => {
                self.seq += 1;
                Ok(Request {
                    env,
                    id: parts.id,
                    model: parts.model,
                    input: parts.input,
                    input_kind: parts.input_kind,
                    items: parts.items,
                    max_tokens: parts.max_tokens,
                    deadline_ms: parts.deadline_ms,
                    seq: self.seq,
                })
            }
            Err(f) => Err((env, f)),
        }
    }

    fn decode_inner(&mut self, env: &Envelope) -> Result<Parts, Failure> {
        let payload: &[u8] = &env.payload;
        if payload.len() > self.limits.max_record_bytes {
            return Err(fail(
                ErrorClass::TooLarge,
                format!("record is {} bytes, the limit is {} (streaming.inference.limits.maxRecordBytes)", payload.len(), self.limits.max_record_bytes),
            ));
        }
        if env.content_type == ContentType::FlatBuffers {
            return self.decode_flatbuffer(payload);
        }
        let raw: RawRequest = serde_json::from_slice(payload).map_err(json_failure)?;

        let id_raw = raw.id.ok_or_else(|| fail(ErrorClass::Validation, "missing field 'id'"))?;
        let JsonStr(id_text) = serde_json::from_str(id_raw.get())
            .map_err(|_| fail(ErrorClass::Validation, "'id' must be a string"))?;
        self.check_id(&id_text)?;
        let id = match &id_text {
            // Borrowed means no escapes: the text is the raw value without its quotes.
            Cow::Borrowed(_) => {
                let r = span_in(payload, id_raw.get().as_bytes())
                    .ok_or_else(|| fail(ErrorClass::Parse, "id outside payload"))?;
                IdText::Span(r.start + 1..r.end - 1)
            }
            Cow::Owned(s) => IdText::Owned(s.clone().into_boxed_str()),
        };

        let model_name: &str = match (&raw.model, &self.default_model) {
            (Some(m), _) => &m.0,
            (None, Some(d)) => d,
            (None, None) => return Err(fail(ErrorClass::Validation, "missing field 'model'")),
        };
        let model = self.resolve_model(model_name, raw.version.as_ref().map(|v| &*v.0))?;
        check_deadline(raw.deadline_ms)?;

        let input_raw =
            raw.input.ok_or_else(|| fail(ErrorClass::Validation, "missing field 'input'"))?;
        let input = span_in(payload, input_raw.get().as_bytes())
            .ok_or_else(|| fail(ErrorClass::Parse, "input outside payload"))?;
        let (items, max_tokens) = self.check_input(&model, input_raw.get().as_bytes())?;
        Ok(Parts {
            id,
            model,
            input,
            input_kind: InputKind::Json,
            items,
            max_tokens,
            deadline_ms: raw.deadline_ms,
        })
    }

    /// The FlatBuffers path (`ingest::flatbuf`): same envelope checks in the same order.
    fn decode_flatbuffer(&mut self, payload: &[u8]) -> Result<Parts, Failure> {
        let fb = flatbuf::parse(payload).map_err(|e| fail(ErrorClass::Parse, e))?;
        self.check_id(fb.id())?;
        let model = self.resolve_model(fb.model(), fb.version())?;
        check_deadline(fb.deadline_ms())?;
        let (input_kind, items, longest) =
            flatbuf::check_input(&fb, &model, &self.limits, &mut self.scratch)?;
        self.check_padded(items, longest)?;
        Ok(Parts {
            id: IdText::Span(fb.id_span()),
            model,
            input: 0..payload.len() as u32,
            input_kind,
            items: items as u32,
            max_tokens: longest as u32,
            deadline_ms: fb.deadline_ms(),
        })
    }

    fn check_id(&self, id: &str) -> Result<(), Failure> {
        if id.is_empty() {
            return Err(fail(ErrorClass::Validation, "'id' must not be empty"));
        }
        if id.len() > self.limits.max_id_bytes {
            return Err(fail(
                ErrorClass::Validation,
                format!("'id' is {} bytes, at most {} allowed", id.len(), self.limits.max_id_bytes),
            ));
        }
        Ok(())
    }

    fn resolve_model(
        &self,
        model_name: &str,
        version: Option<&str>,
    ) -> Result<Arc<LoadedModel>, Failure> {
        self.cache.get(model_name, version).map_err(|e| match e {
            ModelError::UnknownModel { .. } | ModelError::InvalidName(_) => {
                fail(ErrorClass::UnknownModel, e.to_string())
            }
            other => fail(
                ErrorClass::Inference,
                format!("model '{model_name}' could not be loaded: {other}"),
            ),
        })
    }

    /// A request must fit in one batch's padded-token budget.
    fn check_padded(&self, items: usize, longest: usize) -> Result<(), Failure> {
        let padded = items * longest;
        if padded > self.limits.caps.max_tokens {
            return Err(fail(
                ErrorClass::TooLarge,
                format!("request needs {padded} padded tokens ({items} inputs × {longest}), a batch holds {} (streaming.inference.batching.maxBatchTokens)", self.limits.caps.max_tokens),
            ));
        }
        Ok(())
    }

    /// Validates the input's shape against the model; returns (items, longest in tokens).
    fn check_input(&mut self, model: &LoadedModel, raw: &[u8]) -> Result<(u32, u32), Failure> {
        let lim = &self.limits;
        let max_items = lim.max_items.min(lim.caps.max_rows);
        let (items, longest) = match &model.input {
            ModelInput::Text { tokenizer, max_seq_len } => {
                let mut longest = 0usize;
                let scratch = &mut self.scratch;
                let n = for_each_text(raw, |i, text| {
                    if i >= max_items {
                        return Err(format!(
                            "too_large: more than {max_items} inputs in one request"
                        )
                        .into());
                    }
                    let t = tokenizer.count_tokens(text, *max_seq_len, scratch)?;
                    longest = longest.max(t);
                    Ok(())
                })
                .map_err(classify_input_error)?;
                (n, longest)
            }
            ModelInput::Features { width } => {
                if self.row_buf.capacity() < *width {
                    self.row_buf.reserve(*width);
                }
                let n = for_each_feature_row(raw, *width, &mut self.row_buf, |i, _| {
                    if i >= max_items {
                        return Err(format!(
                            "too_large: more than {max_items} inputs in one request"
                        )
                        .into());
                    }
                    Ok(())
                })
                .map_err(classify_input_error)?;
                (n, 1)
            }
        };
        if items == 0 {
            return Err(fail(ErrorClass::Validation, "input: empty array"));
        }
        self.check_padded(items, longest)?;
        Ok((items as u32, longest as u32))
    }
}

fn check_deadline(deadline_ms: Option<u64>) -> Result<(), Failure> {
    if let Some(d) = deadline_ms {
        if d < now_epoch_ms() {
            return Err(fail(
                ErrorClass::Expired,
                format!("deadline_ms {d} had already passed on arrival"),
            ));
        }
    }
    Ok(())
}

fn classify_input_error(e: InvalidInput) -> Failure {
    let msg = e.0;
    match msg.find("too_large: ") {
        Some(i) => fail(ErrorClass::TooLarge, msg[i + "too_large: ".len()..].to_string()),
        None => fail(ErrorClass::Validation, msg),
    }
}

struct Parts {
    id: IdText,
    model: Arc<LoadedModel>,
    input: std::ops::Range<u32>,
    input_kind: InputKind,
    items: u32,
    max_tokens: u32,
    deadline_ms: Option<u64>,
}
