//! The one run loop: a record source and an outcome sink around one engine.
//!
//! Every way of running Sluice is a composition of the same three parts:
//!
//! - a [`RecordSource`] on its own thread turns records into [`Envelope`]s and offers them
//!   to an [`Intake`], which decodes them, queues the valid requests on the engine's rings
//!   and sends every rejected record's outcome straight to the sink;
//! - the [`Engine`]'s lanes batch, compute and send one [`Outcome`] per request;
//! - an [`OutcomeSink`] on its own thread writes every outcome (results and dead letters).
//!
//! `sluice serve` is the Kafka source and sink (`kafka::source`, `kafka::sink`), `sluice
//! batch` the JSONL file source and sink (`jsonl`), and `sluice demo` the Kafka pair against
//! an in-process broker. [`Running`] spawns and joins the source and sink threads; the
//! engine spawns and joins its lanes. Stopping drains in one order: the source stops and
//! hands over what it holds, the lanes finish everything queued, the sink writes every
//! outcome and returns once the completion channel is closed and everything is settled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::core::{EngineStats, Envelope, ErrorClass, Failure, IngestStats, Outcome};
use crate::decode::{Decoder, Undecoded};
use crate::engine::{wait_until, Engine, EngineSettings};
use crate::execute::circuit::Circuits;
use crate::models::cache::Lookup;
use crate::models::{LoadDone, ModelKey};
use crate::queue::{Request, Rings};

/// Why a run could not start or ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The lanes could not start (a GPU lane that cannot open its device, say).
    #[error("starting lanes: {0}")]
    Lanes(std::io::Error),
    /// A thread could not be spawned.
    #[error("spawning thread {name}: {source}")]
    Spawn { name: &'static str, source: std::io::Error },
    /// A source or sink failed (reading input, writing output).
    #[error("{stage}: {reason}")]
    Stage { stage: &'static str, reason: String },
    /// A source or sink thread panicked.
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
    /// Threads still running at the drain deadline, left behind (hung in a model call, or
    /// in a client call that does not return).
    #[error("still running at the drain deadline: {0}")]
    Hung(String),
    /// A Kafka transaction failed (exactly-once): it was aborted, and the pipeline must
    /// restart from the last committed offsets; `fatal` when it cannot (fenced).
    #[error("transaction failed: {cause}")]
    Transaction { cause: String, fatal: bool },
}

/// Where records come from: Kafka topics, a JSONL file.
pub trait RecordSource: Send + 'static {
    /// The name of its thread (`sluice-ingest`, `sluice-jsonl-reader`).
    fn thread_name(&self) -> &'static str;

    /// Reads records and offers each to `intake` until the input ends or `stop` is set.
    /// Every record it takes in either reaches `intake` (and so gets exactly one outcome)
    /// or is left for the next reader (an uncommitted Kafka offset). Before returning it
    /// queues whatever it still holds.
    fn run(self: Box<Self>, intake: Intake, stop: &AtomicBool) -> Result<(), RunError>;
}

/// Where outcomes go: Kafka topics, JSONL files.
pub trait OutcomeSink: Send + 'static {
    /// The name of its thread (`sluice-emit`, `sluice-jsonl-writer`).
    fn thread_name(&self) -> &'static str;

    /// Writes every outcome it receives; returns once `outcomes` is closed (all sources and
    /// lanes are gone) and everything written is settled (acknowledged or given up on), or
    /// soon after `abandon` is set (the drain deadline passed: what is not settled then
    /// stays uncommitted).
    fn run(
        self: Box<Self>,
        outcomes: Receiver<Outcome>,
        abandon: &AtomicBool,
    ) -> Result<(), RunError>;
}

/// A source's way into the engine: decoding, queueing, and rejecting records. Owned by the
/// source thread.
pub struct Intake {
    decoder: Decoder,
    rings: Arc<Rings>,
    circuits: Arc<Circuits>,
    completions: Sender<Outcome>,
    stats: Arc<IngestStats>,
    /// The model cache's routing generation the parked requests were last routed at, and
    /// when to try again a re-routing that could not finish.
    routing_seen: u64,
    reroute_retry_at: Option<Instant>,
}

/// What became of a record offered with [`Intake::try_decode`].
#[derive(Debug)]
pub enum Intaken {
    /// A valid request, to queue.
    Request(Request),
    /// Rejected: its dead letter is on its way to the sink.
    Rejected,
    /// Its model version is loading on the loader thread: keep it, and hand it to
    /// [`Intake::resume`] once [`Intake::loads_finished`] reports that load.
    Waiting(Envelope, ModelKey),
}

