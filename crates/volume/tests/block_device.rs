//! A loop device as the backing store (needs root and losetup; skips with a
//! printed reason otherwise).

mod common;

use std::path::PathBuf;
use std::process::Command;

use bytes::Bytes;
use common::{engines, pattern, rt};
use volume::{Extent, Volume, VolumeError, VolumeOptions};

const DEVICE_BYTES: u64 = 8 << 20;

/// A loop device over a sparse file; detached on drop.
struct Loop {
    device: PathBuf,
    _dir: tempfile::TempDir,
}

impl Loop {
    fn attach() -> Result<Loop, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let image = dir.path().join("image");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(DEVICE_BYTES))
            .map_err(|e| e.to_string())?;
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image)
            .output()
            .map_err(|e| format!("losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "losetup failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let device = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
        Ok(Loop { device, _dir: dir })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

#[test]
fn loop_device_volume() {
    let lo = match Loop::attach() {
        Ok(lo) => lo,
        Err(reason) => {
            skip::because(&format!("needs a loop device: {reason}"));
            return;
        }
    };
    for engine in engines() {
        let opts = VolumeOptions {
            size_bytes: None,
            engine,
            read_only: false,
            create: false,
        };
        let err = Volume::open(
            &lo.device,
            VolumeOptions {
                size_bytes: Some(DEVICE_BYTES + 512),
                ..opts.clone()
            },
        )
        .unwrap_err();
        assert!(matches!(err, VolumeError::SizeMismatch { .. }), "{err}");
        let v = Volume::open(&lo.device, opts.clone()).unwrap();
        assert!(v.is_block_device());
        assert_eq!(v.size_bytes(), DEVICE_BYTES);
        rt().block_on(async {
            let data = Bytes::from(pattern(9, 1 << 20));
            v.write(100, data.clone()).await.unwrap();
            assert_eq!(v.read(100, data.len()).await.unwrap(), data);
            // Unaligned on both ends: the ragged sector edges are written,
            // the aligned middle goes to fallocate.
            v.punch_hole(1000, 300_000).await.unwrap();
            v.write_zeroes(400_000 + 3, 5000, false, false)
                .await
                .unwrap();
            v.sync_data().await.unwrap();
            let got = v.read(100, data.len()).await.unwrap();
            for (i, (&g, &w)) in got.iter().zip(data.iter()).enumerate() {
                let pos = i as u64 + 100;
                let zeroed = (1000..301_000).contains(&pos) || (400_003..405_003).contains(&pos);
                assert_eq!(g, if zeroed { 0 } else { w }, "{engine} byte {pos}");
            }
            assert_eq!(
                v.extents(4096, 8192).await.unwrap(),
                vec![Extent {
                    length_bytes: 8192,
                    hole: false,
                    zero: false
                }]
            );
            v.readahead(0, DEVICE_BYTES).await.unwrap();
        });
        drop(v);
    }
}
