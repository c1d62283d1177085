//! Decoding and validating one record against its model.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::flatbuf;
use super::json::{for_each_feature_row, for_each_text};
use crate::core::{now_epoch_ms, ContentType, Envelope, IdText, InputKind, InvalidInput, Limits};
use crate::core::{route_key, ErrorClass, Failure};
use crate::models::cache::Lookup;
use crate::models::wordpiece::TokenScratch;
use crate::models::ModelLoader;
use crate::models::{LoadDone, LoadedModel, ModelCache, ModelError, ModelInput, ModelKey};
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
///
/// A record naming a model version that is not loaded either loads it inline (the default:
/// batch mode, tests) or, with [`with_background_loads`](Self::with_background_loads), asks
/// the loader thread and hands the record back to wait ([`Undecoded::Waiting`]).
pub struct Decoder {
    cache: Arc<ModelCache>,
    limits: Limits,
    default_model: Option<Arc<str>>,
    scratch: TokenScratch,
    row_buf: Vec<f32>,
    seq: u64,
    /// Background loads (the streaming path); `None` loads inline.
    loader: Option<ModelLoader>,
    /// The model a finished load handed over, used while re-decoding the records that waited
    /// for it (the cache may have evicted it again already).
    preloaded: Option<Arc<LoadedModel>>,
    /// Finished loads seen while waiting for another one, not yet handed out.
    unclaimed: Vec<LoadDone>,
}

/// A record that did not become a request.
#[derive(Debug)]
pub enum Undecoded {
    /// Invalid (or its model cannot be served): it gets this dead letter.
    Rejected(Envelope, Failure),
    /// Its model version is being loaded in the background: decode it again with
    /// [`Decoder::decode_loaded`] once the load of this key is done.
    Waiting(Envelope, ModelKey),
}

/// Why decoding stopped short of a request.
enum Stop {
    Fail(Failure),
    Wait(ModelKey),
}

impl From<Failure> for Stop {
    fn from(f: Failure) -> Self {
        Stop::Fail(f)
    }
}

