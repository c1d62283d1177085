//! The endpoints (README "Operating Sluice (control plane)" is their contract).
//!
//! Every response is JSON except `GET /metrics` (Prometheus text). Mutating calls (every
//! `POST`) need `Authorization: Bearer <control.token>` when a token is configured; their
//! bodies are optional JSON objects of at most [`MAX_BODY_BYTES`](super::state::MAX_BODY_BYTES).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_LENGTH, WWW_AUTHENTICATE};
use hyper::{Method, Request, StatusCode};
use serde_json::{json, Map, Value};
use subtle::ConstantTimeEq;

use super::http::{
    check_name, error, json_resp, load_version, model_error, respond, round, string_field, Resp,
};
use super::observe::{self, LagSample};
use super::rollout;
use super::state::{self, Control, MAX_BODY_BYTES};
use crate::core::ErrorClass;

/// Serves one request; never fails (errors are JSON responses).
pub async fn handle(ctl: Arc<Control>, req: Request<Incoming>, probes_only: bool) -> Resp {
    let is_probe = req.method() == Method::GET
        && (req.uri().path().starts_with("/health/") || req.uri().path() == "/metrics");
    let resp = if probes_only && !is_probe {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "every control connection is taken; this one answers only /health/* and /metrics: retry",
        )
    } else {
        route(&ctl, req).await
    };
    ctl.metrics.control_requests.with_label_values(&[resp.status().as_str()]).inc();
    resp
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Live,
    Ready,
    Prometheus,
    Status,
    Metrics,
    Health,
    Start,
    Stop,
    Restart,
    Models,
    Load(&'a str),
    Unload(&'a str),
    Serving(&'a str),
    Traffic(&'a str),
}

impl Route<'_> {
    fn mutating(self) -> bool {
        matches!(
            self,
            Route::Start
                | Route::Stop
                | Route::Restart
                | Route::Load(_)
                | Route::Unload(_)
                | Route::Serving(_)
                | Route::Traffic(_)
        )
    }
}

fn find_route(path: &str) -> Option<Route<'_>> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    Some(match segs.as_slice() {
        ["health", "live"] => Route::Live,
        ["health", "ready"] => Route::Ready,
        ["metrics"] => Route::Prometheus,
        ["batch-inference", "streaming", "status"] => Route::Status,
        ["batch-inference", "streaming", "metrics"] => Route::Metrics,
        ["batch-inference", "streaming", "health"] => Route::Health,
        ["batch-inference", "streaming", "start"] => Route::Start,
        ["batch-inference", "streaming", "stop"] => Route::Stop,
        ["batch-inference", "streaming", "restart"] => Route::Restart,
        ["batch-inference", "models"] => Route::Models,
        ["batch-inference", "models", name, "load"] => Route::Load(name),
        ["batch-inference", "models", name, "unload"] => Route::Unload(name),
        ["batch-inference", "models", name, "serving"] => Route::Serving(name),
        ["batch-inference", "models", name, "traffic"] => Route::Traffic(name),
        _ => return None,
    })
}

/// Whether the request carries the configured bearer token (compared in constant time).
fn authorized(ctl: &Control, req: &Request<Incoming>) -> bool {
    let Some(token) = &ctl.token else { return true };
    let Some(h) = req.headers().get(AUTHORIZATION) else { return false };
    let h = h.as_bytes();
    if h.len() < 7 || !h[..7].eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    let given = h[7..].trim_ascii();
    given.ct_eq(token.as_slice()).into()
}

