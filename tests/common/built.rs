//! Workspace binaries the end-to-end tests run as processes (the main job, `mqtrace`), built
//! by the cargo that runs the tests, into the same target directory and profile: a no-op
//! when they are up to date.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds what `args` name (`-p mqtrace --example batch_inference`) and returns the profile
/// directory it lands in (`<target>/<profile>`).
pub fn cargo_build(args: &[&str]) -> PathBuf {
    // <target>/<profile>/deps/<test>-<hash>
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("<target>/<profile>/deps");
    let target_dir = profile_dir.parent().expect("<target>");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet"])
        .args(args)
        .args(["--profile", profile])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cargo build {args:?} failed");
    profile_dir.to_owned()
}

/// The main job (`examples/batch_inference.rs`), built.
pub fn main_job() -> PathBuf {
    cargo_build(&["-p", "mqtrace", "--example", "batch_inference"])
        .join("examples")
        .join("batch_inference")
}
