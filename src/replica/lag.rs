//! `LagTracker`: the primary's measure of replication lag per record, the time from its link
//! writer reading a batch of records for the standby to the standby's acknowledgement that the
//! batch is in its WAL file, kept as a histogram (`ringcast_replication_lag_seconds`). The
//! writer notes each batch it sends (`sent`), the ack reader settles the batches an ack covers
//! (`acked`); each record counts once, with its batch's lag. Only the link threads write it
//! (never a core), and it reads no clock: times come in as microseconds from the caller. It
//! makes no decision: `lag_records`/`lag_ms` in `ReplicaShared` stay what availability uses.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::limits;

/// Upper bounds (microseconds) of the lag histogram's buckets; the last bucket is +Inf.
pub const LAG_BUCKETS_US: [u64; 19] = [
    50, 100, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 7_500, 10_000, 25_000, 50_000,
    100_000, 250_000, 500_000, 1_000_000,
];

/// One batch sent and not yet acknowledged: its last LSN, its record count and when it was
/// read.
#[derive(Debug, Clone, Copy)]
struct Sent {
    last_lsn: u64,
    records: u64,
    at_us: u64,
}

/// One stream's batches in flight and the last LSN counted.
#[derive(Debug, Default)]
struct Pending {
    batches: VecDeque<Sent>,
    /// The last LSN of the last batch noted (records after it belong to the next batch).
    noted_through: u64,
}

/// Per-record replication lag, as a histogram, plus batches not measured (too many in flight).
#[derive(Debug)]
pub struct LagTracker {
    pending: Box<[Mutex<Pending>]>,
    /// Records per bucket of `LAG_BUCKETS_US` (last: over the largest bound).
    buckets: [AtomicU64; LAG_BUCKETS_US.len() + 1],
    records: AtomicU64,
    /// Sum over records of their lag, µs.
    sum_us: AtomicU64,
    max_us: AtomicU64,
    /// Batches sent while `REPL_LAG_BATCHES_MAX` were already in flight: not measured.
    unmeasured: AtomicU64,
}

/// A snapshot of the histogram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagSnapshot {
    /// Records per bucket, not cumulative (last: +Inf).
    pub buckets: Vec<u64>,
    pub records: u64,
    pub sum_us: u64,
    pub max_us: u64,
    pub unmeasured: u64,
}

impl LagSnapshot {
    /// The smallest bucket bound (µs) under which at least `quantile` of the records fall;
    /// `None` with no record, `u64::MAX` when it is in the +Inf bucket.
    pub fn quantile_bound_us(&self, quantile: f64) -> Option<u64> {
        if self.records == 0 {
            return None;
        }
        let wanted = (quantile.clamp(0.0, 1.0) * self.records as f64).ceil() as u64;
        let mut seen = 0;
        for (index, count) in self.buckets.iter().enumerate() {
            seen += count;
            if seen >= wanted.max(1) {
                return Some(LAG_BUCKETS_US.get(index).copied().unwrap_or(u64::MAX));
            }
        }
        Some(u64::MAX)
    }
}

impl LagTracker {
    pub fn new(streams: usize) -> LagTracker {
        LagTracker {
            pending: (0..streams)
                .map(|_| Mutex::new(Pending::default()))
                .collect(),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            records: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
            unmeasured: AtomicU64::new(0),
        }
    }

    /// A session starts: the standby's copy continues after `from_lsn - 1` on `stream`, and
    /// nothing of an earlier session is in flight any more.
    pub fn restart(&self, stream: usize, from_lsn: u64) {
        if let Some(Ok(mut pending)) = self.pending.get(stream).map(Mutex::lock) {
            pending.batches.clear();
            pending.noted_through = from_lsn.saturating_sub(1);
        }
    }