/// Time a client has to send a request body, from the end of its headers.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The body as a JSON object (`None` when empty), or the error response.
async fn json_body(req: Request<Incoming>) -> Result<Option<Map<String, Value>>, Resp> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {MAX_BODY_BYTES} bytes"),
        ));
    }
    let read = tokio::time::timeout(
        BODY_READ_TIMEOUT,
        Limited::new(req.into_body(), MAX_BODY_BYTES).collect(),
    );
    let Ok(read) = read.await else {
        return Err(error(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {} s", BODY_READ_TIMEOUT.as_secs()),
        ));
    };
    let bytes = match read {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body over {MAX_BODY_BYTES} bytes"),
            ))
        }
        Err(e) => {
            return Err(error(StatusCode::BAD_REQUEST, format!("reading the request body: {e}")))
        }
    };
    if bytes.trim_ascii().is_empty() {
        return Ok(None);
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err(error(StatusCode::BAD_REQUEST, "the request body must be a JSON object")),
        Err(e) => {
            Err(error(StatusCode::BAD_REQUEST, format!("invalid JSON in the request body: {e}")))
        }
    }
}

async fn route(ctl: &Arc<Control>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let Some(route) = find_route(&path) else {
        return error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}"));
    };
    let allowed = if route.mutating() { Method::POST } else { Method::GET };
    if req.method() != allowed {
        let mut r = error(StatusCode::METHOD_NOT_ALLOWED, format!("{path} accepts {allowed} only"));
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static(if route.mutating() { "POST" } else { "GET" }));
        return r;
    }
    if route.mutating() {
        if !authorized(ctl, &req) {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "this call needs Authorization: Bearer <control.token>",
            );
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"sluice\""));
            return r;
        }
        let body = match json_body(req).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        return match route {
            Route::Start => start(ctl).await,
            Route::Stop => stop(ctl).await,
            Route::Restart => restart(ctl).await,
            Route::Load(name) => load(ctl, name, &body).await,
            Route::Unload(name) => unload(ctl, name, &body),
            Route::Serving(name) => rollout::serving(ctl, name, &body).await,
            Route::Traffic(name) => rollout::traffic(ctl, name, &body).await,
            _ => error(StatusCode::INTERNAL_SERVER_ERROR, "unrouted"),
        };
    }
    match route {
        Route::Live => live(ctl),
        Route::Ready | Route::Health => {
            let checks = state::checks(ctl).await;
            let (ok, body) = observe::health_body(&checks);
            json_resp(if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, &body)
        }
        Route::Prometheus => {
            state::refresh(ctl);
            match ctl.metrics.render_text() {
                Ok(text) => respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    text.into_bytes(),
                ),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        Route::Status => json_resp(StatusCode::OK, &status(ctl)),
        Route::Metrics => json_resp(StatusCode::OK, &metrics(ctl)),
        Route::Models => models(ctl),
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, "unrouted"),
    }
}

// ---------------------------------------------------------------------------------------------
// Pipeline
// ---------------------------------------------------------------------------------------------

