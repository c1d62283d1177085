//! Model loads off the ingest thread (threads `sluice-model-loader-N`).
//!
//! A record naming a model version that is on disk but not loaded must not stop the ingest
//! thread for the seconds a load and warm-up take: nothing would be polled or committed
//! meanwhile. The ingest thread asks the loader instead ([`ModelLoader::request`]), parks the
//! record, and keeps consuming; the loader threads load versions into the shared
//! [`ModelCache`] ([`LOADER_THREADS`] at once, never two versions of one model at once) and
//! report each finished load ([`LoadDone`], with the loaded model itself, so the parked
//! records are served by it even if the cache evicts it again at once).
//!
//! Loads triggered by records are rate-limited per model name ([`MIN_LOAD_INTERVAL`]), so
//! records cycling through more versions than the cache holds cannot turn the loader into a
//! loop of loads and evictions; a failed load is remembered by the cache with backoff.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};

use super::{LoadedModel, ModelCache};
use crate::core::panic_message;

/// A model version: the name and the concrete version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelKey {
    pub name: Arc<str>,
    pub version: Arc<str>,
}

impl std::fmt::Display for ModelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.name, self.version)
    }
}

/// A finished load: the model, or why it could not be loaded.
#[derive(Debug, Clone)]
pub struct LoadDone {
    pub key: ModelKey,
    pub result: Result<Arc<LoadedModel>, String>,
}

/// The shortest time between the starts of two record-triggered loads of one model name.
pub const MIN_LOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Loads that may run at once (of different model names): a slow or hung load of one model
/// does not hold up the loads of the others, and the memory of concurrent loads stays bounded.
pub const LOADER_THREADS: usize = 2;

/// How long dropping the loader waits for loads in progress before leaving their threads
/// behind (a load hung in a filesystem or a library call cannot be interrupted).
const JOIN_WAIT: Duration = Duration::from_secs(5);

/// What the loader threads share: the queue of versions to load and the rate limit.
#[derive(Default)]
struct Sched {
    queue: Vec<ModelKey>,
    /// When the last load of each model name started.
    last_start: HashMap<Arc<str>, Instant>,
    /// Model names being loaded now (two versions of one model never load at once).
    loading: HashSet<Arc<str>>,
    closed: bool,
}

struct Shared {
    sched: Mutex<Sched>,
    wake: Condvar,
    cache: Arc<ModelCache>,
    done: Sender<LoadDone>,
}

/// The handle the ingest thread holds. Dropping it stops the loaders after the loads in
/// progress (if any) and joins their threads.
pub struct ModelLoader {
    shared: Arc<Shared>,
    done: Receiver<LoadDone>,
    /// Versions asked for and not yet reported done: each is loaded once however many
    /// records wait for it. Bounded by the versions that exist on disk.
    requested: HashSet<ModelKey>,
    threads: Vec<JoinHandle<()>>,
}

impl ModelLoader {
    /// Starts the loader threads over `cache`.
    pub fn start(cache: Arc<ModelCache>) -> std::io::Result<ModelLoader> {
        let (done_tx, done) = crossbeam_channel::unbounded::<LoadDone>();
        let shared = Arc::new(Shared {
            sched: Mutex::new(Sched::default()),
            wake: Condvar::new(),
            cache,
            done: done_tx,
        });
        let mut loader = ModelLoader {
            shared: shared.clone(),
            done,
            requested: HashSet::new(),
            threads: Vec::new(),
        };
        for i in 0..LOADER_THREADS {
            let shared = shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("sluice-model-loader-{i}"))
                .spawn(move || load_loop(&shared))?;
            loader.threads.push(t);
        }
        Ok(loader)
    }

    /// Asks for `key` to be loaded (once, however often it is asked until it is done).
    pub fn request(&mut self, key: &ModelKey) {
        if !self.requested.insert(key.clone()) {
            return;
        }
        self.shared.sched.lock().queue.push(key.clone());
        self.shared.wake.notify_one();
    }

    /// Loads finished since the last call (does not wait).
    pub fn finished(&mut self) -> Vec<LoadDone> {
        let done: Vec<LoadDone> = self.done.try_iter().collect();
        for d in &done {
            self.requested.remove(&d.key);
        }
        done
    }

    /// Waits up to `timeout` for the next finished load.
    pub fn wait(&mut self, timeout: Duration) -> Option<LoadDone> {
        let d = self.done.recv_timeout(timeout).ok()?;
        self.requested.remove(&d.key);
        Some(d)
    }

    /// Waits for the load of `key` to finish (other loads finished meanwhile are returned
    /// too, in `others`). `None` when the loader threads are gone.
    pub fn wait_for(&mut self, key: &ModelKey, others: &mut Vec<LoadDone>) -> Option<LoadDone> {
        self.request(key);
        loop {
            let d = self.done.recv().ok()?;
            self.requested.remove(&d.key);
            if d.key == *key {
                return Some(d);
            }
            others.push(d);
        }
    }
}

impl Drop for ModelLoader {
    fn drop(&mut self) {
        self.shared.sched.lock().closed = true;
        self.shared.wake.notify_all();
        let until = Instant::now() + JOIN_WAIT;
        for t in self.threads.drain(..) {
            while !t.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!(
                    waited_ms = JOIN_WAIT.as_millis() as u64,
                    "a model loader is still inside a load; its thread is left behind"
                );
            }
        }
    }
}

/// A loader thread: takes versions in the order asked, except that a model name loading now,
/// or whose last load started less than [`MIN_LOAD_INTERVAL`] ago, waits its turn while others go
/// ahead. Ends when the handle drops.
fn load_loop(shared: &Shared) {
    loop {
        let key = {
            let mut s = shared.sched.lock();
            loop {
                if s.closed {
                    return;
                }
                let now = Instant::now();
                let ready_at = |k: &ModelKey| {
                    s.last_start.get(&k.name).map_or(now, |t| *t + MIN_LOAD_INTERVAL)
                };
                let next = s
                    .queue
                    .iter()
                    .enumerate()
                    .filter(|(_, k)| !s.loading.contains(&k.name))
                    .map(|(i, k)| (i, ready_at(k)))
                    .min_by_key(|(_, at)| *at);
                match next {
                    Some((i, at)) if at <= now => {
                        let key = s.queue.remove(i);
                        s.loading.insert(key.name.clone());
                        s.last_start.insert(key.name.clone(), now);
                        break key;
                    }
                    Some((_, at)) => {
                        shared.wake.wait_for(&mut s, at - now);
                    }
                    None => shared.wake.wait(&mut s),
                }
            }
        };
        let started = Instant::now();
        // A panic inside a model library while loading is a failed load, not a dead loader
        // (records would wait for it forever).
        let load =
            std::panic::AssertUnwindSafe(|| shared.cache.load_at(&key.name, &key.version, started));
        let result = match std::panic::catch_unwind(load) {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(p) => {
                let e = format!("panicked while loading: {}", panic_message(&*p));
                shared.cache.remember_failure(&key.name, &key.version, &e, Instant::now());
                Err(e)
            }
        };
        tracing::debug!(model = %key, ok = result.is_ok(), ms = started.elapsed().as_millis() as u64, "record-triggered load finished");
        shared.sched.lock().loading.remove(&key.name);
        // Another version of this model may be waiting for it to finish.
        shared.wake.notify_all();
        if shared.done.send(LoadDone { key, result }).is_err() {
            return;
        }
    }
}