    /// The writer read records up to `last_lsn` of `stream` at `now_us` and sends them.
    pub fn sent(&self, stream: usize, last_lsn: u64, now_us: u64) {
        let Some(Ok(mut pending)) = self.pending.get(stream).map(Mutex::lock) else {
            return;
        };
        if last_lsn <= pending.noted_through {
            return;
        }
        if pending.batches.len() >= limits::REPL_LAG_BATCHES_MAX {
            // Not measured, rather than an unbounded queue; the next batch starts after it.
            pending.noted_through = last_lsn;
            self.unmeasured.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let records = last_lsn - pending.noted_through;
        pending.batches.push_back(Sent {
            last_lsn,
            records,
            at_us: now_us,
        });
        pending.noted_through = last_lsn;
    }

    /// The standby acknowledged `stream` up to `received_lsn` at `now_us`: every batch it
    /// covers is counted, each of its records with the batch's lag.
    pub fn acked(&self, stream: usize, received_lsn: u64, now_us: u64) {
        let Some(Ok(mut pending)) = self.pending.get(stream).map(Mutex::lock) else {
            return;
        };
        while let Some(batch) = pending.batches.front().copied() {
            if batch.last_lsn > received_lsn {
                break;
            }
            pending.batches.pop_front();
            self.record(now_us.saturating_sub(batch.at_us), batch.records);
        }
    }

    /// Counts `records` records with lag `lag_us`.
    fn record(&self, lag_us: u64, records: u64) {
        let index = LAG_BUCKETS_US
            .iter()
            .position(|&bound| lag_us <= bound)
            .unwrap_or(LAG_BUCKETS_US.len());
        self.buckets[index].fetch_add(records, Ordering::Relaxed);
        self.records.fetch_add(records, Ordering::Relaxed);
        self.sum_us
            .fetch_add(lag_us.saturating_mul(records), Ordering::Relaxed);
        self.max_us.fetch_max(lag_us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LagSnapshot {
        LagSnapshot {
            buckets: self
                .buckets
                .iter()
                .map(|bucket| bucket.load(Ordering::Relaxed))
                .collect(),
            records: self.records.load(Ordering::Relaxed),
            sum_us: self.sum_us.load(Ordering::Relaxed),
            max_us: self.max_us.load(Ordering::Relaxed),
            unmeasured: self.unmeasured.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn each_record_counts_with_its_batch_lag() {
        let lag = LagTracker::new(1);
        lag.restart(0, 1);
        lag.sent(0, 10, 1_000); // records 1..=10
        lag.sent(0, 12, 1_100); // records 11..=12
        lag.acked(0, 10, 1_400); // first batch: 400 µs
        let snapshot = lag.snapshot();
        assert_eq!(snapshot.records, 10);
        assert_eq!(snapshot.sum_us, 4_000);
        assert_eq!(snapshot.max_us, 400);
        // 400 µs falls in the (300, 500] bucket.
        assert_eq!(snapshot.buckets[4], 10);
        lag.acked(0, 12, 13_100); // second batch: 12 ms
        let snapshot = lag.snapshot();
        assert_eq!(snapshot.records, 12);
        assert_eq!(snapshot.max_us, 12_000);
        assert_eq!(snapshot.buckets[13], 2, "(10 ms, 25 ms]");
        assert_eq!(snapshot.quantile_bound_us(0.5), Some(500));
        assert_eq!(snapshot.quantile_bound_us(0.99), Some(25_000));
        assert_eq!(snapshot.quantile_bound_us(0.8), Some(500));
    }

    #[test]
    fn a_partial_ack_settles_only_whole_batches() {
        let lag = LagTracker::new(2);
        lag.restart(1, 5);
        lag.sent(1, 8, 0);
        lag.acked(1, 7, 50);
        assert_eq!(lag.snapshot().records, 0);
        lag.acked(1, 8, 60);
        let snapshot = lag.snapshot();
        assert_eq!((snapshot.records, snapshot.sum_us), (4, 240));
        // Stream 0 saw nothing; an ack for an unknown stream is ignored.
        lag.acked(0, 100, 70);
        lag.acked(7, 100, 70);
        assert_eq!(lag.snapshot().records, 4);
    }

    #[test]
    fn resent_and_restarted_ranges_are_not_counted_twice() {
        let lag = LagTracker::new(1);
        lag.restart(0, 1);
        lag.sent(0, 3, 0);
        lag.sent(0, 3, 10); // nothing new
        lag.acked(0, 3, 20);
        assert_eq!(lag.snapshot().records, 3);
        // A new session from LSN 2: what was in flight is forgotten.
        lag.sent(0, 5, 30);
        lag.restart(0, 2);
        lag.acked(0, 5, 40);
        assert_eq!(lag.snapshot().records, 3);
        lag.sent(0, 4, 50);
        lag.acked(0, 4, 150);
        let snapshot = lag.snapshot();
        assert_eq!((snapshot.records, snapshot.max_us), (6, 100));
    }

    #[test]
    fn too_many_batches_in_flight_are_left_unmeasured() {
        let lag = LagTracker::new(1);
        lag.restart(0, 1);
        let max = limits::REPL_LAG_BATCHES_MAX as u64;
        for lsn in 1..=max + 3 {
            lag.sent(0, lsn, lsn);
        }
        lag.acked(0, max + 3, 10_000_000);
        let snapshot = lag.snapshot();
        assert_eq!(snapshot.unmeasured, 3);
        assert_eq!(snapshot.records, max);
        // 10 s: over the largest bound, in the +Inf bucket.
        assert_eq!(snapshot.buckets[LAG_BUCKETS_US.len()], max);
        assert_eq!(snapshot.quantile_bound_us(0.99), Some(u64::MAX));
        assert_eq!(LagTracker::new(1).snapshot().quantile_bound_us(0.99), None);
    }
}
