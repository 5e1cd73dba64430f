//! Names the commit the binary is built from, for `heistd_build_info`:
//! `git rev-parse --short HEAD` when the package is a git checkout of its
//! own (not a source tarball unpacked inside some other repository), else
//! `HEISTD_GIT_COMMIT` from the build's environment (for builds from a
//! tarball or an image without `.git`), else `unknown`. The value reaches
//! the crate as `HEISTD_BUILD_COMMIT`.
//!
//! Cargo reruns this script only when HEAD moves (the files git itself
//! names for HEAD, the branch it points at and `packed-refs`) or the
//! variable changes, so an ordinary edit does not rebuild anything extra.

// Cargo reads a build script's instructions from its stdout; a closed
// stdout (what clippy.toml guards the binary against) cannot happen here.
#![allow(clippy::disallowed_macros)]

use std::path::{Path, PathBuf};
use std::process::Command;

const VARIABLE: &str = "HEISTD_GIT_COMMIT";

fn main() {
    println!("cargo:rerun-if-env-changed={VARIABLE}");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let commit = checkout_commit(&manifest)
        .or_else(|| {
            std::env::var(VARIABLE)
                .ok()
                .filter(|value| !value.trim().is_empty())
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=HEISTD_BUILD_COMMIT={}", commit.trim());
}

/// HEAD's short hash when `manifest` is the top of a git work tree, after
/// telling cargo which files to watch for HEAD moving.
fn checkout_commit(manifest: &Path) -> Option<String> {
    let top = git(manifest, &["rev-parse", "--show-toplevel"])?;
    // A tarball unpacked inside another repository is not a checkout of
    // heistd: that repository's HEAD would name the wrong commit.
    if Path::new(&top).canonicalize().ok()? != manifest.canonicalize().ok()? {
        return None;
    }
    let git_path = |name: &str| {
        git(manifest, &["rev-parse", "--git-path", name]).map(|path| manifest.join(path))
    };
    // In a linked worktree HEAD and the branches live in different
    // directories: git says where each one is.
    for name in ["HEAD", "packed-refs"] {
        // A path that does not exist would make cargo rerun every build.
        if let Some(path) = git_path(name).filter(|path| path.exists()) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    // The branch HEAD points at (none when HEAD is detached). One that is
    // only in packed-refs today is watched through its directory under
    // refs/, where its next commit writes it.
    let branch = git(manifest, &["symbolic-ref", "-q", "HEAD"]).and_then(|name| git_path(&name));
    if let (Some(branch), Some(refs)) = (branch, git_path("refs")) {
        let watched = branch
            .ancestors()
            .take_while(|path| path.starts_with(&refs))
            .find(|path| path.exists());
        if let Some(watched) = watched {
            println!("cargo:rerun-if-changed={}", watched.display());
        }
    }
    git(manifest, &["rev-parse", "--short", "HEAD"])
}

/// What `git` printed, trimmed, when it ran and succeeded.
fn git(directory: &Path, arguments: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(arguments)
        .current_dir(directory)
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}
