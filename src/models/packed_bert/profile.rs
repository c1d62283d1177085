//! Optional time per encoder operation (off by default; one relaxed atomic load per
//! operation when off). In group mode the times of concurrent tasks add up (CPU time).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// Encoder operations.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// Embedding sum and its LayerNorm.
    Embed,
    /// The fused Q/K/V projection.
    Qkv,
    /// Self-attention.
    Attention,
    /// The attention output projection, residual included.
    AttnOut,
    /// The LayerNorms after attention and after the feed-forward layers.
    LayerNorm,
    /// The first feed-forward layer and its activation.
    FfnIn,
    /// The second feed-forward layer, residual included.
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

/// Times the operations of one encoder pass; inert (no clock reads) when collection is off.
pub(super) struct Clock(Option<Instant>);

impl Clock {
    /// Starts timing, if collection is on.
    pub(super) fn start() -> Self {
        Clock(ON.load(Ordering::Relaxed).then(Instant::now))
    }

    /// Adds the time since the last lap (or the start) to `op`.
    pub(super) fn lap(&mut self, op: Op) {
        if let Some(t) = &mut self.0 {
            let now = Instant::now();
            NANOS[op as usize].fetch_add((now - *t).as_nanos() as u64, Ordering::Relaxed);
            *t = now;
        }
    }
}
