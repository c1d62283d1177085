//! The rate sweep: step the offered rate up until the system cannot keep up, then measure once
//! more at half of the highest sustained rate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::Result;
use super::step::{quiesce, run_step, StepResult, StepSpec, Target};

/// Which rates to try.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RatePlan {
    /// Exactly these, in order.
    List(Vec<f64>),
    /// `start`, `start × factor`, ... up to `max`.
    Geometric { start: f64, factor: f64, max: f64 },
}

impl RatePlan {
    /// The `i`-th rate, if any.
    pub fn rate(&self, i: usize) -> Option<f64> {
        match self {
            RatePlan::List(v) => v.get(i).copied(),
            RatePlan::Geometric { start, factor, max } => {
                let r = start * factor.powi(i as i32);
                (r <= max * (1.0 + 1e-9) && *factor > 1.0 && *start > 0.0).then_some(r)
            }
        }
    }

    /// Parses `a,b,c` or `start:factor:max`.
    pub fn parse(s: &str) -> Result<RatePlan, String> {
        let num = |x: &str| {
            x.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v > 0.0)
                .ok_or_else(|| format!("'{x}' is not a positive number"))
        };
        if s.contains(':') {
            let parts: Vec<&str> = s.split(':').collect();
            let [a, f, m] = parts.as_slice() else {
                return Err(format!("'{s}': expected START:FACTOR:MAX, e.g. 100:1.5:5000"));
            };
            let (start, factor, max) = (num(a)?, num(f)?, num(m)?);
            if factor <= 1.0 {
                return Err(format!("'{s}': the factor must be above 1"));
            }
            Ok(RatePlan::Geometric { start, factor, max })
        } else {
            s.split(',').map(num).collect::<Result<Vec<_>, _>>().map(RatePlan::List)
        }
    }
}

/// When a step counts as sustained.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Criteria {
    /// p99 of answered requests must not pass this.
    pub p99_bound_ms: f64,
    /// Outcomes completed in the window per offered record must reach this share.
    pub min_achieved_ratio: f64,
}

impl Default for Criteria {
    fn default() -> Self {
        Criteria { p99_bound_ms: 250.0, min_achieved_ratio: 0.95 }
    }
}

/// Judges a step: `(sustained, reason)`.
pub fn judge(step: &StepResult, c: &Criteria) -> (bool, String) {
    let mut why = Vec::new();
    if step.missing > 0 {
        why.push(format!(
            "{} records without an outcome after {:.0} s of draining",
            step.missing, step.drain_s
        ));
    }
    if step.offered_rps > 0.0 && step.achieved_rps < c.min_achieved_ratio * step.offered_rps {
        why.push(format!(
            "output {:.0}/s fell behind the offered {:.0}/s",
            step.achieved_rps, step.offered_rps
        ));
    }
    if step.latency.count > 0 && step.latency.p99_ms > c.p99_bound_ms {
        why.push(format!(
            "p99 {:.1} ms passed the {:.0} ms bound",
            step.latency.p99_ms, c.p99_bound_ms
        ));
    }
    if step.latency.count == 0 && step.sent > 0 {
        why.push("no answered requests to measure".into());
    }
    if why.is_empty() {
        (true, "sustained".into())
    } else {
        (false, why.join("; "))
    }
}

/// Everything a sweep measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SweepOutcome {
    pub steps: Vec<StepResult>,
    /// Highest offered rate of a sustained step.
    pub max_sustained_rps: Option<f64>,
    /// The step at half of `max_sustained_rps`.
    pub half_step: Option<StepResult>,
}

/// Sweep settings.
#[derive(Clone, Debug)]
pub struct SweepSpec {
    pub rates: RatePlan,
    pub criteria: Criteria,
    /// Steps in a row that may fail before the sweep stops.
    pub patience: usize,
    /// Measure once more at half of the highest sustained rate.
    pub half_step: bool,
    /// Template for each step (its rate is replaced).
    pub step: StepSpec,
}

