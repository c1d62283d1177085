//! The rollout state of one model: its serving version, traffic split, shadow version and
//! automatic canary. One value of [`RolloutState`] is what the control topic carries for a
//! model and what the state directory stores; every instance applies the same values in the
//! same order, so every instance routes a key to the same version.
//!
//! The canary is a small state machine ([`Canary`]): it starts at its first step, moves one
//! step at a time, and ends `completed` (its version serving, no split) or `rolled_back` (the
//! split from before it). Each state is a whole value with an id and a step number, so a
//! record that would move a canary backwards (an older step, or any step after the canary
//! ended) is recognised and ignored ([`RolloutState::supersedes`]): two instances that judge
//! the same step at once publish the same next state, and a rollback is never undone by a
//! late "next step" record.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most steps a canary may have.
pub const MAX_CANARY_STEPS: usize = 32;

/// The rollout state of one model. `None` fields are "not set" (no split, no shadow, no
/// canary); `serving: None` leaves the serving version as it is (records from before the
/// serving version was shared carry none).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<String>,
    #[serde(default)]
    pub split: Option<BTreeMap<String, u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
}

impl RolloutState {
    /// Every version this state needs loaded: the split's, the shadow and the serving one.
    pub fn versions(&self) -> Vec<String> {
        let mut v: Vec<String> = self.split.iter().flat_map(|s| s.keys().cloned()).collect();
        v.extend(self.shadow.iter().cloned());
        v.extend(self.serving.iter().cloned());
        v.sort();
        v.dedup();
        v
    }

    /// Whether `self` (a record just read) may replace `current`: `false` when it would move
    /// `current`'s canary backwards (an earlier step of the same canary, or a running step
    /// after that canary ended).
    pub fn supersedes(&self, current: &RolloutState) -> bool {
        let (Some(new), Some(cur)) = (&self.canary, &current.canary) else { return true };
        if new.id != cur.id {
            return true;
        }
        match (cur.status, new.status) {
            (CanaryStatus::Running, CanaryStatus::Running) => new.step >= cur.step,
            (CanaryStatus::Running, _) => true,
            // An ended canary only takes the same ended state again.
            (ended, status) => ended == status,
        }
    }
}

/// How an automatic canary proceeds (`{"canary": {...}}` of `POST .../traffic`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryPlan {
    /// The new version.
    pub version: String,
    /// Its share of the traffic at each step, in percent, ascending, ending at 100.
    pub steps: Vec<u32>,
    /// How long each step lasts at least (it lasts until it has enough requests to judge).
    #[serde(rename = "stepSeconds")]
    pub step_seconds: u64,
    /// The new version's highest tolerated error rate in a step (0..1).
    #[serde(rename = "maxErrorRate")]
    pub max_error_rate: f64,
    /// Its highest tolerated p99 latency relative to the old version's in the same step.
    #[serde(rename = "maxP99Ratio")]
    pub max_p99_ratio: f64,
}

impl CanaryPlan {
    /// Checks the plan; the error says what is wrong with which field.
    pub fn check(&self) -> Result<(), String> {
        if self.steps.is_empty() || self.steps.len() > MAX_CANARY_STEPS {
            return Err(format!("'steps' needs 1 to {MAX_CANARY_STEPS} percentages"));
        }
        if self.steps.windows(2).any(|w| w[0] >= w[1]) || self.steps[0] == 0 {
            return Err("'steps' must rise strictly, from above 0".into());
        }
        if self.steps.last() != Some(&100) {
            return Err("'steps' must end at 100".into());
        }
        if self.step_seconds == 0 || self.step_seconds > 7 * 24 * 3600 {
            return Err("'stepSeconds' must be from 1 to 604800".into());
        }
        if !(0.0..=1.0).contains(&self.max_error_rate) {
            return Err("'maxErrorRate' must be from 0 to 1".into());
        }
        if !(self.max_p99_ratio.is_finite() && self.max_p99_ratio >= 1.0) {
            return Err("'maxP99Ratio' must be a number of at least 1".into());
        }
        Ok(())
    }
}

/// Where a canary stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryStatus {
    Running,
    Completed,
    RolledBack,
}

impl CanaryStatus {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::RolledBack => "rolled_back",
        }
    }
}

