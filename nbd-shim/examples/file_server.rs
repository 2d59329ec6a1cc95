//! Minimal file-backed NBD server, for interop checks (qemu-img, nbdinfo,
//! fio) and benchmark comparisons of the protocol layer alone.
//!
//! Usage: file_server FILE SOCKET_PATH [EXPORT_NAME]
//!        file_server mem:SIZE_MIB SOCKET_PATH [EXPORT_NAME]   (in memory)
//! Serves until Ctrl-C.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use nbd_shim::{
    BlockTarget, Durability, Export, Extent, Listener, NbdError, Server, ServerLimits, TargetError,
    TargetFeatures, ZeroFlags,
};

struct FileTarget {
    file: Arc<File>,
    size_bytes: u64,
}

/// In-memory target: measures the protocol layer without any I/O.
struct MemTarget {
    data: std::sync::RwLock<Vec<u8>>,
}

fn poisoned() -> TargetError {
    TargetError::Io(std::io::Error::other("lock poisoned"))
}

impl BlockTarget for MemTarget {
    fn size_bytes(&self) -> u64 {
        self.data.read().map(|d| d.len() as u64).unwrap_or(0)
    }
    fn features(&self) -> TargetFeatures {
        TargetFeatures {
            read_only: false,
            can_trim: false,
            can_write_zeroes: false,
            can_fast_zero: false,
            can_cache: false,
            preferred_block_bytes: 4096,
        }
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, TargetError> {
        let d = self.data.read().map_err(|_| poisoned())?;
        let o = offset as usize;
        Ok(Bytes::copy_from_slice(&d[o..o + len as usize]))
    }
    async fn write(&self, offset: u64, data: Bytes, _d: Durability) -> Result<(), TargetError> {
        let mut d = self.data.write().map_err(|_| poisoned())?;
        let o = offset as usize;
        d[o..o + data.len()].copy_from_slice(&data);
        Ok(())
    }
    async fn write_zeroes(&self, _o: u64, _l: u32, _f: ZeroFlags) -> Result<(), TargetError> {
        Err(TargetError::NotSupported("write zeroes"))
    }
    async fn trim(&self, _o: u64, _l: u32, _d: Durability) -> Result<(), TargetError> {
        Err(TargetError::NotSupported("trim"))
    }
    async fn flush(&self) -> Result<(), TargetError> {
        Ok(())
    }
    async fn cache(&self, _o: u64, _l: u32) -> Result<(), TargetError> {
        Ok(())
    }
    async fn block_status(&self, _o: u64, len: u32) -> Result<Vec<Extent>, TargetError> {
        Ok(vec![Extent {
            length_bytes: u64::from(len),
            hole: false,
            zero: false,
        }])
    }
}

async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<R> + Send + 'static,
) -> Result<R, TargetError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(TargetError::Io),
        Err(e) => Err(TargetError::Io(std::io::Error::other(e))),
    }
}

impl BlockTarget for FileTarget {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }
    fn features(&self) -> TargetFeatures {
        TargetFeatures {
            read_only: false,
            can_trim: false,
            can_write_zeroes: false,
            can_fast_zero: false,
            can_cache: false,
            preferred_block_bytes: 4096,
        }
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, TargetError> {
        let file = self.file.clone();
        blocking(move || {
            let mut buf = BytesMut::zeroed(len as usize);
            file.read_exact_at(&mut buf, offset)?;
            Ok(buf.freeze())
        })
        .await
    }
    async fn write(&self, offset: u64, data: Bytes, d: Durability) -> Result<(), TargetError> {
        let file = self.file.clone();
        blocking(move || {
            file.write_all_at(&data, offset)?;
            if d == Durability::Fua {
                file.sync_data()?;
            }
            Ok(())
        })
        .await
    }
    async fn write_zeroes(&self, _o: u64, _l: u32, _f: ZeroFlags) -> Result<(), TargetError> {
        Err(TargetError::NotSupported("write zeroes"))
    }
    async fn trim(&self, _o: u64, _l: u32, _d: Durability) -> Result<(), TargetError> {
        Err(TargetError::NotSupported("trim"))
    }
    async fn flush(&self) -> Result<(), TargetError> {
        let file = self.file.clone();
        blocking(move || file.sync_data()).await
    }
    async fn cache(&self, _o: u64, _l: u32) -> Result<(), TargetError> {
        Ok(())
    }
    async fn block_status(&self, _o: u64, len: u32) -> Result<Vec<Extent>, TargetError> {
        Ok(vec![Extent {
            length_bytes: u64::from(len),
            hole: false,
            zero: false,
        }])
    }
}

#[tokio::main]
async fn main() -> Result<(), NbdError> {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(sock)) = (args.next(), args.next()) else {
        eprintln!("usage: file_server FILE SOCKET_PATH [EXPORT_NAME]");
        std::process::exit(2);
    };
    let name = args.next().unwrap_or_default();
    let _ = std::fs::remove_file(&sock);
    let listener = tokio::net::UnixListener::bind(&sock)?;
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if let Some(mib) = path.strip_prefix("mem:") {
        let mib: usize = mib
            .parse()
            .map_err(|_| NbdError::Config(format!("bad size {mib:?}")))?;
        let target = Arc::new(MemTarget {
            data: std::sync::RwLock::new(vec![0; mib << 20]),
        });
        let export = Export {
            name,
            description: None,
            target,
            read_only: false,
        };
        let limits = ServerLimits {
            read_chunk_bytes: std::env::var("SHIM_READ_CHUNK")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(256 * 1024),
            ..ServerLimits::default()
        };
        let server = Server::new(vec![export], limits)?;
        return server.run(vec![Listener::Unix(listener)], stop).await;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)?;
    let size_bytes = file.metadata()?.len();
    let target = Arc::new(FileTarget {
        file: Arc::new(file),
        size_bytes,
    });
    let server = Server::new(
        vec![Export {
            name,
            description: Some(format!("file {path}")),
            target,
            read_only: false,
        }],
        ServerLimits::default(),
    )?;
    server.run(vec![Listener::Unix(listener)], stop).await
}
