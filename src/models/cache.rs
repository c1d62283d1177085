//! The loaded-model cache: LRU with a capacity and an idle TTL.
//!
//! Models are handed out as `Arc<LoadedModel>`: evicting a model only drops the cache's
//! reference, so batches already queued or running on it finish normally and the memory is
//! freed when the last of them completes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use parking_lot::Mutex;

use super::loaded::LoadedModel;
use super::repository::Repository;
use super::rollout::{Canary, CanaryStatus, RolloutState};
use super::split::Split;
use super::ModelError;
use crate::core::CacheStats;

/// How the cache behaves.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Most models kept loaded (>= 1).
    pub capacity: usize,
    /// A model unused for this long is unloaded; `None` keeps models until LRU eviction.
    pub ttl: Option<Duration>,
    /// Rows per warm-up batch.
    pub warmup_rows: usize,
}

struct Entry {
    model: Arc<LoadedModel>,
    last_used: Instant,
}

/// A version whose last load failed: not tried again before `retry_at`.
struct FailedLoad {
    error: String,
    failures: u32,
    retry_at: Instant,
}

/// The first wait after a failed load; it doubles with each failure in a row.
const LOAD_RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two loads of a version that keeps failing.
const LOAD_RETRY_MAX: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Inner {
    /// Least recently used first.
    entries: Vec<Entry>,
    /// name → serving version, read from the repository once.
    serving: HashMap<String, Arc<str>>,
    /// name → its traffic split (requests that name no version go by their routing key).
    splits: HashMap<String, Arc<Split>>,
    /// name → its shadow version (every request of the model is also computed with it).
    shadows: HashMap<String, Arc<str>>,
    /// name → its automatic canary (running or ended).
    canaries: HashMap<String, Canary>,
    /// (name, version) → its last failed load. Bounded: an entry exists only for a version
    /// directory that exists in the repository, and a successful load removes it.
    failed: HashMap<(String, String), FailedLoad>,
}

/// What [`ModelCache::lookup`] found, without loading anything.
pub enum Lookup {
    /// Loaded: ready to use.
    Ready(Arc<LoadedModel>),
    /// On disk, not loaded: `version` is the concrete version (the serving one when the
    /// request named none).
    Missing { version: Arc<str> },
    /// Cannot be served now: unknown, an invalid name, or a recent load failed (it is not
    /// tried again before its backoff has passed).
    Failed(ModelError),
}

/// Loaded models, by name and version.
pub struct ModelCache {
    repo: Repository,
    device: Device,
    settings: CacheSettings,
    inner: Mutex<Inner>,
    /// Hit, miss, eviction and load counters.
    pub stats: CacheStats,
    /// Grows with every change of any model's routing (serving version, split): requests
    /// waiting with a routed version look again when it moves.
    routing_generation: AtomicU64,
}

impl ModelCache {
    /// An empty cache over `repo`. Models load on the CPU; a GPU lane loads its own replica
    /// of each version it runs.
    pub fn new(repo: Repository, settings: CacheSettings) -> Self {
        let device = Device::Cpu;
        let settings = CacheSettings { capacity: settings.capacity.max(1), ..settings };
        ModelCache {
            repo,
            device,
            settings,
            inner: Mutex::new(Inner::default()),
            stats: CacheStats::default(),
            routing_generation: AtomicU64::new(0),
        }
    }

