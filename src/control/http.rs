//! What every endpoint's handler shares: JSON responses and errors, reading a body's string
//! field, and loading a model version on the blocking pool.

use std::time::Instant;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::{json, Map, Value};

use super::state::Control;
use crate::models::repository::valid_component;
use crate::models::ModelError;

/// A response of the control plane.
pub(super) type Resp = Response<Full<Bytes>>;

pub(super) fn respond(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub(super) fn json_resp(status: StatusCode, v: &Value) -> Resp {
    let mut body = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    body.push(b'\n');
    respond(status, "application/json", body)
}

pub(super) fn error(status: StatusCode, reason: impl Into<String>) -> Resp {
    json_resp(status, &json!({"error": reason.into(), "status": status.as_u16()}))
}

/// The optional string field `key` of a body.
pub(super) fn string_field(
    body: &Option<Map<String, Value>>,
    key: &str,
) -> Result<Option<String>, Resp> {
    match body.as_ref().and_then(|m| m.get(key)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(_) => {
            Err(error(StatusCode::BAD_REQUEST, format!("'{key}' must be a non-empty string")))
        }
    }
}

pub(super) fn round(v: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (v * f).round() / f
}

pub(super) fn model_error(e: &ModelError) -> Resp {
    let status = match e {
        ModelError::UnknownModel { .. } => StatusCode::NOT_FOUND,
        ModelError::InvalidName(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

pub(super) fn check_name(name: &str) -> Result<(), Resp> {
    if valid_component(name) {
        Ok(())
    } else {
        Err(model_error(&ModelError::InvalidName(name.to_string())))
    }
}

/// Loads and warms up one version (outside the cache's lock: other models keep serving).
pub(super) async fn load_version(ctl: &Control, name: &str, version: &str) -> Result<Value, Resp> {
    let (cache, n, v) = (ctl.cache.clone(), name.to_string(), version.to_string());
    let loaded =
        tokio::task::spawn_blocking(move || cache.load_at(&n, &v, Instant::now())).await.map_err(
            |e| error(StatusCode::INTERNAL_SERVER_ERROR, format!("model load panicked: {e}")),
        )?;
    let m = loaded.map_err(|e| model_error(&e))?;
    Ok(json!({
        "name": &*m.name,
        "version": &*m.version,
        "kind": m.kind.as_str(),
        "load_ms": round(m.load_time.as_secs_f64() * 1e3, 3),
        "warmup_ms": round(m.warmup_time.as_secs_f64() * 1e3, 3),
    }))
}
