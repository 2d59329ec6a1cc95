//! Lag and throughput bookkeeping for status.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use journal::Lsn;

/// Unacknowledged writes of the primary: (LSN → bytes, time written), for
/// lag in bytes and seconds. Bounded: past `max_entries` the oldest are
/// dropped and counted, so lag stays an estimate, never unbounded memory.
#[derive(Debug)]
pub(crate) struct LagTracker {
    pub(super) entries: BTreeMap<Lsn, (u64, Instant)>,
    max_entries: usize,
    /// Highest LSN dropped for the cap, and the time of the oldest dropped
    /// entry not yet acknowledged by everyone.
    dropped_upto: Lsn,
    dropped_oldest: Option<Instant>,
    dropped_bytes_avg: u64,
}

impl LagTracker {
    pub fn new(max_entries: usize) -> Self {
        LagTracker {
            entries: BTreeMap::new(),
            max_entries: max_entries.max(1),
            dropped_upto: 0,
            dropped_oldest: None,
            dropped_bytes_avg: 0,
        }
    }

    pub fn insert(&mut self, lsn: Lsn, bytes: u64, at: Instant) {
        self.entries.insert(lsn, (bytes, at));
        while self.entries.len() > self.max_entries {
            if let Some((l, (b, t))) = self.entries.pop_first() {
                self.dropped_upto = self.dropped_upto.max(l);
                self.dropped_oldest.get_or_insert(t);
                // A moving average: the estimate for dropped entries.
                self.dropped_bytes_avg = if self.dropped_bytes_avg == 0 {
                    b
                } else {
                    (self.dropped_bytes_avg + b) / 2
                };
            }
        }
    }

    /// Everyone holds up to `lsn`: forget it.
    pub fn prune(&mut self, lsn: Lsn) {
        while let Some((&l, _)) = self.entries.first_key_value() {
            if l > lsn {
                break;
            }
            self.entries.pop_first();
        }
        if lsn >= self.dropped_upto {
            self.dropped_oldest = None;
        }
    }

    /// (bytes, seconds) a peer that acknowledged `acked` is behind
    /// `written`.
    pub fn lag(&self, acked: Lsn, written: Lsn, now: Instant) -> (u64, f64) {
        if acked >= written {
            return (0, 0.0);
        }
        let mut bytes: u64 = self.entries.range(acked + 1..).map(|(_, (b, _))| *b).sum();
        let mut oldest = self.entries.range(acked + 1..).next().map(|(_, (_, t))| *t);
        if acked < self.dropped_upto {
            bytes += (self.dropped_upto - acked) * self.dropped_bytes_avg;
            oldest = self.dropped_oldest.or(oldest);
        }
        let secs = oldest.map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        (bytes, secs)
    }
}

/// Acknowledged bytes per second over a sliding window.
#[derive(Debug)]
pub(crate) struct Throughput {
    samples: VecDeque<(Instant, u64)>,
    window: Duration,
}

impl Throughput {
    pub fn new(window: Duration) -> Self {
        Throughput {
            samples: VecDeque::new(),
            window,
        }
    }

    pub fn record(&mut self, now: Instant, bytes: u64) {
        if bytes > 0 {
            self.samples.push_back((now, bytes));
        }
        self.expire(now);
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(t, _)) = self.samples.front() {
            if now.saturating_duration_since(t) <= self.window {
                break;
            }
            self.samples.pop_front();
        }
    }

    /// Bytes per second over the window ending at `now` (read only: old
    /// samples are dropped by `record`).
    pub fn rate(&self, now: Instant) -> f64 {
        let total: u64 = self
            .samples
            .iter()
            .filter(|(t, _)| now.saturating_duration_since(*t) <= self.window)
            .map(|(_, b)| *b)
            .sum();
        total as f64 / self.window.as_secs_f64()
    }
}
