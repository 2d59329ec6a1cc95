//! The role a node holds for a volume, persisted beside its journal
//! (`role.json`). The configured role is only the role a brand-new volume
//! starts with; from then on this file decides, so a node that was demoted
//! (or stepped down for a newer primary) never comes back primary by
//! itself after a restart.

use std::io::Write;
use std::path::{Path, PathBuf};

use replication::VolumeRole;
use serde::{Deserialize, Serialize};

use crate::error::NodeError;

const FILE: &str = "role.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRecord {
    pub role: VolumeRole,
    /// Why the role last changed (shown in status and the log).
    pub reason: String,
    /// When, in nanoseconds since the Unix epoch.
    pub changed_at_ns: u64,
}

/// Wall time in nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub fn path(journal_dir: &Path) -> PathBuf {
    journal_dir.join(FILE)
}

/// The persisted role, or `None` before the first start.
pub fn load(journal_dir: &Path) -> Result<Option<RoleRecord>, NodeError> {
    let p = path(journal_dir);
    match std::fs::read_to_string(&p) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
            NodeError::Config(format!(
                "{}: not a role record ({e}); it says whether this node is the volume's primary: restore it, or remove it to start with the configured role",
                p.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(NodeError::io(format!("reading {}", p.display()), e)),
    }
}

/// Replaces the record atomically and durably (temp file, fsync, rename,
/// fsync of the directory): after a crash it is the old or the new role.
pub fn store(journal_dir: &Path, role: VolumeRole, reason: &str) -> Result<RoleRecord, NodeError> {
    let record = RoleRecord {
        role,
        reason: reason.to_owned(),
        changed_at_ns: now_ns(),
    };
    let p = path(journal_dir);
    let tmp = journal_dir.join(format!("{FILE}.tmp"));
    let io = |what: &str, e| NodeError::io(format!("{what} {}", p.display()), e);
    let text = serde_json::to_string_pretty(&record).expect("a role record serializes");
    let mut f = std::fs::File::create(&tmp).map_err(|e| io("writing", e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| io("writing", e))?;
    std::fs::rename(&tmp, &p).map_err(|e| io("replacing", e))?;
    std::fs::File::open(journal_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing the directory of", e))?;
    tracing::warn!(role = %role, reason, "volume role persisted");
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_a_damaged_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let r = store(dir.path(), VolumeRole::Secondary, "demoted").unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(r));
        std::fs::write(path(dir.path()), "{\"role\":\"boss\"}").unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("role.json") && err.contains("not a role record"),
            "{err}"
        );
    }
}
