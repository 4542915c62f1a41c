//! The `dalp-sim` command line: `list`, `run`, `repro`, `report`, `bench`, and the internal
//! `child` that runs one seed. The parent never runs a simulation itself: every seed runs in its own child process
//! (madsim keeps statics across runs in one process), several at a time.

use crate::isolation;
use crate::report;
use crate::scenario::{scenario_files, Fault, Scenario};
use crate::trace::write_atomic;
use serde::Deserialize;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

pub const USAGE: &str = "usage:
  dalp-sim list                                   scenarios, suites and the catalog ids they cover
  dalp-sim run <scenario|suite>... [--seeds N | --seeds A..B] [--out DIR] [--jobs J] [--shard I/N]
               [--backend sim|real] [--provider auto|docker|local]
                                                  run every scenario with every seed (one process per seed);
                                                  writes results.json, junit.xml, report.md, report.html;
                                                  exit 1 when an invariant fails. --backend real runs the
                                                  same scenarios against real PostgreSQL, Anvil and
                                                  dalp-engine processes (the plain build; one seed at a
                                                  time unless --jobs), in containers when Docker is
                                                  reachable (--provider auto), else as local processes
  dalp-sim repro <scenario> --seed S [--out DIR] [--schedule FILE] [--minimize] [--baseline]
               [--backend sim|real] [--provider auto|docker|local]
                                                  replay one seed: outcome, trace-hash, trace files
                                                  (--baseline: the seed without faults, the
                                                  reference of the isolation invariant)
  dalp-sim report <results.json>... [--out DIR]   merge results (e.g. of shards; one run per scenario
                                                  and seed) and write the four files to DIR (default:
                                                  the first file's folder); exit 1 when a run failed
  dalp-sim bench [<scenario>] [--seeds N] [--suite NAME] [--jobs J]
                                                  simulated s per wall s and peak memory per seed
                                                  process (one at a time), then the suite's seeds/min
common: --scenarios DIR (default: ./scenarios)";

/// A suite file (`scenarios/suites/<name>.toml`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    pub description: String,
    /// Scenario names (files under the scenarios directory, without `.toml`); `*` means all.
    pub scenarios: Vec<String>,
    /// Seeds per scenario unless `--seeds` says otherwise.
    pub seeds: u64,
}

#[derive(Debug)]
struct Args {
    positional: Vec<String>,
    flags: BTreeMap<String, String>,
    switches: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        positional: vec![],
        flags: BTreeMap::new(),
        switches: vec![],
    };
    let mut it = args.iter();
    while let Some(x) = it.next() {
        if let Some(name) = x.strip_prefix("--") {
            if matches!(name, "minimize" | "keep-going" | "baseline") {
                a.switches.push(name.to_string());
            } else {
                let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                a.flags.insert(name.to_string(), v.clone());
            }
        } else {
            a.positional.push(x.clone());
        }
    }
    Ok(a)
}

fn scenarios_dir(a: &Args) -> PathBuf {
    a.flags
        .get("scenarios")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("DALP_SCENARIOS").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("scenarios"))
}

/// Resolve a name: a path to a `.toml`, a scenario name, or a suite name.
fn resolve(dir: &Path, name: &str) -> Result<(Vec<PathBuf>, Option<u64>), String> {
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
        let text =
            std::fs::read_to_string(&suite).map_err(|e| format!("{}: {e}", suite.display()))?;
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
        return Ok((files, Some(s.seeds)));
    }
    Err(format!(
        "no scenario or suite named {name:?} (looked for {} and {})",
        scen.display(),
        suite.display()
    ))
}

fn parse_seeds(spec: &str) -> Result<Vec<u64>, String> {
    if let Some((a, b)) = spec.split_once("..") {
        let a: u64 = a
            .parse()
            .map_err(|_| format!("--seeds {spec}: bad start"))?;
        let b: u64 = b.parse().map_err(|_| format!("--seeds {spec}: bad end"))?;
        if a >= b {
            return Err(format!(
                "--seeds {spec}: empty range (A..B is A inclusive, B exclusive)"
            ));
        }
        Ok((a..b).collect())
    } else {
        let n: u64 = spec
            .parse()
            .map_err(|_| format!("--seeds {spec}: not a count or A..B"))?;
        if n == 0 {
            return Err("--seeds 0: nothing to run".into());
        }
        Ok((1..=n).collect())
    }
}

pub fn main(args: Vec<String>) -> ExitCode {
    let Some(cmd) = args.first().cloned() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let parsed = match parse_args(&args[1..]) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("dalp-sim: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let out = match cmd.as_str() {
        "list" => list(&parsed),
        "run" => run(&parsed),
        "repro" => repro(&parsed),
        "report" => report_cmd(&parsed),
        "child" => child(&parsed),
        "bench" => bench(&parsed),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(true)
        }
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    };
    match out {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("dalp-sim: {e}");
            ExitCode::from(2)
        }
    }
}

