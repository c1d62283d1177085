//! The commit tracker: which input offsets may be committed.
//!
//! **Invariant:** an offset is committed only after its result or dead letter was
//! acknowledged by the broker. Outcomes complete out of order (priority lanes, length
//! grouping, several lanes), so per partition only the contiguous acknowledged prefix is
//! committable. A record whose delivery failed for good blocks its partition's commits
//! (it is never skipped silently) until the partition is revoked or the process restarts.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Exactly-once: a request to the emit thread to commit its open transaction now (the
/// consumer is about to lose partitions); the reply says whether it committed.
pub struct CommitRequest {
    pub reply: crossbeam_channel::Sender<bool>,
}

/// One partition's state.
#[derive(Debug, Default)]
struct Partition {
    /// Tracked offsets not yet committable → acknowledged?
    pending: BTreeMap<i64, bool>,
    /// Next offset to commit (one past the last committable), if anything was acknowledged.
    committable: Option<i64>,
    /// What was last handed out by `take_commits` (sent, perhaps not yet confirmed).
    committed: Option<i64>,
    /// The highest commit the broker confirmed.
    confirmed: Option<i64>,
    /// Offset whose delivery failed for good; commits stop below it.
    blocked_at: Option<i64>,
}

/// Per-partition offset bookkeeping shared by the consumer (track) and producer (ack).
#[derive(Debug, Default)]
pub struct CommitTracker {
    parts: HashMap<(Arc<str>, i32), Partition>,
}

/// A commit to make: `offset` is the next offset to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPoint {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

