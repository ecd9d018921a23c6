//! `enrollgate --version` names the version and the commit the binary was built from.

use std::process::Command;

use crate::support::{run_ok, BIN};

#[test]
fn version_names_the_crate_version_and_the_commit_it_was_built_from() {
    let out = run_ok(Command::new(BIN).arg("--version"));
    let line = out.trim();
    let expected_prefix = format!("enrollgate {} (commit ", env!("CARGO_PKG_VERSION"));
    let commit = line
        .strip_prefix(&expected_prefix)
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("--version printed {line:?}"));
    // Built from a git checkout (as tests are), the commit is HEAD's; the build script
    // says `unknown` only where git cannot tell.
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match head {
        Some(head) => assert_eq!(commit, head, "--version names another commit than HEAD"),
        None => assert_eq!(commit, "unknown"),
    }
}
