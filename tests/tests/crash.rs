//! `driftless serve` killed with SIGKILL under the recording workload
//! (pipelined writes and FLUSHes), restarted, and checked block by block
//! through NBD with the harness's checker: every acknowledged write reads
//! back intact (in particular every write acknowledged before the last
//! completed FLUSH), and no block holds anything but one of its own writes.
//! Every other round also wipes the volume file before the restart, so the
//! journal's redo, not the page cache, has to bring the writes back.

use std::time::{Duration, Instant};

use harness::checker::{check_holds, read_blocks_nbd, Required, Workload, WorkloadCfg};
use harness::serve::Serve;
use rand::Rng;

const VOLUME_MIB: u64 = 64;
const BLOCKS: u32 = (VOLUME_MIB << 20) as u32 / 4096;

#[test]
fn kill9_under_write_and_flush_load_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let size = format!("{VOLUME_MIB}MiB");
    let mut rng = rand::thread_rng();
    for round in 0..5 {
        // A fresh volume per round: sequence numbers restart at 1.
        let volume = dir.path().join(format!("volume-{round}.img"));
        // No checkpoint during the run: the volume is never fsynced, so the
        // wipe below destroys only what a power loss could.
        let server = Serve::start(
            dir.path(),
            &volume,
            &["--size", &size, "--checkpoint-interval", "1h"],
        )
        .unwrap();
        let workload = Workload::start(
            &server.socket,
            "",
            WorkloadCfg {
                blocks: BLOCKS,
                stride: 4096,
                depth: 16,
                flush_every: 64,
                pace: None,
                trim_percent: 0,
                zero_percent: 0,
            },
        )
        .unwrap();
        // Killed on the first FLUSH reply after a random moment, so the last
        // FLUSH's coverage is exactly known.
        let kill_after = Duration::from_millis(rng.gen_range(200..1500));
        workload.kill_on_flush(Instant::now() + kill_after, server.pid());
        let record = workload.join_dead();
        server.kill9();
        let kill = record.killed.clone().unwrap_or_else(|| {
            panic!(
                "round {round}: the server died before a FLUSH after {kill_after:?}: {:?}",
                record.errors
            )
        });
        assert!(
            record.errors.is_empty(),
            "round {round}: workload errors: {:?}",
            record.errors
        );
        assert!(
            kill.acked_before_flush > 0,
            "round {round}: no write was acknowledged before the killing FLUSH"
        );
        // SIGKILL keeps the page cache, so the volume file would still hold
        // every write. On odd rounds, wipe it (as a power loss could drop its
        // unsynced pages): then only the journal's redo can bring them back.
        let wiped = round % 2 == 1;
        if wiped {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&volume)
                .unwrap();
            file.set_len(0).unwrap();
            file.set_len(VOLUME_MIB << 20).unwrap();
        }
        let server = Serve::start(dir.path(), &volume, &["--size", &size]).unwrap();
        let log = server.log();
        assert!(log.contains("journal recovered"), "{log}");
        // The checkpoint interval (1 h) is longer than the run: the restart
        // must have redone records from the journal.
        assert!(!log.contains("redone_records=0 "), "nothing redone: {log}");
        let contents = read_blocks_nbd(&server.socket, "", BLOCKS, 4096).unwrap();
        let intact = check_holds(&contents, &record, Required::Acked)
            .unwrap_or_else(|e| panic!("round {round} (wiped: {wiped}): {e}\n{log}"));
        let flushed = check_holds(&contents, &record, Required::Flushed)
            .unwrap_or_else(|e| panic!("round {round} (wiped: {wiped}): {e}\n{log}"));
        eprintln!(
            "round {round}: killed after {kill_after:?}, volume wiped: {wiped}; {} writes acknowledged ({flushed} before the last FLUSH), {intact} blocks with an acknowledged write intact",
            record.acked()
        );
        let status = server.terminate().unwrap();
        assert!(status.success(), "{status}");
    }
}
