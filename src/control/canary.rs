//! The automatic canary's judge: every `model.rollout.canaryCheckIntervalMs` each running
//! canary's current step is judged on what this instance saw since the step began.
//!
//! - The new version's **error rate** (`inference` dead letters and an open circuit, over all
//!   its records; not the client's own bad records, not expiries) above `maxErrorRate`: roll
//!   back at once.
//! - Its **p99** end-to-end latency above `maxP99Ratio` × the old versions' p99 in the same
//!   window (only when the old versions also have `canaryMinRequests` records in it): roll back
//!   at once.
//! - Neither is judged before the new version has `canaryMinRequests` records in the step.
//! - With enough records, no breach and `stepSeconds` passed: the next step (after the last,
//!   the new version becomes serving and the split goes).
//!
//! A decision is a new rollout state published on the control topic; every instance applies
//! it, and a decision for a step that has already moved on is ignored (see
//! `models::rollout`). Each instance judges its own traffic, so any instance that sees the new
//! version misbehave rolls it back everywhere, and the first to see a step pass moves all of
//! them on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::rollout::change_blocking;
use super::state::Control;
use crate::core::now_epoch_ms;
use crate::execute::circuit::CircuitState;
use crate::models::rollout::{Canary, CanaryPlan, CanaryStatus};
use crate::telemetry::metrics::VersionReading;

/// What one look at a step decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    /// Not yet: why.
    Wait(String),
    /// The step passed.
    Advance,
    /// Roll back: why (for the log, `status` and the canary record).
    RollBack(String),
}

/// Judges a step from what the new version (`new`) and the old versions together (`old`) did
/// in it, `elapsed_ms` after it began. `circuit_open` is the new version's open circuit
/// breaker (its last error), if it has one: its requests are failing (and, with
/// `whenOpen: wait`, waiting without an outcome), so it rolls back at once.
pub fn judge(
    plan: &CanaryPlan,
    new: &VersionReading,
    old: &VersionReading,
    circuit_open: Option<&str>,
    min_requests: u64,
    elapsed_ms: u64,
) -> Judgement {
    if let Some(error) = circuit_open {
        return Judgement::RollBack(format!(
            "the circuit breaker of version {} is open (last error: {error})",
            plan.version
        ));
    }
    if new.requests < min_requests {
        return Judgement::Wait(format!(
            "{} of {min_requests} requests on version {}",
            new.requests, plan.version
        ));
    }
    let rate = new.errors as f64 / new.requests as f64;
    if rate > plan.max_error_rate {
        return Judgement::RollBack(format!(
            "error rate {rate:.4} ({} of {} requests failed) is over maxErrorRate {}",
            new.errors, new.requests, plan.max_error_rate
        ));
    }
    if old.requests >= min_requests {
        if let (Some(p_new), Some(p_old)) = (new.latency.quantile(0.99), old.latency.quantile(0.99))
        {
            if p_old > 0.0 && p_new / p_old > plan.max_p99_ratio {
                return Judgement::RollBack(format!(
                    "p99 {:.1} ms is {:.2}x the old version's {:.1} ms, over maxP99Ratio {}",
                    p_new * 1e3,
                    p_new / p_old,
                    p_old * 1e3,
                    plan.max_p99_ratio
                ));
            }
        }
    }
    let step_ms = plan.step_seconds.saturating_mul(1000);
    if elapsed_ms < step_ms {
        return Judgement::Wait(format!("{} of {} s", elapsed_ms / 1000, plan.step_seconds));
    }
    Judgement::Advance
}

/// What this instance had seen of the new and the old versions when it first looked at a
/// step (the window starts there).
#[derive(Default)]
struct Windows {
    /// (model, canary id, step) → (new, old) readings at the step's start.
    start: HashMap<(String, u64, usize), (VersionReading, VersionReading)>,
}

/// The new version's and the old versions' readings now.
fn readings(ctl: &Control, name: &str, c: &Canary) -> (VersionReading, VersionReading) {
    let o = &ctl.metrics.outcomes;
    let new = o.version_reading(name, &c.plan.version);
    let old = c
        .baseline
        .keys()
        .filter(|v| **v != c.plan.version)
        .map(|v| o.version_reading(name, v))
        .fold(VersionReading::default(), |acc, r| acc.plus(&r));
    (new, old)
}

/// The last error of `name`/`version`'s circuit breaker, when it is open or half-open.
fn open_breaker(ctl: &Control, name: &str, version: &str) -> Option<String> {
    let (_, pipeline) = ctl.lifecycle.pipeline()?;
    let circuits = pipeline.circuits()?;
    circuits
        .views()
        .into_iter()
        .find(|v| v.model == name && v.version == version && v.state != CircuitState::Closed)
        .map(|v| v.last_error)
}

