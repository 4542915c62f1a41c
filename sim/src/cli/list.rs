//! `dalp-sim list`: the scenarios (validated), the suites, and the catalog ids they cover.

use super::resolve::resolve;
use crate::scenario::{scenario_files, Scenario};
use std::path::Path;

/// `Ok(false)` when a scenario or suite does not load (its error is printed).
pub(super) fn list(dir: &Path) -> Result<bool, String> {
    let files = scenario_files(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut ok = list_scenarios(&files, |_| String::new());
    // Shrunk failures that were fixed: each replays the seed it pins (the `ci` suite runs them).
    let regressions = dir.join("regressions");
    if regressions.is_dir() {
        let files =
            scenario_files(&regressions).map_err(|e| format!("{}: {e}", regressions.display()))?;
        println!("\nregressions/ (each pins its seed):");
        ok &= list_scenarios(&files, |s| {
            s.seed
                .map_or(" (no seed pinned)".into(), |n| format!(" seed {n}"))
        });
    }
    Ok(list_suites(dir) && ok)
}

/// One line per scenario file (`name` followed by `suffix`), the name column as wide as the
/// longest; `false` when one does not load (its error is printed).
fn list_scenarios(files: &[std::path::PathBuf], suffix: impl Fn(&Scenario) -> String) -> bool {
    let mut ok = true;
    let mut rows = Vec::new();
    for f in files {
        match Scenario::load(f) {
            Ok(s) => rows.push((
                format!("{}{}", s.name, suffix(&s)),
                s.faults.len() + usize::from(s.random.is_some()),
                s.covers.join(", "),
            )),
            Err(e) => {
                ok = false;
                eprintln!("{e}");
            }
        }
    }
    let w = rows
        .iter()
        .map(|r| r.0.len() + 1)
        .max()
        .unwrap_or(0)
        .max(32);
    println!("{:<w$} {:<8} covers", "scenario", "faults");
    for (name, faults, covers) in rows {
        println!("{name:<w$} {faults:<8} {covers}");
    }
    ok
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