/// `GET /batch-inference/streaming/status`.
pub(crate) fn status(ctl: &Control) -> Value {
    let (shadow_results, shadow_dropped, shadow_failed) = ctl.metrics.outcomes.shadow.totals();
    let info = ctl.lifecycle.info();
    let loaded: Vec<Value> =
        ctl.cache.loaded().into_iter().map(|(n, v)| json!({"name": n, "version": v})).collect();
    let (assigned, paused, counters, lag, circuits, lanes) = match ctl.lifecycle.pipeline() {
        Some((generation, p)) => {
            let lanes: Vec<Value> = p
                .engine_stats
                .lane_states()
                .into_iter()
                .enumerate()
                .map(|(i, s)| json!({"lane": i, "state": s.as_str()}))
                .collect();
            let circuits = p
                .circuits()
                .map(|c| serde_json::to_value(c.views()).unwrap_or(Value::Null))
                .unwrap_or_else(|| json!([]));
            let mut assigned: Vec<(String, i32)> = p.source().assigned.lock().clone();
            assigned.sort();
            let assigned: Vec<Value> =
                assigned.into_iter().map(|(t, n)| json!({"topic": t, "partition": n})).collect();
            let paused = p.source().paused.load(Ordering::Relaxed);
            (
                assigned,
                paused,
                serde_json::to_value(p.report()).unwrap_or(Value::Null),
                ctl.observer.lag(generation).to_json(),
                circuits,
                lanes,
            )
        }
        None => {
            (Vec::new(), false, Value::Null, LagSample::default().to_json(), json!([]), Vec::new())
        }
    };
    json!({
        "state": info.state.as_str(),
        "since": humantime::format_rfc3339_millis(info.since).to_string(),
        "since_ms": info.since.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        "for_seconds": round(info.since_instant.elapsed().as_secs_f64(), 3),
        "cause": info.cause,
        "generation": info.generation,
        "guarantee": guarantee(ctl),
        "assigned_partitions": assigned,
        "paused": paused,
        "lag": lag,
        "models_loaded": loaded,
        "circuits": circuits,
        "lanes": lanes,
        "rollout": {
            "control_topic": ctl.cfg.kafka.topics.streaming.control,
            "following": ctl.rollout.get().is_some(),
            "applied": ctl.rollout.get().map_or(0, |r| r.applied.load(Ordering::Relaxed)),
            "canaries": ctl.cache.canaries().iter()
                .map(|(n, c)| (n.clone(), rollout::canary_json(c)))
                .collect::<Map<String, Value>>(),
            "shadow": {
                "topic": ctl.cfg.kafka.topics.streaming.shadow,
                "results": shadow_results,
                "dropped": shadow_dropped,
                "failed": shadow_failed,
            },
        },
        "counters": counters,
        "last_stop": info.last_stop,
    })
}

/// The delivery guarantee in force, and in `exactly_once` its transactions' figures.
fn guarantee(ctl: &Control) -> Value {
    let processing = &ctl.cfg.streaming.inference.processing;
    let mode = processing.guarantee.as_str();
    if processing.guarantee != crate::config::DeliveryGuarantee::ExactlyOnce {
        return json!({"mode": mode});
    }
    let (committed, aborted, dropped) = ctl.lifecycle.pipeline().map_or((0, 0, 0), |(_, p)| {
        let s = &p.emit_stats;
        let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        (r(&s.txn_committed), r(&s.txn_aborted), r(&s.txn_dropped))
    });
    json!({
        "mode": mode,
        "transactional_id": crate::kafka::client::transactional_id(&ctl.cfg),
        "commit_interval_ms": processing.transactions.commit_interval_ms,
        "max_records": processing.transactions.max_records,
        "transactions_committed": committed,
        "transactions_aborted": aborted,
        "outcomes_dropped_on_revocation": dropped,
        "restarts_after_abort": ctl.lifecycle.info().restarts_after_abort,
    })
}

async fn start(ctl: &Control) -> Resp {
    match ctl.lifecycle.start().await {
        Ok(changed) => {
            json_resp(StatusCode::OK, &json!({"changed": changed, "status": status(ctl)}))
        }
        Err(e) => json_resp(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"changed": true, "error": e.cause, "status": status(ctl)}),
        ),
    }
}

async fn stop(ctl: &Control) -> Resp {
    let (changed, report) = ctl.lifecycle.stop().await;
    json_resp(StatusCode::OK, &json!({"changed": changed, "report": report, "status": status(ctl)}))
}

async fn restart(ctl: &Control) -> Resp {
    match ctl.lifecycle.restart().await {
        Ok(report) => json_resp(
            StatusCode::OK,
            &json!({"changed": true, "report": report, "status": status(ctl)}),
        ),
        Err(e) => json_resp(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"changed": true, "error": e.cause, "status": status(ctl)}),
        ),
    }
}

