//! The engine: rings plus lanes, built and joined in one place.
//!
//! Build (rings, stats), connect (completion channel), spawn (one thread per lane). `submit`
//! queues a validated request; `shutdown` closes the rings and joins every lane after it has
//! given every queued request an outcome.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::core::{EngineStats, LaneState, Outcome};
use crate::execute::circuit::{CircuitSettings, Circuits};
use crate::execute::lane::{Lane, LaneExit};
use crate::execute::shadow::{ShadowSetup, ShadowWorker};
use crate::execute::Executor;
use crate::execute::{CpuExecutor, LaneSettings, LaneShared};
use crate::queue::Request;
use crate::queue::{BatchPolicy, Rings};

/// GPU lanes: one per (device, stream) pair. Empty `devices` = no GPU lanes.
#[derive(Debug, Clone, Default)]
pub struct GpuLanes {
    /// CUDA device ordinals (`gpu.devices`).
    pub devices: Vec<usize>,
    /// Lanes (each with its own CUDA stream) per device (`gpu.streamsPerDevice`).
    pub streams_per_device: usize,
}

impl GpuLanes {
    /// Number of GPU lanes these settings ask for.
    pub fn count(&self) -> usize {
        self.devices.len() * self.streams_per_device
    }
}

/// How to build an engine.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub cpu_lanes: usize,
    /// GPU lanes (builds with the `cuda` feature), in addition to the CPU lanes.
    pub gpu: GpuLanes,
    pub ring_capacity: usize,
    pub policy: BatchPolicy,
    pub max_retries: u32,
    /// Longest an idle lane sleeps between looks at the rings (it is woken early by work).
    pub idle_wait: Duration,
    /// The model versions' circuit breakers.
    pub circuit: CircuitSettings,
    /// Device faults in a row that take a lane out of service (`gpu.laneFailureLimit`).
    pub lane_failure_limit: u32,
    /// A GPU lane out of service goes on as a CPU lane (`gpu.cpuFallback`).
    pub cpu_fallback: bool,
    /// Shadow scoring (with a Kafka sink only): where shadow results go.
    pub shadow: Option<ShadowSetup>,
}

/// Running lanes over shared rings.
pub struct Engine {
    rings: Arc<Rings>,
    stats: Arc<EngineStats>,
    circuits: Arc<Circuits>,
    lanes: Vec<JoinHandle<()>>,
    /// The shadow thread, joined after the lanes.
    shadow: Option<ShadowWorker>,
}

impl Engine {
    /// Spawns the lanes; every outcome goes to `completions`. CPU lanes come first (indices
    /// `0..cpu_lanes`; at least one unless there are GPU lanes), then one lane per GPU
    /// device × stream. Fails with a message naming the
    /// lane when a configured GPU lane cannot start (no `cuda` feature, no driver, no device).
    pub fn start(
        settings: &EngineSettings,
        completions: Sender<Outcome>,
    ) -> std::io::Result<Engine> {
        let gpu_lanes = settings.gpu.count();
        // With GPU lanes, `cpu_lanes` may be 0 (all work on the GPU); without, at least one.
        let cpu_lanes = if gpu_lanes > 0 { settings.cpu_lanes } else { settings.cpu_lanes.max(1) };
        if gpu_lanes > 0 && !cfg!(feature = "cuda") {
            return Err(std::io::Error::other(format!(
                "gpu.devices is {:?} but this build has no CUDA support: rebuild with `cargo build --features cuda`, or set gpu.devices: []",
                settings.gpu.devices
            )));
        }
        let rings = Arc::new(Rings::new(settings.ring_capacity));
        let stats = Arc::new(EngineStats::new(cpu_lanes + gpu_lanes));
        let circuits = Arc::new(Circuits::new(settings.circuit.clone()));
        let (tap, shadow) = match &settings.shadow {
            Some(setup) => {
                let (tap, worker) = ShadowWorker::start(setup, settings.policy.caps)?;
                (Some(tap), Some(worker))
            }
            None => (None, None),
        };
        let shared = LaneShared {
            rings: rings.clone(),
            completions,
            stats: stats.clone(),
            circuits: circuits.clone(),
            shadow: tap,
        };
        let mut engine = Engine {
            rings,
            stats,
            circuits,
            lanes: Vec::with_capacity(cpu_lanes + gpu_lanes),
            shadow,
        };
        for index in 0..cpu_lanes {
            let executor = CpuExecutor::new(settings.policy.caps);
            let lane = Lane::new(executor, shared.clone(), settings.lane_settings(index));
            let handle = std::thread::Builder::new()
                .name(format!("sluice-lane-{index}"))
                .spawn(move || run_lane(index, || serve_lane(lane, NO_FALLBACK)));
            match handle {
                Ok(h) => engine.lanes.push(h),
                Err(e) => return Err(engine.abort(e)),
            }
        }
        #[cfg(feature = "cuda")]
        {
            let mut index = cpu_lanes;
            for &device in &settings.gpu.devices {
                for stream in 0..settings.gpu.streams_per_device {
                    if let Err(e) = engine.spawn_gpu_lane(settings, &shared, index, device, stream)
                    {
                        return Err(engine.abort(e));
                    }
                    index += 1;
                }
            }
        }
        Ok(engine)
    }

