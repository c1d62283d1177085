//! The rate sweep: step the offered rate up until the system cannot keep up, then measure once
//! more at half of the highest sustained rate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{LoadgenError, Result};
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
    /// Grid steps then bisection steps, in the order they ran.
    pub steps: Vec<StepResult>,
    /// Highest offered rate of a sustained step.
    pub max_sustained_rps: Option<f64>,
    /// The lowest unsustained rate above `max_sustained_rps` (the capacity lies between).
    #[serde(default)]
    pub min_failed_rps: Option<f64>,
    /// The step at half of `max_sustained_rps`.
    pub half_step: Option<StepResult>,
}

/// Sweep settings.
#[derive(Clone, Debug)]
pub struct SweepSpec {
    pub rates: RatePlan,
    pub criteria: Criteria,
    /// Steps in a row that may fail before the grid stops.
    pub patience: usize,
    /// After the grid, bisect between the highest sustained and the lowest failed rate above
    /// it until they are within this ratio (0.05: within 5%); `None` skips bisection.
    pub bisect_to: Option<f64>,
    /// Each step lasts long enough for at least this many measured records (after warm-up).
    pub min_measured: u64,
    /// Measure once more at half of the highest sustained rate.
    pub half_step: bool,
    /// Template for each step (its rate is replaced).
    pub step: StepSpec,
}

impl SweepSpec {
    /// The step at `rate`: long enough for `min_measured` records after the warm-up.
    pub fn step_at(&self, rate: f64) -> StepSpec {
        let measured = self.step.duration.saturating_sub(self.step.warmup);
        let needed = Duration::from_secs_f64(self.min_measured as f64 / rate.max(1e-9));
        let duration = self.step.warmup + measured.max(needed);
        StepSpec { rate, duration, ..self.step.clone() }
    }
}

/// The highest sustained offered rate of `steps`.
pub fn max_sustained(steps: &[StepResult]) -> Option<f64> {
    steps
        .iter()
        .filter(|s| s.sustained == Some(true))
        .map(|s| s.rate)
        .fold(None, |m, r| Some(m.map_or(r, |m: f64| m.max(r))))
}

/// The lowest unsustained rate above `above` (or of all steps).
pub fn min_failed_above(steps: &[StepResult], above: Option<f64>) -> Option<f64> {
    steps
        .iter()
        .filter(|s| s.sustained == Some(false) && above.is_none_or(|a| s.rate > a))
        .map(|s| s.rate)
        .fold(None, |m, r| Some(m.map_or(r, |m: f64| m.min(r))))
}

/// What a sweep does between steps, and how a step is run: the real one drives a broker,
/// tests drive a model of a system.
pub trait Stepper {
    /// Runs one step.
    fn step(&mut self, spec: &StepSpec) -> Result<StepResult>;
    /// Called after a step that left records without an outcome.
    fn after_missing(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Runs steps against a broker: `before_step` (if any) runs before each step and is expected
/// to give the step a fresh broker and system; without it, a step that left records behind is
/// followed by a pause until the output is quiet.
pub struct BrokerStepper<'a> {
    pub target: &'a Target,
    pub stop: &'a AtomicBool,
    pub before_step: Option<&'a str>,
    pub index: usize,
}

impl Stepper for BrokerStepper<'_> {
    fn step(&mut self, spec: &StepSpec) -> Result<StepResult> {
        if let Some(cmd) = self.before_step {
            run_before_step(cmd, spec.rate, self.index)?;
        }
        self.index += 1;
        run_step(self.target, spec, self.stop)
    }

    fn after_missing(&mut self) -> Result<()> {
        if self.before_step.is_none() {
            // Let the system work off what it still holds, so it does not weigh on the next
            // step.
            quiesce(self.target, Duration::from_secs(3), Duration::from_secs(180))?;
        }
        Ok(())
    }
}

/// Runs the `--before-step` command through `sh -c`, with the step's rate and index in
/// `SLUICE_LOADGEN_RATE` and `SLUICE_LOADGEN_STEP`; its output goes to this process's stderr.
fn run_before_step(cmd: &str, rate: f64, index: usize) -> Result<()> {
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("SLUICE_LOADGEN_RATE", format!("{rate:.3}"))
        .env("SLUICE_LOADGEN_STEP", index.to_string())
        .stdout(std::process::Stdio::inherit())
        .status()
        .map_err(|e| LoadgenError::BeforeStep(format!("could not run '{cmd}': {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(LoadgenError::BeforeStep(format!(
            "'{cmd}' failed ({status}) before the {rate:.0}/s step"
        )))
    }
}