/// The highest sustained offered rate of `steps`.
pub fn max_sustained(steps: &[StepResult]) -> Option<f64> {
    steps
        .iter()
        .filter(|s| s.sustained == Some(true))
        .map(|s| s.rate)
        .fold(None, |m, r| Some(m.map_or(r, |m: f64| m.max(r))))
}

/// Runs a sweep; `on_step` sees each step as it finishes (for progress output).
pub fn run_sweep(
    target: &Target,
    spec: &SweepSpec,
    stop: &AtomicBool,
    mut on_step: impl FnMut(&StepResult),
) -> Result<SweepOutcome> {
    let mut out = SweepOutcome::default();
    let mut failures = 0usize;
    let mut i = 0usize;
    while let Some(rate) = spec.rates.rate(i) {
        i += 1;
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let mut step = run_step(target, &StepSpec { rate, ..spec.step.clone() }, stop)?;
        let (ok, verdict) = judge(&step, &spec.criteria);
        step.sustained = Some(ok);
        step.verdict = verdict;
        on_step(&step);
        let missing = step.missing;
        out.steps.push(step);
        if ok {
            failures = 0;
        } else {
            failures += 1;
            if missing > 0 {
                // Let the system work off what it still holds, so it does not weigh on the
                // next step.
                quiesce(target, Duration::from_secs(3), Duration::from_secs(180))?;
            }
            if failures >= spec.patience.max(1) {
                break;
            }
        }
    }
    out.max_sustained_rps = max_sustained(&out.steps);
    if let (true, Some(max)) = (spec.half_step, out.max_sustained_rps) {
        if !stop.load(Ordering::SeqCst) {
            let mut step =
                run_step(target, &StepSpec { rate: max / 2.0, ..spec.step.clone() }, stop)?;
            let (ok, verdict) = judge(&step, &spec.criteria);
            step.sustained = Some(ok);
            step.verdict = verdict;
            on_step(&step);
            out.half_step = Some(step);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::recorder::Percentiles;

    #[test]
    fn rate_plans() {
        let g = RatePlan::parse("100:2:800").unwrap();
        let rates: Vec<f64> = (0..10).map_while(|i| g.rate(i)).collect();
        assert_eq!(rates, vec![100.0, 200.0, 400.0, 800.0]);
        assert_eq!(RatePlan::parse("5, 10,20").unwrap(), RatePlan::List(vec![5.0, 10.0, 20.0]));
        assert!(RatePlan::parse("100:1:800").is_err());
        assert!(RatePlan::parse("100:2").is_err());
        assert!(RatePlan::parse("-3").is_err());
        assert!(RatePlan::parse("abc").is_err());
    }

    fn step(rate: f64, achieved: f64, p99: f64, missing: u64) -> StepResult {
        StepResult {
            rate,
            offered_rps: rate,
            achieved_rps: achieved,
            sent: 100,
            missing,
            latency: Percentiles { count: 100, p99_ms: p99, ..Default::default() },
            ..Default::default()
        }
    }

    #[test]
    fn judging_steps() {
        let c = Criteria { p99_bound_ms: 100.0, min_achieved_ratio: 0.95 };
        assert!(judge(&step(100.0, 99.0, 20.0, 0), &c).0);
        let (ok, why) = judge(&step(100.0, 80.0, 20.0, 0), &c);
        assert!(!ok && why.contains("fell behind"), "{why}");
        let (ok, why) = judge(&step(100.0, 100.0, 150.0, 0), &c);
        assert!(!ok && why.contains("p99"), "{why}");
        let (ok, why) = judge(&step(100.0, 100.0, 10.0, 3), &c);
        assert!(!ok && why.contains("without an outcome"), "{why}");
        let mut steps = vec![
            step(100.0, 100.0, 1.0, 0),
            step(200.0, 200.0, 1.0, 0),
            step(400.0, 100.0, 1.0, 0),
        ];
        for s in &mut steps {
            s.sustained = Some(judge(s, &c).0);
        }
        assert_eq!(max_sustained(&steps), Some(200.0));
    }
}
