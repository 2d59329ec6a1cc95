//! Reporting tests that could not run. libtest has no run-time skip: a test
//! that returns early counts as passed. A test that cannot run here calls
//! [`because`] and returns; it prints `SKIPPED <test>: <reason>` and, when
//! `DRIFTLESS_SKIP_LOG` names a file (`scripts/test.sh` sets it), appends
//! that line to it, so the suite's closing summary counts the test as
//! skipped, with its reason, instead of passed. [`part`] records a part of a
//! test that did not run (the test itself ran and counts as passed).

use std::io::Write;

/// The environment variable naming the skip log.
pub const LOG_ENV: &str = "DRIFTLESS_SKIP_LOG";

/// This test did not run: say why (and count it as skipped).
pub fn because(reason: &str) {
    record("SKIPPED", reason);
}

/// Part of this test did not run (it still counts as passed).
pub fn part(reason: &str) {
    record("SKIPPED-PART", reason);
}

fn record(tag: &str, reason: &str) {
    match std::env::var_os(LOG_ENV) {
        Some(path) => write_to(std::path::Path::new(&path), tag, reason),
        None => eprint!("{}", line(tag, reason)),
    }
}

fn line(tag: &str, reason: &str) -> String {
    // libtest runs each test on a thread named after it.
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<unnamed test>");
    format!("{tag} {test}: {reason}\n")
}

fn write_to(path: &std::path::Path, tag: &str, reason: &str) {
    let line = line(tag, reason);
    eprint!("{line}");
    // One short O_APPEND write per line: lines from parallel tests and test
    // binaries do not interleave.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!("cannot record the skip in {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn skips_are_logged_with_the_test_name() {
        let dir = std::env::temp_dir().join(format!("skip-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("skips.log");
        // A child thread with its own name stands in for a test thread, and
        // the log path goes through a scoped variable, not the process-wide
        // environment of other tests.
        let path = log.clone();
        std::thread::Builder::new()
            .name("some::test_name".into())
            .spawn(move || {
                super::write_to(&path, "SKIPPED", "needs root");
                super::write_to(&path, "SKIPPED-PART", "no io_uring");
            })
            .unwrap()
            .join()
            .unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            text,
            "SKIPPED some::test_name: needs root\nSKIPPED-PART some::test_name: no io_uring\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
