//! The driftless harness: everything `driftless demo` and the integration
//! tests share to drive real nodes.
//!
//! - [`process`]: child processes (killed on drop), bounded waits, commands.
//! - [`pki`]: a CA and node certificates.
//! - [`cluster`]: node configs built as [`node::config::NodeConfig`] values
//!   (serialized with serde + toml), `driftless run` nodes, their status.
//! - [`serve`]: a `driftless serve` process.
//! - [`proxy`]: the fault proxy (delay, cut, restore), in-process or as the
//!   hidden `driftless fault-proxy` command.
//! - [`checker`]: the one consistency checker: a recording NBD workload and
//!   the checks of invariants 1 and 2 on any copy.
//! - [`demo`]: the README's main command, a short scenario on the above.
//! - [`torture`]: seeded fault campaigns (`driftless-torture`) on the above.

pub mod checker;
pub mod cluster;
pub mod demo;
mod error;
pub mod mount;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod serve;
pub mod torture;

pub use error::{HarnessError, Result};
pub use skip;

/// Returns from a test that needs root when not root, reporting it as
/// skipped with the reason (see the `skip` crate).
#[macro_export]
macro_rules! require_root {
    ($what:expr) => {
        if !$crate::process::is_root() {
            $crate::skip::because(&format!("{} needs root", $what));
            return;
        }
    };
}

/// The `driftless` binary: `$DRIFTLESS_BIN`, else this executable when it
/// is driftless itself (the demo), else the one built beside this
/// executable (`driftless-torture`) or beside the test executable
/// (`target/<profile>/deps/<test>` → `target/<profile>/driftless`).
pub fn driftless_bin() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("DRIFTLESS_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    if exe.file_stem().is_some_and(|n| n == "driftless") {
        return exe;
    }
    let dir = exe.parent().expect("an executable has a directory");
    let dir = if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("deps has a parent")
    } else {
        dir
    };
    let bin = dir.join("driftless");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build --release -p driftless`) or set DRIFTLESS_BIN",
        bin.display()
    );
    bin
}
