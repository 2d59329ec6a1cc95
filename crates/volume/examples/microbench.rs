//! Quick engine microbenchmark (not a test): 4 KiB random writes at queue
//! depth 32 and 1 MiB sequential writes, per engine, on a sparse file.
//!
//! `cargo run --release -p volume --example microbench -- [dir] [seconds]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use volume::{EngineKind, Volume, VolumeOptions};

const FILE_BYTES: u64 = 1 << 30;
const QUEUE_DEPTH: usize = 32;

async fn run(v: Arc<Volume>, block_bytes: usize, random: bool, secs: u64) -> (u64, f64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let blocks = FILE_BYTES / block_bytes as u64;
    let payload = Bytes::from(vec![0x5a; block_bytes]);
    let mut tasks = Vec::new();
    for worker in 0..QUEUE_DEPTH as u64 {
        let v = Arc::clone(&v);
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut state = worker.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next_seq = worker;
            let mut ops = 0u64;
            while Instant::now() < deadline {
                let block = if random {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state % blocks
                } else {
                    let b = next_seq % blocks;
                    next_seq += QUEUE_DEPTH as u64;
                    b
                };
                v.write(block * block_bytes as u64, payload.clone())
                    .await
                    .expect("write");
                ops += 1;
            }
            ops
        }));
    }
    let mut ops = 0;
    for t in tasks {
        ops += t.await.expect("task");
    }
    (ops, start.elapsed().as_secs_f64())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "/tmp".into());
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let order: Vec<EngineKind> = match args.next() {
        Some(list) => list
            .split(',')
            .map(|s| s.parse().expect("engine"))
            .collect(),
        None => vec![EngineKind::Uring, EngineKind::Threads],
    };
    for engine in order {
        let path = std::path::Path::new(&dir).join(format!("volume-microbench-{engine}"));
        let _ = std::fs::remove_file(&path);
        let v = Arc::new(
            Volume::open(
                &path,
                VolumeOptions {
                    size_bytes: Some(FILE_BYTES),
                    engine,
                    read_only: false,
                    create: true,
                },
            )
            .expect("open"),
        );
        let (ops, elapsed) = rt.block_on(run(Arc::clone(&v), 4096, true, secs));
        println!(
            "{:>8}: 4 KiB random write QD{QUEUE_DEPTH}: {:.0} ops/s",
            v.engine_name(),
            ops as f64 / elapsed
        );
        let (ops, elapsed) = rt.block_on(run(Arc::clone(&v), 1 << 20, false, secs));
        println!(
            "{:>8}: 1 MiB sequential write QD{QUEUE_DEPTH}: {:.2} GB/s",
            v.engine_name(),
            ops as f64 * (1 << 20) as f64 / elapsed / 1e9
        );
        drop(v);
        let _ = std::fs::remove_file(&path);
    }
}