fn list(a: &Args) -> Result<bool, String> {
    let dir = scenarios_dir(a);
    let files = scenario_files(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
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
    let suites = scenario_files(&dir.join("suites")).unwrap_or_default();
    if !suites.is_empty() {
        println!("\nsuites:");
        for f in suites {
            let name = f
                .file_stem()
                .and_then(|x| x.to_str())
                .unwrap_or("?")
                .to_string();
            match resolve(&dir, &name) {
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
    }
    Ok(ok)
}

/// The command that replays one seed, as printed for a failure.
pub fn repro_command(scenario: &Path, seed: u64) -> String {
    format!("cargo xtask sim repro {} --seed {seed}", scenario.display())
}

/// Where the services of a run come from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Backend {
    Sim,
    /// Real services, from this provider (`auto`, `docker`, `local`).
    Real(String),
}

impl Backend {
    fn from_args(a: &Args) -> Result<Backend, String> {
        let provider = a.flags.get("provider").cloned();
        match a.flags.get("backend").map(String::as_str).unwrap_or("sim") {
            "sim" if provider.is_none() => Ok(Backend::Sim),
            "sim" => Err("--provider applies to --backend real only".into()),
            "real" => {
                let p = provider.unwrap_or_else(|| "auto".into());
                if !matches!(p.as_str(), "auto" | "docker" | "local") {
                    return Err(format!(
                        "--provider: unknown provider `{p}` (auto, docker or local)"
                    ));
                }
                Ok(Backend::Real(p))
            }
            other => Err(format!(
                "--backend: unknown backend `{other}` (sim or real)"
            )),
        }
    }

    /// Whether this build can run it: the simulation needs `--cfg madsim`, real services the
    /// plain build.
    fn supported(&self) -> Result<(), String> {
        match (self, cfg!(madsim)) {
            (Backend::Sim, true) | (Backend::Real(_), false) => Ok(()),
            (Backend::Sim, false) => Err(
                "this dalp-sim was built without --cfg madsim and cannot simulate; use `cargo xtask sim …`".into(),
            ),
            (Backend::Real(_), true) => Err(
                "this dalp-sim is the simulation build (--cfg madsim); the real backend is in the plain build: `cargo xtask sim run … --backend real` picks it".into(),
            ),
        }
    }

    /// Arguments the children get.
    fn child_args(&self) -> Vec<String> {
        match self {
            Backend::Sim => Vec::new(),
            Backend::Real(p) => vec![
                "--backend".into(),
                "real".into(),
                "--provider".into(),
                p.clone(),
            ],
        }
    }

    fn repro_suffix(&self) -> &'static str {
        match self {
            Backend::Sim => "",
            Backend::Real(_) => " --backend real",
        }
    }
}

struct Job {
    scenario: PathBuf,
    seed: u64,
    /// The seed's fault-free baseline (an empty schedule), for the isolation invariant.
    baseline: bool,
}

impl Job {
    fn new(scenario: PathBuf, seed: u64) -> Job {
        Job {
            scenario,
            seed,
            baseline: false,
        }
    }
}

/// Whether a scenario's runs need a fault-free baseline run (the `isolation` invariant).
fn needs_baseline(s: &Scenario) -> bool {
    s.invariants.iter().any(|i| i == "isolation")
}

/// The command that replays a seed's fault-free baseline.
fn baseline_repro_command(scenario: &Path, seed: u64) -> String {
    format!("{} --baseline", repro_command(scenario, seed))
}

/// Add the baseline and the isolation verdict to a run's result ([`isolation::attach`]); a
/// crashed run stays crashed.
fn with_baseline(
    job: &Job,
    s: &Scenario,
    run: Result<Value, String>,
    baseline: &Result<Value, String>,
) -> Result<Value, String> {
    let mut v = run?;
    isolation::attach(
        &mut v,
        baseline.as_ref().map_err(String::as_str),
        s,
        &baseline_repro_command(&job.scenario, job.seed),
    )
    .map_err(|e| format!("the isolation invariant could not be evaluated: {e}"))?;
    Ok(v)
}

struct Running {
    job: Job,
    child: Child,
    out: PathBuf,
    started: Instant,
}

fn spawn_child(job: &Job, out_dir: &Path, extra: &[String]) -> Result<(Child, PathBuf), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let stem = format!(
        "{}-{}{}",
        job.scenario
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("scenario"),
        job.seed,
        if job.baseline { "-baseline" } else { "" }
    );
    let tmp = out_dir.join(".runs");
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let out = tmp.join(format!("{stem}.json"));
    let err = std::fs::File::create(tmp.join(format!("{stem}.stderr")))
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("child")
        .arg(&job.scenario)
        .arg("--seed")
        .arg(job.seed.to_string())
        .arg("--result")
        .arg(&out)
        .arg("--trace-dir")
        .arg(out_dir.join("traces"))
        .args(extra)
        .args(job.baseline.then_some("--baseline"))
        .stdout(Stdio::null())
        .stderr(err);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start a child run: {e}"))?;
    Ok((child, out))
}

/// Run jobs with at most `jobs` children at once; calls `done` as each finishes.
fn run_jobs(
    jobs: Vec<Job>,
    parallel: usize,
    out_dir: &Path,
    extra: &[String],
    done: impl FnMut(&Job, Result<Value, String>, Duration),
) -> Result<(), String> {
    run_jobs_ticking(jobs, parallel, out_dir, extra, done, || {})
}