/// One look at every running canary.
fn tick(ctl: &Control, windows: &mut Windows) {
    let min = ctl.cfg.streaming.inference.model.rollout.canary_min_requests;
    let running: Vec<(String, Canary)> = ctl
        .cache
        .canaries()
        .into_iter()
        .filter(|(_, c)| c.status == CanaryStatus::Running)
        .collect();
    windows.start.retain(|(n, id, step), _| {
        running.iter().any(|(m, c)| m == n && c.id == *id && c.step == *step)
    });
    for (name, c) in running {
        let (new, old) = readings(ctl, &name, &c);
        let key = (name.clone(), c.id, c.step);
        let Some((new0, old0)) = windows.start.get(&key) else {
            windows.start.insert(key, (new, old));
            continue;
        };
        let (new_w, old_w) = (new.since(new0), old.since(old0));
        let elapsed = now_epoch_ms().saturating_sub(c.step_started_ms);
        let open = open_breaker(ctl, &name, &c.plan.version);
        let next = match judge(&c.plan, &new_w, &old_w, open.as_deref(), min, elapsed) {
            Judgement::Wait(_) => continue,
            Judgement::Advance => c.advanced(now_epoch_ms()),
            Judgement::RollBack(reason) => c.rolled_back(reason),
        };
        let Ok(current) = ctl.cache.rollout_state(&name) else { continue };
        let serving = current.serving.clone().unwrap_or_default();
        let state = next.state(&serving, current.shadow.clone());
        if let Err(e) = change_blocking(ctl, &name, &state) {
            tracing::warn!(model = %name, error = %e, "canary: the decision could not be applied; judged again at the next look");
        }
    }
}

/// Judges running canaries until the control plane shuts down.
pub async fn run(ctl: Arc<Control>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let every =
        Duration::from_millis(ctl.cfg.streaming.inference.model.rollout.canary_check_interval_ms);
    let windows = Arc::new(Mutex::new(Windows::default()));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        if ctl.cache.canaries().iter().all(|(_, c)| c.status != CanaryStatus::Running) {
            continue;
        }
        let (c, w) = (ctl.clone(), windows.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || tick(&c, &mut w.lock())).await {
            tracing::error!(error = %e, "canary judge panicked; judged again at the next look");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::HistogramSnapshot;

    fn plan() -> CanaryPlan {
        CanaryPlan {
            version: "2".into(),
            steps: vec![10, 100],
            step_seconds: 60,
            max_error_rate: 0.01,
            max_p99_ratio: 1.5,
        }
    }

    /// `n` observations, all in the bucket whose upper bound is `at` seconds.
    fn hist(n: u64, at: f64) -> HistogramSnapshot {
        let bounds = vec![0.001, 0.002, 0.004, 0.008, 0.016, 0.032];
        let cumulative = bounds.iter().map(|b| if *b >= at { n } else { 0 }).chain([n]).collect();
        HistogramSnapshot { bounds, cumulative, sum: n as f64 * at }
    }

    fn reading(requests: u64, errors: u64, p99_at: f64) -> VersionReading {
        VersionReading { requests, errors, latency: hist(requests, p99_at) }
    }

    #[test]
    fn an_open_circuit_rolls_back_at_once() {
        let j = judge(&plan(), &reading(0, 0, 0.001), &reading(0, 0, 0.001), Some("boom"), 100, 0);
        assert!(
            matches!(&j, Judgement::RollBack(r) if r.contains("circuit breaker") && r.contains("boom")),
            "{j:?}"
        );
    }

    #[test]
    fn too_few_requests_wait() {
        let j =
            judge(&plan(), &reading(99, 99, 0.032), &reading(1000, 0, 0.001), None, 100, 999_999);
        assert!(matches!(j, Judgement::Wait(w) if w.contains("99 of 100")));
    }

    #[test]
    fn errors_over_the_limit_roll_back_before_the_step_ends() {
        let j = judge(&plan(), &reading(1000, 11, 0.002), &reading(1000, 0, 0.002), None, 100, 0);
        assert!(matches!(&j, Judgement::RollBack(r) if r.contains("error rate 0.0110")), "{j:?}");
        let ok = judge(&plan(), &reading(1000, 10, 0.002), &reading(1000, 0, 0.002), None, 100, 0);
        assert!(matches!(ok, Judgement::Wait(_)), "1% is within a 1% limit: {ok:?}");
    }

    #[test]
    fn a_slower_p99_rolls_back_relative_to_the_old_version() {
        // p99 in the 8 ms bucket against the old version's 4 ms bucket: about 2x > 1.5.
        let j = judge(&plan(), &reading(1000, 0, 0.008), &reading(1000, 0, 0.004), None, 100, 0);
        assert!(matches!(&j, Judgement::RollBack(r) if r.contains("maxP99Ratio")), "{j:?}");
        // The same latency on both: fine.
        let same =
            judge(&plan(), &reading(1000, 0, 0.008), &reading(1000, 0, 0.008), None, 100, 60_000);
        assert_eq!(same, Judgement::Advance);
        // Too few old requests to compare: latency is not judged (at the last step the old
        // version gets nothing).
        let alone =
            judge(&plan(), &reading(1000, 0, 0.032), &reading(5, 0, 0.001), None, 100, 60_000);
        assert_eq!(alone, Judgement::Advance);
    }

    #[test]
    fn a_healthy_step_passes_only_after_its_time() {
        let (n, o) = (reading(500, 0, 0.002), reading(5000, 0, 0.002));
        assert!(matches!(judge(&plan(), &n, &o, None, 100, 59_999), Judgement::Wait(_)));
        assert_eq!(judge(&plan(), &n, &o, None, 100, 60_000), Judgement::Advance);
    }
}
