//! Model rollout through the control plane: the serving version, the traffic split, the
//! shadow version and the automatic canary of a model (README "Model rollout").
//!
//! Every change is a whole `RolloutState`: checked and loaded here, published on the control
//! topic (when this instance follows one), then put in force here with the same
//! `ModelCache::load_and_apply` that the follower uses for records from other instances.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::StatusCode;
use serde_json::{json, Map, Value};

use super::http::{check_name, error, json_resp, load_version, model_error, string_field, Resp};
use super::state::Control;
use crate::core::now_epoch_ms;
use crate::models::cache::Applied;
use crate::models::repository::valid_component;
use crate::models::rollout::{Canary, CanaryPlan, CanaryStatus, RolloutState};
use crate::models::split::Split;

/// `status` and `GET /batch-inference/models` view of a canary.
pub fn canary_json(c: &Canary) -> Value {
    json!({
        "version": c.plan.version,
        "status": c.status.as_str(),
        "step": c.step + 1,
        "steps": c.plan.steps,
        "percent": c.percent(),
        "step_seconds": c.plan.step_seconds,
        "step_started_ms": c.step_started_ms,
        "max_error_rate": c.plan.max_error_rate,
        "max_p99_ratio": c.plan.max_p99_ratio,
        "baseline": c.baseline,
        "reason": c.reason,
    })
}

fn state_json(name: &str, s: &RolloutState) -> Value {
    json!({
        "name": name,
        "serving": s.serving,
        "split": s.split,
        "shadow": s.shadow,
        "canary": s.canary.as_ref().map(canary_json),
    })
}

/// Publishes `state` for `name` on the control topic (when this instance follows one), then
/// puts it in force here. Blocking (loads models, waits for the broker's acknowledgement).
/// The error says whether nothing changed (publishing failed) or what failed here.
pub fn change_blocking(ctl: &Control, name: &str, state: &RolloutState) -> Result<Applied, String> {
    if let Some(r) = ctl.rollout.get() {
        r.publish(name, state).map_err(|e| {
            format!("the change is not shared with the other instances: {e}; nothing changed")
        })?;
    }
    ctl.cache.load_and_apply(name, state).map_err(|e| e.to_string())
}

async fn change(ctl: &Arc<Control>, name: &str, state: RolloutState) -> Result<Applied, Resp> {
    let (c, n, s) = (ctl.clone(), name.to_string(), state);
    tokio::task::spawn_blocking(move || change_blocking(&c, &n, &s))
        .await
        .unwrap_or_else(|e| Err(format!("applying the change panicked: {e}")))
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e))
}

/// Loads and warms every version `state` names, so that nothing is published that this
/// instance cannot serve (a missing version: 404, one that fails to load: its error).
async fn load_all(ctl: &Control, name: &str, state: &RolloutState) -> Result<Vec<Value>, Resp> {
    let mut loaded = Vec::new();
    for v in state.versions() {
        loaded.push(load_version(ctl, name, &v).await?);
    }
    Ok(loaded)
}

fn running_canary(s: &RolloutState) -> Option<&Canary> {
    s.canary.as_ref().filter(|c| c.status == CanaryStatus::Running)
}

fn conflict_with_canary(c: &Canary) -> Resp {
    error(
        StatusCode::CONFLICT,
        format!(
            "a canary of version {} is running (step {} of {}): stop it first with {{\"canary\": null}}",
            c.plan.version,
            c.step + 1,
            c.plan.steps.len()
        ),
    )
}

/// `POST /batch-inference/models/{name}/serving` with `{"version": "2"}`: loads and warms the
/// version, then makes it serving on every instance. Refused while a canary runs.
pub async fn serving(ctl: &Arc<Control>, name: &str, body: &Option<Map<String, Value>>) -> Resp {
    if let Err(r) = check_name(name) {
        return r;
    }
    let version = match string_field(body, "version") {
        Ok(Some(v)) => v,
        Ok(None) => return error(StatusCode::BAD_REQUEST, "the body needs {\"version\": \"...\"}"),
        Err(r) => return r,
    };
    let current = match ctl.cache.rollout_state(name) {
        Ok(s) => s,
        Err(e) => return model_error(&e),
    };
    if let Some(c) = running_canary(&current) {
        return conflict_with_canary(c);
    }
    let previous = current.serving.clone().unwrap_or_default();
    let state = RolloutState { serving: Some(version.clone()), ..current };
    // Warm the new version first, then switch: requests never wait for its load.
    let loaded = match load_version(ctl, name, &version).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Err(r) = change(ctl, name, state).await {
        return r;
    }
    tracing::info!(event = "model_serving", model = name, version = %version, previous = %previous, "serving version changed");
    json_resp(
        StatusCode::OK,
        &json!({"name": name, "serving": version, "previous": previous, "loaded": loaded,
            "shared": ctl.rollout.get().is_some()}),
    )
}

