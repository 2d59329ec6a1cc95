//! The README's main command: `driftless demo` must run end to end (three
//! nodes, a DR link cut past the journal, a bitmap resync, a planned
//! switchover to the metro peer and back) and find the three copies
//! identical.

use std::process::Command;
use std::time::Duration;

use harness::driftless_bin;
use harness::process::run;

#[test]
fn demo_runs_and_the_three_copies_match() {
    let out = run(
        Command::new(driftless_bin()).args(["demo", "--seconds", "10"]),
        Duration::from_secs(120),
    )
    .expect("run driftless demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("all three copies are identical"),
        "{stdout}"
    );
    // The DR peer fell past its small journal and came back by a bitmap
    // resync, not by a copy of the whole volume.
    assert!(
        stdout.contains("resynced ") && stdout.contains("not the whole"),
        "{stdout}"
    );
    // Switched to metro and back: each new primary followed without a resync.
    assert!(
        stdout.contains("metro is primary of generation")
            && stdout.contains("alpha is primary of generation")
            && stdout.matches("nothing resynced").count() == 2,
        "{stdout}"
    );
}
