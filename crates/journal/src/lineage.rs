//! The volume's generation lineage: (generation id, first LSN, flags),
//! oldest first, persisted in the superblock before any record carries a
//! new id. A new journal has none: a primary starts the first generation, a
//! replica takes its primary's lineage over.

use std::sync::Arc;

use crate::error::JournalError;
use crate::format::{GenerationEntry, MAX_LINEAGE_ENTRIES};
use crate::shared::{blocking, lock, Inner};
use crate::Lsn;

impl Inner {
    pub(crate) fn generation(&self) -> u64 {
        lock(&self.state).generation
    }

    pub(crate) fn lineage(&self) -> Vec<GenerationEntry> {
        lock(&self.meta).sb.lineage.clone()
    }

    /// Appends generation `id` at the next LSN (which must be `expect`
    /// when given), persisted before any record carries it.
    pub(crate) async fn push_generation(
        self: &Arc<Self>,
        id: u64,
        expect: Option<Lsn>,
        unknown_before: bool,
    ) -> Result<Lsn, JournalError> {
        let inner = self.clone();
        blocking(move || {
            let mut meta = lock(&inner.meta);
            if meta.sb.lineage.len() >= MAX_LINEAGE_ENTRIES {
                return Err(JournalError::InvalidRequest(format!(
                    "lineage already holds {MAX_LINEAGE_ENTRIES} generations"
                )));
            }
            if id == 0 || meta.sb.lineage.iter().any(|g| g.id == id) {
                return Err(JournalError::InvalidRequest(format!(
                    "generation {id} is 0 or already in the lineage"
                )));
            }
            // Hold the append lock while persisting so no record slips in
            // between the chosen start LSN and the new generation.
            let mut st = lock(&inner.state);
            if let Some(e) = st.failed_error() {
                return Err(e);
            }
            let start = st.next_lsn;
            if expect.is_some_and(|e| e != start) {
                return Err(JournalError::InvalidRequest(format!(
                    "generation {id} starts at LSN {expect:?} but the next LSN is {start}"
                )));
            }
            meta.sb.lineage.push(GenerationEntry {
                id,
                start_lsn: start,
                unknown_before,
            });
            if let Err(e) = meta.persist() {
                meta.sb.lineage.pop();
                return Err(e);
            }
            st.generation = id;
            Ok(start)
        })
        .await
    }

    /// Replaces the lineage (a replica taking over its primary's history at
    /// the start of a resync). Generations starting after the next LSN are
    /// left out: they are adopted as their first records arrive.
    pub(crate) async fn set_lineage(
        self: &Arc<Self>,
        lineage: Vec<GenerationEntry>,
    ) -> Result<(), JournalError> {
        let inner = self.clone();
        blocking(move || {
            if lineage.len() > MAX_LINEAGE_ENTRIES {
                return Err(JournalError::InvalidRequest(format!(
                    "a lineage of {} generations is more than {MAX_LINEAGE_ENTRIES}",
                    lineage.len()
                )));
            }
            let mut meta = lock(&inner.meta);
            let mut st = lock(&inner.state);
            let next = st.next_lsn;
            let kept: Vec<GenerationEntry> = lineage
                .into_iter()
                .take_while(|g| g.start_lsn <= next)
                .collect();
            let old = std::mem::replace(&mut meta.sb.lineage, kept);
            if let Err(e) = meta.persist() {
                meta.sb.lineage = old;
                return Err(e);
            }
            st.generation = meta.sb.lineage.last().map_or(0, |g| g.id);
            Ok(())
        })
        .await
    }
}