/// Runs a sweep: the rate grid until `patience` steps in a row fail, then bisection between
/// the highest sustained and the lowest failed rate above it, then the half-rate step.
/// `on_step` sees each step as it finishes (for progress output).
pub fn run_sweep(
    stepper: &mut impl Stepper,
    spec: &SweepSpec,
    stop: &AtomicBool,
    mut on_step: impl FnMut(&StepResult),
) -> Result<SweepOutcome> {
    let mut out = SweepOutcome::default();
    let mut measure = |rate: f64, phase: &str, out: &mut SweepOutcome| -> Result<bool> {
        let mut step = stepper.step(&spec.step_at(rate))?;
        let (ok, verdict) = judge(&step, &spec.criteria);
        step.sustained = Some(ok);
        step.verdict = verdict;
        step.phase = phase.into();
        on_step(&step);
        if step.missing > 0 {
            stepper.after_missing()?;
        }
        if phase == "half" {
            out.half_step = Some(step);
        } else {
            out.steps.push(step);
        }
        Ok(ok)
    };
    let mut failures = 0usize;
    let mut i = 0usize;
    while let Some(rate) = spec.rates.rate(i) {
        i += 1;
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if measure(rate, "grid", &mut out)? {
            failures = 0;
        } else {
            failures += 1;
            if failures >= spec.patience.max(1) {
                break;
            }
        }
    }
    if let Some(tol) = spec.bisect_to.filter(|t| *t > 0.0) {
        // Bisect in log space (the grid is geometric): each step halves the ratio's exponent.
        while !stop.load(Ordering::SeqCst) {
            let lo = max_sustained(&out.steps);
            let (Some(lo), Some(hi)) = (lo, min_failed_above(&out.steps, lo)) else { break };
            if hi <= lo * (1.0 + tol) {
                break;
            }
            measure((lo * hi).sqrt(), "bisect", &mut out)?;
        }
    }
    out.max_sustained_rps = max_sustained(&out.steps);
    out.min_failed_rps = min_failed_above(&out.steps, out.max_sustained_rps);
    if let (true, Some(max)) = (spec.half_step, out.max_sustained_rps) {
        if !stop.load(Ordering::SeqCst) {
            measure(max / 2.0, "half", &mut out)?;
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

    /// A system that keeps up with everything up to `capacity` records/s.
    struct Model {
        capacity: f64,
        rates: Vec<(f64, f64)>,
    }

    impl Stepper for Model {
        fn step(&mut self, spec: &StepSpec) -> Result<StepResult> {
            self.rates.push((spec.rate, spec.duration.as_secs_f64()));
            // Past its capacity the queue grows: the output lags and p99 climbs.
            let ok = spec.rate <= self.capacity;
            Ok(if ok {
                step(spec.rate, spec.rate, 10.0, 0)
            } else {
                step(spec.rate, self.capacity, 2_000.0, 0)
            })
        }
    }

    fn spec(bisect_to: Option<f64>, patience: usize) -> SweepSpec {
        SweepSpec {
            rates: RatePlan::parse("1000:2:128000").unwrap(),
            criteria: Criteria { p99_bound_ms: 100.0, min_achieved_ratio: 0.95 },
            patience,
            bisect_to,
            min_measured: 2000,
            half_step: true,
            step: StepSpec {
                rate: 0.0,
                arrival: crate::loadgen::schedule::Arrival::Poisson,
                duration: Duration::from_secs(8),
                warmup: Duration::from_secs(2),
                drain_timeout: Duration::from_secs(30),
                workload: crate::loadgen::workload::Workload {
                    model: "tabular".into(),
                    payload: crate::loadgen::workload::Payload::Tabular { width: 8 },
                    hostile_share: 0.0,
                    priority_share: 0.0,
                    seed: 1,
                },
            },
        }
    }

    #[test]
    fn bisection_closes_in_on_the_capacity_within_the_tolerance() {
        let stop = AtomicBool::new(false);
        let mut m = Model { capacity: 45_000.0, rates: Vec::new() };
        let out = run_sweep(&mut m, &spec(Some(0.05), 2), &stop, |_| {}).unwrap();
        let (lo, hi) = (out.max_sustained_rps.unwrap(), out.min_failed_rps.unwrap());
        assert!(lo <= 45_000.0 && hi > 45_000.0, "{lo} .. {hi}");
        assert!(hi <= lo * 1.05, "not within 5%: {lo} .. {hi}");
        // Patience 2: the grid went on to 128k after 64k failed, then stopped.
        let grid: Vec<f64> =
            out.steps.iter().filter(|s| s.phase == "grid").map(|s| s.rate).collect();
        assert_eq!(grid, vec![1e3, 2e3, 4e3, 8e3, 16e3, 32e3, 64e3, 128e3]);
        assert!(out.steps.iter().any(|s| s.phase == "bisect"));
        let half = out.half_step.unwrap();
        assert_eq!((half.phase.as_str(), half.rate), ("half", lo / 2.0));
    }

    #[test]
    fn patience_one_stops_the_grid_at_the_first_failure_and_no_bisection_without_tolerance() {
        let stop = AtomicBool::new(false);
        let mut m = Model { capacity: 5_000.0, rates: Vec::new() };
        let out = run_sweep(&mut m, &spec(None, 1), &stop, |_| {}).unwrap();
        assert_eq!(out.max_sustained_rps, Some(4_000.0));
        assert_eq!(out.min_failed_rps, Some(8_000.0));
        assert_eq!(out.steps.len(), 4);
    }

    #[test]
    fn a_system_that_sustains_nothing_is_not_bisected() {
        let stop = AtomicBool::new(false);
        let mut m = Model { capacity: 10.0, rates: Vec::new() };
        let out = run_sweep(&mut m, &spec(Some(0.05), 2), &stop, |_| {}).unwrap();
        assert_eq!(out.max_sustained_rps, None);
        assert!(out.half_step.is_none());
        assert_eq!(m.rates.len(), 2);
    }

    #[test]
    fn slow_steps_run_long_enough_for_the_measured_minimum() {
        let s = spec(None, 1);
        // 8 s with 2 s warm-up: 6 s measured is enough at 1000/s ...
        assert_eq!(s.step_at(1000.0).duration, Duration::from_secs(8));
        // ... but at 100/s, 2000 records need 20 s after the warm-up.
        assert_eq!(s.step_at(100.0).duration, Duration::from_secs(22));
    }

    #[test]
    fn a_failing_before_step_command_stops_the_sweep_with_its_status() {
        let err = run_before_step("exit 3", 1000.0, 0).unwrap_err().to_string();
        assert!(err.contains("'exit 3' failed") && err.contains("1000/s"), "{err}");
        run_before_step("test \"$SLUICE_LOADGEN_RATE\" = 250.000", 250.0, 4).unwrap();
    }
}