/// An automatic canary and its progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Canary {
    /// Tells one canary from the next of the same model.
    pub id: u64,
    pub plan: CanaryPlan,
    /// The traffic before the canary (the old split, else the serving version at 100), which
    /// the canary's share is taken from and a rollback returns to.
    pub baseline: BTreeMap<String, u32>,
    /// The split before the canary (`None`: there was none).
    pub previous_split: Option<BTreeMap<String, u32>>,
    /// Index into `plan.steps`.
    pub step: usize,
    /// When the current step began, epoch milliseconds (survives restarts).
    pub step_started_ms: u64,
    pub status: CanaryStatus,
    /// Why it rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Canary {
    /// A canary for `plan` over `baseline` (the split in force, or the serving version at
    /// 100), at its first step.
    pub fn start(
        id: u64,
        plan: CanaryPlan,
        previous_split: Option<BTreeMap<String, u32>>,
        serving: &str,
        now_ms: u64,
    ) -> Canary {
        let mut baseline =
            previous_split.clone().unwrap_or_else(|| BTreeMap::from([(serving.to_owned(), 100)]));
        baseline.remove(&plan.version);
        if baseline.values().all(|w| *w == 0) {
            baseline = BTreeMap::from([(serving.to_owned(), 100)]);
        }
        Canary {
            id,
            plan,
            baseline,
            previous_split,
            step: 0,
            step_started_ms: now_ms,
            status: CanaryStatus::Running,
            reason: None,
        }
    }

    /// The new version's share at the current step, in percent.
    pub fn percent(&self) -> u32 {
        self.plan.steps.get(self.step).copied().unwrap_or(100)
    }

    /// The split of the current step: the new version gets `percent` of the traffic, the
    /// baseline's versions share the rest in their old proportions. Weights are scaled (not
    /// renormalised) so that as the new version's share grows, every key it already serves
    /// stays with it (see `split`).
    pub fn split(&self) -> BTreeMap<String, u32> {
        let p = u64::from(self.percent().min(100));
        let total: u64 = self.baseline.values().map(|w| u64::from(*w)).sum::<u64>().max(1);
        let mut out: BTreeMap<String, u32> = self
            .baseline
            .iter()
            .map(|(v, w)| (v.clone(), clamp_u32(u64::from(*w) * (100 - p))))
            .filter(|(_, w)| *w > 0)
            .collect();
        out.insert(self.plan.version.clone(), clamp_u32(total * p).max(1));
        out
    }

    /// The state after the current step passed: the next step, or (after the last) completed.
    pub fn advanced(&self, now_ms: u64) -> Canary {
        let mut next = self.clone();
        if self.step + 1 < self.plan.steps.len() {
            next.step += 1;
            next.step_started_ms = now_ms;
        } else {
            next.status = CanaryStatus::Completed;
        }
        next
    }

    /// The state after a rollback for `reason`.
    pub fn rolled_back(&self, reason: String) -> Canary {
        Canary { status: CanaryStatus::RolledBack, reason: Some(reason), ..self.clone() }
    }

    /// The rollout state that goes with this canary state, given the serving version.
    pub fn state(&self, serving: &str, shadow: Option<String>) -> RolloutState {
        match self.status {
            CanaryStatus::Running => RolloutState {
                serving: Some(serving.to_owned()),
                split: Some(self.split()),
                shadow,
                canary: Some(self.clone()),
            },
            CanaryStatus::Completed => RolloutState {
                serving: Some(self.plan.version.clone()),
                split: None,
                shadow,
                canary: Some(self.clone()),
            },
            CanaryStatus::RolledBack => RolloutState {
                serving: Some(serving.to_owned()),
                split: self.previous_split.clone(),
                shadow,
                canary: Some(self.clone()),
            },
        }
    }
}

