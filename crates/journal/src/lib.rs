//! driftless write-ahead journal: checksummed records in preallocated segment
//! files, group commit (one pwritev + one fdatasync per batch), crash
//! recovery with torn-tail cutting, retention for consumers with folding of
//! slow consumers into persistent dirty-region bitmaps.
//!
//! The record codec ([`record`]) and the metadata codecs ([`format`]) are
//! sans-IO; everything that touches files lives in the other modules.
//! The on-disk format is documented byte by byte in `docs/journal.md`.
//!
//! Lock poisoning: a panic while holding a journal lock may leave the queue
//! or the segment list half updated, so a poisoned lock is never taken
//! over: every later lock panics too (the volume must be restarted, and
//! recovery rebuilds the state from the files).

mod bitmap;
mod config;
mod consumer;
mod error;
pub mod format;
mod journal;
mod lineage;
mod read;
pub mod record;
mod recovery;
mod segment;
mod shared;
mod space;
mod superblock;
mod writer;

#[cfg(test)]
mod tests;

/// Log sequence number. LSN 0 means "nothing"; the first record is LSN 1.
pub type Lsn = u64;

pub use bitmap::DirtyBitmap;
pub use config::{JournalConfig, Observer, VolumeIdentity};
pub use consumer::{Consumer, DirtyInfo, ReadBatch, ResyncStart};
pub use error::JournalError;
pub use format::GenerationEntry;
pub use journal::{Journal, JournalStats};
pub use read::RecordSummary;
pub use record::{decode_record, DecodedRecord, RecordError, RecordHeader, RecordKind, Salt};
pub use recovery::{LogRecord, Recovery};
pub use writer::{AppendHandle, NewRecord};
