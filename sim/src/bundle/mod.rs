//! The audit bundle: a directory holding the results, the reports (whose HTML carries the
//! provenance, promises, checker sensitivity and pictures), the scenario files that ran, the
//! traces of failing runs, and a manifest of their SHA-256, optionally signed (ed25519).
//! `dalp-sim run --out DIR` leaves one in DIR; `dalp-sim report --bundle DIR` assembles one from
//! results files; `dalp-sim verify DIR` checks it.

pub mod manifest;

use crate::report::ResultsDoc;
use ed25519_dalek::SigningKey;
use std::path::{Path, PathBuf};

/// The environment variable naming the signing key's file when `--signing-key` is not given.
pub const KEY_ENV: &str = "DALP_SIM_SIGNING_KEY_FILE";

/// Where the scenario files that ran are copied in a bundle.
pub const SCENARIOS: &str = "scenarios";

/// The signing key: `--signing-key FILE`, else `$DALP_SIM_SIGNING_KEY_FILE`, else none.
pub fn key(flag: Option<&Path>) -> Result<Option<SigningKey>, String> {
    let from_env = std::env::var_os(KEY_ENV).filter(|v| !v.is_empty());
    match flag
        .map(Path::to_path_buf)
        .or_else(|| from_env.map(PathBuf::from))
    {
        Some(p) => manifest::signing_key(&p)
            .map(Some)
            .map_err(|e| format!("signing key: {e}")),
        None => Ok(None),
    }
}

/// Copy into `dir` what the results refer to and it lacks: each scenario file the provenance
/// lists (under `scenarios/`, when it is still the file that ran: same SHA-256) and each failing
/// run's trace files (under `traces/`). What cannot be copied is said, not fatal: the
/// provenance keeps its hash. Returns the notes.
pub fn gather(dir: &Path, doc: &ResultsDoc) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    let copy = |from: &Path, to: &Path| -> Result<(), String> {
        if same_file(from, to) {
            return Ok(());
        }
        std::fs::create_dir_all(to.parent().expect("inside the bundle"))
            .map_err(|e| format!("{}: {e}", to.display()))?;
        std::fs::copy(from, to)
            .map_err(|e| format!("{} → {}: {e}", from.display(), to.display()))?;
        Ok(())
    };
    let scen = dir.join(SCENARIOS);
    let _ = std::fs::remove_dir_all(&scen);
    let mut taken = std::collections::BTreeSet::new();
    for f in &doc.summary.provenance.scenario_files {
        let from = Path::new(&f.path);
        match crate::provenance::sha256_file(from) {
            Ok(h) if h == f.sha256 => {
                let name = from.file_name().map_or_else(
                    || "scenario.toml".into(),
                    |n| n.to_string_lossy().to_string(),
                );
                let mut target = name.clone();
                let mut i = 1;
                while !taken.insert(target.clone()) {
                    i += 1;
                    target = format!("{i}-{name}");
                }
                copy(from, &scen.join(target))?;
            }
            Ok(_) => notes.push(format!(
                "{}: changed since the run (SHA-256 differs); not copied",
                f.path
            )),
            Err(e) => notes.push(format!("{}: not copied: {e}", f.path)),
        }
    }
    for r in &doc.results {
        for t in r.output.finished().map_or(&[][..], |f| &f.trace_files[..]) {
            let from = Path::new(t);
            let Some(name) = from.file_name() else {
                continue;
            };
            let to = dir.join("traces").join(name);
            if from.is_file() {
                copy(from, &to)?;
            } else if !to.is_file() {
                notes.push(format!("{t}: trace not found; not in the bundle"));
            }
        }
    }
    Ok(notes)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Gather, then hash everything into the manifest (signed with `key` when given); the notes of
/// [`gather`] go to stderr. Returns what to name among the written files: the manifest, with
/// its file count.
pub fn seal(dir: &Path, doc: &ResultsDoc, key: Option<&SigningKey>) -> Result<PathBuf, String> {
    for n in gather(dir, doc)? {
        eprintln!("dalp-sim: bundle: {n}");
    }
    let m = manifest::write(dir, key)?;
    Ok(dir.join(format!(
        "{} ({} files{})",
        manifest::MANIFEST,
        m.files.len(),
        if key.is_some() { ", signed" } else { "" }
    )))
}
