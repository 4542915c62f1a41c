//! Names on the command line: a path to a `.toml`, a scenario name, or a suite name.

use crate::scenario::scenario_files;
use serde::Deserialize;
use std::collections::BTreeMap;
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
    /// Scenarios (by name) that run this many times as many seeds as the others, with the
    /// suite's seeds or `--seeds`: a swarm scenario, each of whose seeds is another
    /// configuration, gets more.
    #[serde(default)]
    pub seed_factor: BTreeMap<String, u64>,
}

/// A suite's seeds: `seeds` for each scenario, times its `seed_factor`.
#[derive(Debug, Clone, Default)]
pub struct SuiteSeeds {
    pub seeds: u64,
    pub seed_factor: BTreeMap<String, u64>,
}

impl SuiteSeeds {
    /// The seed factor of the scenario file `f` (named by its stem).
    pub fn factor(&self, f: &Path) -> u64 {
        f.file_stem()
            .and_then(|n| n.to_str())
            .and_then(|n| self.seed_factor.get(n))
            .copied()
            .unwrap_or(1)
    }
}

/// The seeds `f` runs: its `pinned` seed (a regression's, whatever else is asked), else `given`
/// (from `--seeds`) or the suite's own, scaled by its factor (the list continues past its last
/// seed); seed 1 for a scenario named alone.
pub fn seeds_of(
    suite: &Option<SuiteSeeds>,
    f: &Path,
    given: Option<&[u64]>,
    pinned: Option<u64>,
) -> Vec<u64> {
    if let Some(p) = pinned {
        return vec![p];
    }
    let factor = suite.as_ref().map_or(1, |s| s.factor(f)) as usize;
    let mut v: Vec<u64> = match given {
        Some(g) => g.to_vec(),
        None => (1..=suite.as_ref().map_or(1, |s| s.seeds)).collect(),
    };
    let want = v.len() * factor;
    let mut next = v.iter().copied().max().unwrap_or(0) + 1;
    while v.len() < want {
        v.push(next);
        next += 1;
    }
    v
}

/// The seed `f` pins (`seed = N`), if it loads and pins one.
pub fn pinned_seed(f: &Path) -> Option<u64> {
    crate::scenario::Scenario::load(f).ok().and_then(|s| s.seed)
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
pub(super) fn resolve(
    dir: &Path,
    name: &str,
) -> Result<(Vec<PathBuf>, Option<SuiteSeeds>), String> {
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

fn suite_files(dir: &Path, suite: &Path) -> Result<(Vec<PathBuf>, Option<SuiteSeeds>), String> {
    let text = std::fs::read_to_string(suite).map_err(|e| format!("{}: {e}", suite.display()))?;
    let s: Suite =
        toml::from_str(&text).map_err(|e| format!("{}: {}", suite.display(), e.message()))?;
    let mut files = Vec::new();
    for (i, n) in s.scenarios.iter().enumerate() {
        if let Some(sub) = n.strip_suffix('*') {
            // `*`: every scenario of the directory; `regressions/*`: of that subdirectory
            // (absent: none).
            let d = dir.join(sub.trim_end_matches('/'));
            if sub.is_empty() || d.is_dir() {
                files.extend(scenario_files(&d).map_err(|e| format!("{}: {e}", d.display()))?);
            }
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
    for (n, f) in &s.seed_factor {
        if *f == 0 {
            return Err(format!(
                "{}: field `seed_factor.{n}`: must be at least 1",
                suite.display()
            ));
        }
        if !files
            .iter()
            .any(|f| f.file_stem().is_some_and(|x| x == n.as_str()))
        {
            return Err(format!(
                "{}: field `seed_factor.{n}`: no scenario of the suite is named {n:?}",
                suite.display()
            ));
        }
    }
    Ok((
        files,
        Some(SuiteSeeds {
            seeds: s.seeds,
            seed_factor: s.seed_factor,
        }),
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_factor_continues_the_seed_list() {
        let suite = Some(SuiteSeeds {
            seeds: 2,
            seed_factor: BTreeMap::from([("swarm".to_string(), 3)]),
        });
        let swarm = Path::new("scenarios/swarm.toml");
        let other = Path::new("scenarios/reorg.toml");
        assert_eq!(seeds_of(&suite, other, None, None), vec![1, 2]);
        assert_eq!(seeds_of(&suite, swarm, None, None), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(
            seeds_of(&suite, swarm, Some(&[10, 11]), None),
            vec![10, 11, 12, 13, 14, 15]
        );
        assert_eq!(seeds_of(&None, swarm, None, None), vec![1]);
        assert_eq!(seeds_of(&None, swarm, Some(&[7]), None), vec![7]);
    }

    /// A regression runs its own seed only: its others are not the failure it keeps.
    #[test]
    fn a_pinned_seed_wins_over_the_suites_and_the_flags() {
        let suite = Some(SuiteSeeds {
            seeds: 2,
            seed_factor: BTreeMap::new(),
        });
        let f = Path::new("scenarios/regressions/r.toml");
        assert_eq!(seeds_of(&suite, f, None, Some(9)), vec![9]);
        assert_eq!(seeds_of(&suite, f, Some(&[1, 2, 3]), Some(9)), vec![9]);
    }

    #[test]
    fn a_suite_entry_ending_in_a_star_lists_that_directory() {
        let dir = std::env::temp_dir().join(format!("dalp-suite-star-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("suites")).unwrap();
        std::fs::create_dir_all(dir.join("regressions")).unwrap();
        std::fs::write(dir.join("a.toml"), "").unwrap();
        std::fs::write(dir.join("regressions/r.toml"), "").unwrap();
        let suite = dir.join("suites/s.toml");
        std::fs::write(
            &suite,
            "description = \"d\"\nscenarios = [\"*\", \"regressions/*\", \"none/*\"]\nseeds = 1\n",
        )
        .unwrap();
        let (files, _) = suite_files(&dir, &suite).unwrap();
        assert_eq!(
            files,
            vec![dir.join("a.toml"), dir.join("regressions/r.toml")]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
