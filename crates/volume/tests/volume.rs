//! Behaviour of every `Volume` method, on each engine.

mod common;

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use bytes::Bytes;
use common::{create, engines, opts, pattern, rt, tight_config};
use volume::{EngineKind, Extent, Volume, VolumeError, VolumeOptions};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

fn hole(len: u64) -> Extent {
    Extent {
        length_bytes: len,
        hole: true,
        zero: true,
    }
}

fn data(len: u64) -> Extent {
    Extent {
        length_bytes: len,
        hole: false,
        zero: false,
    }
}

/// Path on tmpfs (no FALLOC_FL_ZERO_RANGE there), if the machine has one.
fn tmpfs_dir() -> Option<tempfile::TempDir> {
    let dir = tempfile::tempdir_in("/dev/shm");
    if let Err(e) = &dir {
        skip::because(&format!("needs tmpfs at /dev/shm: {e}"));
    }
    dir.ok()
}

#[test]
fn engine_kind_parses() {
    assert_eq!("auto".parse::<EngineKind>().unwrap(), EngineKind::Auto);
    assert_eq!("uring".parse::<EngineKind>().unwrap(), EngineKind::Uring);
    assert_eq!(
        "threads".parse::<EngineKind>().unwrap(),
        EngineKind::Threads
    );
    assert!("io_uring".parse::<EngineKind>().is_err());
    assert_eq!(EngineKind::Threads.to_string(), "threads");
}

#[test]
fn engine_names_and_auto() {
    let dir = tempfile::tempdir().unwrap();
    let v = create(&dir.path().join("t"), EngineKind::Threads, 4096);
    assert_eq!(v.engine_name(), "threads");
    assert!(!v.is_block_device());
    drop(v);
    let v = create(&dir.path().join("a"), EngineKind::Auto, 4096);
    match common::uring_unavailable_reason() {
        None => assert_eq!(v.engine_name(), "io_uring"),
        Some(reason) => {
            eprintln!("auto fell back to threads: {reason}");
            assert_eq!(v.engine_name(), "threads");
        }
    }
}

#[test]
fn creates_sparse_file_of_requested_size() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol");
        let v = create(&path, engine, 64 * MIB);
        assert_eq!(v.size_bytes(), 64 * MIB);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 64 * MIB);
        assert_eq!(meta.blocks(), 0, "{engine}: new file must be sparse");
        rt().block_on(async {
            assert_eq!(v.extents(0, 64 * MIB).await.unwrap(), vec![hole(64 * MIB)]);
            assert!(v.read(MIB, 4096).await.unwrap().iter().all(|&b| b == 0));
        });
    }
}

#[test]
fn open_errors_are_specific() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vol");
    // Missing and no create: an open error naming the path.
    let err = Volume::open(
        &path,
        VolumeOptions {
            create: false,
            ..opts(EngineKind::Threads, 4096)
        },
    )
    .unwrap_err();
    assert_eq!(err.io_error().unwrap().kind(), std::io::ErrorKind::NotFound);
    assert!(err.to_string().contains("open"), "{err}");
    assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
    // Missing, create, no size.
    let err = Volume::open(
        &path,
        VolumeOptions {
            size_bytes: None,
            ..opts(EngineKind::Threads, 0)
        },
    )
    .unwrap_err();
    assert!(matches!(err, VolumeError::SizeRequired), "{err}");
    // Existing with another size.
    std::fs::write(&path, vec![7u8; 4096]).unwrap();
    let err = Volume::open(&path, opts(EngineKind::Threads, 8192)).unwrap_err();
    match err {
        VolumeError::SizeMismatch {
            existing,
            requested,
            ..
        } => assert_eq!((existing, requested), (4096, 8192)),
        other => panic!("expected SizeMismatch, got {other}"),
    }
    // Existing, size omitted: adopts the file's size and keeps its data.
    let v = Volume::open(
        &path,
        VolumeOptions {
            size_bytes: None,
            create: false,
            ..opts(EngineKind::Threads, 0)
        },
    )
    .unwrap();
    assert_eq!(v.size_bytes(), 4096);
    // A second writable open is refused; a read-only one is fine.
    let err = Volume::open(&path, opts(EngineKind::Threads, 4096)).unwrap_err();
    assert!(matches!(err, VolumeError::Locked { .. }), "{err}");
    let ro = Volume::open(
        &path,
        VolumeOptions {
            read_only: true,
            ..opts(EngineKind::Threads, 4096)
        },
    )
    .unwrap();
    assert_eq!(ro.size_bytes(), 4096);
    // A directory is not a volume.
    let err = Volume::open(dir.path(), opts(EngineKind::Threads, 4096)).unwrap_err();
    assert!(matches!(err, VolumeError::NotAVolume { .. }), "{err}");
}

