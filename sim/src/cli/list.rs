//! `dalp-sim list`: the scenarios (validated), the suites, and the catalog ids they cover.

use super::resolve::resolve;
use crate::scenario::{scenario_files, Scenario};
use std::path::Path;

/// `Ok(false)` when a scenario or suite does not load (its error is printed).
pub(super) fn list(dir: &Path) -> Result<bool, String> {
    let files = scenario_files(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut ok = true;
    println!("{:<32} {:<8} covers", "scenario", "faults");
    for f in &files {
        match Scenario::load(f) {
            Ok(s) => println!(
                "{:<32} {:<8} {}",
                s.name,
                s.faults.len() + usize::from(s.random.is_some()),
                s.covers.join(", ")
            ),
            Err(e) => {
                ok = false;
                eprintln!("{e}");
            }
        }
    }
    Ok(list_suites(dir) && ok)
}

fn list_suites(dir: &Path) -> bool {
    let suites = scenario_files(&dir.join("suites")).unwrap_or_default();
    if suites.is_empty() {
        return true;
    }
    let mut ok = true;
    println!("\nsuites:");
    for f in suites {
        let name = f
            .file_stem()
            .and_then(|x| x.to_str())
            .unwrap_or("?")
            .to_string();
        match resolve(dir, &name) {
            Ok((files, seeds)) => println!(
                "  {name:<30} {} scenarios x {} seeds",
                files.len(),
                seeds.unwrap_or(1)
            ),
            Err(e) => {
                ok = false;
                eprintln!("{e}");
            }
        }
    }
    ok
}
