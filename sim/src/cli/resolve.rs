//! Names on the command line: a path to a `.toml`, a scenario name, or a suite name.

use crate::scenario::scenario_files;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A suite file (`scenarios/suites/<name>.toml`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    pub description: String,
    /// Scenario names (files under the scenarios directory, without `.toml`); `*` means all.
    pub scenarios: Vec<String>,
    /// Seeds per scenario unless `--seeds` says otherwise.
    pub seeds: u64,
    /// The engine's `must` probes (`dalp_engine::probe`) must all be reached by this suite's
    /// simulated runs (with its own seeds, unsharded), or the run fails.
    #[serde(default)]
    pub must_probes: bool,
}

/// Whether `name` is a suite that declares `must_probes`.
pub(super) fn suite_must_probes(dir: &Path, name: &str) -> Result<bool, String> {
    let suite = dir.join("suites").join(format!("{name}.toml"));
    if name.ends_with(".toml") || dir.join(format!("{name}.toml")).exists() || !suite.exists() {
        return Ok(false);
    }
    let text = std::fs::read_to_string(&suite).map_err(|e| format!("{}: {e}", suite.display()))?;
    let s: Suite =
        toml::from_str(&text).map_err(|e| format!("{}: {}", suite.display(), e.message()))?;
    Ok(s.must_probes)
}

/// The scenario files `name` stands for, and a suite's seeds.
pub(super) fn resolve(dir: &Path, name: &str) -> Result<(Vec<PathBuf>, Option<u64>), String> {
    let p = Path::new(name);
    if name.ends_with(".toml") && p.exists() {
        return Ok((vec![p.to_path_buf()], None));
    }
    let scen = dir.join(format!("{name}.toml"));
    if scen.exists() {
        return Ok((vec![scen], None));
    }
    let suite = dir.join("suites").join(format!("{name}.toml"));
    if suite.exists() {
        return suite_files(dir, &suite);
    }
    Err(format!(
        "no scenario or suite named {name:?} (looked for {} and {})",
        scen.display(),
        suite.display()
    ))
}

fn suite_files(dir: &Path, suite: &Path) -> Result<(Vec<PathBuf>, Option<u64>), String> {
    let text = std::fs::read_to_string(suite).map_err(|e| format!("{}: {e}", suite.display()))?;
    let s: Suite =
        toml::from_str(&text).map_err(|e| format!("{}: {}", suite.display(), e.message()))?;
    let mut files = Vec::new();
    for (i, n) in s.scenarios.iter().enumerate() {
        if n == "*" {
            files.extend(scenario_files(dir).map_err(|e| format!("{}: {e}", dir.display()))?);
            continue;
        }
        let f = dir.join(format!("{n}.toml"));
        if !f.exists() {
            return Err(format!(
                "{}: field `scenarios[{i}]`: no scenario file {}",
                suite.display(),
                f.display()
            ));
        }
        files.push(f);
    }
    files.dedup();
    Ok((files, Some(s.seeds)))
}

/// The one scenario file `name` stands for; a suite is an error saying that `command` takes one
/// scenario (e.g. "repro takes one scenario").
pub(super) fn one_scenario(dir: &Path, name: &str, command: &str) -> Result<PathBuf, String> {
    let (files, _) = resolve(dir, name)?;
    match files.as_slice() {
        [f] => Ok(f.clone()),
        _ => Err(format!("{name} is a suite; {command}")),
    }
}
