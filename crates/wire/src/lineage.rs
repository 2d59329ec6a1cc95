//! Handshake checks: compatibility of two Hellos and lineage comparison. Pure functions.

use thiserror::Error;
use uuid::Uuid;

use crate::message::{Hello, LineageEntry};

/// How two lineages (oldest generation first) relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineageOrder {
    /// Identical histories: stream from the durable LSN.
    Same,
    /// `a`'s history is a prefix of `b`'s: `b` is newer, resync flows b → a.
    /// `common_generation` is a's last generation (None if a is empty); `common_lsn`
    /// is where b's first generation unknown to a began.
    AIsAncestor {
        common_generation: Option<u64>,
        common_lsn: u64,
    },
    /// Mirror of `AIsAncestor`: resync flows a → b.
    BIsAncestor {
        common_generation: Option<u64>,
        common_lsn: u64,
    },
    /// Both sides started generations the other does not know after a
    /// shared one: split brain. `common_generation` is the last shared
    /// generation; `common_lsn` is the earliest LSN at which the histories part.
    Diverged {
        common_generation: u64,
        common_lsn: u64,
    },
    /// Both have histories and share no generation: two different volumes
    /// (or one whose history was lost and restarted).
    Unrelated,
}

/// Compare two lineages entry by entry (generation id and start LSN must both match).
pub fn compare_lineage(a: &[LineageEntry], b: &[LineageEntry]) -> LineageOrder {
    let shared = a.iter().zip(b.iter()).take_while(|(x, y)| x == y).count();
    let common_generation = shared.checked_sub(1).map(|i| a[i].generation_id);
    match (a.get(shared), b.get(shared)) {
        (None, None) => LineageOrder::Same,
        (None, Some(next_b)) => LineageOrder::AIsAncestor {
            common_generation,
            common_lsn: next_b.start_lsn,
        },
        (Some(next_a), None) => LineageOrder::BIsAncestor {
            common_generation,
            common_lsn: next_a.start_lsn,
        },
        (Some(next_a), Some(next_b)) => match common_generation {
            None => LineageOrder::Unrelated,
            Some(common_generation) => LineageOrder::Diverged {
                common_generation,
                common_lsn: next_a.start_lsn.min(next_b.start_lsn),
            },
        },
    }
}

/// Why two nodes cannot replicate with each other, as found by [`check_hello`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Mismatch {
    #[error("protocol version mismatch: local {local}, remote {remote}")]
    Version { local: u16, remote: u16 },
    #[error("volume uuid mismatch: local {local}, remote {remote} (peer is configured for another volume)")]
    VolumeUuid { local: Uuid, remote: Uuid },
    #[error("volume size mismatch: local {local_bytes} bytes, remote {remote_bytes} bytes")]
    VolumeSize { local_bytes: u64, remote_bytes: u64 },
    #[error("region size mismatch: local {local_bytes} bytes, remote {remote_bytes} bytes (dirty bitmaps would not line up)")]
    RegionSize { local_bytes: u64, remote_bytes: u64 },
}

/// Can `local` and `remote` replicate at all: same protocol version, volume,
/// size and region size? Checks run from most to least fundamental. How
/// their histories relate (and so what to do) is the caller's decision, from
/// [`compare_lineage`].
pub fn check_hello(local: &Hello, remote: &Hello) -> Result<(), Mismatch> {
    if local.protocol_version != remote.protocol_version {
        return Err(Mismatch::Version {
            local: local.protocol_version,
            remote: remote.protocol_version,
        });
    }
    if local.volume_uuid != remote.volume_uuid {
        return Err(Mismatch::VolumeUuid {
            local: local.volume_uuid,
            remote: remote.volume_uuid,
        });
    }
    if local.volume_size_bytes != remote.volume_size_bytes {
        return Err(Mismatch::VolumeSize {
            local_bytes: local.volume_size_bytes,
            remote_bytes: remote.volume_size_bytes,
        });
    }
    if local.region_bytes != remote.region_bytes {
        return Err(Mismatch::RegionSize {
            local_bytes: local.region_bytes,
            remote_bytes: remote.region_bytes,
        });
    }
    Ok(())
}
