//! The batcher of one lane: picks the next batch from a small window over the rings.
//!
//! Policy, in order:
//! 1. Requests whose deadline (or the late-data watermark) has passed leave as `expired`
//!    without being computed.
//! 2. The batch is anchored on the oldest request of the priority window, unless the last
//!    `priority_burst` batches were all priority-anchored while normal work waited: then the
//!    oldest normal request anchors it. Priority wins, normal is never starved.
//! 3. The batch is filled with requests for the same model, anchor's window first, closest
//!    in token length first (length grouping cuts padding), while it stays within
//!    `max_rows` rows and `max_tokens` padded tokens (longest × rows).
//! 4. The lane calls this as soon as it is free, so at low load a request is dispatched at
//!    once in a batch of whatever is there: no artificial wait.
//!
//! Windows and scratch vectors are allocated once; selecting a batch allocates nothing.

use std::sync::Arc;
use std::time::Duration;

use super::request::Request;
use super::rings::Rings;
use crate::core::{BatchCaps, ErrorClass, Failure, Priority};

/// Batch limits and fairness settings.
#[derive(Debug, Clone)]
pub struct BatchPolicy {
    /// Most rows (sequences or feature vectors) and padded tokens (longest × rows) per batch.
    pub caps: BatchCaps,
    /// Priority-anchored batches in a row allowed while normal work waits.
    pub priority_burst: u32,
    /// Group similar lengths (otherwise strict arrival order).
    pub length_grouping: bool,
    /// Requests whose event time is older than this when dequeued expire (late-data policy
    /// `expire`); `None` processes late records normally.
    pub expire_late_after: Option<Duration>,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy {
            caps: BatchCaps::default(),
            priority_burst: 4,
            length_grouping: true,
            expire_late_after: None,
        }
    }
}

/// Per-lane batch selection state.
pub struct Batcher {
    policy: BatchPolicy,
    window: usize,
    prio: Vec<Request>,
    norm: Vec<Request>,
    consecutive_prio: u32,
    order: Vec<(u32, u64, u32)>,
    picked_prio: Vec<u32>,
    picked_norm: Vec<u32>,
}

/// Which window a batch was anchored on (for tests and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    Priority,
    Normal,
}

