//! The control plane (README "Operating Sluice (control plane)"): HTTP on `control.listen`, served by `hyper` on a
//! current-thread tokio runtime of its own OS thread (`sluice-control`).
//!
//! It never blocks the hot path and shares no lock with it: it reads the pipeline's atomics,
//! the model cache (whose lock is held only for short lookups) and its own state. Blocking work
//! (starting and draining the pipeline, loading models, asking the broker for watermarks or
//! metadata) runs on the runtime's small blocking pool.
//!
//! - [`lifecycle`]: the state machine around `Pipeline::start` / `Pipeline::stop`.
//! - `routes`: the endpoints; `observe`: the periodic sampler (thread check, metrics mirror,
//!   consumer lag, the throughput/latency window) and the health checks.

mod canary;
mod http;
pub mod lifecycle;
mod observe;
mod rollout;
mod routes;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::config::Config;
use crate::models::ModelCache;
use crate::pipeline::StopReport;
use crate::telemetry::metrics::Metrics;

pub use lifecycle::{Lifecycle, PipelineState, StateInfo};
use state::Control;
pub use state::MAX_BODY_BYTES;

/// Most connections served at once for every endpoint.
const MAX_CONNECTIONS: usize = 64;
/// Connections accepted beyond [`MAX_CONNECTIONS`]: each answers one request, and only the
/// probes (`/health/*`, `/metrics`), so that slow or hostile clients holding every general
/// connection cannot make a liveness check time out. Beyond these, connections are closed at
/// once.
const PROBE_CONNECTIONS: usize = 16;
/// Time a client has to send a request's headers (also the idle limit of a kept-alive
/// connection).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection may stay open, whatever it does (a backstop: requests are bounded
/// by the header and body read limits, and a `stop` by the drain deadline).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// How the control plane starts.
#[derive(Debug, Clone)]
pub struct ControlOptions {
    /// Start the pipeline right away (`sluice serve` does when `streaming.inference.enabled`).
    pub autostart: bool,
    /// How often consumer lag is sampled.
    pub lag_interval: Duration,
}

impl Default for ControlOptions {
    fn default() -> Self {
        ControlOptions { autostart: true, lag_interval: Duration::from_secs(5) }
    }
}

/// Errors starting the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control.listen {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: std::io::Error },
    #[error("control.token is empty: remove the key, or set a secret")]
    EmptyToken,
    #[error("control plane: {0}")]
    Io(#[from] std::io::Error),
}

/// A running control plane. [`shutdown`](Self::shutdown) drains the pipeline and stops it.
pub struct ControlPlane {
    addr: SocketAddr,
    control: Arc<Control>,
    handle: tokio::runtime::Handle,
    shutdown: tokio::sync::watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlPlane {
    /// Binds `cfg.control.listen` (port 0 picks a free port; see [`local_addr`](Self::local_addr))
    /// and serves on a thread of its own. With `opts.autostart` the pipeline starts in the
    /// background (state `starting`, then `running` or `failed`).
    pub fn start(
        cfg: Config,
        cache: Arc<ModelCache>,
        opts: ControlOptions,
    ) -> Result<ControlPlane, ControlError> {
        let token = match cfg.control.token.as_deref() {
            Some(t) if t.trim().is_empty() => return Err(ControlError::EmptyToken),
            // Compared as the presented token is: without surrounding whitespace.
            Some(t) => Some(t.trim().as_bytes().to_vec()),
            None => None,
        };
        let listen = cfg.control.listen;
        let listener = std::net::TcpListener::bind(listen)
            .map_err(|reason| ControlError::Bind { addr: listen, reason })?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .max_blocking_threads(8)
            .thread_name("sluice-control-blocking")
            .build()?;
        let handle = runtime.handle().clone();
        let metrics = Arc::new(Metrics::new());
        let control = Arc::new(Control {
            lifecycle: Lifecycle::new(cfg.clone(), cache.clone(), metrics.clone()),
            observer: observe::Observer::new(&cfg, metrics.clone()),
            cfg,
            cache,
            token,
            metrics,
            started: Instant::now(),
            rollout: std::sync::OnceLock::new(),
        });
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let ctl = control.clone();
        let thread =
            std::thread::Builder::new().name("sluice-control".into()).spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(error = %e, "control plane: cannot use its listener");
                            return;
                        }
                    };
                    tokio::spawn(state::run(ctl.clone(), opts.lag_interval, shutdown_rx.clone()));
                    tokio::spawn(rollout_follower(ctl.clone(), shutdown_rx.clone()));
                    tokio::spawn(canary::run(ctl.clone(), shutdown_rx.clone()));
                    if opts.autostart {
                        let c = ctl.clone();
                        tokio::spawn(async move {
                            let _ = c.lifecycle.start().await;
                        });
                    }
                    serve(listener, ctl, shutdown_rx).await;
                });
                // Connections still open are dropped; blocking work gets a moment to finish.
                runtime.shutdown_timeout(Duration::from_secs(5));
            })?;
        tracing::info!(event = "control_plane_listening", %addr, auth = control.token.is_some(), "control plane listening");
        Ok(ControlPlane { addr, control, handle, shutdown, thread: Some(thread) })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The pipeline's lifecycle state.
    pub fn state(&self) -> StateInfo {
        self.control.lifecycle.info()
    }

    /// Drains and stops the pipeline (if it runs), then stops serving. Returns the drained
    /// pipeline's counters.
    pub fn shutdown(mut self) -> Option<StopReport> {
        let report = self.stop_pipeline();
        self.close();
        report
    }

    fn stop_pipeline(&self) -> Option<StopReport> {
        let (tx, rx) = std::sync::mpsc::channel();
        let ctl = self.control.clone();
        self.handle.spawn(async move {
            let _ = tx.send(ctl.lifecycle.stop().await.1);
        });
        rx.recv().ok().flatten()
    }

    fn close(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop_pipeline();
            self.close();
        }
    }
}

/// Starts following the rollout control topic, trying again every 5 s while the broker cannot
/// be reached (the pipeline does not wait for it).
async fn rollout_follower(ctl: Arc<Control>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    if ctl.cfg.kafka.topics.streaming.control.is_empty() {
        return;
    }
    loop {
        let c = ctl.clone();
        let started = tokio::task::spawn_blocking(move || {
            crate::kafka::rollout::RolloutSync::start(&c.cfg, c.cache.clone())
        })
        .await;
        match started {
            Ok(Ok(sync)) => {
                let _ = ctl.rollout.set(sync);
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "rollout control topic: not followed yet; trying again in 5 s")
            }
            Err(e) => tracing::warn!(error = %e, "rollout control topic: the start panicked"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    ctl: Arc<Control>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let general = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let probes = Arc::new(tokio::sync::Semaphore::new(PROBE_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "control plane: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let (permit, probes_only) = match general.clone().try_acquire_owned() {
            Ok(p) => (p, false),
            Err(_) => match probes.clone().try_acquire_owned() {
                Ok(p) => (p, true),
                Err(_) => {
                    tracing::debug!(%peer, "control plane: every connection slot is taken; closing");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let ctl = ctl.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let ctl = ctl.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(routes::handle(ctl, req, probes_only).await)
                }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(!probes_only)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "control plane connection ended with an error")
                }
                Ok(Ok(())) => {}
                Err(_) => {
                    tracing::debug!(%peer, "control plane connection closed at its lifetime limit")
                }
            }
            drop(permit);
        });
    }
    tracing::info!(event = "control_plane_stopped", "control plane stopped");
}