#[test]
fn empty_existing_file_is_grown_when_create_is_set() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let v = Volume::open(file.path(), opts(EngineKind::Threads, MIB)).unwrap();
    assert_eq!(v.size_bytes(), MIB);
    assert_eq!(std::fs::metadata(file.path()).unwrap().len(), MIB);
}

#[test]
fn read_write_roundtrip_unaligned_and_large() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let v = create(&dir.path().join("vol"), engine, 8 * MIB + 3);
        rt().block_on(async {
            let small = Bytes::from(pattern(1, 4096 + 7));
            v.write(513, small.clone()).await.unwrap();
            assert_eq!(v.read(513, small.len()).await.unwrap(), small);
            // Large, unaligned, crossing the end of the previous write.
            let big = Bytes::from(pattern(2, 3 * MIB as usize + 123));
            v.write(4000, big.clone()).await.unwrap();
            assert_eq!(v.read(4000, big.len()).await.unwrap(), big);
            assert_eq!(v.read(513, 10).await.unwrap(), small.slice(..10));
            // Last byte of an odd-sized volume.
            v.write(8 * MIB + 2, Bytes::from_static(b"z"))
                .await
                .unwrap();
            assert_eq!(&v.read(8 * MIB + 2, 1).await.unwrap()[..], b"z");
            assert!(v.read(0, 0).await.unwrap().is_empty());
            v.write(0, Bytes::new()).await.unwrap();
            v.sync_data().await.unwrap();
            v.readahead(0, 8 * MIB).await.unwrap();
        });
    }
}

#[test]
fn concurrent_writes_through_a_tight_ring() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let v = Arc::new(
            Volume::open_with(
                &dir.path().join("vol"),
                opts(engine, 4 * MIB),
                &tight_config(),
            )
            .unwrap(),
        );
        rt().block_on(async {
            let mut tasks = Vec::new();
            for i in 0..256u64 {
                let v = Arc::clone(&v);
                tasks.push(tokio::spawn(async move {
                    let buf = Bytes::from(pattern(i as u8, 4096));
                    v.write(i * 8192 + 11, buf).await.unwrap();
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let mut reads = Vec::new();
            for i in 0..256u64 {
                let v = Arc::clone(&v);
                reads.push(tokio::spawn(async move {
                    let got = v.read(i * 8192 + 11, 4096).await.unwrap();
                    assert_eq!(&got[..], &pattern(i as u8, 4096)[..], "{engine} block {i}");
                }));
            }
            for t in reads {
                t.await.unwrap();
            }
        });
    }
}

#[test]
fn dropped_futures_do_not_wedge_the_engine() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let v = Arc::new(
            Volume::open_with(&dir.path().join("vol"), opts(engine, MIB), &tight_config()).unwrap(),
        );
        rt().block_on(async {
            for i in 0..64u64 {
                let v2 = Arc::clone(&v);
                let task =
                    tokio::spawn(
                        async move { v2.write(i * 4096, Bytes::from(vec![1u8; 4096])).await },
                    );
                task.abort();
            }
            // The engine still answers, and the permits came back.
            v.write(0, Bytes::from(vec![9u8; 4096])).await.unwrap();
            v.sync_data().await.unwrap();
            assert_eq!(v.read(0, 4096).await.unwrap()[..], [9u8; 4096][..]);
        });
        drop(v); // must not hang: the ring thread drains before exiting
    }
}

