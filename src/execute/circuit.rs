//! Circuit breakers: one per model version, shared by every lane.
//!
//! A version whose batches keep failing after their retries (`consecutiveFailures` failed
//! batches in a row, or a failure share over a window) has its breaker **opened**: its
//! requests are no longer computed. With `whenOpen: wait` (the default) they are *parked*
//! here, uncommitted, and the source pauses the partitions they came from (so records of
//! other models on those partitions wait with them, and the other partitions keep flowing);
//! with `whenOpen: dead_letter` they are dead-lettered at once with class `circuit_open`.
//! After a cool-down one **probe** batch runs (the breaker is *half-open* meanwhile): success
//! closes the breaker and hands the parked requests back to a lane; failure re-opens it with
//! twice the cool-down, up to `maxCoolDownMs`. Every transition is one log line.
//!
//! A batch counts as failed only when none of its requests could be computed: one that
//! fails for a single bad request (the lane isolates it by halving) is a success for the
//! version, so a poison record does not open a breaker on its own.
//!
//! Parked requests hold their record bytes (they count towards `maxHeldBytes`) and keep
//! their offsets uncommitted; a drain or a revocation leaves them uncommitted, to be read
//! again by whoever owns the partition next.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

use crate::config::{CircuitBreakerConfig, CircuitOpenPolicy};
use crate::core::{ErrorClass, Failure};
use crate::models::LoadedModel;
use crate::queue::Request;

/// The breakers' settings (from `streaming.inference.processing.circuitBreaker`).
#[derive(Debug, Clone)]
pub struct CircuitSettings {
    pub enabled: bool,
    pub consecutive_failures: u32,
    pub failure_rate_percent: u32,
    pub window: Duration,
    pub min_batches: u32,
    pub cool_down: Duration,
    pub max_cool_down: Duration,
    pub when_open: CircuitOpenPolicy,
}

impl From<&CircuitBreakerConfig> for CircuitSettings {
    fn from(c: &CircuitBreakerConfig) -> Self {
        CircuitSettings {
            enabled: c.enabled,
            consecutive_failures: c.consecutive_failures.max(1),
            failure_rate_percent: c.failure_rate_percent.clamp(1, 100),
            window: Duration::from_secs(c.window_seconds.max(1)),
            min_batches: c.min_batches.max(1),
            cool_down: Duration::from_millis(c.cool_down_ms.max(1)),
            max_cool_down: Duration::from_millis(c.max_cool_down_ms.max(c.cool_down_ms).max(1)),
            when_open: c.when_open,
        }
    }
}

impl Default for CircuitSettings {
    fn default() -> Self {
        CircuitSettings::from(&CircuitBreakerConfig::default())
    }
}

/// A breaker's state. The metric `sluice_circuit_state` exports [`gauge`](Self::gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Requests are computed.
    Closed,
    /// One probe batch is running; the version's other requests wait (or are dead-lettered).
    HalfOpen,
    /// Requests are not computed until the cool-down ends.
    Open,
}

impl CircuitState {
    /// 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Open => 2,
        }
    }

    /// The name used in logs and `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::HalfOpen => "half_open",
            CircuitState::Open => "open",
        }
    }
}

/// What a lane does with a batch of one version.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Compute it.
    Run,
    /// Compute it as the half-open probe: its result closes or re-opens the breaker.
    Probe,
    /// The breaker is open: park its requests (`whenOpen: wait`).
    Park,
    /// The breaker is open: dead-letter its requests with this failure (`whenOpen:
    /// dead_letter`).
    Reject(Failure),
}

/// The most batch results a breaker's window remembers (the window is also cut by time).
const MAX_WINDOW: usize = 4096;

struct Breaker {
    state: CircuitState,
    consecutive: u32,
    /// (when, failed) of the recent batches, oldest first.
    window: VecDeque<(Instant, bool)>,
    cool_down: Duration,
    retry_at: Instant,
    /// Epoch milliseconds of the last opening.
    opened_at_ms: u64,
    last_error: String,
    opened_total: u64,
    parked: VecDeque<Request>,
}

impl Breaker {
    fn new(cool_down: Duration) -> Self {
        Breaker {
            state: CircuitState::Closed,
            consecutive: 0,
            window: VecDeque::new(),
            cool_down,
            retry_at: Instant::now(),
            opened_at_ms: 0,
            last_error: String::new(),
            opened_total: 0,
            parked: VecDeque::new(),
        }
    }

