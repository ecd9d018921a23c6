//! Names the commit the binary is built from, for `enrollgate --version`.
//!
//! Sets `ENROLLGATE_COMMIT` to `git rev-parse --short HEAD`, or to `unknown` outside a git
//! checkout (a source tarball, a vendored copy) or where git is not installed. Cargo runs this
//! again when HEAD moves: to another branch (`HEAD` changes) or to a new commit on the same
//! one (the branch's ref file, or `packed-refs` after `git gc`, changes).

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// The file git keeps `name` in (`HEAD`, `refs/heads/main`, `packed-refs`); worktrees keep
/// HEAD apart from the refs they share, which `--git-path` resolves.
fn git_path(name: &str) -> Option<PathBuf> {
    let path = PathBuf::from(git(&["rev-parse", "--git-path", name])?);
    Some(if path.is_absolute() {
        path
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
    })
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    if commit.is_some() {
        let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
        // Detached HEAD: HEAD itself holds the commit, and is already watched.
        if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(head_ref);
        }
        for name in &watched {
            if let Some(path) = git_path(name).filter(|p| p.exists()) {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    } else {
        // git failed (not installed, or a moment's failure): in a checkout, watch its refs
        // anyway, so that `unknown` is not kept by every later build of this checkout.
        let dot_git = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".git");
        // (A linked worktree's `.git` is a file naming its git directory: watch that.)
        let watched: Vec<PathBuf> = [dot_git.join("HEAD"), dot_git.join("refs"), dot_git.clone()]
            .into_iter()
            .filter(|p| p.exists())
            .collect();
        for path in watched.iter().take(2) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
        if watched.is_empty() {
            // Nothing to watch: name the `.git` that is missing, which cargo takes as
            // changed on every build, so that a target directory shared by several
            // checkouts never keeps `unknown` for a checkout where git works. (Outside a
            // checkout, this script then runs at each build: one failing `git` call.)
            println!("cargo:rerun-if-changed={}", dot_git.display());
        }
    }
    println!(
        "cargo:rustc-env=ENROLLGATE_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
}
