//! `dalp-sim repro --minimize`: shrink a failing run with [`crate::shrink`] (ddmin over its
//! faults, then its parameters), each candidate run as a standalone scenario file in a child
//! process, and write the smallest as a scenario TOML that reproduces the failure by itself.

use super::baseline::{judged, needs_baseline};
use super::jobs::{run_jobs, Job};
use crate::outcome::FinishedRun;
use crate::scenario::Scenario;
use crate::shrink::{size_line, Shrinker, TrialResult};
use crate::trace::write_atomic;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What `--minimize` was asked beyond the failed run.
pub(super) struct Options<'a> {
    pub(super) max_trials: usize,
    /// `--save-regression NAME`: also write the result to `<scenarios>/regressions/NAME.toml`.
    pub(super) save_regression: Option<&'a str>,
    pub(super) scenarios_dir: &'a Path,
    /// The backend's arguments for each child.
    pub(super) child_args: Vec<String>,
    /// Whether isolation baselines run (the simulation only).
    pub(super) baselines: bool,
}

/// Shrink the failed run `first` and write the result; its path.
pub(super) fn minimize(
    job: &Job,
    scenario: &Scenario,
    out_dir: &Path,
    first: &FinishedRun,
    o: &Options<'_>,
) -> Result<PathBuf, String> {
    let stem = job
        .scenario
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("scenario");
    let name = match o.save_regression {
        Some(n) => regression_name(n, o.scenarios_dir)?,
        None => format!("{stem}-{}-shrunk", job.seed),
    };
    let target = violated(first);
    let dir = out_dir.join("minimize");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let start = Scenario {
        name: name.clone(),
        seed: Some(job.seed),
        ..scenario.standalone(job.seed, first.result.schedule.clone())
    };
    eprintln!(
        "shrink: {} ({}); keeping candidates that still violate {}; at most {} trials",
        size_line(&start),
        job.scenario.display(),
        target.join(", "),
        o.max_trials
    );
    let trial_file = dir.join(format!("{name}.trial.toml"));
    let mut trials = Trials {
        file: trial_file.clone(),
        seed: job.seed,
        out_dir,
        o,
        baselines: BTreeMap::new(),
    };
    // The standalone scenario must fail as the run did before anything is shrunk from it.
    let alone = trials.run(&start)?;
    if !alone.iter().any(|x| target.contains(x)) {
        return Err(format!(
            "the run written as a standalone scenario does not reproduce it (it violated {:?}, \
             the run {:?}): a harness bug; the candidate is {}",
            alone,
            target,
            trial_file.display()
        ));
    }
    let mut stderr = std::io::stderr();
    let mut sh = Shrinker::new(
        |c: &Scenario| trials.run(c),
        target.clone(),
        o.max_trials,
        &mut stderr,
    );
    let mut best = sh.shrink(start.clone());
    let used = sh.trials;
    drop(sh);
    best.description = format!(
        "{} seed {} shrunk by `dalp-sim repro --minimize` ({}) from {} faults; violated {}. {}",
        stem,
        job.seed,
        size_line(&best),
        start.faults.len(),
        target.join(", "),
        scenario.description
    );
    let path = dir.join(format!("{name}.toml"));
    let text = scenario_text(&best, &start, used, &target);
    write_atomic(&path, text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
    let _ = std::fs::remove_file(&trial_file);
    // The file as written, run once more: what the user will run.
    let again = trials.run_file(&path, &best)?;
    if !again.iter().any(|x| target.contains(x)) {
        return Err(format!(
            "{} does not reproduce the failure (violated {again:?}): a harness bug",
            path.display()
        ));
    }
    println!(
        "shrunk in {used} trials: {} → {}",
        size_line(&start),
        size_line(&best)
    );
    for f in &best.faults {
        println!("  {}", serde_json::to_string(f).expect("json"));
    }
    println!(
        "wrote {} (reproduces: violated {})",
        path.display(),
        again.join(", ")
    );
    let mut shown = path.clone();
    if o.save_regression.is_some() {
        let reg = o.scenarios_dir.join("regressions");
        std::fs::create_dir_all(&reg).map_err(|e| format!("{}: {e}", reg.display()))?;
        let kept = reg.join(format!("{name}.toml"));
        write_atomic(&kept, text.as_bytes()).map_err(|e| format!("{}: {e}", kept.display()))?;
        println!(
            "saved {}: the `ci` suite replays it (seed {}); it must pass once the bug is fixed",
            kept.display(),
            job.seed
        );
        shown = kept;
    }
    println!(
        "reproduce: cargo xtask sim repro {} --seed {}",
        shown.display(),
        job.seed
    );
    Ok(path)
}

/// The runs of candidates: each written to `file` and run (beside its fault-free baseline when
/// it judges isolation; baselines are cached by the candidate without its faults).
struct Trials<'a> {
    file: PathBuf,
    seed: u64,
    out_dir: &'a Path,
    o: &'a Options<'a>,
    baselines: BTreeMap<String, Result<FinishedRun, String>>,
}

