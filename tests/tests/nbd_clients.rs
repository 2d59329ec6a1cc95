//! Real NBD clients (qemu-io, qemu-img, nbdinfo, nbdcopy, fio, nbdfuse +
//! ext4) against a real `driftless serve` process.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use harness::cluster::{random_file, sparse_file};
use harness::process::{require_tool, run, run_ok};
use harness::require_root;
use harness::serve::Serve;
use nbd_shim::client::{Client, CMD_READ, CMD_WRITE};

const MIB: u64 = 1 << 20;
const MINUTE: Duration = Duration::from_secs(60);

fn serve(dir: &Path, size: &str, extra: &[&str]) -> Serve {
    let volume = dir.join("volume.img");
    let mut args = vec!["--size", size];
    args.extend_from_slice(extra);
    Serve::start(dir, &volume, &args).expect("start driftless serve")
}

fn qemu_io(uri: &str, cmds: &[&str]) -> std::process::Output {
    qemu_io_with(&[], uri, cmds)
}

fn qemu_io_with(opts: &[&str], uri: &str, cmds: &[&str]) -> std::process::Output {
    require_tool("qemu-io");
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]).args(opts);
    for c in cmds {
        cmd.args(["-c", c]);
    }
    cmd.arg(uri);
    run(&mut cmd, MINUTE).expect("qemu-io")
}

