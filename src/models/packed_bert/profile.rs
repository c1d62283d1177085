//! Optional time per encoder operation (off by default; one relaxed atomic load per
//! operation when off). In group mode the times of concurrent tasks add up (CPU time).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// Encoder operations.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Embed,
    Qkv,
    Attention,
    AttnOut,
    LayerNorm,
    FfnIn,
    FfnOut,
}

/// Names of the operations, in `Op` order.
pub const NAMES: [&str; 7] =
    ["embed", "qkv", "attention", "attn_out", "layer_norm", "ffn_in", "ffn_out"];

static ON: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];

/// Turns collection on or off.
pub fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// Seconds per operation since the last call (and resets).
pub fn take() -> [(&'static str, f64); 7] {
    let mut out = [("", 0.0); 7];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (NAMES[i], NANOS[i].swap(0, Ordering::Relaxed) as f64 * 1e-9);
    }
    out
}

pub(super) struct Clock(Option<Instant>);

impl Clock {
    pub(super) fn start() -> Self {
        Clock(ON.load(Ordering::Relaxed).then(Instant::now))
    }

    pub(super) fn lap(&mut self, op: Op) {
        if let Some(t) = &mut self.0 {
            let now = Instant::now();
            NANOS[op as usize].fetch_add((now - *t).as_nanos() as u64, Ordering::Relaxed);
            *t = now;
        }
    }
}
