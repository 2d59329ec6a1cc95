//! The volume's identity file (`volume-id` beside the journal): made once,
//! when the journal is created, and written atomically.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::error::StoreError;

/// The volume's identity lives beside its journal; it is made once, when the
/// journal is created, and written atomically.
pub(crate) fn load_or_create_volume_id(
    dir: &Path,
    expected: Option<Uuid>,
) -> Result<Uuid, StoreError> {
    let path: PathBuf = dir.join("volume-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let found = Uuid::parse_str(text.trim()).map_err(|e| StoreError::Metadata {
                path: path.clone(),
                reason: format!("not a UUID: {e}"),
            })?;
            match expected {
                Some(want) if want != found => Err(StoreError::Metadata {
                    path: path.clone(),
                    reason: format!(
                        "journal belongs to volume {found}, but the configuration says {want}"
                    ),
                }),
                _ => Ok(found),
            }
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::io("creating journal directory", dir, e))?;
            let uuid = expected.unwrap_or_else(Uuid::new_v4);
            let tmp = dir.join("volume-id.tmp");
            let write = || -> std::io::Result<()> {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp)?;
                writeln!(f, "{uuid}")?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                std::fs::File::open(dir)?.sync_all()
            };
            write().map_err(|e| StoreError::io("writing volume id", &path, e))?;
            Ok(uuid)
        }
        Err(err) => Err(StoreError::io("reading volume id", &path, err)),
    }
}
