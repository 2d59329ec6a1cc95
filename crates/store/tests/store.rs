//! The store against real files: recovery reports, the activity log across
//! clean and unclean stops, region snapshots and resync writes.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use journal::JournalConfig;
use store::{ActivityConfig, Change, RegionContent, Store, StoreConfig, SyncWrite};
use volume::{EngineKind, Volume, VolumeOptions};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 16 * MIB;

fn config(dir: &Path, activity: ActivityConfig) -> StoreConfig {
    let mut journal = JournalConfig::new(dir.join("journal"));
    journal.segment_bytes = 40 * MIB;
    journal.capacity_bytes = 3 * 40 * MIB;
    journal.pressure_bytes = 2 * 40 * MIB;
    StoreConfig {
        journal,
        checkpoint_interval: Duration::from_secs(3600),
        volume_uuid: None,
        activity,
    }
}

async fn open(
    dir: &Path,
    activity: ActivityConfig,
) -> (std::sync::Arc<Store>, store::RecoveryReport) {
    let volume = Volume::open(
        &dir.join("volume.img"),
        VolumeOptions {
            size_bytes: Some(SIZE),
            engine: EngineKind::Threads,
            read_only: false,
            create: true,
        },
    )
    .unwrap();
    Store::open(volume, config(dir, activity)).await.unwrap()
}

fn write(offset: u64, byte: u8) -> Change {
    Change::Write {
        offset,
        data: Bytes::from(vec![byte; 4096]),
    }
}

fn small_log() -> ActivityConfig {
    ActivityConfig {
        extent_bytes: MIB,
        max_extents: 2,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_activity_log_reports_what_an_unclean_stop_may_have_left() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (s, report) = open(dir.path(), small_log()).await;
        assert!(report.created && !report.activity.unclean, "{report:?}");
        // Extents 0 and 5 written, flushed; then 9 written and not flushed.
        s.change(write(0, 1), false).await.unwrap();
        s.change(write(5 * MIB, 2), false).await.unwrap();
        s.flush().await.unwrap();
        s.change(write(9 * MIB + 4096, 3), false).await.unwrap();
        // Dropped without close(): an unclean stop.
    }
    let (s, report) = open(dir.path(), small_log()).await;
    assert!(!report.created && report.activity.unclean, "{report:?}");
    let pinned = &report.activity.pinned;
    // The log holds at most 2 extents: the unflushed write's extent is
    // there (its record may have been lost), older durable ones may have
    // left to make room.
    assert!(pinned.contains(&(9 * MIB, MIB)), "{pinned:?}");
    assert!(pinned.len() <= 2, "{pinned:?}");
    // Pinned until settled: a second unclean stop reports them again.
    drop(s);
    let (s, report) = open(dir.path(), small_log()).await;
    assert!(report.activity.pinned.contains(&(9 * MIB, MIB)));
    s.settle_activity().await.unwrap();
    s.close().await.unwrap();
    drop(s);
    let (_s, report) = open(dir.path(), small_log()).await;
    assert!(!report.activity.unclean, "{report:?}");
    assert!(report.activity.pinned.is_empty(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_many_extents_never_leave_an_unflushed_one_out_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut unflushed = Vec::new();
    {
        let (s, _) = open(dir.path(), small_log()).await;
        for i in 0..12u64 {
            let extent = (i * 5) % 16;
            s.change(write(extent * MIB, i as u8), false).await.unwrap();
            if i % 3 == 2 {
                s.flush().await.unwrap();
                unflushed.clear();
            } else {
                unflushed.push(extent);
            }
        }
    }
    let (_s, report) = open(dir.path(), small_log()).await;
    for e in unflushed {
        assert!(
            report.activity.pinned.contains(&(e * MIB, MIB)),
            "extent {e} was written after the last flush but is not in the log: {:?}",
            report.activity.pinned
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_and_resync_writes_carry_a_region_between_stores() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (src, _) = open(a.path(), ActivityConfig::default()).await;
    let (dst, _) = open(b.path(), ActivityConfig::default()).await;
    assert!(
        !src.holds_data().await.unwrap(),
        "a new sparse volume holds nothing"
    );
    src.change(write(MIB, 7), false).await.unwrap();
    assert!(src.holds_data().await.unwrap());
    let lsn = src.journal().written_lsn();
    // A hole, written zeroes and data.
    let hole = src.region_snapshot(0, 65536, false).await.unwrap();
    assert_eq!((hole.lsn, hole.content), (lsn, RegionContent::Zero));
    src.change(write(2 * MIB, 0), false).await.unwrap();
    let zeros = src.region_snapshot(2 * MIB, 65536, false).await.unwrap();
    assert_eq!(zeros.content, RegionContent::Zero);
    assert_eq!(zeros.lsn, lsn + 1, "as of the last LSN assigned");
    let data = src.region_snapshot(MIB, 65536, false).await.unwrap();
    let RegionContent::Data(bytes) = data.content else {
        panic!("expected data")
    };
    let digest = src.region_snapshot(MIB, 65536, true).await.unwrap();
    assert_eq!(
        digest.content,
        RegionContent::Digest(*blake3::hash(&bytes).as_bytes())
    );
    // The target takes it and then hashes the same.
    assert_ne!(
        dst.digest(MIB, 65536).await.unwrap(),
        *blake3::hash(&bytes).as_bytes()
    );
    dst.apply_sync(MIB, 65536, SyncWrite::Data(bytes.clone()))
        .await
        .unwrap();
    assert_eq!(
        dst.digest(MIB, 65536).await.unwrap(),
        *blake3::hash(&bytes).as_bytes()
    );
    dst.apply_sync(MIB, 65536, SyncWrite::Zero).await.unwrap();
    assert_eq!(dst.read(MIB, 65536).await.unwrap(), vec![0u8; 65536]);
    assert!(
        !dst.holds_data().await.unwrap(),
        "a zeroed range is punched"
    );
}