    fn push_result(&mut self, now: Instant, failed: bool, window: Duration) {
        self.window.push_back((now, failed));
        while self.window.len() > MAX_WINDOW
            || self.window.front().is_some_and(|(t, _)| now.duration_since(*t) > window)
        {
            self.window.pop_front();
        }
    }

    fn failure_percent(&self) -> (usize, usize) {
        let failed = self.window.iter().filter(|(_, f)| *f).count();
        (failed, self.window.len())
    }
}

/// One breaker as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CircuitView {
    pub model: String,
    pub version: String,
    pub state: CircuitState,
    /// Failed batches in a row.
    pub consecutive_failures: u32,
    /// Requests parked behind this breaker.
    pub parked: usize,
    /// Times it opened since the pipeline started.
    pub opened_total: u64,
    /// Epoch milliseconds of the last opening (absent if it never opened).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opened_at_ms: Option<u64>,
    /// The current cool-down (doubles after each failed probe).
    pub cool_down_ms: u64,
    /// Milliseconds until the next probe (open breakers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_in_ms: Option<u64>,
    /// The error of the last failed batch.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub last_error: String,
}

type Key = (Arc<str>, Arc<str>);

/// Every breaker of a pipeline, and the requests parked behind the open ones.
pub struct Circuits {
    settings: CircuitSettings,
    breakers: Mutex<HashMap<Key, Breaker>>,
    /// Breakers not closed: lanes skip the lock while it is 0.
    not_closed: AtomicUsize,
    /// Requests parked (all breakers).
    parked: AtomicUsize,
    /// Transitions to open (from closed or after a failed probe) and to closed.
    pub opens: AtomicU64,
    pub closes: AtomicU64,
}

impl Default for Circuits {
    /// Breakers with the default settings.
    fn default() -> Self {
        Circuits::new(CircuitSettings::default())
    }
}