impl Intake {
    /// Decodes `env` into a request. A record that is empty or fails to decode gets its
    /// dead-letter outcome at once (`None`). A model that is not loaded is loaded first
    /// (waiting for the loader, if the decoder has one).
    pub fn decode(&mut self, env: Envelope) -> Option<Request> {
        let env = self.count_and_check(env)?;
        match self.decoder.decode(env) {
            Ok(req) => Some(req),
            Err((env, failure)) => {
                self.reject(env, failure);
                None
            }
        }
    }

    /// [`decode`](Self::decode) without waiting for a model load: a record whose model
    /// version is loading comes back as [`Intaken::Waiting`].
    pub fn try_decode(&mut self, env: Envelope) -> Intaken {
        let Some(env) = self.count_and_check(env) else { return Intaken::Rejected };
        let r = self.decoder.try_decode(env);
        self.intaken(r)
    }

    /// Requests parked behind an open breaker whose version was chosen by routing, and which
    /// routing now sends elsewhere (a canary rolled back, the serving version or the split
    /// changed), go to the version it picks now: a rollback away from a failing version does
    /// not leave its requests (and their partitions) waiting for that version. Requests that
    /// named their version keep waiting for it. Cheap when nothing changed (one atomic load);
    /// the source calls it on every loop.
    pub fn reroute_parked(&mut self) {
        let cache = self.decoder.cache().clone();
        let generation = cache.routing_generation();
        if generation == self.routing_seen
            || self.reroute_retry_at.is_some_and(|t| Instant::now() < t)
        {
            return;
        }
        let moved = self.circuits.take_parked_if(|r| {
            r.routed
                && cache
                    .routed_version(&r.model.name, r.route_key())
                    .is_ok_and(|v| v != r.model.version)
        });
        let (mut rerouted, mut stuck) = (0usize, Vec::new());
        let now = Instant::now();
        for mut r in moved {
            match cache.lookup_routed(&r.model.name, None, Some(r.route_key()), now) {
                Lookup::Ready(m) => {
                    r.model = m;
                    match self.queue(r) {
                        Ok(()) => rerouted += 1,
                        Err(r) => stuck.push(r),
                    }
                }
                // Not loaded (or failing): it stays parked; tried again in a second.
                Lookup::Missing { .. } | Lookup::Failed(_) => stuck.push(r),
            }
        }
        if rerouted > 0 {
            tracing::info!(
                requests = rerouted,
                "parked requests routed to the version their model's routing now picks"
            );
        }
        if stuck.is_empty() {
            self.routing_seen = generation;
            self.reroute_retry_at = None;
        } else {
            self.circuits.park(stuck);
            self.reroute_retry_at = Some(now + Duration::from_secs(1));
        }
    }

    /// Decodes a record that waited for `done`'s load (it is not counted again).
    pub fn resume(&mut self, env: Envelope, done: &LoadDone) -> Intaken {
        let r = self.decoder.decode_loaded(env, done);
        self.intaken(r)
    }

    /// Model loads that finished since the last call.
    pub fn loads_finished(&mut self) -> Vec<LoadDone> {
        self.decoder.loads_finished()
    }

    /// Waits up to `timeout` for the next finished model load.
    pub fn wait_for_load(&mut self, timeout: Duration) -> Option<LoadDone> {
        self.decoder.wait_for_load(timeout)
    }

    fn intaken(&self, r: Result<Request, Undecoded>) -> Intaken {
        match r {
            Ok(req) => Intaken::Request(req),
            Err(Undecoded::Rejected(env, failure)) => {
                self.reject(env, failure);
                Intaken::Rejected
            }
            Err(Undecoded::Waiting(env, key)) => Intaken::Waiting(env, key),
        }
    }

    /// Counts `env` as consumed; rejects an empty one.
    fn count_and_check(&self, env: Envelope) -> Option<Envelope> {
        self.stats.consumed.fetch_add(1, Ordering::Relaxed);
        if env.payload.iter().all(u8::is_ascii_whitespace) {
            self.reject(env, Failure::new(ErrorClass::Parse, "empty record value"));
            return None;
        }
        Some(env)
    }