/// [`run_jobs`], calling `tick` about twice a second while children run (progress display).
fn run_jobs_ticking(
    jobs: Vec<Job>,
    parallel: usize,
    out_dir: &Path,
    extra: &[String],
    mut done: impl FnMut(&Job, Result<Value, String>, Duration),
    mut tick: impl FnMut(),
) -> Result<(), String> {
    let mut last_tick = Instant::now();
    let mut queue: std::collections::VecDeque<Job> = jobs.into();
    let mut running: Vec<Running> = Vec::new();
    while !queue.is_empty() || !running.is_empty() {
        while running.len() < parallel {
            let Some(job) = queue.pop_front() else { break };
            let (child, out) = spawn_child(&job, out_dir, extra)?;
            running.push(Running {
                job,
                child,
                out,
                started: Instant::now(),
            });
        }
        let mut i = 0;
        let mut progressed = false;
        while i < running.len() {
            match running[i].child.try_wait() {
                Ok(Some(status)) => {
                    let r = running.swap_remove(i);
                    let result = std::fs::read_to_string(&r.out)
                        .map_err(|e| e.to_string())
                        .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| e.to_string()))
                        .map_err(|e| {
                            let stderr = std::fs::read_to_string(r.out.with_extension("stderr"))
                                .unwrap_or_default();
                            match panic_message(&stderr) {
                                // A model inconsistency or a harness bug: say so first.
                                Some(p) => format!(
                                    "the simulator crashed ({status}): {p}\nstderr:\n{}",
                                    tail(&stderr, 40)
                                ),
                                None => format!(
                                    "child exited with {status} and no result ({e}); stderr:\n{}",
                                    tail(&stderr, 40)
                                ),
                            }
                        });
                    done(&r.job, result, r.started.elapsed());
                    progressed = true;
                }
                Ok(None) => i += 1,
                Err(e) => return Err(format!("waiting for a child run: {e}")),
            }
        }
        if !progressed {
            std::thread::sleep(Duration::from_millis(20));
        }
        if last_tick.elapsed() >= Duration::from_millis(500) {
            last_tick = Instant::now();
            tick();
        }
    }
    Ok(())
}