impl Circuits {
    /// Breakers with `settings`; all closed.
    pub fn new(settings: CircuitSettings) -> Self {
        Circuits {
            settings,
            breakers: Mutex::new(HashMap::new()),
            not_closed: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            opens: AtomicU64::new(0),
            closes: AtomicU64::new(0),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &CircuitSettings {
        &self.settings
    }

    /// Requests parked now.
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
    }

    fn key(model: &LoadedModel) -> Key {
        (model.name.clone(), model.version.clone())
    }

    /// What `lane` does with a batch of `model` now. A breaker whose cool-down has ended
    /// becomes half-open and this batch is its probe.
    pub fn admit(&self, model: &LoadedModel) -> Admit {
        if self.not_closed.load(Ordering::Acquire) == 0 {
            return Admit::Run;
        }
        let now = Instant::now();
        let mut all = self.breakers.lock();
        let Some(b) = all.get_mut(&Self::key(model)) else { return Admit::Run };
        match b.state {
            CircuitState::Closed => Admit::Run,
            CircuitState::Open if now >= b.retry_at => {
                b.state = CircuitState::HalfOpen;
                tracing::info!(model = %model.name, version = %model.version, "circuit half-open: running one probe batch");
                Admit::Probe
            }
            CircuitState::Open | CircuitState::HalfOpen => match self.settings.when_open {
                CircuitOpenPolicy::Wait => Admit::Park,
                CircuitOpenPolicy::DeadLetter => Admit::Reject(open_failure(model, b)),
            },
        }
    }

    /// Records a batch of `model` that computed (some of) its requests. Closes an open
    /// breaker; returns the requests that were parked behind it, for the caller to queue.
    pub fn record_success(&self, model: &LoadedModel) -> Vec<Request> {
        if !self.settings.enabled {
            return Vec::new();
        }
        let now = Instant::now();
        let mut all = self.breakers.lock();
        let b =
            all.entry(Self::key(model)).or_insert_with(|| Breaker::new(self.settings.cool_down));
        b.consecutive = 0;
        b.push_result(now, false, self.settings.window);
        if b.state == CircuitState::Closed {
            return Vec::new();
        }
        b.state = CircuitState::Closed;
        b.cool_down = self.settings.cool_down;
        self.not_closed.fetch_sub(1, Ordering::AcqRel);
        self.closes.fetch_add(1, Ordering::Relaxed);
        let released: Vec<Request> = b.parked.drain(..).collect();
        self.parked.fetch_sub(released.len(), Ordering::AcqRel);
        tracing::info!(model = %model.name, version = %model.version, released = released.len(), "circuit closed: the probe batch succeeded; parked requests are computed again");
        released
    }

    /// Records a batch of `model` that failed after its retries with `error`. Returns the
    /// breaker's state afterwards: not closed means the caller parks (or dead-letters) the
    /// batch's requests instead of dead-lettering them as `inference` failures.
    pub fn record_failure(&self, model: &LoadedModel, error: &str) -> CircuitState {
        if !self.settings.enabled {
            return CircuitState::Closed;
        }
        let s = &self.settings;
        let now = Instant::now();
        let mut all = self.breakers.lock();
        let b = all.entry(Self::key(model)).or_insert_with(|| Breaker::new(s.cool_down));
        b.consecutive = b.consecutive.saturating_add(1);
        b.push_result(now, true, s.window);
        b.last_error = crate::core::bounded_reason(error.to_owned());
        match b.state {
            CircuitState::Closed => {
                let (failed, total) = b.failure_percent();
                let by_rate = total >= s.min_batches as usize
                    && failed * 100 >= s.failure_rate_percent as usize * total;
                if b.consecutive < s.consecutive_failures && !by_rate {
                    return CircuitState::Closed;
                }
                b.state = CircuitState::Open;
                b.cool_down = s.cool_down;
                b.retry_at = now + b.cool_down;
                b.opened_at_ms = epoch_ms();
                b.opened_total += 1;
                self.not_closed.fetch_add(1, Ordering::AcqRel);
                self.opens.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(model = %model.name, version = %model.version,
                    consecutive_failures = b.consecutive, window_failed = failed, window_batches = total,
                    cool_down_ms = b.cool_down.as_millis() as u64, when_open = ?s.when_open, error,
                    "circuit opened: this version's batches keep failing; its requests are not computed until a probe succeeds");
            }
            CircuitState::HalfOpen | CircuitState::Open => {
                // A failed probe (or a batch that was already running when the breaker
                // opened): open again, with a longer cool-down after a probe.
                if b.state == CircuitState::HalfOpen {
                    b.cool_down = (b.cool_down * 2).min(s.max_cool_down);
                    self.opens.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(model = %model.name, version = %model.version,
                        cool_down_ms = b.cool_down.as_millis() as u64, error,
                        "circuit open again: the probe batch failed");
                }
                b.state = CircuitState::Open;
                b.retry_at = now + b.cool_down;
            }
        }
        b.state
    }

    /// A probe of `model` that neither computed nor failed (its batch went back after a
    /// device fault): a half-open breaker is open again, with the same cool-down.
    pub fn probe_inconclusive(&self, model: &LoadedModel) {
        if self.not_closed.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut all = self.breakers.lock();
        if let Some(b) = all.get_mut(&Self::key(model)) {
            if b.state == CircuitState::HalfOpen {
                b.state = CircuitState::Open;
                b.retry_at = Instant::now() + b.cool_down;
            }
        }
    }

    /// Parks `reqs` behind their version's breaker (`whenOpen: wait`).
    pub fn park(&self, reqs: impl IntoIterator<Item = Request>) {
        let mut all = self.breakers.lock();
        for r in reqs {
            let b = all
                .entry(Self::key(&r.model))
                .or_insert_with(|| Breaker::new(self.settings.cool_down));
            b.parked.push_back(r);
            self.parked.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// A probe from the parked requests: when an open breaker with parked requests has
    /// ended its cool-down, it becomes half-open and its oldest parked request is handed out
    /// (a batch of one). The lane computes it and records the result; on failure the
    /// request is parked again, at the back, so that one request the model cannot compute
    /// does not hold the breaker open by itself.
    pub fn take_probe(&self) -> Option<Request> {
        if self.parked.load(Ordering::Acquire) == 0 {
            return None;
        }
        let now = Instant::now();
        let mut all = self.breakers.lock();
        for ((name, version), b) in all.iter_mut() {
            if b.state == CircuitState::Open && now >= b.retry_at {
                if let Some(r) = b.parked.pop_front() {
                    self.parked.fetch_sub(1, Ordering::AcqRel);
                    b.state = CircuitState::HalfOpen;
                    tracing::info!(model = %name, version = %version, parked = b.parked.len() + 1,
                        "circuit half-open: probing with one parked request");
                    return Some(r);
                }
            }
        }
        None
    }

    /// Takes the parked requests whose deadline has passed (they are dead-lettered as
    /// `expired`, like any request whose deadline passes while it waits).
    pub fn take_expired(&self, now_ms: u64, out: &mut Vec<Request>) {
        if self.parked.load(Ordering::Acquire) == 0 {
            return;
        }
        self.take_where(out, |r| r.deadline_ms.is_some_and(|d| d <= now_ms));
    }

    /// Takes the parked requests of `parts` ((topic, partition)s being revoked): they are
    /// dropped uncommitted, for the next owner to read again.
    pub fn take_parked_of(&self, parts: &[(String, i32)]) -> Vec<Request> {
        let mut out = Vec::new();
        if self.parked.load(Ordering::Acquire) > 0 {
            self.take_where(&mut out, |r| {
                let s = &r.env.source;
                parts.iter().any(|(t, p)| **t == *s.topic && *p == s.partition)
            });
        }
        out
    }

    /// Takes the parked requests `pick` chooses (to route them to another version).
    pub fn take_parked_if(&self, pick: impl Fn(&Request) -> bool) -> Vec<Request> {
        let mut out = Vec::new();
        if self.parked.load(Ordering::Acquire) > 0 {
            self.take_where(&mut out, pick);
        }
        out
    }

    /// Takes every parked request (the drain: they stay uncommitted).
    pub fn take_all_parked(&self) -> Vec<Request> {
        let mut out = Vec::new();
        self.take_where(&mut out, |_| true);
        out
    }

    fn take_where(&self, out: &mut Vec<Request>, pick: impl Fn(&Request) -> bool) {
        let mut all = self.breakers.lock();
        for b in all.values_mut() {
            let mut keep = VecDeque::with_capacity(b.parked.len());
            for r in b.parked.drain(..) {
                if pick(&r) {
                    out.push(r);
                } else {
                    keep.push_back(r);
                }
            }
            b.parked = keep;
        }
        let n = all.values().map(|b| b.parked.len()).sum();
        self.parked.store(n, Ordering::Release);
    }

    /// The (topic, partition)s of the parked requests, sorted: the source pauses them.
    pub fn parked_partitions(&self) -> Vec<(Arc<str>, i32)> {
        if self.parked.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        let all = self.breakers.lock();
        let mut parts: Vec<(Arc<str>, i32)> = all
            .values()
            .flat_map(|b| b.parked.iter())
            .map(|r| (r.env.source.topic.clone(), r.env.source.partition))
            .collect();
        parts.sort();
        parts.dedup();
        parts
    }

    /// Every breaker that has seen a failure, for `status` and the metrics.
    pub fn views(&self) -> Vec<CircuitView> {
        let now = Instant::now();
        let all = self.breakers.lock();
        let mut out: Vec<CircuitView> = all
            .iter()
            .filter(|(_, b)| b.opened_total > 0 || b.consecutive > 0 || !b.parked.is_empty())
            .map(|((name, version), b)| CircuitView {
                model: name.to_string(),
                version: version.to_string(),
                state: b.state,
                consecutive_failures: b.consecutive,
                parked: b.parked.len(),
                opened_total: b.opened_total,
                opened_at_ms: (b.opened_total > 0).then_some(b.opened_at_ms),
                cool_down_ms: b.cool_down.as_millis() as u64,
                probe_in_ms: (b.state == CircuitState::Open)
                    .then(|| b.retry_at.saturating_duration_since(now).as_millis() as u64),
                last_error: b.last_error.clone(),
            })
            .collect();
        out.sort_by(|a, b| (&a.model, &a.version).cmp(&(&b.model, &b.version)));
        out
    }
}

fn open_failure(model: &LoadedModel, b: &Breaker) -> Failure {
    Failure::new(
        ErrorClass::CircuitOpen,
        format!(
            "circuit open for model '{}' version '{}' after {} failed batches (last error: {}); not computed",
            model.name, model.version, b.consecutive, b.last_error
        ),
    )
}

fn epoch_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