    /// [`decode`](Self::decode)s `env` and queues its request. A valid request whose ring is
    /// full is handed back (`Err`) for the source to hold and [`queue`](Self::queue) again.
    pub fn offer(&mut self, env: Envelope) -> Result<(), Request> {
        match self.decode(env) {
            Some(req) => self.rings.push(req),
            None => Ok(()),
        }
    }

    /// [`offer`](Self::offer), waiting while the request's ring is full (a source that has
    /// nothing else to do, such as a file reader). Hands the request back only when the
    /// rings were abandoned at the drain deadline.
    pub fn offer_wait(&mut self, env: Envelope) -> Result<(), Request> {
        match self.offer(env) {
            Ok(()) => Ok(()),
            Err(req) => self.rings.push_wait(req),
        }
    }

    /// Counts `env` as consumed and sends its dead letter without decoding it (a record the
    /// source itself found unreadable: an unknown content type, an over-long line).
    pub fn reject_unread(&self, env: Envelope, failure: Failure) {
        self.stats.consumed.fetch_add(1, Ordering::Relaxed);
        self.reject(env, failure);
    }

    fn reject(&self, env: Envelope, failure: Failure) {
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        // The sink holds the receiver until every sender is gone, so this fails only if
        // the sink thread died; the pipeline's health check reports that.
        let _ = self.completions.send(Outcome::rejected(env, failure));
    }

    /// Queues a request the source held back; hands it back if its ring is still full.
    pub fn queue(&self, req: Request) -> Result<(), Request> {
        self.rings.push(req)
    }

    /// Queues a request, waiting while its ring is full; hands it back when the rings were
    /// abandoned at the drain deadline.
    pub fn queue_wait(&self, req: Request) -> Result<(), Request> {
        self.rings.push_wait(req)
    }

    /// The engine's rings (for a source that waits for space while it keeps polling).
    pub fn rings(&self) -> &Arc<Rings> {
        &self.rings
    }

    /// The engine's circuit breakers (a source pauses the partitions of parked requests).
    pub fn circuits(&self) -> &Arc<Circuits> {
        &self.circuits
    }
}

/// A source, an engine and a sink, running.
pub struct Running {
    engine: Option<Engine>,
    rings: Arc<Rings>,
    engine_stats: Arc<EngineStats>,
    circuits: Arc<Circuits>,
    source: Option<(&'static str, JoinHandle<Result<(), RunError>>)>,
    sink: Option<(&'static str, JoinHandle<Result<(), RunError>>)>,
    stop: Arc<AtomicBool>,
    abandon: Arc<AtomicBool>,
}

impl Running {
    /// Builds the engine and spawns the sink, then the source. The channel of outcomes to
    /// the sink is bounded (the lanes wait when it is full).
    pub fn start(
        source: Box<dyn RecordSource>,
        sink: Box<dyn OutcomeSink>,
        settings: &EngineSettings,
        decoder: Decoder,
        ingest_stats: Arc<IngestStats>,
    ) -> Result<Running, RunError> {
        let (tx, rx) = crossbeam_channel::bounded(settings.ring_capacity.max(256));
        let engine = Engine::start(settings, tx.clone()).map_err(RunError::Lanes)?;
        let rings = engine.rings().clone();
        let mut running = Running {
            rings: rings.clone(),
            engine_stats: engine.stats().clone(),
            circuits: engine.circuits().clone(),
            engine: Some(engine),
            source: None,
            sink: None,
            stop: Arc::default(),
            abandon: Arc::default(),
        };
        let name = sink.thread_name();
        let abandon = running.abandon.clone();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || sink.run(rx, &abandon))
            .map_err(|source| RunError::Spawn { name, source })?;
        running.sink = Some((name, handle));
        let intake = Intake {
            decoder,
            rings,
            circuits: running.circuits.clone(),
            completions: tx,
            stats: ingest_stats,
            routing_seen: 0,
            reroute_retry_at: None,
        };
        let stop = running.stop.clone();
        let name = source.thread_name();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || source.run(intake, &stop))
            .map_err(|source| RunError::Spawn { name, source })?;
        running.source = Some((name, handle));
        Ok(running)
    }

    /// The engine's batch statistics.
    pub fn engine_stats(&self) -> &Arc<EngineStats> {
        &self.engine_stats
    }

    /// The engine's rings (depth gauges).
    pub fn rings(&self) -> &Arc<Rings> {
        &self.rings
    }

    /// The engine's circuit breakers.
    pub fn circuits(&self) -> &Arc<Circuits> {
        &self.circuits
    }

