//! `dalp-sim run`: every scenario with every seed, one child process per seed, several at a time;
//! then the results document and the reports.

use super::backend::{prepare, Backend, BackendArgs};
use super::baseline::{needs_baseline, with_baseline};
use super::jobs::{run_jobs_ticking, Job};
use super::options::{
    default_jobs, parse_first, parse_seeds, parse_shard, FirstRun, LogLevel, Seeds, Shard,
};
use super::progress::Progress;
use super::repro::repro_command;
use super::resolve::resolve;
use crate::outcome::{Crash, FinishedRun, Outcome, RunOutput, RunRecord};
use crate::report::{self, Provenance};
use crate::scenario::Scenario;
use clap::Args;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Run every scenario with every seed (one process per seed)
///
/// Writes results.json, junit.xml, report.md and report.html to --out; exit 1 when an invariant
/// fails. --backend real runs the same scenarios against real PostgreSQL, Anvil and dalp-engine
/// processes (the dalp-real binary; one seed at a time unless --jobs), in containers when Docker is
/// reachable (--provider auto), else as local processes.
#[derive(Debug, Args)]
pub(super) struct RunArgs {
    /// Scenario names, suite names or scenario files
    #[arg(required = true, value_name = "SCENARIO|SUITE")]
    pub(super) targets: Vec<String>,
    /// Seeds of each scenario: N (1 to N) or A..B (A inclusive, B exclusive) [default: the
    /// suite's seeds, else 1]
    #[arg(long, value_name = "N|A..B", value_parser = parse_seeds)]
    pub(super) seeds: Option<Seeds>,
    /// Where the results and reports are written
    #[arg(long, value_name = "DIR", default_value = "reports/latest")]
    out: PathBuf,
    /// Children at once [default: one per core; 1 with --backend real]
    #[arg(long, value_name = "J")]
    jobs: Option<usize>,
    /// Run only the runs whose index is I modulo N (`report` merges the shards' results)
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    shard: Option<Shard>,
    /// Start no further run after the first failure or crash (the runs already started
    /// finish): for a yes/no answer, such as whether a planted bug is caught
    #[arg(long)]
    fail_fast: bool,
    /// Start this run (the scenario file's stem and a seed) before the others; repeatable. The
    /// runs are the same, only their order changes: with --fail-fast, a run known to fail (a
    /// planted bug's catching run) ends the answer at once. One not among the runs is said and
    /// ignored
    #[arg(long, value_name = "SCENARIO:SEED", value_parser = parse_first)]
    first: Vec<FirstRun>,
    /// The engines' logs at this level and above go into each run's trace (simulation only; it
    /// changes the trace hashes)
    #[arg(long, value_enum, value_name = "LEVEL", default_value_t = LogLevel::Off)]
    log: LogLevel,
    /// Sign the bundle's manifest with this ed25519 key (32 bytes, hex or raw) [default:
    /// $DALP_SIM_SIGNING_KEY_FILE, else unsigned]
    #[arg(long, value_name = "FILE")]
    signing_key: Option<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
}