fn clamp_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::split::Split;

    fn plan() -> CanaryPlan {
        CanaryPlan {
            version: "2".into(),
            steps: vec![1, 5, 25, 50, 100],
            step_seconds: 300,
            max_error_rate: 0.01,
            max_p99_ratio: 1.5,
        }
    }

    #[test]
    fn plans_are_checked() {
        assert_eq!(plan().check(), Ok(()));
        for (mutate, needle) in [
            (
                Box::new(|p: &mut CanaryPlan| p.steps = vec![]) as Box<dyn Fn(&mut CanaryPlan)>,
                "steps",
            ),
            (Box::new(|p: &mut CanaryPlan| p.steps = vec![5, 5, 100]), "rise"),
            (Box::new(|p: &mut CanaryPlan| p.steps = vec![0, 100]), "rise"),
            (Box::new(|p: &mut CanaryPlan| p.steps = vec![5, 50]), "end at 100"),
            (Box::new(|p: &mut CanaryPlan| p.step_seconds = 0), "stepSeconds"),
            (Box::new(|p: &mut CanaryPlan| p.max_error_rate = 1.5), "maxErrorRate"),
            (Box::new(|p: &mut CanaryPlan| p.max_p99_ratio = 0.5), "maxP99Ratio"),
            (Box::new(|p: &mut CanaryPlan| p.max_p99_ratio = f64::NAN), "maxP99Ratio"),
        ] {
            let mut p = plan();
            mutate(&mut p);
            assert!(p.check().unwrap_err().contains(needle), "{needle}");
        }
    }

    #[test]
    fn steps_give_the_new_version_its_share_and_keep_its_keys() {
        let mut c = Canary::start(7, plan(), None, "1", 1000);
        assert_eq!(c.baseline, BTreeMap::from([("1".into(), 100)]));
        let mut served_by_new: Vec<Vec<u8>> = Vec::new();
        for (i, pct) in [1u32, 5, 25, 50, 100].into_iter().enumerate() {
            assert_eq!((c.step, c.percent()), (i, pct));
            let weights = c.split();
            let total: u64 = weights.values().map(|w| u64::from(*w)).sum();
            let share = f64::from(weights["2"]) / total as f64;
            assert!((share - f64::from(pct) / 100.0).abs() < 1e-9, "{weights:?}");
            // Keys the new version had stay with it at the next step.
            let split = Split::new(&weights).unwrap();
            for k in &served_by_new {
                assert_eq!(&**split.pick(k), "2");
            }
            served_by_new = (0..2000u32)
                .map(|k| k.to_be_bytes().to_vec())
                .filter(|k| &**split.pick(k) == "2")
                .collect();
            c = c.advanced(2000 + i as u64);
        }
        assert_eq!(c.status, CanaryStatus::Completed);
        let s = c.state("1", None);
        assert_eq!((s.serving.as_deref(), s.split), (Some("2"), None));
    }

    #[test]
    fn a_canary_over_a_split_rolls_back_to_that_split() {
        let before = BTreeMap::from([("1".to_string(), 90), ("3".to_string(), 10)]);
        let c = Canary::start(1, plan(), Some(before.clone()), "1", 0);
        assert_eq!(c.baseline, before);
        let w = c.split();
        assert_eq!(w["1"] / w["3"], 9, "the old versions keep their proportions: {w:?}");
        let back = c.rolled_back("errors".into()).state("1", Some("3".into()));
        assert_eq!(back.split, Some(before));
        assert_eq!(back.shadow.as_deref(), Some("3"));
        assert_eq!(back.canary.unwrap().reason.as_deref(), Some("errors"));
    }

    #[test]
    fn records_never_move_a_canary_backwards() {
        let c0 = Canary::start(1, plan(), None, "1", 0);
        let c1 = c0.advanced(10);
        let at = |c: &Canary| c.state("1", None);
        assert!(at(&c1).supersedes(&at(&c0)));
        assert!(!at(&c0).supersedes(&at(&c1)), "an older step");
        assert!(at(&c1).supersedes(&at(&c1)), "the same step again (two judges)");
        let back = c1.rolled_back("x".into());
        assert!(at(&back).supersedes(&at(&c1)));
        assert!(!at(&c1.advanced(20)).supersedes(&at(&back)), "a late step after a rollback");
        let other = Canary::start(2, plan(), None, "1", 30);
        assert!(at(&other).supersedes(&at(&back)), "a new canary");
        let plain = RolloutState { split: None, ..Default::default() };
        assert!(plain.supersedes(&at(&back)) && at(&c0).supersedes(&plain));
    }

    #[test]
    fn versions_lists_what_must_be_loaded() {
        let s = RolloutState {
            serving: Some("1".into()),
            split: Some(BTreeMap::from([("1".into(), 5), ("2".into(), 5)])),
            shadow: Some("3".into()),
            canary: None,
        };
        assert_eq!(s.versions(), ["1", "2", "3"]);
    }

    #[test]
    fn the_record_round_trips_and_old_records_still_read() {
        let c = Canary::start(9, plan(), None, "1", 5);
        let s = c.state("1", Some("3".into()));
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<RolloutState>(&text).unwrap(), s);
        let old: RolloutState = serde_json::from_str(r#"{"split": {"1": 90, "2": 10}}"#).unwrap();
        assert_eq!((old.serving, old.shadow, old.canary), (None, None, None));
        assert_eq!(old.split.unwrap()["1"], 90);
    }
}