impl Trials<'_> {
    fn run(&mut self, c: &Scenario) -> TrialResult {
        let file = self.file.clone();
        write_atomic(&file, c.to_toml().as_bytes())
            .map_err(|e| format!("{}: {e}", file.display()))?;
        self.run_file(&file, c)
    }

    /// Run the scenario file `file` (whose content is `c`): the invariants it violated.
    fn run_file(&mut self, file: &Path, c: &Scenario) -> TrialResult {
        let job = Job::new(file.to_path_buf(), self.seed);
        let key = Scenario {
            faults: Vec::new(),
            ..c.clone()
        }
        .to_toml();
        let want_base = self.o.baselines && needs_baseline(c) && !self.baselines.contains_key(&key);
        let jobs: Vec<Job> = std::iter::once(job.clone())
            .chain(want_base.then(|| job.as_baseline()))
            .collect();
        let mut got: BTreeMap<bool, Result<FinishedRun, String>> = BTreeMap::new();
        run_jobs(jobs, 2, self.out_dir, &self.o.child_args, |j, r, _| {
            got.insert(j.baseline, r);
        })?;
        let _ = std::fs::remove_dir_all(self.out_dir.join(".runs"));
        if let Some(b) = got.remove(&true) {
            self.baselines.insert(key.clone(), b);
        }
        let run = got.remove(&false).expect("the run ran");
        let base = self
            .baselines
            .get(&key)
            .filter(|_| self.o.baselines && needs_baseline(c));
        let v = judged(&job, c, run, base)?;
        Ok(violated(&v))
    }
}

/// The invariants a run violated.
fn violated(v: &FinishedRun) -> Vec<String> {
    v.result.violated().map(|x| x.invariant.clone()).collect()
}

/// `--save-regression`'s name: a file name of its own under `regressions/`.
fn regression_name(n: &str, scenarios: &Path) -> Result<String, String> {
    let ok = !n.is_empty()
        && n.len() <= 80
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok {
        return Err(format!(
            "--save-regression: {n:?} is not a name: 1 to 80 characters of a-z, 0-9, - and _"
        ));
    }
    let f = scenarios.join("regressions").join(format!("{n}.toml"));
    if f.exists() {
        return Err(format!(
            "--save-regression: {} exists; choose another name",
            f.display()
        ));
    }
    Ok(n.to_string())
}

/// The written file: a header saying where it came from and how to run it, then the scenario.
fn scenario_text(best: &Scenario, start: &Scenario, trials: usize, target: &[String]) -> String {
    format!(
        "# Written by `dalp-sim repro --minimize` in {trials} trials: {} → {};\n\
         # violated {}. A standalone scenario: explicit [[faults]], no random draw, the seed pinned.\n\
         # Reproduce: cargo xtask sim repro <this file> --seed {}\n\n{}",
        size_line(start),
        size_line(best),
        target.join(", "),
        best.seed.unwrap_or(0),
        best.to_toml()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regression_name_is_a_plain_new_file_name() {
        let dir = std::env::temp_dir().join(format!("dalp-regname-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("regressions")).unwrap();
        std::fs::write(dir.join("regressions/taken.toml"), "").unwrap();
        assert_eq!(regression_name("nonce-gap-1", &dir).unwrap(), "nonce-gap-1");
        for bad in ["", "../x", "A", "a b", &"x".repeat(81)] {
            let e = regression_name(bad, &dir).unwrap_err();
            assert!(
                e.starts_with("--save-regression:") && e.contains("not a name"),
                "{e}"
            );
        }
        let e = regression_name("taken", &dir).unwrap_err();
        assert!(e.contains("exists"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
