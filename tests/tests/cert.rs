//! `driftless cert`: a CA, then node certificates that a node can start
//! with as the deploy configs name them (`ca.pem` beside the node's files),
//! and a foreign `ca.pem` that is never overwritten.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use harness::driftless_bin;
use harness::process::run;

fn cert(args: &[&str], dirs: &[&Path]) -> Output {
    let mut cmd = Command::new(driftless_bin());
    cmd.arg("cert").args(args);
    for d in dirs {
        cmd.arg(d);
    }
    run(&mut cmd, Duration::from_secs(60)).unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn node_certificates_get_the_ca_certificate_beside_them_and_never_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let tls = dir.path().join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let out = cert(&["ca", "--dir"], &[&ca]);
    assert!(out.status.success(), "{}", text(&out));

    let out = cert(
        &["node", "--name", "alpha", "--ca-dir"],
        &[&ca, Path::new("--dir"), &tls],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("copied"), "{}", text(&out));
    let ca_pem = std::fs::read(ca.join("ca.pem")).unwrap();
    assert_eq!(std::fs::read(tls.join("ca.pem")).unwrap(), ca_pem);
    assert!(!tls.join("ca.key").exists(), "the CA key was copied");
    let key_mode = std::fs::metadata(tls.join("alpha.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600, "alpha.key mode {key_mode:o}");
    // The three files load as a node's identity.
    let id = transport::TlsIdentity::load(
        &tls.join("alpha.pem"),
        &tls.join("alpha.key"),
        &tls.join("ca.pem"),
        None,
    )
    .unwrap();
    assert_eq!(id.name(), "alpha");

    // A second node into the same directory: the identical ca.pem stays.
    let out = cert(
        &["node", "--name", "metro", "--ca-dir"],
        &[&ca, Path::new("--dir"), &tls],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("already there"), "{}", text(&out));
    assert!(tls.join("metro.pem").exists());
}

#[test]
fn another_cas_certificate_in_the_directory_is_refused_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, other, tls) = (
        dir.path().join("ca"),
        dir.path().join("other"),
        dir.path().join("tls"),
    );
    for (d, what) in [(&ca, "ca"), (&other, "other")] {
        let out = cert(&["ca", "--dir"], &[d]);
        assert!(out.status.success(), "{what}: {}", text(&out));
    }
    std::fs::create_dir_all(&tls).unwrap();
    let foreign = std::fs::read(other.join("ca.pem")).unwrap();
    std::fs::write(tls.join("ca.pem"), &foreign).unwrap();

    let out = cert(
        &["node", "--name", "dr", "--ca-dir"],
        &[&ca, Path::new("--dir"), &tls],
    );
    assert!(!out.status.success(), "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains(&tls.join("ca.pem").display().to_string()) && msg.contains("not overwriting"),
        "{msg}"
    );
    assert_eq!(std::fs::read(tls.join("ca.pem")).unwrap(), foreign);
    assert!(!tls.join("dr.pem").exists() && !tls.join("dr.key").exists());
}