#[test]
fn qemu_io_patterns_zero_discard_flush() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), "64MiB", &[]);
    let out = qemu_io(
        &server.uri,
        &[
            "write -P 0xab 0 1M",
            "write -P 0xcd -f 1M 64k", // FUA
            "aio_write -P 0x11 4M 512k",
            "aio_write -P 0x22 5M 512k",
            "aio_flush",
            "read -P 0xab 0 1M",
            "read -P 0xcd 1M 64k",
            "read -P 0x11 4M 512k",
            "read -P 0x22 5M 512k",
            "write -z 4M 128k", // WRITE_ZEROES (may punch)
            "read -P 0 4M 128k",
            "read -P 0x11 4325376 393216", // 4M+128k..4.5M untouched
            "write -z -u 5M 64k",          // WRITE_ZEROES with unmap allowed
            "read -P 0 5M 64k",
            "discard 0 512k", // TRIM
            "read -P 0 0 512k",
            "read -P 0xab 512k 512k",
            "write -P 0x5a 63M 1M", // last MiB
            "read -P 0x5a 63M 1M",
            "flush",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "qemu-io failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("Pattern verification failed"), "{stdout}");
    assert!(!stdout.contains("failed"), "{stdout}");

    // Negative control: a wrong pattern must make qemu-io fail, or this test
    // could not catch a server that returns wrong data.
    let out = qemu_io(&server.uri, &["read -P 0xee 0 64k"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() || stdout.contains("Pattern verification failed"),
        "qemu-io accepted a wrong pattern: {stdout}"
    );

    // Data survives a graceful restart: SIGTERM exits 0, a new server reads it back.
    let status = server.terminate().unwrap();
    assert!(status.success(), "serve exited with {status}");
    let server = serve(dir.path(), "64MiB", &[]);
    let out = qemu_io(
        &server.uri,
        &[
            "read -P 0xab 512k 512k",
            "read -P 0x5a 63M 1M",
            "read -P 0xcd 1M 64k",
        ],
    );
    assert!(
        out.status.success(),
        "after restart: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("failed"));
}

#[test]
fn reads_and_writes_past_the_end_are_refused() {
    // qemu refuses such requests itself, so the server is driven directly:
    // the requests reach it, are answered with the spec's errors, nothing
    // lands past the end, and the connection stays usable.
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), "1MiB", &[]);
    let mut c = Client::connect(&server.socket, "").unwrap();
    let data = vec![1u8; 128 << 10];
    c.send(CMD_WRITE, 1, 960 << 10, data.len() as u32, &data)
        .unwrap();
    let (reply, _) = c.recv(|_| 0).unwrap();
    assert_eq!((reply.cookie, reply.error), (1, libc::ENOSPC as u32));
    c.send(CMD_READ, 2, MIB, 4096, &[]).unwrap();
    let (reply, _) = c.recv(|_| 0).unwrap();
    assert_eq!((reply.cookie, reply.error), (2, libc::EINVAL as u32));
    // The part inside the volume was not written either, and the
    // connection still serves.
    assert_eq!(c.read(960 << 10, 4096).unwrap(), vec![0u8; 4096]);
    c.disconnect().unwrap();
    let meta = std::fs::metadata(dir.path().join("volume.img")).unwrap();
    assert_eq!(meta.len(), MIB);
}

#[test]
fn read_only_export_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("volume.img");
    std::fs::write(&volume, vec![0x42u8; MIB as usize]).unwrap();
    let server = Serve::start(dir.path(), &volume, &["--read-only"]).unwrap();
    let out = qemu_io_with(&["-r"], &server.uri, &["read -P 0x42 0 1M"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // qemu opens read-write by default: the read-only flag makes it refuse.
    let out = qemu_io(&server.uri, &["write -P 1 0 4k"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    assert_eq!(
        std::fs::read(&volume).unwrap(),
        vec![0x42u8; MIB as usize],
        "read-only volume changed"
    );
    let info = run_ok(
        Command::new("nbdinfo").args(["--json", &server.uri]),
        MINUTE,
    )
    .unwrap();
    assert!(info.contains("\"is_read_only\": true"), "{info}");
}

#[test]
fn nbdinfo_size_list_map_and_multi_conn() {
    require_tool("nbdinfo");
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("volume.img");
    let server = Serve::start(
        dir.path(),
        &volume,
        &[
            "--size",
            "16MiB",
            "--name",
            "vol0",
            "--description",
            "test volume",
        ],
    )
    .unwrap();
    let size = run_ok(
        Command::new("nbdinfo").args(["--size", &server.uri]),
        MINUTE,
    )
    .unwrap();
    assert_eq!(size.trim(), (16 * MIB).to_string());

    let list = run_ok(
        Command::new("nbdinfo").args(["--list", &server.uri]),
        MINUTE,
    )
    .unwrap();
    assert!(list.contains("export=\"vol0\""), "{list}");
    assert!(list.contains("test volume"), "{list}");

    // Data in [1 MiB, 3 MiB), everything else a hole.
    let out = qemu_io(&server.uri, &["write -P 0x77 1M 2M", "flush"]);
    assert!(out.status.success());
    let map = run_ok(
        Command::new("nbdinfo").args(["--map", "--totals", &server.uri]),
        MINUTE,
    )
    .unwrap();
    // --totals prints "<bytes> <percent> <type> <description>" per state.
    let mut data = 0u64;
    let mut holes = 0u64;
    for line in map.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let bytes: u64 = fields[0].parse().unwrap();
        match fields[2] {
            "0" => data += bytes,
            "3" => holes += bytes,
            other => panic!("unexpected state {other} in {map}"),
        }
    }
    assert_eq!(data, 2 * MIB, "{map}");
    assert_eq!(holes, 14 * MIB, "{map}");

    let can = run(
        Command::new("nbdinfo").args(["--can", "multi-conn", &server.uri]),
        MINUTE,
    )
    .unwrap();
    assert!(can.status.success(), "multi-conn not advertised");
    let can = run(
        Command::new("nbdinfo").args(["--can", "fua", &server.uri]),
        MINUTE,
    )
    .unwrap();
    assert!(can.status.success(), "fua not advertised");

    // An unknown export name is refused.
    let wrong = server.uri.replace("/vol0", "/nope");
    let out = run(Command::new("nbdinfo").args(["--size", &wrong]), MINUTE).unwrap();
    assert!(!out.status.success(), "unknown export accepted");
}

#[test]
fn nbdcopy_256mib_round_trip_and_qemu_img_compare() {
    require_tool("nbdcopy");
    require_tool("qemu-img");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.img");
    let output = dir.path().join("out.img");
    random_file(&input, 256 * MIB as usize).unwrap();
    let server = serve(dir.path(), "256MiB", &[]);
    run_ok(
        Command::new("nbdcopy").arg(&input).arg(&server.uri),
        5 * MINUTE,
    )
    .unwrap();
    run_ok(
        Command::new("nbdcopy").arg(&server.uri).arg(&output),
        5 * MINUTE,
    )
    .unwrap();
    let same = run(Command::new("cmp").arg(&input).arg(&output), MINUTE).unwrap();
    assert!(
        same.status.success(),
        "nbdcopy round trip differs: {}",
        String::from_utf8_lossy(&same.stdout)
    );
    let cmp = run_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&input)
            .arg(&server.uri),
        5 * MINUTE,
    )
    .unwrap();
    assert!(cmp.contains("Images are identical"), "{cmp}");
    // And the backing file itself holds the bytes.
    let same = run(
        Command::new("cmp")
            .arg(&input)
            .arg(dir.path().join("volume.img")),
        MINUTE,
    )
    .unwrap();
    assert!(same.status.success());
}

#[test]
fn fio_four_connections_qd32_randwrite_crc32c_verify() {
    require_tool("fio");
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), "256MiB", &[]);
    // 4 jobs = 4 NBD connections, each on its own 64 MiB so verification of
    // one job's blocks is not disturbed by another's writes.
    let out = run(
        Command::new("fio").args([
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={}", server.uri),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=32",
            "--numjobs=4",
            "--size=64m",
            "--offset_increment=64m",
            "--verify=crc32c",
            // No verify-state files in the working directory.
            "--verify_state_save=0",
            "--verify_fatal=1",
            "--do_verify=1",
            "--randrepeat=0",
            "--group_reporting",
        ]),
        5 * MINUTE,
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("err= 0"), "{stdout}");
}

