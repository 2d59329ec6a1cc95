//! Ordered apply: overlapping changes never run at the same time, so the
//! volume receives overlapping changes in LSN order (the order a replica
//! applies them in); non-overlapping changes run concurrently.

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::lock;

/// Extents of changes between journal append and volume write. A change waits
/// until no overlapping change is in flight, which makes volume order equal
/// LSN order for overlapping changes.
#[derive(Default)]
pub(crate) struct InflightRanges {
    ranges: Mutex<Vec<(u64, u64, u64)>>, // (id, start, end)
    next_id: std::sync::atomic::AtomicU64,
    released: Notify,
}

pub(crate) struct RangeGuard<'a> {
    owner: &'a InflightRanges,
    id: u64,
}

impl InflightRanges {
    pub(crate) async fn acquire(&self, offset: u64, length: u64) -> RangeGuard<'_> {
        let (start, end) = (offset, offset.saturating_add(length.max(1)));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            {
                let mut ranges = lock(&self.ranges);
                if !ranges.iter().any(|&(_, s, e)| s < end && start < e) {
                    ranges.push((id, start, end));
                    return RangeGuard { owner: self, id };
                }
                // Registered before the lock is released: a release between
                // here and the await still wakes us.
                released.as_mut().enable();
            }
            released.await;
        }
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut ranges = lock(&self.owner.ranges);
        if let Some(i) = ranges.iter().position(|&(id, _, _)| id == self.id) {
            ranges.swap_remove(i);
        }
        drop(ranges);
        self.owner.released.notify_waiters();
    }
}