impl CommitTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `offset` was consumed and is now in flight.
    pub fn track(&mut self, topic: &Arc<str>, partition: i32, offset: i64) {
        self.parts.entry((topic.clone(), partition)).or_default().pending.insert(offset, false);
    }

    /// Records that the outcome of `offset` was acknowledged. Returns false if the offset was
    /// not tracked (e.g. its partition was revoked meanwhile).
    pub fn ack(&mut self, topic: &str, partition: i32, offset: i64) -> bool {
        let Some(p) = self.part_mut(topic, partition) else { return false };
        match p.pending.get_mut(&offset) {
            Some(done) => *done = true,
            None => return false,
        }
        // Advance over the contiguous acknowledged prefix, stopping at a blocked offset.
        while let Some((&first, &done)) = p.pending.iter().next() {
            if !done || p.blocked_at.is_some_and(|b| first >= b) {
                break;
            }
            p.pending.remove(&first);
            p.committable = Some(first + 1);
        }
        true
    }

    /// Records that `offset`'s outcome could not be delivered: the partition's commits stop
    /// before it.
    pub fn block(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(p) = self.part_mut(topic, partition) {
            p.blocked_at = Some(p.blocked_at.map_or(offset, |b| b.min(offset)));
        }
    }

    /// Forgets a tracked offset without acknowledging it (the record was dropped
    /// un-committed, e.g. on revocation). Later offsets then cannot commit past it.
    pub fn forget(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(p) = self.part_mut(topic, partition) {
            if p.pending.remove(&offset).is_some() {
                p.blocked_at = Some(p.blocked_at.map_or(offset, |b| b.min(offset)));
            }
        }
    }

    /// The broker confirmed the commit of `offset`.
    pub fn commit_confirmed(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(p) = self.part_mut(topic, partition) {
            p.confirmed = Some(p.confirmed.map_or(offset, |c| c.max(offset)));
        }
    }

    /// The commit of `offset` failed: unless a later commit was handed out meanwhile, the
    /// partition's committable offset is offered again by the next [`take_commits`]
    /// (Self::take_commits), so an idle partition whose last commit failed is still
    /// committed.
    pub fn commit_failed(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(p) = self.part_mut(topic, partition) {
            if p.committed == Some(offset) && p.confirmed != Some(offset) {
                p.committed = p.confirmed;
            }
        }
    }

    /// The last commit of `topic`/`partition` the broker confirmed.
    pub fn confirmed(&self, topic: &str, partition: i32) -> Option<i64> {
        self.parts
            .iter()
            .find(|((t, p), _)| &**t == topic && *p == partition)
            .and_then(|(_, s)| s.confirmed)
    }

    /// Partitions whose committable offset moved since the last call, with that offset.
    pub fn take_commits(&mut self) -> Vec<CommitPoint> {
        let mut out = Vec::new();
        for ((topic, partition), p) in self.parts.iter_mut() {
            if let Some(c) = p.committable {
                if p.committed != Some(c) {
                    p.committed = Some(c);
                    out.push(CommitPoint {
                        topic: topic.clone(),
                        partition: *partition,
                        offset: c,
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        out
    }

    /// Offsets of `topic`/`partition` still in flight (tracked, not yet committable).
    pub fn in_flight(&self, topic: &str, partition: i32) -> usize {
        self.parts
            .iter()
            .find(|((t, p), _)| &**t == topic && *p == partition)
            .map(|(_, s)| s.pending.values().filter(|done| !**done).count())
            .unwrap_or(0)
    }

    /// Offsets tracked and not yet committable (in flight, or acknowledged behind one that is
    /// still in flight): the tracker's size.
    pub fn tracked(&self) -> usize {
        self.parts.values().map(|s| s.pending.len()).sum()
    }

    /// All offsets in flight.
    pub fn total_in_flight(&self) -> usize {
        self.parts.values().map(|s| s.pending.values().filter(|d| !**d).count()).sum()
    }

    /// Whether a partition has a permanently failed delivery.
    pub fn blocked(&self) -> Vec<(Arc<str>, i32, i64)> {
        self.parts
            .iter()
            .filter_map(|((t, p), s)| s.blocked_at.map(|b| (t.clone(), *p, b)))
            .collect()
    }

    /// Stops tracking a partition (revoked); returns its final commit point, if any.
    pub fn remove(&mut self, topic: &str, partition: i32) -> Option<CommitPoint> {
        let key = self.parts.keys().find(|(t, p)| &**t == topic && *p == partition).cloned()?;
        let p = self.parts.remove(&key)?;
        p.committable.map(|offset| CommitPoint { topic: key.0, partition: key.1, offset })
    }

    /// The lowest offset of `topic`/`partition` that is tracked and not yet acknowledged, and
    /// whether the partition's commits are blocked at or below it (exactly-once releases an
    /// outcome only when its offset is this one, so that a transaction's outcomes are always
    /// the contiguous run its offsets commit).
    pub fn first_in_flight(&self, topic: &str, partition: i32) -> Option<(i64, bool)> {
        let p = self.parts.iter().find(|((t, p), _)| &**t == topic && *p == partition)?.1;
        let (first, _) = p.pending.iter().find(|(_, done)| !**done)?;
        Some((*first, p.blocked_at.is_some_and(|b| b <= *first)))
    }

    /// The tracked offset of `topic`/`partition` that follows `offset`.
    pub fn next_tracked_after(&self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let p = self.parts.iter().find(|((t, p), _)| &**t == topic && *p == partition)?.1;
        p.pending.range(offset + 1..).next().map(|(o, _)| *o)
    }

    /// Whether `offset` of `topic`/`partition` is tracked and not yet acknowledged.
    pub fn is_in_flight(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.parts
            .iter()
            .find(|((t, p), _)| &**t == topic && *p == partition)
            .is_some_and(|(_, s)| s.pending.get(&offset) == Some(&false))
    }

    /// Whether `topic`/`partition` is tracked (assigned and read from).
    pub fn is_tracked(&self, topic: &str, partition: i32) -> bool {
        self.parts.keys().any(|(t, p)| &**t == topic && *p == partition)
    }

    fn part_mut(&mut self, topic: &str, partition: i32) -> Option<&mut Partition> {
        self.parts.iter_mut().find(|((t, p), _)| &**t == topic && *p == partition).map(|(_, s)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Arc<str> {
        "in".into()
    }

    #[test]
    fn commits_only_the_contiguous_acknowledged_prefix() {
        let mut c = CommitTracker::new();
        for o in 10..15 {
            c.track(&t(), 0, o);
        }
        assert!(c.take_commits().is_empty());
        c.ack("in", 0, 12);
        c.ack("in", 0, 11);
        assert!(c.take_commits().is_empty(), "10 is still in flight");
        c.ack("in", 0, 10);
        assert_eq!(c.take_commits(), vec![CommitPoint { topic: t(), partition: 0, offset: 13 }]);
        assert!(c.take_commits().is_empty(), "nothing new");
        assert_eq!(c.in_flight("in", 0), 2);
        c.ack("in", 0, 14);
        assert!(c.take_commits().is_empty(), "13 missing");
        c.ack("in", 0, 13);
        assert_eq!(c.take_commits()[0].offset, 15);
        assert_eq!(c.total_in_flight(), 0);
    }

    #[test]
    fn partitions_are_independent_and_gaps_in_offsets_are_fine() {
        let mut c = CommitTracker::new();
        // Offsets need not be consecutive (transaction markers, compaction).
        for o in [3, 7, 9] {
            c.track(&t(), 1, o);
        }
        c.track(&t(), 2, 0);
        c.ack("in", 1, 7);
        c.ack("in", 2, 0);
        assert_eq!(c.take_commits(), vec![CommitPoint { topic: t(), partition: 2, offset: 1 }]);
        c.ack("in", 1, 3);
        assert_eq!(c.take_commits(), vec![CommitPoint { topic: t(), partition: 1, offset: 8 }]);
        assert!(!c.ack("in", 5, 0), "untracked partition");
        assert!(!c.ack("in", 1, 4), "untracked offset");
    }

    #[test]
    fn a_failed_delivery_blocks_its_partition() {
        let mut c = CommitTracker::new();
        for o in 0..5 {
            c.track(&t(), 0, o);
        }
        c.ack("in", 0, 0);
        c.block("in", 0, 1);
        for o in 1..5 {
            c.ack("in", 0, o);
        }
        assert_eq!(c.take_commits()[0].offset, 1, "never past the failed record");
        assert_eq!(c.blocked(), vec![(t(), 0, 1)]);
        assert_eq!(c.tracked(), 4, "offsets 1..5 stay tracked behind the block");
    }

    #[test]
    fn out_of_order_completions_randomised() {
        // A fixed-seed shuffle of 2,000 acks over 3 partitions: the committed offset is always
        // exactly the length of the acknowledged prefix.
        let mut c = CommitTracker::new();
        let mut order: Vec<(i32, i64)> =
            (0..3).flat_map(|p| (0..2000).map(move |o| (p, o))).collect();
        for &(p, o) in &order {
            c.track(&t(), p, o);
        }
        let mut s = 0x9e3779b97f4a7c15u64;
        for i in (1..order.len()).rev() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            order.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let mut acked = vec![vec![false; 2000]; 3];
        let mut last = [0i64; 3];
        for (n, &(p, o)) in order.iter().enumerate() {
            c.ack("in", p, o);
            acked[p as usize][o as usize] = true;
            if n % 97 == 0 || n == order.len() - 1 {
                for cp in c.take_commits() {
                    let prefix =
                        acked[cp.partition as usize].iter().take_while(|a| **a).count() as i64;
                    assert_eq!(cp.offset, prefix);
                    assert!(cp.offset > last[cp.partition as usize]);
                    last[cp.partition as usize] = cp.offset;
                }
            }
        }
        assert_eq!(last, [2000, 2000, 2000]);
    }

    #[test]
    fn a_failed_commit_is_offered_again_even_on_an_idle_partition() {
        let mut c = CommitTracker::new();
        for o in 0..3 {
            c.track(&t(), 0, o);
            c.ack("in", 0, o);
        }
        assert_eq!(c.take_commits()[0].offset, 3);
        assert!(c.take_commits().is_empty(), "handed out once");
        c.commit_failed("in", 0, 3);
        assert_eq!(c.take_commits()[0].offset, 3, "offered again without new acks");
        c.commit_confirmed("in", 0, 3);
        assert_eq!(c.confirmed("in", 0), Some(3));
        c.commit_failed("in", 0, 3);
        assert!(c.take_commits().is_empty(), "a confirmed commit is not redone");
        // A stale failure (a later commit was handed out since) changes nothing.
        c.track(&t(), 0, 3);
        c.ack("in", 0, 3);
        assert_eq!(c.take_commits()[0].offset, 4);
        c.commit_failed("in", 0, 3);
        assert!(c.take_commits().is_empty());
    }

    #[test]
    fn revocation_returns_the_final_point() {
        let mut c = CommitTracker::new();
        c.track(&t(), 0, 0);
        c.track(&t(), 0, 1);
        c.ack("in", 0, 0);
        assert_eq!(c.remove("in", 0), Some(CommitPoint { topic: t(), partition: 0, offset: 1 }));
        assert_eq!(c.in_flight("in", 0), 0);
        assert!(!c.ack("in", 0, 1), "acks after revocation are ignored");
    }
}