/// ext4 through nbdfuse + a loop device; files written, fsck clean, read back
/// through a fresh attach.
#[test]
fn ext4_through_nbdfuse_and_loop() {
    require_root!("ext4 through nbdfuse + losetup + mount");
    require_tool("nbdfuse");
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), "256MiB", &[]);
    let payload = dir.path().join("payload.bin");
    random_file(&payload, 20 * MIB as usize).unwrap();

    let attach = harness::mount::Attachment::new(dir.path(), &server.uri, false).unwrap();
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-F", "-q"])
            .arg(attach.loop_dev()),
        MINUTE,
    )
    .unwrap();
    let mnt = attach.mount().unwrap();
    std::fs::copy(&payload, mnt.path().join("payload.bin")).unwrap();
    std::fs::create_dir(mnt.path().join("dir")).unwrap();
    for i in 0..50 {
        std::fs::write(
            mnt.path().join(format!("dir/file-{i}")),
            format!("file number {i}\n").repeat(100),
        )
        .unwrap();
    }
    run_ok(&mut Command::new("sync"), MINUTE).unwrap();
    drop(mnt);
    let fsck = run(
        Command::new("e2fsck").arg("-fn").arg(attach.loop_dev()),
        MINUTE,
    )
    .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck -fn found problems: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    drop(attach);

    let attach = harness::mount::Attachment::new(dir.path(), &server.uri, true).unwrap();
    let mnt = attach.mount().unwrap();
    let same = run(
        Command::new("cmp")
            .arg(&payload)
            .arg(mnt.path().join("payload.bin")),
        MINUTE,
    )
    .unwrap();
    assert!(same.status.success(), "payload differs after re-attach");
    for i in 0..50 {
        let text = std::fs::read_to_string(mnt.path().join(format!("dir/file-{i}"))).unwrap();
        assert_eq!(text, format!("file number {i}\n").repeat(100));
    }
}

#[test]
fn bad_arguments_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let bin = harness::driftless_bin();
    let out = run(
        Command::new(&bin)
            .args(["serve", "--size", "lots", "--volume"])
            .arg(dir.path().join("v.img")),
        MINUTE,
    )
    .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid size"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Existing file of another size: refused, file untouched.
    let volume = dir.path().join("existing.img");
    sparse_file(&volume, 2 * MIB).unwrap();
    let out = run(
        Command::new(&bin)
            .args(["serve", "--size", "4MiB", "--unix"])
            .arg(dir.path().join("s.sock"))
            .arg("--volume")
            .arg(&volume),
        MINUTE,
    )
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("2097152") && stderr.contains("4194304"),
        "{stderr}"
    );
    assert_eq!(std::fs::metadata(&volume).unwrap().len(), 2 * MIB);

    // A missing file without --size cannot be created.
    let out = run(
        Command::new(&bin)
            .args(["serve", "--volume"])
            .arg(dir.path().join("missing.img")),
        MINUTE,
    )
    .unwrap();
    assert!(!out.status.success());
}