/// Parses `{"<version>": <weight>, ...}` or null.
fn parse_split(raw: &Value) -> Result<Option<std::collections::BTreeMap<String, u32>>, Resp> {
    match raw {
        Value::Null => Ok(None),
        Value::Object(m) => {
            let mut weights = std::collections::BTreeMap::new();
            for (v, w) in m {
                if !valid_component(v) {
                    return Err(error(StatusCode::BAD_REQUEST, format!("invalid version '{v}'")));
                }
                let Some(w) = w.as_u64().and_then(|w| u32::try_from(w).ok()) else {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "the weight of version '{v}' must be an integer from 0 to {}",
                            u32::MAX
                        ),
                    ));
                };
                weights.insert(v.clone(), w);
            }
            Split::new(&weights).map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
            Ok(Some(weights))
        }
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            "'split' must be an object of version → weight, or null",
        )),
    }
}

/// A canary id: unique enough between two canaries of one model, and exact in JSON and TOML
/// (below 2^53).
fn canary_id() -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ (u64::from(std::process::id()) << 32)) & ((1 << 53) - 1)
}

/// `POST /batch-inference/models/{name}/traffic`. The body holds any of:
/// - `"split": {"1": 90, "2": 10}` (integer weights) or `null`: requests that name no version
///   go to the version their routing key picks;
/// - `"shadow": "3"` or `null`: every request is also computed with that version, its result
///   written to the shadow topic;
/// - `"canary": {"version": "2", "steps": [...], "stepSeconds": ..., "maxErrorRate": ...,
///   "maxP99Ratio": ...}`: an automatic canary from the current traffic, or `null` to stop
///   a running one (it rolls back).
///
/// Every version named is loaded and warmed before the change takes effect; a change naming a
/// version that is missing or fails to load is refused and the previous state stays.
pub async fn traffic(ctl: &Arc<Control>, name: &str, body: &Option<Map<String, Value>>) -> Resp {
    const USAGE: &str = "the body needs one or more of {\"split\": {\"<version>\": <weight>, ...} | null, \"shadow\": \"<version>\" | null, \"canary\": {...} | null}";
    if let Err(r) = check_name(name) {
        return r;
    }
    let Some(body) = body.as_ref().filter(|b| !b.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, USAGE);
    };
    if let Some(k) = body.keys().find(|k| !["split", "shadow", "canary"].contains(&k.as_str())) {
        return error(StatusCode::BAD_REQUEST, format!("unknown key '{k}': {USAGE}"));
    }
    let current = match ctl.cache.rollout_state(name) {
        Ok(s) => s,
        Err(e) => return model_error(&e),
    };
    let serving = current.serving.clone().unwrap_or_default();
    let mut next = current.clone();
    if let Some(raw) = body.get("shadow") {
        next.shadow = match raw {
            Value::Null => None,
            Value::String(v) if valid_component(v) => Some(v.clone()),
            _ => return error(StatusCode::BAD_REQUEST, "'shadow' must be a version or null"),
        };
        if next.shadow.as_deref() == Some(serving.as_str()) && current.split.is_none() {
            return error(
                StatusCode::BAD_REQUEST,
                format!("version {serving} is serving: a shadow must be another version"),
            );
        }
    }
    if let Some(raw) = body.get("split") {
        if body.contains_key("canary") {
            return error(StatusCode::BAD_REQUEST, "give 'split' or 'canary', not both");
        }
        if let Some(c) = running_canary(&current) {
            return conflict_with_canary(c);
        }
        next.split = match parse_split(raw) {
            Ok(s) => s,
            Err(r) => return r,
        };
    }
    match body.get("canary") {
        None => {}
        Some(Value::Null) => {
            if let Some(c) = running_canary(&current) {
                let back = c.rolled_back("stopped through the control plane".into());
                next = back.state(&serving, next.shadow.clone());
            } else {
                next.canary = None;
            }
        }
        Some(raw) => {
            if let Some(c) = running_canary(&current) {
                return conflict_with_canary(c);
            }
            let plan: CanaryPlan = match serde_json::from_value(raw.clone()) {
                Ok(p) => p,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("'canary' needs {{\"version\", \"steps\", \"stepSeconds\", \"maxErrorRate\", \"maxP99Ratio\"}}: {e}"),
                    )
                }
            };
            if let Err(e) = plan.check() {
                return error(StatusCode::BAD_REQUEST, format!("canary: {e}"));
            }
            if !valid_component(&plan.version) {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("invalid version '{}'", plan.version),
                );
            }
            if plan.version == serving && current.split.is_none() {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("version {serving} already serves all traffic"),
                );
            }
            let c =
                Canary::start(canary_id(), plan, current.split.clone(), &serving, now_epoch_ms());
            next = c.state(&serving, next.shadow.clone());
        }
    }
    let loaded = match load_all(ctl, name, &next).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    if let Err(r) = change(ctl, name, next.clone()).await {
        return r;
    }
    let now = ctl.cache.rollout_state(name).unwrap_or(next);
    let mut v = state_json(name, &now);
    v["previous"] = state_json(name, &current);
    v["loaded"] = Value::from(loaded);
    v["shared"] = Value::from(ctl.rollout.get().is_some());
    json_resp(StatusCode::OK, &v)
}