fn live(ctl: &Control) -> Resp {
    let info = ctl.lifecycle.info();
    let threads_ok = !info.threads_died;
    // A forward pass cannot be interrupted: a lane past `processing.timeout` on one batch is
    // hung, and only a restart of the process frees it.
    let timeout = ctl.cfg.streaming.inference.batch_timeout();
    let hung = ctl
        .lifecycle
        .pipeline()
        .and_then(|(_, p)| p.engine_stats.longest_busy())
        .filter(|(_, busy)| *busy > timeout);
    let lanes_detail = hung.map(|(lane, busy)| {
        format!(
            "lane {lane} has been computing one batch for {:.1} s, over streaming.inference.processing.timeout ({} s): the lane is hung",
            busy.as_secs_f64(),
            timeout.as_secs()
        )
    });
    let ok = threads_ok && lanes_detail.is_none();
    let body = json!({
        "status": if ok { "ok" } else { "unavailable" },
        "checks": {
            "pipeline_threads": {"ok": threads_ok, "detail": if threads_ok { Value::Null } else { info.cause.clone().into() }},
            "lanes": {"ok": lanes_detail.is_none(), "detail": lanes_detail},
        },
        "uptime_seconds": round(ctl.started.elapsed().as_secs_f64(), 3),
    });
    json_resp(if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, &body)
}

/// `GET /batch-inference/streaming/metrics`.
pub(crate) fn metrics(ctl: &Control) -> Value {
    state::refresh(ctl);
    let m = &ctl.metrics;
    let (old, now) = ctl.observer.window();
    let secs = now.at.duration_since(old.at).as_secs_f64();
    let rate =
        |a: u64, b: u64| if secs > 0.0 { round(a.saturating_sub(b) as f64 / secs, 2) } else { 0.0 };
    let errors: Map<String, Value> = ErrorClass::ALL
        .iter()
        .zip(m.outcomes.dead_letters())
        .map(|(c, n)| (c.as_str().to_string(), n.into()))
        .collect();
    let (hits, misses) =
        (m.counter("sluice_model_cache_hits_total"), m.counter("sluice_model_cache_misses_total"));
    let batches = m.counter("sluice_batches_total");
    let per_batch = |n: u64| {
        if batches == 0 {
            Value::Null
        } else {
            round(n as f64 / batches as f64, 2).into()
        }
    };
    let (rings, lag) = match ctl.lifecycle.pipeline() {
        Some((generation, p)) => {
            let (prio, normal, cap) = p.ring_depths();
            (
                json!({"priority": prio, "normal": normal, "capacity": cap}),
                ctl.observer.lag(generation).to_json(),
            )
        }
        None => (Value::Null, LagSample::default().to_json()),
    };
    let lanes: Vec<Value> = m
        .lane_busy_seconds()
        .into_iter()
        .enumerate()
        .map(|(i, s)| json!({"lane": i, "busy_seconds": round(s, 3)}))
        .collect();
    json!({
        "state": ctl.lifecycle.info().state.as_str(),
        "window_seconds": round(secs, 1),
        "throughput": {
            "consumed_per_second": rate(now.consumed, old.consumed),
            "results_per_second": rate(now.results, old.results),
            "dead_letters_per_second": rate(now.dead_letters, old.dead_letters),
        },
        "latency_ms": {
            "queue": now.queue.since(&old.queue).summary(1e3),
            "inference": now.inference.since(&old.inference).summary(1e3),
            "end_to_end": now.end_to_end.since(&old.end_to_end).summary(1e3),
        },
        "batch_size": {
            "requests": now.batch_size.since(&old.batch_size).summary(1.0),
            "mean_requests_per_batch": per_batch(m.counter("sluice_batch_requests_total")),
            "mean_rows_per_batch": per_batch(m.counter("sluice_batch_rows_total")),
            "padding_efficiency": round(m.padding_efficiency.get(), 4),
        },
        "totals": {
            "consumed": m.counter("sluice_records_consumed_total"),
            "results": m.outcomes.results(),
            "dead_letters": m.outcomes.dead_letters().iter().sum::<u64>(),
            "delivered": m.counter("sluice_deliveries_total"),
            "delivery_retries": m.counter("sluice_delivery_retries_total"),
            "undeliverable": m.counter("sluice_undeliverable_total"),
            "batches": batches,
        },
        "errors_by_class": errors,
        "cache": {
            "hits": hits,
            "misses": misses,
            "hit_rate": if hits + misses == 0 { Value::Null } else { round(hits as f64 / (hits + misses) as f64, 4).into() },
            "evictions": m.counter("sluice_model_cache_evictions_total"),
            "loads": m.counter("sluice_model_loads_total"),
            "load_failures": m.counter("sluice_model_load_failures_total"),
            "last_warmup_ms": round(m.model_warmup_seconds.get() * 1e3, 3),
            "loaded": m.models_loaded.get(),
        },
        "consumer_lag": lag,
        "rings": rings,
        "lanes": lanes,
    })
}