/// The panic of a crashed child: "panicked at <place>: <message>" from its stderr.
fn panic_message(stderr: &str) -> Option<String> {
    let mut lines = stderr.lines();
    let at = lines.find_map(|l| {
        let i = l.find("panicked at ")?;
        Some(l[i..].trim_end_matches(':').to_string())
    })?;
    let msg = lines.next().unwrap_or("").trim();
    Some(if msg.is_empty() {
        at
    } else {
        format!("{at}: {msg}")
    })
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn run(a: &Args) -> Result<bool, String> {
    if a.positional.is_empty() {
        return Err(format!("run needs at least one scenario or suite\n{USAGE}"));
    }
    let dir = scenarios_dir(a);
    let backend = Backend::from_args(a)?;
    backend.supported()?;
    let out_dir = PathBuf::from(
        a.flags
            .get("out")
            .cloned()
            .unwrap_or_else(|| "reports/latest".into()),
    );
    let parallel: usize = match a.flags.get("jobs") {
        Some(j) => j.parse().map_err(|_| format!("--jobs {j}: not a number"))?,
        // Real services are heavy and share the machine's ports and cores: one seed at a time.
        None if backend != Backend::Sim => 1,
        None => default_jobs(),
    }
    .max(1);
    let shard = match a.flags.get("shard") {
        None => None,
        Some(s) => {
            let (i, n) = s
                .split_once('/')
                .ok_or(format!("--shard {s}: expected I/N"))?;
            let (i, n): (usize, usize) = (
                i.parse().map_err(|_| format!("--shard {s}: bad I"))?,
                n.parse().map_err(|_| format!("--shard {s}: bad N"))?,
            );
            if n == 0 || i >= n {
                return Err(format!("--shard {s}: need 0 <= I < N"));
            }
            Some((i, n))
        }
    };
    let mut jobs = Vec::new();
    // The catalog ids each scenario file covers, for the results and the report.
    let mut covers: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    // Scenarios whose runs are compared with a fault-free baseline (isolation).
    let mut isolated: BTreeMap<PathBuf, Scenario> = BTreeMap::new();
    for name in &a.positional {
        let (files, suite_seeds) = resolve(&dir, name)?;
        let seeds = match a.flags.get("seeds") {
            Some(spec) => parse_seeds(spec)?,
            None => (1..=suite_seeds.unwrap_or(1)).collect(),
        };
        for f in files {
            // Validate before anything runs: a bad scenario stops the run with its error.
            let scenario = Scenario::load(&f).map_err(|e| e.to_string())?;
            covers.insert(f.clone(), scenario.covers.clone());
            if needs_baseline(&scenario) && backend == Backend::Sim {
                isolated.insert(f.clone(), scenario);
            }
            for s in &seeds {
                jobs.push(Job::new(f.clone(), *s));
            }
        }
    }
    if let Some((i, n)) = shard {
        jobs = jobs
            .into_iter()
            .enumerate()
            .filter(|(k, _)| k % n == i)
            .map(|(_, j)| j)
            .collect();
    }
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let total = jobs.len();
    // Each run of an isolation scenario gets its fault-free baseline right after it (same shard).
    let jobs: Vec<Job> = jobs
        .into_iter()
        .flat_map(|j| {
            let b = isolated.contains_key(&j.scenario).then(|| Job {
                baseline: true,
                ..Job::new(j.scenario.clone(), j.seed)
            });
            std::iter::once(j).chain(b)
        })
        .collect();
    let baselines = jobs.len() - total;
    let started = Instant::now();
    eprintln!(
        "dalp-sim: {total} runs{}, {parallel} at a time, results in {}",
        if baselines > 0 {
            format!(" (+{baselines} fault-free baselines)")
        } else {
            String::new()
        },
        out_dir.display()
    );
    let progress = RefCell::new(Progress::new(total, std::io::stderr().is_terminal()));
    progress.borrow_mut().draw();
    let mut results: Vec<Value> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    // A run of an isolation scenario and its baseline, until both have finished.
    type Half = Option<(Result<Value, String>, Duration)>;
    let mut pairs: BTreeMap<(PathBuf, u64), (Half, Half)> = BTreeMap::new();
    let child_args = backend.child_args();
    prepare(&backend)?;
    run_jobs_ticking(
        jobs,
        parallel,
        &out_dir,
        &child_args,
        |job, r, took| {
            let (r, took) = match isolated.get(&job.scenario) {
                None => (r, took),
                Some(s) => {
                    let k = (job.scenario.clone(), job.seed);
                    let pair = pairs.entry(k.clone()).or_default();
                    if job.baseline {
                        pair.1 = Some((r, took));
                    } else {
                        pair.0 = Some((r, took));
                    }
                    let (Some(_), Some(_)) = pair else { return };
                    let (Some((run, took)), Some((base, _))) = pairs.remove(&k).expect("pair")
                    else {
                        unreachable!("both halves present")
                    };
                    (with_baseline(job, s, run, &base), took)
                }
            };
            let mut p = progress.borrow_mut();
            let n = p.done + 1;
            let name = job
                .scenario
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("?")
                .to_string();
            let repro = format!(
                "{}{}",
                repro_command(&job.scenario, job.seed),
                backend.repro_suffix()
            );
            let mut v = match r {
                Ok(v) => v,
                Err(e) => {
                    json!({"scenario": name, "seed": job.seed, "passed": false, "crashed": e})
                }
            };
            v["scenario_file"] = json!(job.scenario.display().to_string());
            v["repro"] = json!(repro);
            report::normalize(&mut v, covers.get(&job.scenario).map(Vec::as_slice));
            let outcome = report::outcome(&v);
            let line = if outcome == "crash" {
                failures.push(format!(
                    "{name} seed {}: the run crashed: {}\n    reproduce: {repro}",
                    job.seed,
                    v["crashed"].as_str().unwrap_or("")
                ));
                format!(
                    "[{n}/{total}] CRASH {name} seed {}; reproduce: {repro}",
                    job.seed
                )
            } else {
                let failed: Vec<String> = v["verdicts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|x| x["held"] == false)
                    .map(|x| x["invariant"].as_str().unwrap_or("?").to_string())
                    .collect();
                if outcome == "fail" {
                    failures.push(format!(
                        "{name} seed {}: {} failed\n    reproduce: {repro}",
                        job.seed,
                        failed.join(", "),
                    ));
                }
                format!(
                    "[{n}/{total}] {} {name} seed {} ({:.1}s wall, {} sim-s){}",
                    if outcome == "pass" { "ok  " } else { "FAIL" },
                    job.seed,
                    took.as_secs_f64(),
                    v["simulated_ms"].as_u64().unwrap_or(0) / 1000,
                    if failed.is_empty() {
                        String::new()
                    } else {
                        format!(" violated: {}; reproduce: {repro}", failed.join(", "))
                    }
                )
            };
            p.finished(&line, outcome == "pass");
            results.push(v);
        },
        || progress.borrow_mut().draw(),
    )?;
    progress.borrow_mut().clear();
    let mut extra = json!({"wall_s": started.elapsed().as_secs_f64()});
    if let Some((i, n)) = shard {
        extra["shard"] = json!(format!("{i}/{n}"));
    }
    let doc = report::document(results, extra);
    let written = report::write_outputs(&out_dir, &doc)?;
    let _ = std::fs::remove_dir_all(out_dir.join(".runs"));
    eprintln!(
        "dalp-sim: {}/{} runs passed in {:.1}s; wrote {}",
        doc["summary"]["passed"],
        doc["summary"]["runs"],
        started.elapsed().as_secs_f64(),
        written
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for f in &failures {
        eprintln!("FAILED {f}");
    }
    Ok(failures.is_empty())
}

/// The progress of `run` on stderr: on a terminal one line redrawn in place (done/total,
/// passed/failed, elapsed, ETA) with failures printed above it as full lines; otherwise one plain
/// line per finished run.
struct Progress {
    total: usize,
    done: usize,
    passed: usize,
    failed: usize,
    started: Instant,
    tty: bool,
}

impl Progress {
    fn new(total: usize, tty: bool) -> Self {
        Progress {
            total,
            done: 0,
            passed: 0,
            failed: 0,
            started: Instant::now(),
            tty,
        }
    }

    /// A run finished: `line` describes it.
    fn finished(&mut self, line: &str, passed: bool) {
        self.done += 1;
        if passed {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        if !self.tty {
            eprintln!("{line}");
            return;
        }
        if !passed {
            // Clear the status line, print the failure in full, redraw below it.
            eprint!("\r\x1b[2K{line}\n");
        }
        self.draw();
    }

    fn draw(&self) {
        if !self.tty {
            return;
        }
        eprint!("\r\x1b[2K{}", self.status(self.started.elapsed()));
        let _ = std::io::stderr().flush();
    }

    fn status(&self, elapsed: Duration) -> String {
        let eta = if self.done == 0 {
            "?".to_string()
        } else {
            let left = elapsed.as_secs_f64() / self.done as f64 * (self.total - self.done) as f64;
            clock(left)
        };
        format!(
            "[{}/{}] {} passed, {} failed, {} elapsed, ETA {eta}",
            self.done,
            self.total,
            self.passed,
            self.failed,
            clock(elapsed.as_secs_f64())
        )
    }

    fn clear(&self) {
        if self.tty {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
        }
    }
}

/// Seconds as `1h02m03s`, `2m05s` or `7s`.
fn clock(secs: f64) -> String {
    let s = secs.round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}

/// `dalp-sim report`: merge results files (the shards of one run, or runs of different
/// scenarios) and write results.json, junit.xml, report.md and report.html.
fn report_cmd(a: &Args) -> Result<bool, String> {
    if a.positional.is_empty() {
        return Err(format!("report needs at least one results.json\n{USAGE}"));
    }
    let mut docs = Vec::new();
    for p in &a.positional {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"))?;
        let mut doc: Value =
            serde_json::from_str(&text).map_err(|e| format!("{p}: not JSON: {e}"))?;
        // v1 results carry no catalog ids: read them from the scenario file when it is there.
        for r in doc["results"].as_array_mut().into_iter().flatten() {
            if r.get("covers").is_none() {
                if let Some(s) = r["scenario_file"]
                    .as_str()
                    .and_then(|f| Scenario::load(Path::new(f)).ok())
                {
                    r["covers"] = json!(s.covers);
                }
            }
        }
        docs.push((p.clone(), doc));
    }
    let doc = report::merge(&docs)?;
    let out_dir = match a.flags.get("out") {
        Some(o) => PathBuf::from(o),
        None => match Path::new(&a.positional[0]).parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        },
    };
    let written = report::write_outputs(&out_dir, &doc)?;
    let s = &doc["summary"];
    eprintln!(
        "dalp-sim: merged {} file(s): {} runs, {} passed, {} failed ({} crashed), {} duplicate(s) dropped; wrote {}",
        docs.len(),
        s["runs"],
        s["passed"],
        s["failed"],
        s["crashed"],
        s["duplicates_dropped"],
        written
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(s["failed"] == 0)
}

fn one_scenario(a: &Args) -> Result<PathBuf, String> {
    let dir = scenarios_dir(a);
    let [name] = a.positional.as_slice() else {
        return Err("expected exactly one scenario".into());
    };
    let (files, _) = resolve(&dir, name)?;
    match files.as_slice() {
        [f] => Ok(f.clone()),
        _ => Err(format!("{name} is a suite; repro takes one scenario")),
    }
}

fn seed_flag(a: &Args) -> Result<u64, String> {
    a.flags
        .get("seed")
        .ok_or("--seed S is required")?
        .parse()
        .map_err(|_| "--seed: not a number".to_string())
}

fn read_schedule(path: &str) -> Result<Vec<Fault>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{path}: not a fault schedule: {e}"))
}

fn repro(a: &Args) -> Result<bool, String> {
    let file = one_scenario(a)?;
    let seed = seed_flag(a)?;
    let scenario = Scenario::load(&file).map_err(|e| e.to_string())?;
    let backend = Backend::from_args(a)?;
    backend.supported()?;
    let baseline_only = a.switches.iter().any(|s| s == "baseline");
    let out_dir = PathBuf::from(
        a.flags
            .get("out")
            .cloned()
            .unwrap_or_else(|| "reports/repro".into()),
    );
    let mut extra = vec!["--always-trace".to_string(), "true".to_string()];
    extra.extend(backend.child_args());
    prepare(&backend)?;
    if let Some(s) = a.flags.get("schedule") {
        extra.push("--schedule".into());
        extra.push(s.clone());
    }
    let job = Job {
        baseline: baseline_only,
        ..Job::new(file.clone(), seed)
    };
    // The isolation invariant compares the run with the seed's fault-free baseline (run beside
    // it, in a process of its own).
    let baseline =
        (needs_baseline(&scenario) && !baseline_only && backend == Backend::Sim).then(|| Job {
            baseline: true,
            ..Job::new(file.clone(), seed)
        });
    let mut got: BTreeMap<bool, Result<Value, String>> = BTreeMap::new();
    let jobs: Vec<Job> = std::iter::once(Job {
        baseline: baseline_only,
        ..Job::new(file.clone(), seed)
    })
    .chain(baseline)
    .collect();
    run_jobs(jobs, 2, &out_dir, &extra, |j, r, _| {
        got.insert(j.baseline, r);
    })?;
    let _ = std::fs::remove_dir_all(out_dir.join(".runs"));
    let run = got.remove(&baseline_only).expect("the run ran");
    let base = got.remove(&true).filter(|_| !baseline_only);
    let v = match &base {
        Some(b) => with_baseline(&job, &scenario, run, b)?,
        None => run?,
    };
    let passed = v["passed"].as_bool().unwrap_or(false);
    print_outcome(&v);
    if !passed && a.switches.iter().any(|s| s == "minimize") {
        minimize(&job, &scenario, &out_dir, &v, base.as_ref())?;
    }
    Ok(passed)
}

fn run_one(job: &Job, out_dir: &Path, extra: &[String]) -> Result<Value, String> {
    let mut got = None;
    run_jobs(
        vec![Job {
            baseline: job.baseline,
            ..Job::new(job.scenario.clone(), job.seed)
        }],
        1,
        out_dir,
        extra,
        |_, r, _| got = Some(r),
    )?;
    let _ = std::fs::remove_dir_all(out_dir.join(".runs"));
    got.expect("one job ran")
}

fn print_outcome(v: &Value) {
    let passed = v["passed"].as_bool().unwrap_or(false);
    println!("scenario: {}", v["scenario"].as_str().unwrap_or("?"));
    println!("seed: {}", v["seed"]);
    println!("outcome: {}", if passed { "pass" } else { "FAIL" });
    for verdict in v["verdicts"].as_array().into_iter().flatten() {
        println!(
            "  {} {:<22} {}",
            if verdict["held"] == true {
                "held    "
            } else {
                "VIOLATED"
            },
            verdict["invariant"].as_str().unwrap_or("?"),
            verdict["checked"].as_str().unwrap_or("")
        );
        for m in verdict["violations"].as_array().into_iter().flatten() {
            println!("      - {}", m.as_str().unwrap_or(""));
        }
    }
    println!("faults: {}", v["schedule"].as_array().map_or(0, Vec::len));
    if let Some(b) = v.get("baseline") {
        println!(
            "baseline (same seed, no faults): {}, trace-hash {}",
            if b["passed"] == true { "pass" } else { "FAIL" },
            b["trace_hash"].as_str().unwrap_or("?")
        );
    }
    if let Some(r) = v["recovery_ms"].as_u64() {
        println!("recovery: {:.3} s after healing", r as f64 / 1000.0);
    }
    println!(
        "simulated: {:.1} s",
        v["simulated_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
    );
    if let Some(t) = v["trace_files"].as_array() {
        for f in t {
            println!("trace: {}", f.as_str().unwrap_or(""));
        }
    }
    println!("trace-hash: {}", v["trace_hash"].as_str().unwrap_or("?"));
}

/// Remove faults one at a time while the run still fails; print the smallest schedule found.
/// `baseline`: the seed's fault-free run (the same for every schedule), to re-judge isolation.
fn minimize(
    job: &Job,
    scenario: &Scenario,
    out_dir: &Path,
    first: &Value,
    baseline: Option<&Result<Value, String>>,
) -> Result<(), String> {
    let mut schedule: Vec<Fault> = serde_json::from_value(first["schedule"].clone())
        .map_err(|e| format!("the run's schedule is unreadable: {e}"))?;
    let failing: Vec<String> = first["verdicts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| x["held"] == false)
        .filter_map(|x| x["invariant"].as_str().map(str::to_string))
        .collect();
    eprintln!(
        "minimize: {} faults; keeping runs that still violate {}",
        schedule.len(),
        failing.join(", ")
    );
    let sched_dir = out_dir.join("minimize");
    std::fs::create_dir_all(&sched_dir).map_err(|e| format!("{}: {e}", sched_dir.display()))?;
    let path = sched_dir.join(format!(
        "{}-{}.schedule.json",
        job.scenario
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("s"),
        job.seed
    ));
    let mut i = 0;
    while i < schedule.len() {
        let mut trial = schedule.clone();
        let removed = trial.remove(i);
        write_atomic(
            &path,
            serde_json::to_string_pretty(&trial)
                .expect("json")
                .as_bytes(),
        )
        .map_err(|e| format!("{}: {e}", path.display()))?;
        let v = run_one(
            job,
            out_dir,
            &["--schedule".into(), path.display().to_string()],
        );
        let v = match baseline {
            Some(b) => with_baseline(job, scenario, v, b)?,
            None => v?,
        };
        let still =
            v["verdicts"].as_array().into_iter().flatten().any(|x| {
                x["held"] == false && failing.iter().any(|f| x["invariant"] == f.as_str())
            });
        eprintln!(
            "minimize: without {} at {} s: {}",
            removed.kind(),
            removed.at_s(),
            if still {
                "still fails (dropped)"
            } else {
                "passes (kept)"
            }
        );
        if still {
            schedule = trial;
        } else {
            i += 1;
        }
    }
    write_atomic(
        &path,
        serde_json::to_string_pretty(&schedule)
            .expect("json")
            .as_bytes(),
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    println!("minimized schedule ({} faults):", schedule.len());
    for f in &schedule {
        println!("  {}", serde_json::to_string(f).expect("json"));
    }
    println!(
        "reproduce: cargo xtask sim repro {} --seed {} --schedule {}",
        job.scenario.display(),
        job.seed,
        path.display()
    );
    Ok(())
}

/// Throughput and memory: the reference scenario's seeds one at a time (one core), then a whole
/// suite with `--jobs` children at once.
fn bench(a: &Args) -> Result<bool, String> {
    let dir = scenarios_dir(a);
    let name = a
        .positional
        .first()
        .map(String::as_str)
        .unwrap_or("steady-state");
    let (files, _) = resolve(&dir, name)?;
    let [file] = files.as_slice() else {
        return Err(format!(
            "{name} is a suite; bench takes one reference scenario"
        ));
    };
    let seeds = match a.flags.get("seeds") {
        Some(s) => parse_seeds(s)?,
        None => (1..=5).collect(),
    };
    let out_dir = PathBuf::from(
        a.flags
            .get("out")
            .cloned()
            .unwrap_or_else(|| "target/bench-sim".into()),
    );
    let jobs: Vec<Job> = seeds.iter().map(|s| Job::new(file.clone(), *s)).collect();
    let mut rows = Vec::new();
    let mut failed = false;
    run_jobs(jobs, 1, &out_dir, &[], |job, r, took| match r {
        Ok(v) => {
            let sim = v["simulated_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
            let wall = v["wall_ms"].as_u64().unwrap_or(0).max(1) as f64 / 1000.0;
            let rss = v["peak_rss_kib"].as_u64().unwrap_or(0) as f64 / 1024.0;
            failed |= v["passed"] != true;
            println!(
                "seed {:>4}: {sim:>7.1} sim-s in {wall:>6.3} s run ({:.3} s process) = {:>8.0} sim-s/s, peak RSS {rss:>6.1} MiB{}",
                job.seed,
                took.as_secs_f64(),
                sim / wall,
                if v["passed"] == true { "" } else { "  (FAILED)" }
            );
            rows.push((sim, wall, took.as_secs_f64(), rss));
        }
        Err(e) => {
            failed = true;
            println!("seed {}: crashed: {e}", job.seed);
        }
    })?;
    if rows.is_empty() {
        return Err("no seed finished".into());
    }
    let sim: f64 = rows.iter().map(|r| r.0).sum();
    let wall: f64 = rows.iter().map(|r| r.1).sum();
    let process: f64 = rows.iter().map(|r| r.2).sum();
    let rss = rows.iter().map(|r| r.3).fold(0.0, f64::max);
    println!(
        "{}: {:.0} simulated s per wall s in the run ({:.0} including process start and exit), peak RSS per seed process {rss:.1} MiB (targets: >= 1000, <= 256 MiB)",
        file.display(),
        sim / wall,
        sim / process
    );
    let suite = a.flags.get("suite").map(String::as_str).unwrap_or("ci");
    let parallel: usize = a
        .flags
        .get("jobs")
        .and_then(|j| j.parse().ok())
        .unwrap_or_else(default_jobs);
    let (files, suite_seeds) = resolve(&dir, suite)?;
    let jobs: Vec<Job> = files
        .iter()
        .flat_map(|f| (1..=suite_seeds.unwrap_or(1)).map(move |s| Job::new(f.clone(), s)))
        .collect();
    let n = jobs.len();
    let started = Instant::now();
    let mut suite_ok = 0;
    run_jobs(jobs, parallel, &out_dir, &[], |_, r, _| {
        if r.is_ok_and(|v| v["passed"] == true) {
            suite_ok += 1;
        }
    })?;
    let took = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(out_dir.join(".runs"));
    println!(
        "suite {suite}: {n} seeds ({suite_ok} passed) in {took:.1} s with {parallel} at a time = {:.0} seeds per minute",
        n as f64 * 60.0 / took
    );
    Ok(!failed && suite_ok == n)
}

/// The child: run one seed, write the result JSON, and the trace when asked or on failure.
fn child(a: &Args) -> Result<bool, String> {
    let [file] = a.positional.as_slice() else {
        return Err("child takes one scenario file".into());
    };
    let seed = seed_flag(a)?;
    let scenario = Scenario::load(Path::new(file)).map_err(|e| e.to_string())?;
    // `--baseline`: the seed without faults (the isolation invariant's reference).
    let baseline = a.switches.iter().any(|s| s == "baseline");
    let schedule = match a.flags.get("schedule") {
        _ if baseline => Vec::new(),
        Some(p) => read_schedule(p)?,
        None => scenario.schedule(seed),
    };
    let result_path = a.flags.get("result").ok_or("--result FILE is required")?;
    let started = Instant::now();
    let (mut v, trace) = match Backend::from_args(a)? {
        Backend::Sim => run_child(scenario, seed, schedule)?,
        Backend::Real(p) => run_child_real(scenario, seed, schedule, &p)?,
    };
    // Measurements of this process, outside the deterministic result (never in the trace).
    v["wall_ms"] = json!(started.elapsed().as_millis() as u64);
    if let Some(kib) = peak_rss_kib() {
        v["peak_rss_kib"] = json!(kib);
    }
    let passed = v["passed"].as_bool().unwrap_or(false);
    let always = a.flags.contains_key("always-trace");
    if let Some(dir) = a.flags.get("trace-dir") {
        if always || !passed {
            let stem = format!(
                "{}-{seed}{}",
                v["scenario"].as_str().unwrap_or("run"),
                if baseline { "-baseline" } else { "" }
            );
            let (jl, ch) = trace
                .write(Path::new(dir), &stem)
                .map_err(|e| format!("{dir}: {e}"))?;
            v["trace_files"] = json!([jl, ch]);
        }
    }
    write_atomic(
        Path::new(result_path),
        serde_json::to_string(&v).expect("json").as_bytes(),
    )
    .map_err(|e| format!("{result_path}: {e}"))?;
    Ok(true)
}

/// This process's peak resident set size (Linux `VmHWM`).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(madsim)]
fn run_child(
    scenario: Scenario,
    seed: u64,
    schedule: Vec<Fault>,
) -> Result<(Value, crate::trace::Trace), String> {
    let (result, trace) =
        crate::world::run::run_seed(std::sync::Arc::new(scenario), seed, schedule);
    Ok((serde_json::to_value(&result).expect("result json"), trace))
}

/// Before the children start: the real backend's engine binary, built once (children find it
/// in `DALP_ENGINE_BIN`).
#[cfg(not(madsim))]
fn prepare(backend: &Backend) -> Result<(), String> {
    if matches!(backend, Backend::Real(_)) && std::env::var_os("DALP_ENGINE_BIN").is_none() {
        let bin = crate::real::engines::engine_binary().map_err(|e| e.to_string())?;
        std::env::set_var("DALP_ENGINE_BIN", bin);
    }
    Ok(())
}

#[cfg(madsim)]
fn prepare(_: &Backend) -> Result<(), String> {
    Ok(())
}

#[cfg(not(madsim))]
fn run_child_real(
    scenario: Scenario,
    seed: u64,
    schedule: Vec<Fault>,
    provider: &str,
) -> Result<(Value, crate::trace::Trace), String> {
    use crate::real::run::{run_seed_real, ProviderChoice};
    let choice = ProviderChoice::parse(provider)?;
    let (result, trace) = run_seed_real(std::sync::Arc::new(scenario), seed, schedule, choice)?;
    Ok((serde_json::to_value(&result).expect("result json"), trace))
}

#[cfg(madsim)]
fn run_child_real(
    _: Scenario,
    _: u64,
    _: Vec<Fault>,
    _: &str,
) -> Result<(Value, crate::trace::Trace), String> {
    Err(Backend::Real(String::new()).supported().unwrap_err())
}

#[cfg(not(madsim))]
fn run_child(_: Scenario, _: u64, _: Vec<Fault>) -> Result<(Value, crate::trace::Trace), String> {
    Err(
        "this dalp-sim was built without --cfg madsim and cannot simulate; use `cargo xtask sim …`"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_as_count_or_range() {
        assert_eq!(parse_seeds("3").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_seeds("10..13").unwrap(), vec![10, 11, 12]);
        assert!(parse_seeds("5..5").is_err());
        assert!(parse_seeds("0").is_err());
        assert!(parse_seeds("x").is_err());
    }

    #[test]
    fn flags_and_switches_parse() {
        let a =
            parse_args(&["s".into(), "--seed".into(), "4".into(), "--minimize".into()]).unwrap();
        assert_eq!(a.positional, vec!["s"]);
        assert_eq!(a.flags["seed"], "4");
        assert_eq!(a.switches, vec!["minimize"]);
        assert!(parse_args(&["--seed".into()]).is_err());
    }

    #[test]
    fn progress_status_shows_counts_elapsed_and_eta() {
        let mut p = Progress::new(10, false);
        assert!(p.status(Duration::from_secs(3)).ends_with("ETA ?"));
        p.finished("x", true);
        p.finished("y", false);
        assert_eq!(
            p.status(Duration::from_secs(20)),
            "[2/10] 1 passed, 1 failed, 20s elapsed, ETA 1m20s"
        );
        assert_eq!(clock(3723.0), "1h02m03s");
    }
}

#[cfg(test)]
mod crash_tests {
    #[test]
    fn a_childs_panic_is_named_with_its_place_and_message() {
        let stderr = "some log\nthread 'sim-seed-11' (3197) panicked at sim/src/world/db_node.rs:435:13:\nreplica diverged applying lsn 152 (renew_lease): Err(..)\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            super::panic_message(stderr).as_deref(),
            Some("panicked at sim/src/world/db_node.rs:435:13: replica diverged applying lsn 152 (renew_lease): Err(..)")
        );
        assert_eq!(super::panic_message("exited: killed\n"), None);
    }
}
