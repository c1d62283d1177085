//! Two bounded lock-free rings (priority and normal) between ingest and the lanes.
//!
//! `crossbeam`'s `ArrayQueue` carries the requests; a doorbell (mutex + condvar, touched only
//! when somebody sleeps) wakes idle lanes when work arrives and wakes a blocked producer when
//! space frees up. A full ring is never resolved by dropping: `push` hands the request back.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use parking_lot::{Condvar, Mutex};

use super::request::Request;
use crate::core::Priority;

/// Sleep/wake for one kind of waiter, free when nobody sleeps.
#[derive(Default)]
struct Doorbell {
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Doorbell {
    fn ring(&self) {
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = self.lock.lock();
            self.cv.notify_all();
        }
    }

    /// Sleeps up to `timeout` unless `ready()` already holds.
    fn wait(&self, timeout: Duration, ready: impl Fn() -> bool) {
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        {
            let mut g = self.lock.lock();
            if !ready() {
                self.cv.wait_for(&mut g, timeout);
            }
        }
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The priority and normal rings.
pub struct Rings {
    priority: ArrayQueue<Request>,
    normal: ArrayQueue<Request>,
    work: Doorbell,
    space: Doorbell,
    closed: AtomicBool,
    abandoned: AtomicBool,
}

impl Rings {
    /// Two rings of `capacity` requests each.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Rings {
            priority: ArrayQueue::new(capacity),
            normal: ArrayQueue::new(capacity),
            work: Doorbell::default(),
            space: Doorbell::default(),
            closed: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
        }
    }

    /// Queues a request on its ring, or hands it back when that ring is full.
    pub fn push(&self, req: Request) -> Result<(), Request> {
        let ring = match req.env.priority {
            Priority::High => &self.priority,
            Priority::Normal => &self.normal,
        };
        ring.push(req)?;
        self.work.ring();
        Ok(())
    }

    /// Queues a request, waiting for space while the ring is full (batch mode's backpressure,
    /// a source handing over what it holds at stop). Hands the request back only once the
    /// rings are [abandoned](Self::abandon): nobody will take it any more.
    pub fn push_wait(&self, mut req: Request) -> Result<(), Request> {
        loop {
            if self.is_abandoned() {
                return Err(req);
            }
            match self.push(req) {
                Ok(()) => return Ok(()),
                Err(back) => {
                    req = back;
                    let ring = match req.env.priority {
                        Priority::High => &self.priority,
                        Priority::Normal => &self.normal,
                    };
                    self.space
                        .wait(Duration::from_millis(50), || !ring.is_full() || self.is_abandoned());
                }
            }
        }
    }

    /// Waits up to `timeout` for both rings to have room (the Kafka consumer, holding records
    /// while its partitions are paused).
    pub fn wait_for_space(&self, timeout: Duration) {
        self.space.wait(timeout, || !self.priority.is_full() && !self.normal.is_full());
    }

    /// Takes the oldest priority request.
    pub fn pop_priority(&self) -> Option<Request> {
        let r = self.priority.pop();
        if r.is_some() {
            self.space.ring();
        }
        r
    }

    /// Takes the oldest normal request.
    pub fn pop_normal(&self) -> Option<Request> {
        let r = self.normal.pop();
        if r.is_some() {
            self.space.ring();
        }
        r
    }

    /// (priority, normal) depths.
    pub fn depths(&self) -> (usize, usize) {
        (self.priority.len(), self.normal.len())
    }

    /// Capacity of each ring.
    pub fn capacity(&self) -> usize {
        self.normal.capacity()
    }

    /// True when both rings are empty.
    pub fn is_empty(&self) -> bool {
        self.priority.is_empty() && self.normal.is_empty()
    }

    /// True when the ring for `p` is full (the Kafka consumer pauses on this).
    pub fn is_full(&self, p: Priority) -> bool {
        match p {
            Priority::High => self.priority.is_full(),
            Priority::Normal => self.normal.is_full(),
        }
    }

    /// Idle lanes sleep here until work arrives, the rings close, or `timeout` passes.
    pub fn wait_for_work(&self, timeout: Duration) {
        self.work.wait(timeout, || !self.is_empty() || self.is_closed());
    }

    /// No more requests will come: lanes drain what is queued, then exit.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _g = self.work.lock.lock();
        self.work.cv.notify_all();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// The drain deadline passed: lanes stop after their current batch without taking more,
    /// and waiting producers get their requests back. What is still queued gets no outcome
    /// (its offsets stay uncommitted, so it is processed again after a restart).
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::SeqCst);
        self.close();
        let _g = self.space.lock.lock();
        self.space.cv.notify_all();
    }

    /// Whether [`abandon`](Self::abandon) was called.
    pub fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::SeqCst)
    }
}