    /// The repository behind the cache.
    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    /// The model `name` at `version` (or its serving version), loading it on a miss.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<LoadedModel>, ModelError> {
        self.get_at(name, version, Instant::now())
    }

    /// Finds `name` at `version` (or its serving version) without loading it: a hit, a
    /// version that exists on disk but is not loaded, or why it cannot be served. Cheap
    /// enough for the ingest thread (a miss costs one `stat` of the version directory).
    pub fn lookup(&self, name: &str, version: Option<&str>) -> Lookup {
        self.lookup_at(name, version, Instant::now())
    }

    /// [`lookup`](Self::lookup) with an explicit clock.
    pub fn lookup_at(&self, name: &str, version: Option<&str>, now: Instant) -> Lookup {
        self.lookup_routed(name, version, None, now)
    }

    /// [`lookup_at`](Self::lookup_at) for a request whose routing key is `route` (its record
    /// key, else its id): without a `version`, a split picks the version by that key.
    pub fn lookup_routed(
        &self,
        name: &str,
        version: Option<&str>,
        route: Option<&[u8]>,
        now: Instant,
    ) -> Lookup {
        // Like `get_at`, the hit path allocates nothing.
        let serving;
        let version: &str = match version {
            Some(v) => v,
            None => match self.serving_for(name, route) {
                Ok(v) => {
                    serving = v;
                    &serving
                }
                Err(e) => return Lookup::Failed(e),
            },
        };
        if let Some(model) = self.hit(name, version, now) {
            return Lookup::Ready(model);
        }
        if let Some(e) = self.remembered_failure(&self.inner.lock(), name, version, now) {
            return Lookup::Failed(e);
        }
        match self.repo.version_dir(name, version) {
            Ok(_) => {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                Lookup::Missing { version: version.into() }
            }
            Err(e) => Lookup::Failed(e),
        }
    }

    /// The loaded `name`/`version`, marked most recently used and counted as a hit (after
    /// the TTL sweep, which spares it); `None` when it is not loaded. Allocates nothing.
    fn hit(&self, name: &str, version: &str, now: Instant) -> Option<Arc<LoadedModel>> {
        let mut inner = self.inner.lock();
        self.expire(&mut inner, now, Some((name, version)));
        let i = inner
            .entries
            .iter()
            .position(|e| &*e.model.name == name && &*e.model.version == version)?;
        let mut e = inner.entries.remove(i);
        e.last_used = now;
        let model = e.model.clone();
        inner.entries.push(e);
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        Some(model)
    }

    /// The remembered error of a version whose last load failed, while its backoff lasts.
    fn remembered_failure(
        &self,
        inner: &Inner,
        name: &str,
        version: &str,
        now: Instant,
    ) -> Option<ModelError> {
        let f = inner.failed.get(&(name.to_owned(), version.to_owned()))?;
        (now < f.retry_at).then(|| ModelError::Load {
            name: name.to_owned(),
            version: version.to_owned(),
            reason: format!(
                "{} (failed {} time(s) in a row; next try in {} ms)",
                f.error,
                f.failures,
                f.retry_at.saturating_duration_since(now).as_millis()
            ),
        })
    }

    /// [`get`](Self::get) with an explicit clock, for tests of LRU order and TTL.
    pub fn get_at(
        &self,
        name: &str,
        version: Option<&str>,
        now: Instant,
    ) -> Result<Arc<LoadedModel>, ModelError> {
        self.get_routed(name, version, None, now)
    }

    /// [`get_at`](Self::get_at) with a routing key (see [`lookup_routed`](Self::lookup_routed)).
    pub fn get_routed(
        &self,
        name: &str,
        version: Option<&str>,
        route: Option<&[u8]>,
        now: Instant,
    ) -> Result<Arc<LoadedModel>, ModelError> {
        // The hit path allocates nothing: the serving version is a shared `Arc<str>`.
        let serving;
        let version: &str = match version {
            Some(v) => v,
            None => {
                serving = self.serving_for(name, route)?;
                &serving
            }
        };
        if let Some(model) = self.hit(name, version, now) {
            return Ok(model);
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        // A version whose load failed recently is not loaded again for every record that
        // names it: it fails at once with the remembered error until its retry time.
        if let Some(e) = self.remembered_failure(&self.inner.lock(), name, version, now) {
            return Err(e);
        }
        self.load_at(name, version, now)
    }

    /// Loads (or reloads) one version and puts it in the cache, evicting as needed.
    pub fn load_at(
        &self,
        name: &str,
        version: &str,
        now: Instant,
    ) -> Result<Arc<LoadedModel>, ModelError> {
        let dir = self.repo.version_dir(name, version)?;
        // Load outside the lock: other models keep serving while this one reads its weights.
        let loaded = LoadedModel::load(name, version, &dir, &self.device).and_then(|mut m| {
            m.warm_up(self.settings.warmup_rows)?;
            Ok(m)
        });
        let model = match loaded {
            Ok(m) => Arc::new(m),
            Err(e) => {
                self.remember_failure(name, version, &e.to_string(), now);
                return Err(e);
            }
        };
        self.stats.loads.fetch_add(1, Ordering::Relaxed);
        self.stats.last_warmup_us.store(model.warmup_time.as_micros() as u64, Ordering::Relaxed);
        tracing::info!(
            model = name,
            version,
            kind = model.kind.as_str(),
            load_ms = model.load_time.as_millis() as u64,
            warmup_ms = model.warmup_time.as_millis() as u64,
            "model loaded"
        );
        let mut inner = self.inner.lock();
        inner.failed.remove(&(name.to_owned(), version.to_owned()));
        inner.entries.retain(|e| !(&*e.model.name == name && &*e.model.version == version));
        inner.entries.push(Entry { model: model.clone(), last_used: now });
        while inner.entries.len() > self.settings.capacity {
            // The least recently used that no split pins (if all are pinned, the oldest).
            let at = inner
                .entries
                .iter()
                .position(|e| {
                    !pinned(&inner.splits, &inner.shadows, &e.model.name, &e.model.version)
                })
                .unwrap_or(0);
            let evicted = inner.entries.remove(at);
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            tracing::info!(model = %evicted.model.name, version = %evicted.model.version, reason = "capacity", "model evicted");
        }
        Ok(model)
    }

    /// Books a failed load of `name`/`version`: it is not tried again before a backoff that
    /// doubles with each failure in a row (1 s up to 60 s).
    pub fn remember_failure(&self, name: &str, version: &str, error: &str, now: Instant) {
        self.stats.load_failures.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.inner.lock();
        let f = inner.failed.entry((name.to_owned(), version.to_owned())).or_insert(FailedLoad {
            error: String::new(),
            failures: 0,
            retry_at: now,
        });
        f.failures += 1;
        f.error = error.to_owned();
        let wait =
            LOAD_RETRY_FIRST.saturating_mul(1 << (f.failures - 1).min(10)).min(LOAD_RETRY_MAX);
        f.retry_at = now + wait;
        tracing::error!(
            model = name,
            version,
            error,
            failures = f.failures,
            retry_in_ms = wait.as_millis() as u64,
            "model load failed; records naming it are dead-lettered until the next try"
        );
    }

    /// Drops `name` (one version, or all versions) from the cache. Returns how many were dropped.
    pub fn unload(&self, name: &str, version: Option<&str>) -> usize {
        let mut inner = self.inner.lock();
        let before = inner.entries.len();
        inner.entries.retain(|e| {
            !(&*e.model.name == name && version.is_none_or(|v| &*e.model.version == v))
        });
        before - inner.entries.len()
    }

    /// Makes `version` the serving version of `name` (persisted in the repository).
    pub fn set_serving(&self, name: &str, version: &str) -> Result<(), ModelError> {
        self.repo.set_serving(name, version)?;
        self.inner.lock().serving.insert(name.to_string(), version.into());
        self.routing_generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Grows with every routing change (see the field).
    pub fn routing_generation(&self) -> u64 {
        self.routing_generation.load(Ordering::Acquire)
    }

    /// The version a request of `name` that names none goes to now, by its routing key
    /// `route` (the split's pick, else the serving version). Loads nothing.
    pub fn routed_version(&self, name: &str, route: &[u8]) -> Result<Arc<str>, ModelError> {
        self.serving_for(name, Some(route))
    }

    /// `(name, version)` of every loaded model, least recently used first.
    pub fn loaded(&self) -> Vec<(String, String)> {
        self.inner
            .lock()
            .entries
            .iter()
            .map(|e| (e.model.name.to_string(), e.model.version.to_string()))
            .collect()
    }

    /// Drops models idle for longer than the TTL.
    pub fn sweep_at(&self, now: Instant) {
        let mut inner = self.inner.lock();
        self.expire(&mut inner, now, None);
    }

    /// The version serving a request of `name` with routing key `route`: its split's pick,
    /// else the serving version.
    fn serving_for(&self, name: &str, route: Option<&[u8]>) -> Result<Arc<str>, ModelError> {
        for _ in 0..2 {
            {
                let inner = self.inner.lock();
                if let Some(serving) = inner.serving.get(name) {
                    return Ok(match (route, inner.splits.get(name)) {
                        (Some(key), Some(split)) => split.pick(key).clone(),
                        _ => serving.clone(),
                    });
                }
            }
            // First use of `name`: read its serving version and split from disk.
            self.serving(name)?;
        }
        self.serving(name)
    }

    /// `name`'s traffic split, if it has one.
    pub fn split(&self, name: &str) -> Option<Arc<Split>> {
        self.inner.lock().splits.get(name).cloned()
    }

    /// `name`'s shadow version, if it has one (cheap: lanes ask for every batch).
    pub fn shadow_of(&self, name: &str) -> Option<Arc<str>> {
        self.inner.lock().shadows.get(name).cloned()
    }

    /// Every model's automatic canary, running or ended, by model name.
    pub fn canaries(&self) -> Vec<(String, Canary)> {
        let inner = self.inner.lock();
        let mut v: Vec<_> = inner.canaries.iter().map(|(n, c)| (n.clone(), c.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// `name`'s rollout state as this instance applies it: serving version (read from the
    /// repository on first use), split, shadow, canary.
    pub fn rollout_state(&self, name: &str) -> Result<RolloutState, ModelError> {
        let serving = self.serving(name)?;
        let inner = self.inner.lock();
        Ok(RolloutState {
            serving: Some(serving.to_string()),
            split: inner.splits.get(name).map(|s| s.to_map()),
            shadow: inner.shadows.get(name).map(|s| s.to_string()),
            canary: inner.canaries.get(name).cloned(),
        })
    }

    /// Applies a rollout state published on the control topic or asked for through the
    /// control plane: a state that would move a canary backwards is ignored; `serving: None`
    /// keeps the serving version; every version it names is loaded and warmed first (a
    /// version that cannot be loaded refuses the whole state: the previous one stays). One
    /// log line per change, and per canary transition.
    pub fn load_and_apply(&self, name: &str, state: &RolloutState) -> Result<Applied, ModelError> {
        let current = self.rollout_state(name)?;
        if !state.supersedes(&current) {
            return Ok(Applied::Stale);
        }
        let mut state = state.clone();
        if state.serving.is_none() {
            state.serving = current.serving.clone();
        }
        if state == current {
            return Ok(Applied::Unchanged);
        }
        for v in state.versions() {
            self.get(name, Some(&v))?;
        }
        self.apply_rollout(name, &state)?;
        log_transition(name, &current, &state, &self.stats);
        Ok(Applied::Changed)
    }

    /// Makes `state` `name`'s rollout state here and stores it in the state directory. The
    /// caller has loaded every version it names (they are pinned while it holds). The split
    /// is checked first; nothing changes when it is invalid. A state that cannot be stored
    /// (no writable state directory) still holds here until a restart, with a warning: the
    /// other instances apply it from the control topic too, and a restart reads it back from
    /// there.
    pub fn apply_rollout(&self, name: &str, state: &RolloutState) -> Result<(), ModelError> {
        let split = state
            .split
            .as_ref()
            .map(Split::new)
            .transpose()
            .map_err(|reason| ModelError::Spec { path: name.into(), reason })?;
        if let Err(e) = self.repo.set_rollout(name, state) {
            tracing::warn!(model = name, error = %e, "the rollout state is not stored in the state directory: it holds until a restart (the control topic brings it back)");
        }
        let mut inner = self.inner.lock();
        if let Some(v) = &state.serving {
            inner.serving.insert(name.to_string(), v.as_str().into());
        }
        match split {
            Some(s) => inner.splits.insert(name.to_string(), Arc::new(s)),
            None => inner.splits.remove(name),
        };
        match &state.shadow {
            Some(v) => inner.shadows.insert(name.to_string(), v.as_str().into()),
            None => inner.shadows.remove(name),
        };
        match &state.canary {
            Some(c) => inner.canaries.insert(name.to_string(), c.clone()),
            None => inner.canaries.remove(name),
        };
        self.routing_generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    fn serving(&self, name: &str) -> Result<Arc<str>, ModelError> {
        if let Some(v) = self.inner.lock().serving.get(name) {
            return Ok(v.clone());
        }
        let v: Arc<str> = self.repo.serving_version(name)?.into();
        let stored = self.repo.rollout_of(name).unwrap_or_else(|e| {
            tracing::warn!(model = name, error = %e, "the stored rollout state cannot be read; ignored");
            RolloutState::default()
        });
        let split = stored.split.as_ref().and_then(|w| {
            Split::new(w)
                .map_err(|e| tracing::warn!(model = name, error = %e, "the stored traffic split is not valid; ignored"))
                .ok()
        });
        let mut inner = self.inner.lock();
        inner.serving.insert(name.to_string(), v.clone());
        if let Some(s) = split {
            inner.splits.entry(name.to_string()).or_insert_with(|| Arc::new(s));
        }
        if let Some(s) = stored.shadow {
            inner.shadows.entry(name.to_string()).or_insert_with(|| s.as_str().into());
        }
        if let Some(c) = stored.canary {
            inner.canaries.entry(name.to_string()).or_insert(c);
        }
        Ok(v)
    }

    fn expire(&self, inner: &mut Inner, now: Instant, keep: Option<(&str, &str)>) {
        let Some(ttl) = self.settings.ttl else { return };
        let splits = std::mem::take(&mut inner.splits);
        let shadows = std::mem::take(&mut inner.shadows);
        inner.entries.retain(|e| {
            let is_kept = keep.is_some_and(|(n, v)| &*e.model.name == n && &*e.model.version == v)
                || pinned(&splits, &shadows, &e.model.name, &e.model.version);
            let alive = is_kept || now.saturating_duration_since(e.last_used) < ttl;
            if !alive {
                self.stats.evictions.fetch_add(1, Ordering::Relaxed);
                tracing::info!(model = %e.model.name, version = %e.model.version, reason = "ttl", "model evicted");
            }
            alive
        });
        inner.splits = splits;
        inner.shadows = shadows;
    }
}

/// What [`ModelCache::load_and_apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The state is now in force.
    Changed,
    /// It was in force already.
    Unchanged,
    /// It would have moved a canary backwards: ignored.
    Stale,
}

/// One log line per change of `name`'s rollout state, and the canary counters.
fn log_transition(name: &str, old: &RolloutState, new: &RolloutState, stats: &CacheStats) {
    let text = |s: &Option<std::collections::BTreeMap<String, u32>>| {
        s.as_ref().map_or_else(|| "none".to_string(), |m| format!("{m:?}"))
    };
    match (&old.canary, &new.canary) {
        (o, Some(c)) if o.as_ref() != Some(c) => {
            let same = o.as_ref().is_some_and(|o| o.id == c.id);
            match c.status {
                CanaryStatus::Running => {
                    if same {
                        stats.canary_steps.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::info!(event = "canary_step", model = name, version = %c.plan.version,
                        step = c.step + 1, steps = c.plan.steps.len(), percent = c.percent(),
                        split = %text(&new.split), "canary: {}% of the traffic to version {}", c.percent(), c.plan.version);
                }
                CanaryStatus::Completed => {
                    stats.canary_completions.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(event = "canary_completed", model = name, version = %c.plan.version,
                        "canary completed: version {} serves all traffic", c.plan.version);
                }
                CanaryStatus::RolledBack => {
                    stats.canary_rollbacks.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(event = "canary_rolled_back", model = name, version = %c.plan.version,
                        reason = c.reason.as_deref().unwrap_or(""), split = %text(&new.split),
                        "canary rolled back: {}", c.reason.as_deref().unwrap_or("no reason given"));
                }
            }
        }
        _ => {}
    }
    if old.serving != new.serving || old.split != new.split || old.shadow != new.shadow {
        tracing::info!(event = "model_rollout", model = name,
            serving = new.serving.as_deref().unwrap_or(""), split = %text(&new.split),
            shadow = new.shadow.as_deref().unwrap_or("none"),
            previous_serving = old.serving.as_deref().unwrap_or(""), previous_split = %text(&old.split),
            previous_shadow = old.shadow.as_deref().unwrap_or("none"), "rollout state changed");
    }
}

/// Whether a split of `name` names `version`, or it is `name`'s shadow (pinned against
/// eviction).
fn pinned(
    splits: &HashMap<String, Arc<Split>>,
    shadows: &HashMap<String, Arc<str>>,
    name: &str,
    version: &str,
) -> bool {
    splits.get(name).is_some_and(|s| s.weights().iter().any(|(v, _)| &**v == version))
        || shadows.get(name).is_some_and(|s| &**s == version)
}