    /// Starts a GPU lane on its own thread: the thread opens the device and builds its
    /// executor (so only it ever touches its stream), reports whether that worked, then runs.
    #[cfg(feature = "cuda")]
    fn spawn_gpu_lane(
        &mut self,
        settings: &EngineSettings,
        shared: &LaneShared,
        index: usize,
        device: usize,
        stream: usize,
    ) -> std::io::Result<()> {
        use crate::execute::cuda::CudaExecutor;
        let (ready_tx, ready_rx) =
            crossbeam_channel::bounded::<Result<(), crate::execute::cuda::GpuError>>(1);
        let caps = settings.policy.caps;
        let (shared, lane_settings, stats) =
            (shared.clone(), settings.lane_settings(index), self.stats.clone());
        let fallback = settings.cpu_fallback.then(|| {
            let (shared, lane_settings) = (shared.clone(), lane_settings.clone());
            move || Lane::new(CpuExecutor::new(caps), shared, lane_settings)
        });
        let handle =
            std::thread::Builder::new().name(format!("sluice-lane-{index}")).spawn(move || {
                match CudaExecutor::new(device, stream, caps, stats, index) {
                    Ok(executor) => {
                        let _ = ready_tx.send(Ok(()));
                        let lane = Lane::new(executor, shared, lane_settings);
                        run_lane(index, || serve_lane(lane, fallback));
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })?;
        self.lanes.push(handle);
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(std::io::Error::other(format!(
                "GPU lane {index} (cuda:{device}/stream{stream}): {e}"
            ))),
            Err(_) => Err(std::io::Error::other(format!(
                "GPU lane {index} (cuda:{device}/stream{stream}) exited while starting"
            ))),
        }
    }

    /// Closes the rings, joins every lane started so far and hands back `e`.
    fn abort(&mut self, e: std::io::Error) -> std::io::Error {
        self.rings.close();
        for h in self.lanes.drain(..) {
            let _ = h.join();
        }
        e
    }

    /// The rings (for depth gauges and backpressure checks).
    pub fn rings(&self) -> &Arc<Rings> {
        &self.rings
    }

    /// Batch statistics.
    pub fn stats(&self) -> &Arc<EngineStats> {
        &self.stats
    }

    /// The circuit breakers (state for `status` and metrics; parked partitions for the
    /// source).
    pub fn circuits(&self) -> &Arc<Circuits> {
        &self.circuits
    }

    /// Whether the lanes can serve: every lane thread still running (a lane ends on its own
    /// only when it panicked outside a model call, a bug in Sluice, or when it was taken out
    /// of service), except lanes out of service, and at least one lane in service. Else the
    /// pipeline reports itself failed; what the lanes held stays uncommitted.
    pub fn lanes_alive(&self) -> bool {
        let states = self.stats.lane_states();
        let in_service = states.iter().filter(|s| **s != LaneState::OutOfService).count();
        in_service > 0
            && self
                .lanes
                .iter()
                .enumerate()
                .all(|(i, h)| !h.is_finished() || states.get(i) == Some(&LaneState::OutOfService))
    }

    /// Queues a request; hands it back if its ring is full.
    pub fn submit(&self, req: Request) -> Result<(), Request> {
        self.rings.push(req)
    }

    /// Queues a request, waiting while its ring is full; hands it back once the rings are
    /// abandoned.
    pub fn submit_wait(&self, req: Request) -> Result<(), Request> {
        self.rings.push_wait(req)
    }

    /// Stops taking work, lets the lanes finish everything queued, and joins them.
    pub fn shutdown(self) {
        let _ = self.shutdown_by(None);
    }

    /// [`shutdown`](Self::shutdown), but at `deadline` the rings are abandoned (lanes stop
    /// after their current batch) and lanes still running a second later are left behind:
    /// returns the indices of those (hung inside a model call, which cannot be interrupted).
    pub fn shutdown_by(mut self, deadline: Option<Instant>) -> Vec<usize> {
        self.rings.close();
        let lanes: Vec<JoinHandle<()>> = self.lanes.drain(..).collect();
        if let Some(deadline) = deadline {
            if !wait_until(deadline, || lanes.iter().all(JoinHandle::is_finished)) {
                self.rings.abandon();
                wait_until(Instant::now() + Duration::from_secs(1), || {
                    lanes.iter().all(JoinHandle::is_finished)
                });
            }
        }
        let mut hung = Vec::new();
        for (i, h) in lanes.into_iter().enumerate() {
            if deadline.is_some() && !h.is_finished() {
                tracing::error!(
                    lane = i,
                    "lane still busy at the drain deadline (hung in a model call); left behind"
                );
                hung.push(i);
                continue;
            }
            if h.join().is_err() {
                tracing::error!("a lane thread panicked");
            }
        }
        if let Some(worker) = self.shadow.take() {
            worker.stop();
            worker.join();
        }
        let parked = self.circuits.take_all_parked();
        if !parked.is_empty() {
            tracing::warn!(
                requests = parked.len(),
                "requests parked behind open circuit breakers are left uncommitted (read again after a restart)"
            );
        }
        hung
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.rings.close();
        for h in self.lanes.drain(..) {
            let _ = h.join();
        }
        if let Some(worker) = self.shadow.take() {
            worker.stop();
            worker.join();
        }
    }
}

/// Waits (in 5 ms steps) until `done()` holds or `deadline` passes; returns `done()`.
pub fn wait_until(deadline: Instant, done: impl Fn() -> bool) -> bool {
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// No CPU fallback (CPU lanes, and GPU lanes without `gpu.cpuFallback`).
pub const NO_FALLBACK: Option<fn() -> Lane<CpuExecutor>> = None;

/// Runs `lane` until it finishes; if it leaves service (device faults) and `fallback` is
/// given, goes on as the CPU lane `fallback` builds (same thread and index:
/// `gpu.cpuFallback`).
pub fn serve_lane<E: Executor, F: FnOnce() -> Lane<CpuExecutor>>(
    lane: Lane<E>,
    fallback: Option<F>,
) -> LaneExit {
    let (index, stats) = (lane.index(), lane.stats().clone());
    match lane.run() {
        LaneExit::OutOfService(why) => match fallback {
            Some(build) => {
                tracing::warn!(lane = index, reason = %why, "gpu.cpuFallback: the lane goes on as a CPU lane");
                stats.set_lane_state(index, LaneState::CpuFallback);
                build().run()
            }
            None => LaneExit::OutOfService(why),
        },
        done => done,
    }
}

/// Runs a lane loop, logging a panic that escapes it (panics inside model calls are caught
/// per batch by the lane itself).
fn run_lane(index: usize, run: impl FnOnce() -> LaneExit) {
    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        let why = crate::core::panic_message(p.as_ref());
        tracing::error!(lane = index, panic = %why, "lane thread panicked and stopped; the pipeline is failed, and its in-flight records stay uncommitted");
    }
}

impl EngineSettings {
    fn lane_settings(&self, index: usize) -> LaneSettings {
        LaneSettings {
            index,
            policy: self.policy.clone(),
            max_retries: self.max_retries,
            idle_wait: self.idle_wait,
            device_fault_limit: self.lane_failure_limit.max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn gpu_lanes_need_the_cuda_feature() {
        let settings = EngineSettings {
            gpu: GpuLanes { devices: vec![0], streams_per_device: 2 },
            ..EngineSettings::default()
        };
        let (tx, _rx) = crossbeam_channel::unbounded();
        let err =
            Engine::start(&settings, tx).err().expect("no GPU lanes without the cuda feature");
        assert!(err.to_string().contains("--features cuda"), "{err}");
    }

    #[test]
    fn gpu_lane_count_is_devices_times_streams() {
        assert_eq!(GpuLanes { devices: vec![0, 1], streams_per_device: 3 }.count(), 6);
        assert_eq!(GpuLanes::default().count(), 0);
    }
}