#[test]
fn punch_hole_reads_zero_and_reports_holes() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let v = create(&dir.path().join("vol"), engine, MIB);
        rt().block_on(async {
            v.write(0, Bytes::from(pattern(3, MIB as usize)))
                .await
                .unwrap();
            v.punch_hole(256 * KIB, 256 * KIB).await.unwrap();
            assert_eq!(
                v.extents(0, MIB).await.unwrap(),
                vec![data(256 * KIB), hole(256 * KIB), data(512 * KIB)],
                "{engine}"
            );
            assert!(v
                .read(256 * KIB, 256 * KIB as usize)
                .await
                .unwrap()
                .iter()
                .all(|&b| b == 0));
            // Unaligned punch: partial blocks are zeroed, neighbours kept.
            v.punch_hole(600 * KIB + 100, 1000).await.unwrap();
            let got = v.read(600 * KIB, 2048).await.unwrap();
            let want = pattern(3, MIB as usize);
            let base = 600 * KIB as usize;
            assert_eq!(&got[..100], &want[base..base + 100]);
            assert!(got[100..1100].iter().all(|&b| b == 0));
            assert_eq!(&got[1100..], &want[base + 1100..base + 2048]);
        });
    }
}

#[test]
fn write_zeroes_with_and_without_trim() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let v = create(&dir.path().join("vol"), engine, MIB);
        rt().block_on(async {
            v.write(0, Bytes::from(pattern(4, MIB as usize)))
                .await
                .unwrap();
            v.write_zeroes(0, 128 * KIB, true, false).await.unwrap();
            v.write_zeroes(512 * KIB + 5, 64 * KIB, false, false)
                .await
                .unwrap();
            // fast_only succeeds on ext4/xfs: both fallocate modes exist.
            v.write_zeroes(768 * KIB, 4 * KIB, false, true)
                .await
                .unwrap();
            let got = v.read(0, MIB as usize).await.unwrap();
            let want = pattern(4, MIB as usize);
            let zero = |r: std::ops::Range<u64>| r.start as usize..r.end as usize;
            for (i, (&g, &w)) in got.iter().zip(want.iter()).enumerate() {
                let i64 = i as u64;
                let zeroed = zero(0..128 * KIB).contains(&i)
                    || zero(512 * KIB + 5..576 * KIB + 5).contains(&i)
                    || zero(768 * KIB..772 * KIB).contains(&i);
                assert_eq!(g, if zeroed { 0 } else { w }, "{engine} byte {i64}");
            }
            // The trimmed range is a hole.
            assert_eq!(
                v.extents(0, 128 * KIB).await.unwrap(),
                vec![hole(128 * KIB)]
            );
        });
    }
}

#[test]
fn zeroing_falls_back_where_fallocate_modes_are_missing() {
    // tmpfs punches holes but has no FALLOC_FL_ZERO_RANGE.
    let Some(dir) = tmpfs_dir() else { return };
    for engine in engines() {
        let path = dir.path().join(format!("vol-{engine}"));
        let v = create(&path, engine, 4 * MIB);
        rt().block_on(async {
            v.write(0, Bytes::from(vec![0xAB; 4 * MIB as usize]))
                .await
                .unwrap();
            let err = v.write_zeroes(0, MIB, false, true).await.unwrap_err();
            assert!(matches!(err, VolumeError::FastZeroUnavailable), "{err}");
            assert_eq!(
                v.read(0, 1).await.unwrap()[0],
                0xAB,
                "fast_only must not write"
            );
            // Not fast-only: written as zero buffers (several chunks).
            v.write_zeroes(7, 2 * MIB + 9, false, false).await.unwrap();
            let got = v.read(0, 4 * MIB as usize).await.unwrap();
            assert!(got[..7].iter().all(|&b| b == 0xAB));
            assert!(got[7..(2 * MIB + 16) as usize].iter().all(|&b| b == 0));
            assert!(got[(2 * MIB + 16) as usize..].iter().all(|&b| b == 0xAB));
            // Trim allowed: punch works on tmpfs, so fast_only succeeds.
            v.write_zeroes(3 * MIB, MIB, true, true).await.unwrap();
            assert!(v
                .read(3 * MIB, MIB as usize)
                .await
                .unwrap()
                .iter()
                .all(|&b| b == 0));
        });
    }
}

