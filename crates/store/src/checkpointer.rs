//! The checkpointer: fsyncs the volume and advances the journal's
//! checkpoint periodically and under journal space pressure, so the journal
//! can reclaim what the volume holds durably.

use std::time::Duration;

use crate::error::StoreError;
use crate::store::Store;

/// Periodic checkpoints, and early ones under journal space pressure. Holds
/// only a weak reference so dropping the store stops it.
pub(crate) async fn checkpointer(store: std::sync::Weak<Store>, interval: Duration) {
    let Some(mut pressure) = store.upgrade().map(|s| s.journal().space_pressure()) else {
        return;
    };
    // The first checkpoint comes one interval after start (open already
    // checkpointed whatever recovery redid).
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let notified = {
            let Some(s) = store.upgrade() else { return };
            let s2 = s.clone();
            tokio::select! {
                _ = tick.tick() => {}
                changed = pressure.changed() => {
                    if changed.is_err() { return; }
                    if !*pressure.borrow() { continue; }
                }
                _ = async move { s2.checkpoint_now.notified().await } => {}
            }
            s
        };
        match notified.checkpoint().await {
            Ok(lsn) => tracing::debug!(lsn, "checkpoint"),
            Err(StoreError::Failed(_)) => return,
            Err(err) => {
                tracing::warn!(error = %err, "checkpoint failed; retrying at the next interval")
            }
        }
    }
}
