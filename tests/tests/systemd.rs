//! The systemd units in deploy/ and the readiness they rely on: both unit
//! files pass `systemd-analyze verify` (with ExecStart pointed at the built
//! binary), and `driftless run` / `driftless serve` send `READY=1` to
//! `$NOTIFY_SOCKET` only once they serve and a SIGTERM stops them cleanly
//! (`Type=notify`), and `STOPPING=1` on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::cluster::{Site, MIB, START_LIMIT, STOP_LIMIT};
use harness::driftless_bin;
use harness::process::{run, Proc};

const UNITS: [&str; 2] = ["driftless@.service", "driftless-serve@.service"];
const INSTALLED_BIN: &str = "/usr/local/bin/driftless";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[test]
fn unit_files_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        harness::skip::because("systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = driftless_bin().canonicalize().unwrap();
    let mut units = Vec::new();
    for name in UNITS {
        let text = std::fs::read_to_string(deploy_dir().join(name)).unwrap();
        assert!(text.contains("Type=notify\n"), "{name}: not Type=notify");
        assert!(text.contains("NotifyAccess=main\n"), "{name}");
        assert!(text.contains(INSTALLED_BIN), "{name}: no {INSTALLED_BIN}");
        // A template is verified as an instance of it.
        let instance = dir.path().join(name.replace("@.", "@test."));
        std::fs::write(
            &instance,
            text.replace(INSTALLED_BIN, bin.to_str().unwrap()),
        )
        .unwrap();
        units.push(instance);
    }
    let out = run(
        Command::new("systemd-analyze").arg("verify").args(&units),
        Duration::from_secs(60),
    )
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    // An unknown key or bad value is only a warning (exit 0), naming the
    // file: none may be about ours.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| UNITS.iter().any(|u| l.contains(&u.replace("@.", "@test."))))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify warns:\n{stderr}");
}

/// A datagram socket standing in for systemd's notify socket.
fn notify_socket(dir: &Path) -> (PathBuf, UnixDatagram) {
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(START_LIMIT)).unwrap();
    (path, sock)
}

fn recv(sock: &UnixDatagram, proc: &Proc, what: &str) -> String {
    let mut buf = [0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => String::from_utf8(buf[..n].to_vec()).unwrap(),
        Err(e) => panic!("no {what} notification: {e}\n{}", proc.log_tail(40)),
    }
}

#[test]
fn run_notifies_ready_once_its_control_socket_serves_and_stopping_on_sigterm() {
    let site = Site::temp().unwrap();
    let config = site
        .config("solo", site.primary_volume("solo", 16 * MIB))
        .unwrap();
    let config_path = site.write_config(&config, "run").unwrap();
    let (notify_path, notify) = notify_socket(&site.dir);

    let mut cmd = Command::new(driftless_bin());
    cmd.arg("run")
        .arg("--config")
        .arg(&config_path)
        .env("NOTIFY_SOCKET", &notify_path);
    let mut proc = Proc::spawn(cmd, &site.dir, "solo").unwrap();

    let ready = recv(&notify, &proc, "READY=1");
    assert_eq!(ready, "READY=1\nSTATUS=node solo ready");
    // Ready means serving: the control socket answers and the export is bound.
    let control = site.control("solo");
    assert!(control.exists(), "{} missing at READY=1", control.display());
    let status = node::control::status(&control).unwrap();
    assert_eq!(status.volumes.len(), 1);
    assert!(
        site.nbd_socket("solo").exists(),
        "NBD socket missing at READY=1"
    );

    let exit = proc.terminate(STOP_LIMIT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(recv(&notify, &proc, "STOPPING=1"), "STOPPING=1");
    assert!(exit.success(), "{exit}\n{}", proc.log_tail(40));
}

#[test]
fn serve_notifies_ready_once_its_socket_is_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (notify_path, notify) = notify_socket(dir.path());
    let nbd = dir.path().join("nbd.sock");
    let mut cmd = Command::new(driftless_bin());
    cmd.args(["serve", "--size", "4MiB", "--volume"])
        .arg(dir.path().join("v.img"))
        .arg("--unix")
        .arg(&nbd)
        .env("NOTIFY_SOCKET", &notify_path);
    let mut proc = Proc::spawn(cmd, dir.path(), "serve").unwrap();

    let ready = recv(&notify, &proc, "READY=1");
    assert!(
        ready.starts_with("READY=1\nSTATUS=serving nbd+unix://"),
        "{ready}"
    );
    assert!(nbd.exists(), "{} missing at READY=1", nbd.display());
    // SIGTERM at once: the handlers are in place by READY=1.
    let exit = proc.terminate(STOP_LIMIT).unwrap();
    assert_eq!(recv(&notify, &proc, "STOPPING=1"), "STOPPING=1");
    assert!(exit.success(), "{exit}\n{}", proc.log_tail(40));
}
