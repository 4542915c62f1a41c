//! What the simulation's integration tests share: the repository root and the `dalp-sim`
//! binary built with `--cfg madsim`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `DALP_SIM_BIN` (what `cargo xtask test` passes), else the sim-dev build in target/sim, built
/// here once when needed (the tests never skip).
pub fn sim_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("DALP_SIM_BIN") {
            return PathBuf::from(p);
        }
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "dalp-sim", "--bin", "dalp-sim"])
            .args(["--profile", "sim-dev", "--target-dir"])
            .arg(root().join("target/sim"))
            .env("RUSTFLAGS", "--cfg madsim")
            .current_dir(root())
            .status()
            .expect("run cargo to build the simulation flavour");
        assert!(
            status.success(),
            "building dalp-sim with --cfg madsim failed"
        );
        root().join("target/sim/sim-dev/dalp-sim")
    })
}

/// `dalp-sim ARGS` in the repository root, its output collected.
#[allow(dead_code)] // not every test file runs commands
pub fn dalp_sim(args: &[&str]) -> Output {
    Command::new(sim_bin())
        .args(args)
        .current_dir(root())
        .output()
        .expect("run dalp-sim")
}

/// A fresh scratch directory for `name`, per test process.
#[allow(dead_code)]
pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dalp-sim-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