/// The dead letter of a record whose model cannot be served.
fn model_failure(model_name: &str, e: ModelError) -> Failure {
    match e {
        ModelError::UnknownModel { .. } | ModelError::InvalidName(_) => {
            fail(ErrorClass::UnknownModel, e.to_string())
        }
        other => fail(
            ErrorClass::Inference,
            format!("model '{model_name}' could not be loaded: {other}"),
        ),
    }
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
    /// The model cache it resolves models through.
    pub fn cache(&self) -> &Arc<ModelCache> {
        &self.cache
    }

    /// A decoder resolving models through `cache`. `default_model` serves requests without a
    /// `model` field (batch mode's `--model`); the Kafka path requires the field.
    pub fn new(cache: Arc<ModelCache>, limits: Limits, default_model: Option<String>) -> Self {
        Decoder {
            cache,
            limits,
            default_model: default_model.map(Into::into),
            scratch: TokenScratch::default(),
            row_buf: Vec::new(),
            seq: 0,
            loader: None,
            preloaded: None,
            unclaimed: Vec::new(),
        }
    }

    /// Loads models on a loader thread instead of inline (starts the thread; it stops and is
    /// joined when the decoder drops). See [`try_decode`](Self::try_decode).
    pub fn with_background_loads(mut self) -> std::io::Result<Self> {
        self.loader = Some(ModelLoader::start(self.cache.clone())?);
        Ok(self)
    }

    /// Loads that finished since the last call; decode the records that waited for each
    /// with [`decode_loaded`](Self::decode_loaded).
    pub fn loads_finished(&mut self) -> Vec<LoadDone> {
        let mut done = std::mem::take(&mut self.unclaimed);
        if let Some(l) = &mut self.loader {
            done.extend(l.finished());
        }
        done
    }

    /// Waits up to `timeout` for the next finished load (`None` without background loads).
    pub fn wait_for_load(&mut self, timeout: std::time::Duration) -> Option<LoadDone> {
        if let Some(d) = self.unclaimed.pop() {
            return Some(d);
        }
        self.loader.as_mut()?.wait(timeout)
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Decodes and validates one record; on failure the envelope comes back with the reason.
    /// A model that is not loaded is loaded first (with background loads: waits for it).
    pub fn decode(&mut self, env: Envelope) -> Result<Request, (Envelope, Failure)> {
        match self.try_decode(env) {
            Ok(req) => Ok(req),
            Err(Undecoded::Rejected(env, f)) => Err((env, f)),
            Err(Undecoded::Waiting(env, key)) => {
                let mut others = Vec::new();
                let done = self.loader.as_mut().and_then(|l| l.wait_for(&key, &mut others));
                self.unclaimed.extend(others);
                let Some(done) = done else {
                    let f = fail(
                        ErrorClass::Inference,
                        format!("model {key} could not be loaded: the loader stopped"),
                    );
                    return Err((env, f));
                };
                match self.decode_loaded(env, &done) {
                    Ok(req) => Ok(req),
                    Err(Undecoded::Rejected(env, f)) => Err((env, f)),
                    Err(Undecoded::Waiting(env, key)) => {
                        let f =
                            fail(ErrorClass::Inference, format!("model {key} is still not loaded"));
                        Err((env, f))
                    }
                }
            }
        }
    }

    /// Decodes a record that waited for `done`'s load: with the model it loaded, or its dead
    /// letter if the load failed. (It can wait again if it now needs another version: the
    /// serving version changed meanwhile.)
    pub fn decode_loaded(&mut self, env: Envelope, done: &LoadDone) -> Result<Request, Undecoded> {
        match &done.result {
            Ok(model) => {
                self.preloaded = Some(model.clone());
                let r = self.try_decode(env);
                self.preloaded = None;
                r
            }
            Err(reason) => {
                let key = &done.key;
                let f = fail(
                    ErrorClass::Inference,
                    format!(
                        "model '{}' version '{}' could not be loaded: {reason}",
                        key.name, key.version
                    ),
                );
                Err(Undecoded::Rejected(env, f))
            }
        }
    }

    /// Decodes and validates one record without waiting for a model load: a record whose
    /// model version is being loaded in the background comes back as
    /// [`Undecoded::Waiting`].
    pub fn try_decode(&mut self, env: Envelope) -> Result<Request, Undecoded> {
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
                    routed: parts.routed,
                })
            }
            Err(Stop::Fail(f)) => Err(Undecoded::Rejected(env, f)),
            Err(Stop::Wait(key)) => Err(Undecoded::Waiting(env, key)),
        }
    }

    fn decode_inner(&mut self, env: &Envelope) -> Result<Parts, Stop> {
        let payload: &[u8] = &env.payload;
        if payload.len() > self.limits.max_record_bytes {
            return Err(fail(
                ErrorClass::TooLarge,
                format!("record is {} bytes, the limit is {} (streaming.inference.limits.maxRecordBytes)", payload.len(), self.limits.max_record_bytes),
            ).into());
        }
        if env.content_type == ContentType::FlatBuffers {
            return self.decode_flatbuffer(env);
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

        let default = if raw.model.is_none() { self.default_model.clone() } else { None };
        let model_name: &str = match (&raw.model, &default) {
            (Some(m), _) => &m.0,
            (None, Some(d)) => d,
            (None, None) => {
                return Err(fail(ErrorClass::Validation, "missing field 'model'").into())
            }
        };
        let route = route_key(env, id_text.as_bytes());
        let model = self.resolve_model(model_name, raw.version.as_ref().map(|v| &*v.0), route)?;
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
            routed: raw.version.is_none(),
        })
    }

    /// The FlatBuffers path (`ingest::flatbuf`): same envelope checks in the same order.
    fn decode_flatbuffer(&mut self, env: &Envelope) -> Result<Parts, Stop> {
        let payload: &[u8] = &env.payload;
        let fb = flatbuf::parse(payload).map_err(|e| fail(ErrorClass::Parse, e))?;
        self.check_id(fb.id())?;
        let model =
            self.resolve_model(fb.model(), fb.version(), route_key(env, fb.id().as_bytes()))?;
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
            routed: fb.version().is_none(),
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

    /// The model version for a request of `model_name`: `version`, else the version its
    /// routing key `route` gets from the model's traffic split, else the serving version.
    fn resolve_model(
        &mut self,
        model_name: &str,
        version: Option<&str>,
        route: &[u8],
    ) -> Result<Arc<LoadedModel>, Stop> {
        let route = Some(route);
        if let Some(m) = &self.preloaded {
            if &*m.name == model_name && version.is_none_or(|v| *m.version == *v) {
                return Ok(m.clone());
            }
        }
        let Some(loader) = &mut self.loader else {
            return self
                .cache
                .get_routed(model_name, version, route, std::time::Instant::now())
                .map_err(|e| model_failure(model_name, e).into());
        };
        match self.cache.lookup_routed(model_name, version, route, std::time::Instant::now()) {
            Lookup::Ready(m) => Ok(m),
            Lookup::Failed(e) => Err(model_failure(model_name, e).into()),
            Lookup::Missing { version } => {
                let key = ModelKey { name: model_name.into(), version };
                loader.request(&key);
                Err(Stop::Wait(key))
            }
        }
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
    routed: bool,
}