/// `Ok(false)` when a run failed or crashed.
pub(super) fn run(dir: &Path, a: &RunArgs) -> Result<bool, String> {
    let backend = a.backend.backend()?;
    backend.supported()?;
    let parallel = match a.jobs {
        Some(j) => j,
        // Real services are heavy and share the machine's ports and cores: one seed at a time.
        None if backend != Backend::Sim => 1,
        None => default_jobs(),
    }
    .max(1);
    let key = crate::bundle::key(a.signing_key.as_deref())?;
    let started_utc = crate::provenance::now_utc();
    // Before anything is written: the run's own output must not make the tree look dirty.
    let build = crate::provenance::build(dir);
    let (jobs, scenarios) = plan(dir, a, backend)?;
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    // The out dir becomes this run's bundle: no trace or signature of an earlier run stays.
    let _ = std::fs::remove_dir_all(a.out.join("traces"));
    let _ = std::fs::remove_file(a.out.join(crate::bundle::manifest::SIGNATURE));
    let total = jobs.len();
    let jobs = scenarios.with_baselines(jobs);
    let jobs_baselines = jobs.len() - total;
    let started = Instant::now();
    eprintln!(
        "dalp-sim: {total} runs{}, {parallel} at a time, results in {}",
        match jobs_baselines {
            0 => String::new(),
            baselines => format!(" (+{baselines} fault-free baselines)"),
        },
        a.out.display()
    );
    let progress = RefCell::new(Progress::new(total, std::io::stderr().is_terminal()));
    progress.borrow().draw();
    let mut tally = Tally::new(&scenarios, backend, total);
    prepare(&backend)?;
    let failed = std::cell::Cell::new(false);
    let mut extra = backend.child_args();
    if backend == Backend::Sim {
        extra.extend(a.log.child_args());
    }
    let not_started = run_jobs_ticking(
        jobs,
        parallel,
        &a.out,
        &extra,
        |job, r, took| {
            tally.finished(job, r, took, &mut progress.borrow_mut());
            failed.set(!tally.failures.is_empty());
        },
        || a.fail_fast && failed.get(),
        || progress.borrow().draw(),
    )?;
    progress.borrow().clear();
    if not_started > 0 {
        eprintln!(
            "dalp-sim: --fail-fast: stopped after the first failure; {not_started} of {} \
             planned runs (baselines included) were not started",
            total + jobs_baselines
        );
    }
    let provenance = Provenance {
        shard: a.shard.map(|s| s.to_string()),
        build: Some(build),
        machine: Some(crate::provenance::machine()),
        started: Some(started_utc),
        targets: a.targets.clone(),
        seeds: a.seeds.as_ref().map(|s| seed_list(&s.0)),
        backend: Some(backend.name().into()),
        provider: backend.provider().map(|p| p.name().into()),
        scenario_files: scenarios.files.clone(),
        planted: crate::provenance::Planted::load(&crate::provenance::planted_path(dir))?,
        ..Provenance::default()
    };
    let (passed, doc) = tally.write(&a.out, provenance, started, key.as_ref())?;
    // A suite that declares `must_probes` promises that its runs reach every `must` probe; a
    // run cut short (a failure with --fail-fast, a shard, other seeds) cannot say.
    let must = a
        .targets
        .iter()
        .map(|t| super::resolve::suite_must_probes(dir, t))
        .collect::<Result<Vec<_>, _>>()?
        .contains(&true);
    if must && backend == Backend::Sim {
        if not_started > 0 || a.shard.is_some() || a.seeds.is_some() {
            eprintln!(
                "dalp-sim: must probes not judged: the suite did not run whole with its own seeds"
            );
        } else if let Some(m) = crate::coverage::Matrix::of(&doc.results) {
            let missed = m.must_missed();
            for (name, why) in &missed {
                eprintln!("FAILED must probe `{name}` was reached by no run ({why})");
            }
            if !missed.is_empty() {
                return Ok(false);
            }
            eprintln!(
                "dalp-sim: every must probe was reached ({} of {} declared probes and fault points reached)",
                m.probes.len() - m.unreached().count(),
                m.probes.len()
            );
        }
    }
    Ok(passed)
}

