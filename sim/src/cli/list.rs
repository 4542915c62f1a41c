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
            Ok((files, seeds)) => {
                let runs: u64 = files
                    .iter()
                    .map(|f| {
                        let pinned = super::resolve::pinned_seed(f);
                        super::resolve::seeds_of(&seeds, f, None, pinned).len() as u64
                    })
                    .sum();
                println!(
                    "  {name:<30} {} scenarios, {runs} runs ({} seeds each{})",
                    files.len(),
                    seeds.as_ref().map_or(1, |s| s.seeds),
                    seeds
                        .as_ref()
                        .filter(|s| !s.seed_factor.is_empty())
                        .map(|s| {
                            let v: Vec<String> = s
                                .seed_factor
                                .iter()
                                .map(|(k, n)| format!("{k} ×{n}"))
                                .collect();
                            format!("; {}", v.join(", "))
                        })
                        .unwrap_or_default()
                );
            }
            Err(e) => {
                ok = false;
                eprintln!("{e}");
            }
        }
    }
    ok
}