#[test]
fn extents_on_a_mixed_file() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let v = create(&dir.path().join("vol"), engine, 1024 * KIB);
        rt().block_on(async {
            v.write(0, Bytes::from(pattern(5, 64 * KIB as usize)))
                .await
                .unwrap();
            v.write(128 * KIB, Bytes::from(pattern(6, 64 * KIB as usize)))
                .await
                .unwrap();
            v.sync_data().await.unwrap();
            assert_eq!(
                v.extents(0, 1024 * KIB).await.unwrap(),
                vec![
                    data(64 * KIB),
                    hole(64 * KIB),
                    data(64 * KIB),
                    hole(832 * KIB)
                ],
                "{engine}"
            );
            // A window starting inside data and ending inside a hole.
            assert_eq!(
                v.extents(60 * KIB, 100 * KIB).await.unwrap(),
                vec![data(4 * KIB), hole(64 * KIB), data(32 * KIB)]
            );
            // Never longer than asked, even for one byte.
            assert_eq!(v.extents(64 * KIB, 1).await.unwrap(), vec![hole(1)]);
            assert_eq!(v.extents(5, 1).await.unwrap(), vec![data(1)]);
            assert!(v.extents(0, 0).await.unwrap().is_empty());
        });
    }
}

#[test]
fn read_only_refuses_changes() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol");
        drop(create(&path, engine, MIB));
        let v = Volume::open(
            &path,
            VolumeOptions {
                read_only: true,
                create: false,
                ..opts(engine, MIB)
            },
        )
        .unwrap();
        rt().block_on(async {
            for err in [
                v.write(0, Bytes::from_static(b"x")).await.unwrap_err(),
                v.punch_hole(0, 4096).await.unwrap_err(),
                v.write_zeroes(0, 4096, false, false).await.unwrap_err(),
            ] {
                assert!(matches!(err, VolumeError::ReadOnly), "{err}");
            }
            assert_eq!(v.read(0, 4).await.unwrap(), Bytes::from_static(&[0; 4]));
            v.sync_data().await.unwrap();
        });
    }
}

#[test]
fn out_of_range_is_rejected() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let v = create(&dir.path().join("vol"), engine, MIB);
        rt().block_on(async {
            let errs = [
                v.read(MIB - 1, 2).await.unwrap_err(),
                v.write(MIB, Bytes::from_static(b"x")).await.unwrap_err(),
                v.punch_hole(u64::MAX, 2).await.unwrap_err(),
                v.write_zeroes(MIB / 2, MIB, true, false).await.unwrap_err(),
                v.extents(0, MIB + 1).await.unwrap_err(),
                v.readahead(MIB + 1, 0).await.unwrap_err(),
            ];
            for err in errs {
                assert!(matches!(err, VolumeError::OutOfRange { .. }), "{err}");
            }
            let err = v.read(MIB - 1, 2).await.unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "2 bytes at offset {} is outside the volume of {MIB} bytes",
                    MIB - 1
                )
            );
        });
    }
}

#[test]
fn io_errors_name_operation_path_and_offset() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol");
        let v = create(&path, engine, MIB);
        // Someone truncates the file under us: the read hits end of file.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4096)
            .unwrap();
        let err = rt().block_on(v.read(8192, 512)).unwrap_err();
        let VolumeError::Io { op, offset, .. } = &err else {
            panic!("expected Io, got {err}")
        };
        assert_eq!((*op, *offset), ("read", Some(8192)));
        let text = err.to_string();
        assert!(text.contains("read") && text.contains("8192"), "{text}");
        assert!(text.contains(path.to_str().unwrap()), "{text}");
    }
}
