//! The io_uring and thread engines must be indistinguishable: the same random
//! operation sequence, run on two files (one per engine), gives identical
//! read results, identical final files, and both equal an in-memory model.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{opts, pattern, tight_config, uring_unavailable_reason};
use proptest::prelude::*;
use volume::{EngineConfig, EngineKind, Volume, VolumeError};

/// Deliberately not a multiple of the block size.
const SIZE_BYTES: u64 = 192 * 1024 + 17;
/// Width of the disjoint slots used by concurrent batches.
const SLOT_BYTES: u64 = 12 * 1024;

#[derive(Debug, Clone)]
enum Step {
    Write {
        offset: u64,
        len: usize,
        seed: u8,
    },
    Read {
        offset: u64,
        len: usize,
    },
    Punch {
        offset: u64,
        len: u64,
    },
    Zeroes {
        offset: u64,
        len: u64,
        may_trim: bool,
    },
    Sync,
    /// Writes to disjoint slots issued concurrently (exercises batching).
    Batch(Vec<(u64, usize, u8)>),
    Extents {
        offset: u64,
        len: u64,
    },
}

fn range() -> impl Strategy<Value = (u64, u64)> {
    // Offsets and lengths both unaligned, biased to small but reaching the end.
    (
        0..SIZE_BYTES,
        prop_oneof![1u64..600, 1u64..20_000, 1u64..SIZE_BYTES],
    )
        .prop_map(|(offset, len)| (offset, len.min(SIZE_BYTES - offset).max(1)))
        .prop_filter("inside the volume", |(o, l)| o + l <= SIZE_BYTES)
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (range(), any::<u8>()).prop_map(|((offset, len), seed)| Step::Write {
            offset,
            len: len as usize,
            seed
        }),
        3 => range().prop_map(|(offset, len)| Step::Read { offset, len: len as usize }),
        1 => range().prop_map(|(offset, len)| Step::Punch { offset, len }),
        1 => (range(), any::<bool>()).prop_map(|((offset, len), may_trim)| Step::Zeroes {
            offset,
            len,
            may_trim
        }),
        1 => Just(Step::Sync),
        1 => proptest::collection::vec(
            (0..SIZE_BYTES / SLOT_BYTES, 0..SLOT_BYTES / 2, 1..SLOT_BYTES as usize / 2, any::<u8>()),
            1..24
        )
        .prop_map(|writes| {
            let mut seen = std::collections::HashSet::new();
            Step::Batch(
                writes
                    .into_iter()
                    .filter(|(slot, ..)| seen.insert(*slot))
                    .map(|(slot, skew, len, seed)| (slot * SLOT_BYTES + skew, len, seed))
                    .collect(),
            )
        }),
        1 => range().prop_map(|(offset, len)| Step::Extents { offset, len }),
    ]
}

/// What one step observed: reads' bytes, or the step's error text.
#[derive(Debug, PartialEq)]
enum Seen {
    Nothing,
    Bytes(Bytes),
}

async fn apply(v: &Arc<Volume>, model: &mut [u8], step: &Step) -> Result<Seen, VolumeError> {
    match step {
        Step::Write { offset, len, seed } => {
            let data = pattern(*seed, *len);
            v.write(*offset, Bytes::from(data.clone())).await?;
            model[*offset as usize..*offset as usize + len].copy_from_slice(&data);
            Ok(Seen::Nothing)
        }
        Step::Read { offset, len } => {
            let got = v.read(*offset, *len).await?;
            assert_eq!(
                &got[..],
                &model[*offset as usize..*offset as usize + len],
                "{} read {len} at {offset} differs from the model",
                v.engine_name()
            );
            Ok(Seen::Bytes(got))
        }
        Step::Punch { offset, len } => {
            v.punch_hole(*offset, *len).await?;
            model[*offset as usize..(offset + len) as usize].fill(0);
            Ok(Seen::Nothing)
        }
        Step::Zeroes {
            offset,
            len,
            may_trim,
        } => {
            v.write_zeroes(*offset, *len, *may_trim, false).await?;
            model[*offset as usize..(offset + len) as usize].fill(0);
            Ok(Seen::Nothing)
        }
        Step::Sync => v.sync_data().await.map(|()| Seen::Nothing),
        Step::Batch(writes) => {
            let mut tasks = Vec::new();
            for &(offset, len, seed) in writes {
                let v = Arc::clone(v);
                tasks.push(tokio::spawn(async move {
                    v.write(offset, Bytes::from(pattern(seed, len))).await
                }));
            }
            for task in tasks {
                task.await.expect("write task")?;
            }
            for &(offset, len, seed) in writes {
                model[offset as usize..offset as usize + len].copy_from_slice(&pattern(seed, len));
            }
            Ok(Seen::Nothing)
        }
        Step::Extents { offset, len } => {
            // Allocation can legitimately differ between files; what must
            // hold: contiguous, exactly as long as asked (few runs here), and
            // every hole reads as zeroes.
            let extents = v.extents(*offset, *len).await?;
            let mut pos = *offset;
            for e in &extents {
                assert!(e.length_bytes > 0);
                if e.hole {
                    assert!(e.zero);
                    assert!(
                        model[pos as usize..(pos + e.length_bytes) as usize]
                            .iter()
                            .all(|&b| b == 0),
                        "hole at {pos}+{} holds data in the model",
                        e.length_bytes
                    );
                }
                pos += e.length_bytes;
            }
            assert_eq!(pos, offset + len, "extents must cover exactly the request");
            Ok(Seen::Nothing)
        }
    }
}

fn run_case(steps: &[Step]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let rt = common::rt();
    let mut finals = Vec::new();
    let mut observed: Vec<Vec<Seen>> = Vec::new();
    // Both engines with every operation through them, then io_uring behind
    // the inline fast path (page-cache reads and lone writes on the caller).
    let inline = EngineConfig {
        inline_fast_path: true,
        ..tight_config()
    };
    let runs = [
        (EngineKind::Threads, tight_config(), "threads"),
        (EngineKind::Uring, tight_config(), "uring"),
        (EngineKind::Uring, inline, "uring+inline"),
    ];
    for (engine, config, label) in runs {
        let path = dir.path().join(label);
        let v = Arc::new(Volume::open_with(&path, opts(engine, SIZE_BYTES), &config).unwrap());
        let mut model = vec![0u8; SIZE_BYTES as usize];
        let seen = rt.block_on(async {
            let mut seen = Vec::new();
            for step in steps {
                seen.push(apply(&v, &mut model, step).await.expect("step failed"));
            }
            v.sync_data().await.unwrap();
            seen
        });
        drop(v);
        let on_disk = std::fs::read(&path).unwrap();
        prop_assert_eq!(on_disk.len() as u64, SIZE_BYTES);
        prop_assert!(
            on_disk == model,
            "{} final file differs from the model",
            label
        );
        finals.push(on_disk);
        observed.push(seen);
    }
    prop_assert!(finals[0] == finals[1], "final files differ between engines");
    prop_assert!(
        finals[0] == finals[2],
        "the inline fast path changed the result"
    );
    prop_assert_eq!(&observed[0], &observed[1]);
    prop_assert_eq!(&observed[0], &observed[2]);
    Ok(())
}

#[test]
fn uring_and_threads_agree_with_each_other_and_the_model() {
    if let Some(reason) = uring_unavailable_reason() {
        skip::because(&format!("needs the io_uring engine: {reason}"));
        return;
    }
    let config = ProptestConfig {
        cases: 96,
        ..ProptestConfig::default()
    };
    proptest!(config, |(steps in proptest::collection::vec(step(), 1..40))| {
        run_case(&steps)?;
    });
}