    /// Whether the source, the sink and every lane thread are still running.
    pub fn is_healthy(&self) -> bool {
        let alive = |t: &Option<(&'static str, JoinHandle<_>)>| {
            t.as_ref().is_some_and(|(_, h)| !h.is_finished())
        };
        alive(&self.source)
            && alive(&self.sink)
            && self.engine.as_ref().is_some_and(Engine::lanes_alive)
    }

    /// Whether the source has ended by itself (the end of its input).
    pub fn source_finished(&self) -> bool {
        self.source.as_ref().is_none_or(|(_, h)| h.is_finished())
    }

    /// Asks the source to stop reading; [`finish`](Self::finish) then drains.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Waits for the source to end (by itself, or after [`request_stop`](Self::request_stop)),
    /// lets the lanes finish every queued request, and waits for the sink to settle every
    /// outcome. Returns the first error of the source or the sink.
    pub fn finish(mut self) -> Result<(), RunError> {
        self.drain(None)
    }

    /// [`finish`](Self::finish), ending by `deadline` whatever is stuck: at the deadline the
    /// rings are abandoned (lanes stop taking work, waiting sources get their requests back)
    /// and the sink stops waiting for acknowledgements. What was not settled stays
    /// uncommitted. Threads that still do not end (a lane hung in a model call) are left
    /// behind and named in [`RunError::Hung`].
    pub fn finish_by(mut self, deadline: Instant) -> Result<(), RunError> {
        self.drain(Some(deadline))
    }

    fn drain(&mut self, deadline: Option<Instant>) -> Result<(), RunError> {
        // A sink that ended before its input did failed (it could not write): nothing the
        // source reads from here on can be written, so stop reading.
        let source_done = || self.source.as_ref().is_none_or(|(_, h)| h.is_finished());
        let sink_failed = || self.sink.as_ref().is_none_or(|(_, h)| h.is_finished());
        while !source_done() {
            if sink_failed() {
                tracing::error!("the outcome writer stopped; the reader stops too");
                self.request_stop();
                break;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut hung = Vec::new();
        let rings = self.rings.clone();
        let source = join_by(self.source.take(), deadline, &mut hung, || rings.abandon());
        let lanes = self.engine.take().map(|e| e.shutdown_by(deadline)).unwrap_or_default();
        hung.extend(lanes.iter().map(|i| format!("sluice-lane-{i}")));
        let abandon = self.abandon.clone();
        let sink = join_by(self.sink.take(), deadline, &mut hung, || {
            abandon.store(true, Ordering::SeqCst)
        });
        if !hung.is_empty() {
            return Err(RunError::Hung(hung.join(", ")));
        }
        source.and(sink)
    }
}

/// How long dropping a run that was not finished waits for it to drain: a run dropped in
/// error (a panic unwinding past it) must not hang on a stuck model load or a broker that is
/// gone; what is not settled by then stays uncommitted.
const DROP_DRAIN: Duration = Duration::from_secs(30);

impl Drop for Running {
    fn drop(&mut self) {
        if self.source.is_some() || self.sink.is_some() || self.engine.is_some() {
            self.request_stop();
            if let Err(e) = self.drain(Some(Instant::now() + DROP_DRAIN)) {
                tracing::error!(error = %e, "run ended with an error");
            }
        }
    }
}

/// Joins a stage's thread. With a deadline: waits until it, then calls `give_up` (which tells
/// the thread to stop waiting) and waits up to 2 s more; a thread still running then is left
/// behind and its name added to `hung`.
fn join_by(
    t: Option<(&'static str, JoinHandle<Result<(), RunError>>)>,
    deadline: Option<Instant>,
    hung: &mut Vec<String>,
    give_up: impl FnOnce(),
) -> Result<(), RunError> {
    let Some((name, h)) = t else { return Ok(()) };
    if let Some(deadline) = deadline {
        if !wait_until(deadline, || h.is_finished()) {
            tracing::warn!(thread = name, "drain deadline passed; telling it to stop waiting");
            give_up();
            if !wait_until(Instant::now() + Duration::from_secs(2), || h.is_finished()) {
                tracing::error!(
                    thread = name,
                    "still running after the drain deadline; left behind"
                );
                hung.push(name.to_owned());
                return Ok(());
            }
        }
    }
    h.join().unwrap_or(Err(RunError::Panicked(name)))
}