// ---------------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------------

fn models(ctl: &Control) -> Resp {
    let list = match ctl.cache.repository().list() {
        Ok(l) => l,
        Err(e) => return model_error(&e),
    };
    let loaded = ctl.cache.loaded();
    let models: Vec<Value> = list
        .into_iter()
        .map(|m| {
            let loaded_versions: Vec<&str> = loaded.iter().filter(|(n, _)| *n == m.name).map(|(_, v)| v.as_str()).collect();
            let state = ctl.cache.rollout_state(&m.name).unwrap_or_default();
            json!({"name": m.name, "versions": m.versions, "serving": m.serving, "split": state.split,
                "shadow": state.shadow, "canary": state.canary.as_ref().map(rollout::canary_json),
                "loaded_versions": loaded_versions})
        })
        .collect();
    json_resp(
        StatusCode::OK,
        &json!({"repository": ctl.cache.repository().root().display().to_string(), "models": models}),
    )
}

async fn load(ctl: &Control, name: &str, body: &Option<Map<String, Value>>) -> Resp {
    if let Err(r) = check_name(name) {
        return r;
    }
    let version = match string_field(body, "version") {
        Ok(Some(v)) => v,
        Ok(None) => match ctl.cache.repository().serving_version(name) {
            Ok(v) => v,
            Err(e) => return model_error(&e),
        },
        Err(r) => return r,
    };
    match load_version(ctl, name, &version).await {
        Ok(v) => {
            tracing::info!(event = "model_loaded", model = name, version = %version, "model loaded through the control plane");
            json_resp(StatusCode::OK, &json!({"loaded": v}))
        }
        Err(r) => r,
    }
}

fn unload(ctl: &Control, name: &str, body: &Option<Map<String, Value>>) -> Resp {
    if let Err(r) = check_name(name) {
        return r;
    }
    let version = match string_field(body, "version") {
        Ok(v) => v,
        Err(r) => return r,
    };
    let known = ctl.cache.loaded().iter().any(|(n, _)| n == name);
    if !known {
        if let Err(e) = ctl.cache.repository().versions(name) {
            return model_error(&e);
        }
    }
    let n = ctl.cache.unload(name, version.as_deref());
    tracing::info!(event = "model_unloaded", model = name, version = ?version, unloaded = n, "model unloaded through the control plane");
    json_resp(StatusCode::OK, &json!({"name": name, "version": version, "unloaded": n}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_resolve() {
        assert_eq!(find_route("/health/live"), Some(Route::Live));
        assert_eq!(find_route("/batch-inference/streaming/status/"), Some(Route::Status));
        assert_eq!(find_route("/batch-inference/models/minilm/load"), Some(Route::Load("minilm")));
        assert_eq!(
            find_route("/batch-inference/models/minilm/serving"),
            Some(Route::Serving("minilm"))
        );
        assert_eq!(find_route("/batch-inference/models/a/b/load"), None);
        assert_eq!(find_route("/nope"), None);
        assert!(Route::Stop.mutating() && !Route::Metrics.mutating());
    }
}
