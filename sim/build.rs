//! Build-time provenance for the audit bundle (`provenance::Build`): the compiler's version and
//! the locked versions of the crates a run depends on (read from the workspace's Cargo.lock).

use std::process::Command;

/// The crates whose versions the provenance names.
const CRATES: &[&str] = &[
    "dalp-engine",
    "dalp-sim",
    "madsim",
    "madsim-tokio",
    "sqlx",
    "alloy-primitives",
    "alloy-consensus",
    "revm",
    "tokio",
];

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(&rustc)
        .arg("-V")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=DALP_SIM_RUSTC_VERSION={version}");
    let lock = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock");
    println!("cargo:rerun-if-changed={lock}");
    println!("cargo:rerun-if-changed=build.rs");
    let text = std::fs::read_to_string(lock).unwrap_or_default();
    // `[[package]]` blocks: `name = "…"` then `version = "…"`; every locked version of a name.
    let mut found: Vec<(String, String)> = Vec::new();
    let mut name: Option<String> = None;
    for line in text.lines() {
        let value = |l: &str, key: &str| {
            l.strip_prefix(key)
                .map(|v| v.trim_matches(|c| c == '"' || c == ' ').to_string())
        };
        if let Some(n) = value(line, "name = ") {
            name = Some(n);
        } else if let (Some(v), Some(n)) = (value(line, "version = "), name.take()) {
            if CRATES.contains(&n.as_str()) {
                found.push((n, v));
            }
        }
    }
    found.sort();
    let list = found
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    println!("cargo:rustc-env=DALP_SIM_LOCKED_CRATES={list}");
}
