//! The open-loop send loop, over a clock and a sink so that it can be driven by simulated time
//! in tests.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Time as the send loop sees it: nanoseconds from the start of the run.
pub trait Clock: Send + Sync {
    /// Nanoseconds since the start of the run.
    fn now_ns(&self) -> u64;
    /// Returns at or after `t_ns` (or earlier, to let the caller service its client).
    fn sleep_until(&self, t_ns: u64);
}

/// The wall clock, from an origin `Instant`.
pub struct RealClock {
    origin: Instant,
}

impl RealClock {
    /// A clock whose zero is `origin` (which may be in the future: the run then starts there).
    pub fn new(origin: Instant) -> Self {
        RealClock { origin }
    }

    /// The origin.
    pub fn origin(&self) -> Instant {
        self.origin
    }
}

impl Clock for RealClock {
    fn now_ns(&self) -> u64 {
        Instant::now().saturating_duration_since(self.origin).as_nanos() as u64
    }

    fn sleep_until(&self, t_ns: u64) {
        let target = self.origin + Duration::from_nanos(t_ns);
        let now = Instant::now();
        if target > now {
            // Short naps, so the caller gets to service its client at least every 2 ms.
            std::thread::sleep((target - now).min(Duration::from_millis(2)));
        }
    }
}

/// Simulated time for tests: `sleep_until` jumps the clock forward; `advance` models a stall.
#[derive(Default)]
pub struct SimClock {
    now: AtomicU64,
}

impl SimClock {
    /// Moves time forward by `ns` (something took that long).
    pub fn advance(&self, ns: u64) {
        self.now.fetch_add(ns, Ordering::SeqCst);
    }
}

impl Clock for SimClock {
    fn now_ns(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    fn sleep_until(&self, t_ns: u64) {
        self.now.fetch_max(t_ns, Ordering::SeqCst);
    }
}

/// Where the send loop hands records.
pub trait Sink {
    /// Tries to send record `seq` (intended at `intended_ns`); false when the client cannot take
    /// it now (queue full), in which case it is offered again after [`Sink::service`].
    fn try_send(&mut self, seq: usize, intended_ns: u64) -> bool;
    /// Lets the client make progress (deliveries, callbacks).
    fn service(&mut self);
}

/// What the send loop did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SendStats {
    /// Records handed to the sink.
    pub sent: usize,
    /// Largest delay between a record's intended and actual send time, ns.
    pub max_lag_ns: u64,
    /// Records sent more than 1 ms after their intended time.
    pub late: u64,
}

/// Sends record `i` at `intended_ns[i]`, never waiting for responses: when the loop falls
/// behind it sends what is due at once, and the records keep their intended times.
pub fn run_open_loop(
    clock: &dyn Clock,
    intended_ns: &[u64],
    sink: &mut dyn Sink,
    stop: &AtomicBool,
) -> SendStats {
    let mut stats = SendStats::default();
    for (seq, &due) in intended_ns.iter().enumerate() {
        loop {
            if stop.load(Ordering::Relaxed) {
                return stats;
            }
            if clock.now_ns() >= due {
                break;
            }
            clock.sleep_until(due);
            sink.service();
        }
        while !sink.try_send(seq, due) {
            if stop.load(Ordering::Relaxed) {
                return stats;
            }
            sink.service();
        }
        let lag = clock.now_ns().saturating_sub(due);
        stats.max_lag_ns = stats.max_lag_ns.max(lag);
        stats.late += u64::from(lag > 1_000_000);
        stats.sent += 1;
        if seq.is_multiple_of(64) {
            sink.service();
        }
    }
    stats
}