impl Batcher {
    /// A batcher with a window of twice the batch row cap per ring.
    pub fn new(policy: BatchPolicy) -> Self {
        let window = (policy.caps.max_rows * 2).max(8);
        Batcher {
            window,
            prio: Vec::with_capacity(window),
            norm: Vec::with_capacity(window),
            consecutive_prio: 0,
            order: Vec::with_capacity(window * 2),
            picked_prio: Vec::with_capacity(window),
            picked_norm: Vec::with_capacity(window),
            policy,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &BatchPolicy {
        &self.policy
    }

    /// Requests held in this lane's windows.
    pub fn held(&self) -> usize {
        self.prio.len() + self.norm.len()
    }

    /// Moves requests from the rings into the windows (up to the window size each).
    pub fn refill(&mut self, rings: &Rings) {
        while self.prio.len() < self.window {
            match rings.pop_priority() {
                Some(r) => self.prio.push(r),
                None => break,
            }
        }
        while self.norm.len() < self.window {
            match rings.pop_normal() {
                Some(r) => self.norm.push(r),
                None => break,
            }
        }
    }

    /// Takes every request held in the windows (a lane leaving service hands them back).
    pub fn take_all(&mut self) -> Vec<Request> {
        self.prio.drain(..).chain(self.norm.drain(..)).collect()
    }

    /// Adds a request directly (tests, and requests handed back by a failed split).
    pub fn push(&mut self, r: Request) {
        match r.env.priority {
            Priority::High => self.prio.push(r),
            Priority::Normal => self.norm.push(r),
        }
    }

    /// Moves every request whose deadline or watermark has passed into `expired`.
    pub fn take_expired(&mut self, now_ms: u64, expired: &mut Vec<(Request, Failure)>) {
        let late = self.policy.expire_late_after.map(|d| d.as_millis() as i64);
        for w in [&mut self.prio, &mut self.norm] {
            let mut i = 0;
            while i < w.len() {
                let r = &w[i];
                let why = if r.deadline_ms.is_some_and(|d| d < now_ms) {
                    Some(Failure::new(ErrorClass::Expired, "deadline passed while queued"))
                } else if let (Some(late), Some(t)) = (late, r.env.event_time_ms) {
                    (now_ms as i64 - t > late).then(|| {
                        Failure::new(ErrorClass::Expired, "older than the late-data watermark (streaming.inference.watermark.delayThreshold) when dequeued")
                    })
                } else {
                    None
                };
                match why {
                    Some(f) => expired.push((w.swap_remove(i), f)),
                    None => i += 1,
                }
            }
        }
    }

    /// Selects the next batch into `out` (cleared first). Returns the anchor, or `None` when
    /// the windows are empty.
    pub fn next_batch(&mut self, out: &mut Vec<Request>) -> Option<Anchor> {
        out.clear();
        let anchor = match (self.prio.is_empty(), self.norm.is_empty()) {
            (true, true) => return None,
            (false, true) => {
                self.consecutive_prio = 0;
                Anchor::Priority
            }
            (true, false) => {
                self.consecutive_prio = 0;
                Anchor::Normal
            }
            (false, false) => {
                if self.consecutive_prio < self.policy.priority_burst {
                    self.consecutive_prio += 1;
                    Anchor::Priority
                } else {
                    self.consecutive_prio = 0;
                    Anchor::Normal
                }
            }
        };
        let (first, second) = match anchor {
            Anchor::Priority => (&self.prio, &self.norm),
            Anchor::Normal => (&self.norm, &self.prio),
        };
        // The oldest request of the anchor window.
        let a = first.iter().enumerate().min_by_key(|(_, r)| r.seq).map(|(i, _)| i)?;
        let model = first[a].model.clone();
        let anchor_len = first[a].max_tokens;

        // Candidates: (window 0|1, index) ordered by window, then length distance, then age.
        self.order.clear();
        for (w, win) in [first, second].into_iter().enumerate() {
            for (i, r) in win.iter().enumerate() {
                if i == a && w == 0 || !Arc::ptr_eq(&r.model, &model) {
                    continue;
                }
                let dist =
                    if self.policy.length_grouping { r.max_tokens.abs_diff(anchor_len) } else { 0 };
                self.order.push(((w as u32) << 16 | dist.min(0xffff), r.seq, i as u32));
            }
        }
        self.order.sort_unstable();

        let (max_rows, max_tokens) =
            (self.policy.caps.max_rows as u64, self.policy.caps.max_tokens as u64);
        let mut rows = first[a].items as u64;
        let mut seq = anchor_len as u64;
        let (mut picked_first, mut picked_second) = match anchor {
            Anchor::Priority => {
                (std::mem::take(&mut self.picked_prio), std::mem::take(&mut self.picked_norm))
            }
            Anchor::Normal => {
                (std::mem::take(&mut self.picked_norm), std::mem::take(&mut self.picked_prio))
            }
        };
        picked_first.clear();
        picked_second.clear();
        picked_first.push(a as u32);
        for &(key, _, i) in &self.order {
            if rows >= max_rows {
                break;
            }
            let r = if key >> 16 == 0 { &first[i as usize] } else { &second[i as usize] };
            let new_rows = rows + r.items as u64;
            let new_seq = seq.max(r.max_tokens as u64);
            if new_rows <= max_rows && new_rows * new_seq <= max_tokens {
                rows = new_rows;
                seq = new_seq;
                if key >> 16 == 0 {
                    picked_first.push(i)
                } else {
                    picked_second.push(i)
                }
            }
        }
        // Remove highest indices first so swap_remove does not disturb the ones still to take.
        let (wf, ws) = match anchor {
            Anchor::Priority => (&mut self.prio, &mut self.norm),
            Anchor::Normal => (&mut self.norm, &mut self.prio),
        };
        for (picked, win) in [(&mut picked_first, wf), (&mut picked_second, ws)] {
            picked.sort_unstable_by(|x, y| y.cmp(x));
            for &i in picked.iter() {
                out.push(win.swap_remove(i as usize));
            }
        }
        // Keep arrival order inside the batch (stable outputs, oldest first).
        out.sort_unstable_by_key(|r| (r.env.priority != Priority::High, r.seq));
        match anchor {
            Anchor::Priority => {
                self.picked_prio = picked_first;
                self.picked_norm = picked_second;
            }
            Anchor::Normal => {
                self.picked_norm = picked_first;
                self.picked_prio = picked_second;
            }
        }
        Some(anchor)
    }
}
