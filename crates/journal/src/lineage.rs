//! The volume's generation lineage: (generation id, first LSN), oldest
//! first, persisted in the superblock before any record carries a new id.

use uuid::Uuid;

use crate::error::JournalError;
use crate::format::{GenerationEntry, MAX_LINEAGE_ENTRIES};
use std::sync::Arc;

use crate::shared::{blocking, lock, Inner};
use crate::Lsn;

/// The first generation of a volume is derived from its UUID, so every node
/// created for the same volume starts with the same lineage.
pub fn initial_generation_id(volume: Uuid) -> u64 {
    let b = volume.as_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

impl Inner {
    pub(crate) fn generation(&self) -> u64 {
        lock(&self.state).generation
    }

    pub(crate) fn lineage(&self) -> Vec<(u64, Lsn)> {
        lock(&self.meta)
            .sb
            .lineage
            .iter()
            .map(|g| (g.id, g.start_lsn))
            .collect()
    }

    /// Appends generation `id` at the next LSN (which must be `expect`
    /// when given), persisted before any record carries it.
    pub(crate) async fn push_generation(
        self: &Arc<Self>,
        id: u64,
        expect: Option<Lsn>,
    ) -> Result<Lsn, JournalError> {
        let inner = self.clone();
        blocking(move || {
            let mut meta = lock(&inner.meta);
            if meta.sb.lineage.len() >= MAX_LINEAGE_ENTRIES {
                return Err(JournalError::InvalidRequest(format!(
                    "lineage already holds {MAX_LINEAGE_ENTRIES} generations"
                )));
            }
            if meta.sb.lineage.iter().any(|g| g.id == id) {
                return Err(JournalError::InvalidRequest(format!(
                    "generation {id} already in the lineage"
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
}