/// `--seeds` as the provenance says it: `A..B` when contiguous, else the list.
fn seed_list(seeds: &[u64]) -> String {
    match (seeds.first(), seeds.last()) {
        (Some(a), Some(b)) if seeds.windows(2).all(|w| w[1] == w[0] + 1) => {
            format!("{a}..{}", b + 1)
        }
        _ => seeds
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// What the planned runs need to know of their scenario files.
struct Scenarios {
    /// The catalog ids each scenario file covers, for the results and the report.
    covers: BTreeMap<PathBuf, Vec<String>>,
    /// Each file once, in the order planned, with its hash and targets (the provenance).
    files: Vec<crate::provenance::ScenarioFile>,
    /// Scenarios whose runs are compared with a fault-free baseline (isolation).
    isolated: BTreeMap<PathBuf, Scenario>,
}

/// The runs of `a` (its shard of them), each scenario validated before anything runs: a bad one
/// stops the run with its error.
fn plan(dir: &Path, a: &RunArgs, backend: Backend) -> Result<(Vec<Job>, Scenarios), String> {
    let mut jobs = Vec::new();
    let mut scenarios = Scenarios {
        covers: BTreeMap::new(),
        files: Vec::new(),
        isolated: BTreeMap::new(),
    };
    for name in &a.targets {
        let (files, suite_seeds) = resolve(dir, name)?;
        for f in files {
            let scenario = Scenario::load(&f).map_err(|e| e.to_string())?;
            let seeds = super::resolve::seeds_of(
                &suite_seeds,
                &f,
                a.seeds.as_ref().map(|s| &s.0[..]),
                scenario.seed,
            );
            if scenarios
                .covers
                .insert(f.clone(), scenario.covers.clone())
                .is_none()
            {
                scenarios
                    .files
                    .push(crate::provenance::ScenarioFile::of(&f, &scenario));
            }
            if needs_baseline(&scenario) && backend == Backend::Sim {
                scenarios.isolated.insert(f.clone(), scenario);
            }
            jobs.extend(seeds.iter().map(|s| Job::new(f.clone(), *s)));
        }
    }
    if let Some(shard) = a.shard {
        jobs = jobs
            .into_iter()
            .enumerate()
            .filter(|(k, _)| shard.keeps(*k))
            .map(|(_, j)| j)
            .collect();
    }
    let (jobs, absent) = first_runs_first(jobs, &a.first);
    for f in absent {
        eprintln!("dalp-sim: --first {f}: not among this run's runs; ignored");
    }
    Ok((jobs, scenarios))
}

/// `jobs` with those `first` names moved to the front, in `first`'s order (every other run
/// keeps its place); and the `first` entries that name no run.
fn first_runs_first(mut jobs: Vec<Job>, first: &[FirstRun]) -> (Vec<Job>, Vec<FirstRun>) {
    let total = jobs.len();
    let mut front = Vec::new();
    let mut absent = Vec::new();
    for f in first {
        let named =
            |j: &Job| j.seed == f.seed && j.scenario.file_stem().is_some_and(|s| *s == *f.scenario);
        match jobs.iter().position(named) {
            Some(k) => front.push(jobs.remove(k)),
            None if front.iter().any(named) => {}
            None => absent.push(f.clone()),
        }
    }
    front.append(&mut jobs);
    assert_eq!(front.len(), total, "reordering keeps every run");
    (front, absent)
}

impl Scenarios {
    /// Each run of an isolation scenario gets its fault-free baseline right after it (same
    /// shard).
    fn with_baselines(&self, jobs: Vec<Job>) -> Vec<Job> {
        jobs.into_iter()
            .flat_map(|j| {
                let b = self
                    .isolated
                    .contains_key(&j.scenario)
                    .then(|| j.as_baseline());
                std::iter::once(j).chain(b)
            })
            .collect()
    }
}

/// A finished run (or baseline) and how long its process took.
type Half = Option<(Result<FinishedRun, String>, Duration)>;

/// The runs of isolation scenarios and their baselines, until both have finished.
#[derive(Default)]
struct Pairs(BTreeMap<(PathBuf, u64), (Half, Half)>);

impl Pairs {
    /// The run judged against its baseline once both have finished; `None` before.
    fn join(
        &mut self,
        job: &Job,
        s: &Scenario,
        r: Result<FinishedRun, String>,
        took: Duration,
    ) -> Option<(Result<FinishedRun, String>, Duration)> {
        let k = (job.scenario.clone(), job.seed);
        let pair = self.0.entry(k.clone()).or_default();
        let half = if job.baseline {
            &mut pair.1
        } else {
            &mut pair.0
        };
        *half = Some((r, took));
        if pair.0.is_none() || pair.1.is_none() {
            return None;
        }
        let (Some((run, took)), Some((base, _))) = self.0.remove(&k)? else {
            unreachable!("both halves present")
        };
        Some((with_baseline(job, s, run, &base), took))
    }
}

/// What `run` gathers as runs finish.
struct Tally<'a> {
    scenarios: &'a Scenarios,
    backend: Backend,
    total: usize,
    pairs: Pairs,
    results: Vec<RunRecord>,
    /// What to say again at the end, one entry per failed or crashed run.
    failures: Vec<String>,
}

impl<'a> Tally<'a> {
    fn new(scenarios: &'a Scenarios, backend: Backend, total: usize) -> Self {
        Tally {
            scenarios,
            backend,
            total,
            pairs: Pairs::default(),
            results: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// A child finished: record the run (once its baseline, if any, has finished too).
    fn finished(
        &mut self,
        job: &Job,
        r: Result<FinishedRun, String>,
        took: Duration,
        progress: &mut Progress,
    ) {
        let (r, took) = match self.scenarios.isolated.get(&job.scenario) {
            None => (r, took),
            Some(s) => match self.pairs.join(job, s, r, took) {
                Some(joined) => joined,
                None => return,
            },
        };
        let done = Done {
            name: job
                .scenario
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("?")
                .to_string(),
            seed: job.seed,
            repro: format!(
                "{}{}",
                repro_command(&job.scenario, job.seed),
                self.backend.repro_suffix()
            ),
            took,
        };
        let record = done.entry(job, r, self.scenarios.covers.get(&job.scenario));
        let (line, failure) = done.describe(&record, progress.done + 1, self.total);
        self.failures.extend(failure);
        progress.finished(&line, record.outcome == Outcome::Pass);
        self.results.push(record);
    }

    /// Write results.json and the reports to `out_dir` and seal it as a bundle (manifest,
    /// signed with `key` when given); whether every run passed, and the document written.
    fn write(
        self,
        out_dir: &Path,
        provenance: Provenance,
        started: Instant,
        key: Option<&ed25519_dalek::SigningKey>,
    ) -> Result<(bool, report::ResultsDoc), String> {
        let provenance = Provenance {
            wall_s: Some(started.elapsed().as_secs_f64()),
            ended: Some(crate::provenance::now_utc()),
            ..provenance
        };
        let doc = report::document(self.results, provenance);
        let mut written = report::write_outputs(out_dir, &doc)?;
        let _ = std::fs::remove_dir_all(out_dir.join(".runs"));
        written.push(crate::bundle::seal(out_dir, &doc, key)?);
        eprintln!(
            "dalp-sim: {}/{} runs passed in {:.1}s; wrote {}",
            doc.summary.passed,
            doc.summary.runs,
            started.elapsed().as_secs_f64(),
            super::joined(&written)
        );
        for f in &self.failures {
            eprintln!("FAILED {f}");
        }
        Ok((self.failures.is_empty(), doc))
    }
}

/// A run that finished, as the results and the progress name it.
struct Done {
    /// The scenario file's stem.
    name: String,
    seed: u64,
    /// The command that replays it.
    repro: String,
    took: Duration,
}

impl Done {
    /// The run's entry in results.json: its result (or the crash), where it came from, how to
    /// replay it, and the catalog ids it covers.
    fn entry(
        &self,
        job: &Job,
        r: Result<FinishedRun, String>,
        covers: Option<&Vec<String>>,
    ) -> RunRecord {
        let output = match r {
            Ok(f) => RunOutput::Finished(Box::new(f)),
            Err(e) => RunOutput::Crashed(Crash {
                scenario: self.name.clone(),
                seed: self.seed,
                passed: false,
                crashed: e,
            }),
        };
        RunRecord::new(
            output,
            Some(job.scenario.display().to_string()),
            Some(self.repro.clone()),
            covers.cloned().unwrap_or_default(),
        )
    }

    /// The progress line of the `n`th of `total` runs, and what to say again at the end if it
    /// failed.
    fn describe(&self, record: &RunRecord, n: usize, total: usize) -> (String, Option<String>) {
        let (name, seed, repro) = (&self.name, self.seed, &self.repro);
        let f = match &record.output {
            RunOutput::Crashed(c) => {
                let failure = format!(
                    "{name} seed {seed}: the run crashed: {}\n    reproduce: {repro}",
                    c.crashed
                );
                let line = format!("[{n}/{total}] CRASH {name} seed {seed}; reproduce: {repro}");
                return (line, Some(failure));
            }
            RunOutput::Finished(f) => &f.result,
        };
        let failed: Vec<&str> = f.violated().map(|x| x.invariant.as_str()).collect();
        let passed = record.outcome == Outcome::Pass;
        let failure = (!passed).then(|| {
            format!(
                "{name} seed {seed}: {} failed\n    reproduce: {repro}{}",
                failed.join(", "),
                f.swarm
                    .as_ref()
                    .map(|d| format!("\n    swarm draw: {}", d.line))
                    .unwrap_or_default()
            )
        });
        let line = format!(
            "[{n}/{total}] {} {name} seed {seed} ({:.1}s wall, {} sim-s){}",
            if passed { "ok  " } else { "FAIL" },
            self.took.as_secs_f64(),
            f.simulated_ms / 1000,
            if failed.is_empty() {
                String::new()
            } else {
                format!(" violated: {}; reproduce: {repro}", failed.join(", "))
            }
        );
        (line, failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(v: &[(&str, u64)]) -> Vec<Job> {
        v.iter()
            .map(|(s, n)| Job::new(PathBuf::from(format!("scenarios/{s}.toml")), *n))
            .collect()
    }

    fn names(jobs: &[Job]) -> Vec<String> {
        jobs.iter()
            .map(|j| {
                format!(
                    "{}:{}",
                    j.scenario.file_stem().unwrap().to_string_lossy(),
                    j.seed
                )
            })
            .collect()
    }

    #[test]
    fn first_runs_move_to_the_front_and_nothing_else_moves() {
        let jobs = runs(&[("a", 1), ("a", 2), ("b", 1), ("b", 2), ("c", 1)]);
        let first = [
            parse_first("b:2").unwrap(),
            parse_first("a:1").unwrap(),
            parse_first("b:2").unwrap(),
            parse_first("z:1").unwrap(),
            parse_first("c:9").unwrap(),
        ];
        let (jobs, absent) = first_runs_first(jobs, &first);
        assert_eq!(names(&jobs), ["b:2", "a:1", "a:2", "b:1", "c:1"]);
        let absent: Vec<String> = absent.iter().map(ToString::to_string).collect();
        assert_eq!(absent, ["z:1", "c:9"]);
    }
}
