//! `cargo xtask`: the project's entry point. It installs what a fresh machine lacks, builds the
//! two flavours (plain, and `--cfg madsim` in `target/sim` so neither invalidates the other), and
//! runs the main job, the tests and the benchmarks.
//!
//! No dependencies, so it builds in seconds before anything else.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod planted_prod;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  run            the main job: the simulation's `ci` suite on the embedded default (no external
                 service); results in reports/latest; exits non-zero if an invariant fails
  check          the loop before a commit (minutes on a warm cache): format, clippy on both
                 flavours, unit tests, the `smoke` suite
  test           set up, then build both flavours and run every test (planted bugs caught by the
                 ci suite, unit, property, simulation determinism, integration on real
                 PostgreSQL + Anvil)
  sim <args>     build the simulation flavour and run `dalp-sim <args>` (list, run, repro, bench);
                 with `--backend real`, `dalp-real` (crate real/) against real services instead
  docker         start a Docker daemon if none runs (installing docker.io when missing) and
                 build the images; says whether Docker can be used
  sample         the sample workload on real PostgreSQL + Anvil through two engine processes
  setup          install what the tests need (PostgreSQL, Node.js/npm, the pinned Anvil and solc,
                 Debian's chromium for the report's browser test)
  build-sim [bench] build dalp-sim (and the engine) under --cfg madsim into target/sim
                 (profile sim-dev, or sim-bench: what `nightly` and .ci/nightly-shard use)
  nightly [SEEDS] the nightly suite (every scenario, seeds 1..=200 unless SEEDS, e.g. 1..51) in
                 the optimized simulation build (profile sim-bench), one process per seed on every
                 core; results, JUnit and the report (failures grouped by cause) in
                 reports/nightly; exits non-zero if any run failed or crashed
  bench          every benchmark, one table: the micro-benchmarks (criterion: database model
                 per request type, block production, the simulated node's RPC path, signing,
                 trace hashing, scenario parsing) and the simulation end to end (bench sim)
  bench micro [FILTER] the criterion micro-benchmarks only (FILTER: a criterion name filter)
  bench count [SCENARIO SEED] the instructions one seed executes in the everyday build
                 (valgrind's callgrind; steady-state seed 2 unless given), in all and by function:
                 a cost that does not move with the machine's load, to compare two commits by
  bench engine   journaled step transitions/s through the real store vs pgbench -N -c 8
  bench sim      simulated s per wall s and peak memory per seed (steady-state), suite seeds/min
  planted [NAME…] apply each planted bug (fixtures/planted-bugs/*.patch) to a copy of HEAD, build
                 the simulation and run the `ci` suite: every planted bug must be caught; then
                 each bug of the production code the simulation does not run must fail its
                 test: the PostgreSQL store's (fixtures/planted-bugs/store/) the store
                 conformance test, the HTTP API's (…/api/) the API test; with no NAME, records
                 the results in reports/planted/latest.json (the audit report's checker
                 sensitivity)
  contracts      rebuild the fixture contract with the pinned solc
  images         build the Docker images of `--provider docker` offline from this machine's
                 PostgreSQL and Anvil (dalp/postgres:15-local, dalp/anvil:local; names from
                 DALP_PG_IMAGE / DALP_ANVIL_IMAGE); skipped when unchanged";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match words.as_slice() {
        ["run"] => sim(Profile::Dev, &["run", "ci", "--out", "reports/latest"]),
        ["sim", rest @ ..] if real_backend(rest) => sim_real(rest),
        ["sim", rest @ ..] => sim(Profile::Dev, rest),
        ["nightly"] => sim(
            Profile::Bench,
            &[
                "run",
                "nightly",
                "--seeds",
                "1..201",
                "--out",
                "reports/nightly",
            ],
        ),
        ["nightly", seeds] => sim(
            Profile::Bench,
            &[
                "run",
                "nightly",
                "--seeds",
                seeds,
                "--out",
                "reports/nightly",
            ],
        ),
        ["docker"] => docker().map(|ok| {
            eprintln!(
                "xtask: Docker {}",
                if ok {
                    "is usable"
                } else {
                    "is not usable here: the real backend uses local processes"
                }
            )
        }),
        ["sample"] => setup().and_then(|_| {
            cargo(
                &[
                    "run",
                    "-q",
                    "-p",
                    "dalp-integration",
                    "--bin",
                    "dalp-sample",
                ],
                &[],
            )
        }),
        ["test"] => test(),
        ["check"] => check(),
        ["setup"] => setup(),
        ["build-sim"] => build_sim(Profile::Dev).map(|_| ()),
        ["build-sim", "bench"] => build_sim(Profile::Bench).map(|_| ()),
        ["bench"] => bench_all(),
        ["bench", "micro", filter @ ..] => bench_micro(filter, None),
        ["bench", "count"] => bench_count("scenarios/steady-state.toml", "2"),
        ["bench", "count", scenario, seed] => bench_count(&scenario_file(scenario), seed),
        ["bench", "sim"] => sim(
            Profile::Bench,
            &["bench", "steady-state", "--seeds", "5", "--suite", "ci"],
        ),
        ["bench", "engine"] => setup().and_then(|_| {
            cargo(
                &[
                    "build",
                    "-q",
                    "--release",
                    "-p",
                    "dalp-engine",
                    "--bin",
                    "dalp-engine",
                ],
                &[],
            )?;
            cargo(
                &[
                    "run",
                    "-q",
                    "--release",
                    "-p",
                    "dalp-integration",
                    "--bin",
                    "bench-engine",
                ],
                &[],
            )
        }),
        ["planted", names @ ..] => planted(names),
        ["contracts"] => run(Command::new("bash").arg(root().join("fixtures/contracts/build.sh"))),
        ["images"] => images(),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy)]
enum Profile {
    /// `sim-dev`: dev settings (debug assertions, incremental), optimized; the everyday build.
    Dev,
    /// `sim-bench` (release with fat LTO, one codegen unit): what throughput is measured with.
    Bench,
}

/// Mutation testing of the harness: a suite that passes on a broken engine is worthless. Each
/// patch plants one classic durable-execution bug into a copy of HEAD; the `ci` suite must fail.
fn planted(names: &[&str]) -> Result<(), String> {
    // Whatever target/debug holds now seeds the production tiers' build.
    let (caught, head) = planted_and_head(names, |_| {}, || {});
    head?;
    caught
}

/// The planted bugs' verdict, and HEAD's simulation binary in target/sim (restored after them).
/// `committed` is called with the unpatched copy's binary (HEAD's committed tree) as soon as it
/// is built, before the first bug: it stays in place until the next call. The production tiers
/// start when `dependencies_built` returns (see [`planted_prod::each`]).
fn planted_and_head(
    names: &[&str],
    committed: impl FnOnce(&Path),
    dependencies_built: impl FnOnce() + Send,
) -> (Result<(), String>, Result<PathBuf, String>) {
    let root = root();
    let bins = root.join("target/planted/bin");
    let selected = select_patches(names).and_then(|p| {
        let prod = planted_prod::select(names)?;
        if p.is_empty() && prod.is_empty() {
            return Err(format!(
                "no planted bug matches {names:?} in fixtures/planted-bugs or its store/ and api/"
            ));
        }
        std::fs::create_dir_all(&bins).map_err(|e| format!("{}: {e}", bins.display()))?;
        Ok((p, prod))
    });
    let (patches, prod) = match selected {
        Ok(p) => p,
        Err(e) => return (Err(e.clone()), Err(e)),
    };
    let work = root.join("target/planted/src");
    // A committed-tree build left by an earlier call must never stand in for this HEAD's.
    let _ = std::fs::remove_file(bins.join(COMMITTED));
    let mut outcomes = Vec::new();
    // The production tiers (their own copy and target dir) run beside the simulation's bugs:
    // their builds and tests take the cores the other's runs and waits leave.
    let (caught, prod_caught, prod_outcomes) = std::thread::scope(|s| {
        let tiers = s.spawn(|| {
            let mut o = Vec::new();
            let r = planted_prod::each(&prod, &mut o, dependencies_built);
            (r, o)
        });
        let caught = forget_workspace_crates()
            .and_then(|()| planted_each(&patches, &work, &bins, committed, &mut outcomes));
        let (r, o) = tiers.join().expect("the production tiers' thread");
        (caught, r, o)
    });
    outcomes.extend(prod_outcomes);
    let caught = match (caught, prod_caught) {
        (Ok(()), r) | (r, Ok(())) => r,
        (Err(a), Err(b)) => Err(format!("{a}; {b}")),
    };
    let missed: Vec<String> = outcomes
        .iter()
        .filter(|o| o.failure.is_none())
        .map(|o| o.name.clone())
        .collect();
    // Put HEAD's build back, whatever happened above.
    let head = forget_workspace_crates().and_then(|()| restore_head(&bins));
    let head = head.and_then(|head| {
        let head_bytes = std::fs::read(&head).map_err(|e| format!("{}: {e}", head.display()))?;
        for p in &patches {
            let bin = bins.join(p.file_stem().expect("a patch file"));
            if std::fs::read(&bin).is_ok_and(|b| b == head_bytes) {
                return Err(format!(
                    "{} is the same binary as the planted {}: HEAD's build was not restored",
                    head.display(),
                    bin.display()
                ));
            }
        }
        Ok(head)
    });
    // Every bug was tried: record the results for the audit report (checker sensitivity);
    // after HEAD's binary is back, so that the new file does not make a clean tree look dirty.
    if caught.is_ok() && names.is_empty() {
        match record_planted(&outcomes) {
            Ok(p) => eprintln!("xtask: planted-bug results recorded in {}", p.display()),
            Err(e) => eprintln!("xtask: planted-bug results not recorded: {e}"),
        }
    }
    let verdict = caught.and_then(|()| {
        if missed.is_empty() {
            eprintln!(
                "xtask: all {} planted bugs caught ({} by the ci suite, {} in the production-only store and API by their tests)",
                patches.len() + prod.len(),
                patches.len(),
                prod.len()
            );
            Ok(())
        } else {
            Err(format!(
                "planted bugs not caught (by the ci suite; store/ and api/ ones by their tier's test): {}",
                missed.join(", ")
            ))
        }
    });
    (verdict, head)
}

/// The planted bugs named (all when none is), in the order they are built: patches of the
/// engine only first, as each of their builds recompiles the engine and reuses most of the
/// simulation crate's incremental state; a patch of the simulation crate itself (its database
/// model) recompiles that crate, and so does taking it out again, so those come last.
fn select_patches(names: &[&str]) -> Result<Vec<PathBuf>, String> {
    let dir = root().join("fixtures/planted-bugs");
    let mut patches: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "patch"))
        .filter(|p| {
            names.is_empty() || names.iter().any(|n| p.file_stem().is_some_and(|s| s == *n))
        })
        .collect();
    patches.sort_by_cached_key(|p| {
        let text = std::fs::read_to_string(p).unwrap_or_default();
        (text.contains("\n+++ b/sim/"), p.clone())
    });
    if patches.is_empty() && names.is_empty() {
        return Err(format!("no planted bug in {}", dir.display()));
    }
    Ok(patches)
}

/// HEAD's simulation binary at its place in target/sim: when the working tree has no change
/// (CI's clean clone), the copy's unpatched build is HEAD's build and is put there (one workspace
/// build fewer); otherwise HEAD's tree is built.
fn restore_head(bins: &Path) -> Result<PathBuf, String> {
    let committed = bins.join(COMMITTED);
    if !(tree_is_clean()? && committed.is_file()) {
        return build_sim_by(niced(cargo_program()), Profile::Dev, &root());
    }
    let head = sim_bin(Profile::Dev);
    std::fs::create_dir_all(head.parent().expect("a parent"))
        .and_then(|()| std::fs::copy(&committed, &head))
        .map_err(|e| format!("{}: {e}", head.display()))?;
    eprintln!(
        "xtask: the working tree is clean: HEAD's simulation binary is the copy's unpatched build"
    );
    Ok(head)
}

/// Whether the working tree has no change (untracked files count, ignored ones do not): then
/// HEAD's committed tree is what would be built.
fn tree_is_clean() -> Result<bool, String> {
    let status = Command::new("git")
        .current_dir(root())
        .args(["status", "--porcelain", "--untracked-files=normal"])
        .output()
        .map_err(|e| format!("git status: {e}"))?;
    Ok(status.status.success() && status.stdout.is_empty())
}

/// The copy's build before any patch (HEAD's committed tree), in target/planted/bin.
const COMMITTED: &str = "committed-head";

/// The planted copies build into target/sim, sharing its dependencies. Cargo names a workspace
/// crate's artifacts by its path relative to the workspace root and judges freshness by the
/// mtimes of the files its dep-info lists, relative to the package: a copy's crates and HEAD's
/// share artifacts, and an unchanged file of either looks older than the other's output. So the
/// workspace crates' artifacts are removed before the copies build (no crate built from a
/// working tree's uncommitted changes is taken for the copy's) and after (HEAD's own build does
/// not take the last copy's binary for fresh).
fn forget_workspace_crates() -> Result<(), String> {
    cargo(
        &[
            "clean",
            "-q",
            "-p",
            "dalp-engine",
            "-p",
            "dalp-sim",
            "--profile",
            "sim-dev",
            "--target-dir",
            "target/sim",
        ],
        &[("RUSTFLAGS", "--cfg madsim")],
    )
}

/// One planted bug's outcome: `failure` is what `dalp-sim run` said of its first failed run
/// (`None`: not caught).
struct PlantedOutcome {
    name: String,
    failure: Option<String>,
}

/// Where the planted-bug results are recorded (read by `dalp-sim`'s audit report).
pub(crate) const PLANTED_RESULTS: &str = "reports/planted/latest.json";

/// Write [`PLANTED_RESULTS`]: when, at which commit, and per bug whether it was caught and by
/// which run and invariants.
fn record_planted(outcomes: &[PlantedOutcome]) -> Result<PathBuf, String> {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(root())
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map_err(|e| format!("date: {e}"))?;
    let date = String::from_utf8_lossy(&date.stdout).trim().to_string();
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = match git(&["status", "--porcelain", "--untracked-files=normal"]) {
        Some(s) => (!s.is_empty()).to_string(),
        None => "null".into(),
    };
    let bugs: Vec<String> = outcomes
        .iter()
        .map(|o| {
            let (scenario, seed, invariants) =
                o.failure.as_deref().map(failure_fields).unwrap_or_default();
            let mut fields = vec![
                format!("\"name\": {}", json_str(&o.name)),
                format!("\"caught\": {}", o.failure.is_some()),
            ];
            if let Some(s) = scenario {
                fields.push(format!("\"scenario\": {}", json_str(&s)));
            }
            if let Some(n) = seed {
                fields.push(format!("\"seed\": {n}"));
            }
            fields.push(format!(
                "\"invariants\": [{}]",
                invariants
                    .iter()
                    .map(|i| json_str(i))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            format!("    {{{}}}", fields.join(", "))
        })
        .collect();
    let text = format!(
        "{{\n  \"date\": {},\n  \"commit\": {},\n  \"dirty\": {dirty},\n  \"bugs\": [\n{}\n  ]\n}}\n",
        json_str(&date),
        json_str(&commit),
        bugs.join(",\n")
    );
    let path = root().join(PLANTED_RESULTS);
    // Written aside, then renamed: a reader (the audit report of a test running beside) sees the
    // old file or the new one, never half of one.
    let part = path.with_extension("json.part");
    std::fs::create_dir_all(path.parent().expect("a parent"))
        .and_then(|()| std::fs::write(&part, text))
        .and_then(|()| std::fs::rename(&part, &path))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// (scenario, seed, invariants) of a `dalp-sim run` failure line: `NAME seed N: a, b failed`
/// or `NAME seed N: the run crashed: …` (invariants `crashed`).
fn failure_fields(line: &str) -> (Option<String>, Option<u64>, Vec<String>) {
    let first = line.lines().next().unwrap_or("");
    let Some((head, rest)) = first.split_once(": ") else {
        return (None, None, Vec::new());
    };
    let (scenario, seed) = match head.rsplit_once(" seed ") {
        Some((s, n)) => (Some(s.to_string()), n.trim().parse().ok()),
        None => (None, None),
    };
    let invariants = if rest.starts_with("the run crashed") {
        vec!["crashed".to_string()]
    } else {
        rest.trim_end_matches(" failed")
            .split(", ")
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    (scenario, seed, invariants)
}

/// Apply each patch to one copy of HEAD, build it, take it out again, and run the `ci` suite on
/// the build until its first failure; each bug's outcome goes to `outcomes`.
/// One copy for all: only the patched files change between builds, so they are incremental.
fn planted_each(
    patches: &[PathBuf],
    work: &Path,
    bins: &Path,
    on_committed: impl FnOnce(&Path),
    outcomes: &mut Vec<PlantedOutcome>,
) -> Result<(), String> {
    let root = root();
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).map_err(|e| format!("{}: {e}", work.display()))?;
    // Committed files only.
    run(Command::new("sh")
        .current_dir(&root)
        .arg("-c")
        .arg(format!("git archive HEAD | tar -x -C '{}'", work.display())))?;
    // HEAD's committed tree first: the patched builds below are incremental from it, and it is
    // HEAD's binary when the working tree has no change (`restore_head`).
    let committed = bins.join(COMMITTED);
    eprintln!("xtask: building HEAD's committed tree, the base of the planted copies");
    let b = build_sim_by(niced(cargo_program()), Profile::Dev, work)?;
    std::fs::copy(&b, &committed).map_err(|e| format!("{}: {e}", committed.display()))?;
    on_committed(&committed);
    let catching = catching_runs();
    // Each bug's `ci` run goes on while the next bug builds (the copy's sources change under it,
    // but the run reads only the scenarios, which no patch touches); it is waited for before the
    // next run starts, so at most one run and one build share the cores.
    let mut running: Option<PlantedRun> = None;
    for patch in patches {
        let name = patch.file_stem().unwrap().to_string_lossy().to_string();
        eprintln!("xtask: planted bug `{name}`");
        let started = std::time::Instant::now();
        let build_log = root
            .join("target/planted")
            .join(format!("{name}.build.log"));
        let built = git_apply(work, patch, false).and_then(|()| {
            // The uplifted binary is overwritten by the next build: keep a copy.
            let built = build_planted(work, &build_log).and_then(|b| {
                let bin = bins.join(&name);
                std::fs::copy(&b, &bin).map_err(|e| format!("{}: {e}", bin.display()))?;
                Ok(bin)
            });
            git_apply(work, patch, true)?;
            built
        });
        let build_s = started.elapsed().as_secs();
        if let Some(r) = running.take() {
            outcomes.push(r.finish()?);
        }
        let bin = built.map_err(|e| format!("planted bug {name}: {e}"))?;
        let out = root.join("target/planted").join(&name);
        let log = root.join("target/planted").join(format!("{name}.log"));
        let child = spawn_logged(
            niced(&bin)
                .current_dir(work)
                .args(["run", "ci", "--fail-fast", "--out"])
                .arg(&out)
                .args(
                    catching
                        .get(&name)
                        .map(|r| ["--first", r.as_str()])
                        .into_iter()
                        .flatten(),
                ),
            &log,
        )?;
        running = Some(PlantedRun {
            name,
            child,
            out,
            log,
            build_s,
            started: std::time::Instant::now(),
        });
    }
    if let Some(r) = running.take() {
        outcomes.push(r.finish()?);
    }
    Ok(())
}

/// One planted copy's build, the compiler's output in `log`. A failed build says what the
/// compiler said (its tail) and is tried once more with the workspace crates' incremental state
/// removed: the same sources, so the verdict is the bug's, not that of a broken incremental cache
/// (a CI run once ended in a planted build's exit 101 that a fresh clone of the same commit
/// never showed, and its message was lost above the test output). A patch that does not compile
/// fails both times, with the compiler's words in the error.
fn build_planted(work: &Path, log: &Path) -> Result<PathBuf, String> {
    let attempt = || -> Result<PathBuf, String> {
        let mut cargo = niced(cargo_program());
        cargo.args(PLANTED_CRATES_UNOPTIMIZED);
        log_to(&mut cargo, log)?;
        build_sim_by(cargo, Profile::Dev, work)
    };
    let first = match attempt() {
        Ok(bin) => return Ok(bin),
        Err(e) => format!("{e}\n{}", log_tail(log, 40)),
    };
    eprintln!(
        "xtask: {first}\nxtask: building it once more without the workspace crates' \
         incremental state"
    );
    forget_incremental_state()?;
    attempt().map_err(|e| {
        format!(
            "{e}\n{}\n(the incremental build before it failed too: above)",
            log_tail(log, 60)
        )
    })
}

/// The last `lines` lines of `log` (what a failed command said last).
fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    format!(
        "---- {} (last {lines} lines) ----\n{}",
        log.display(),
        all[from..].join("\n")
    )
}

/// Remove the incremental compilation state of the workspace crates' simulation builds.
fn forget_incremental_state() -> Result<(), String> {
    let dir = root()
        .join("target/sim")
        .join(profile_dir(Profile::Dev))
        .join("incremental");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("dalp_engine-") || name.starts_with("dalp_sim-") {
            std::fs::remove_dir_all(entry.path())
                .map_err(|e| format!("{}: {e}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// A planted bug's `ci` run, started.
struct PlantedRun {
    name: String,
    child: std::process::Child,
    out: PathBuf,
    log: PathBuf,
    build_s: u64,
    started: std::time::Instant,
}

impl PlantedRun {
    /// Wait for the run; the bug's outcome (caught when `dalp-sim run` said an invariant failed).
    fn finish(mut self) -> Result<PlantedOutcome, String> {
        let status = self.child.wait().map_err(|e| format!("dalp-sim: {e}"))?;
        let (name, build_s, run_s) = (self.name, self.build_s, self.started.elapsed().as_secs());
        Ok(match status.code() {
            Some(1) => {
                let failure = first_failure(&self.log);
                eprintln!(
                    "xtask: `{name}` caught: {failure} (results in {}; built in {build_s} s; its run, beside the next build, finished within {run_s} s)",
                    self.out.display()
                );
                PlantedOutcome {
                    name,
                    failure: Some(failure),
                }
            }
            other => {
                eprintln!(
                    "xtask: `{name}` NOT caught (dalp-sim exited {other:?}; see {})",
                    self.log.display()
                );
                PlantedOutcome {
                    name,
                    failure: None,
                }
            }
        })
    }
}

/// How a planted bug's copy builds: our two crates unoptimized, every dependency as the profile
/// says (so their artifacts are shared with HEAD's build). Optimizing those crates is most of an
/// incremental build (a patch of an inlined engine function re-optimizes much of dalp-sim: up
/// to ~90 s at opt-level 3 against ~8 s at 0, on 2 cores); the runs are ~3x slower, but a
/// planted bug's run is short (--fail-fast, its catching run first), and the same code gives the
/// same trace whatever the opt-level (the `ci` suite's 99 trace hashes are identical).
const PLANTED_CRATES_UNOPTIMIZED: [&str; 4] = [
    "--config",
    "profile.sim-dev.package.dalp-engine.opt-level=0",
    "--config",
    "profile.sim-dev.package.dalp-sim.opt-level=0",
];

/// Each caught planted bug's catching run as [`PLANTED_RESULTS`] recorded it (name →
/// `STEM:SEED`), for `run ci --first`: the same runs, that one started first, so --fail-fast
/// answers as soon as it fails again. Only the order depends on this file: a stale or missing
/// entry costs time, never the verdict.
fn catching_runs() -> std::collections::BTreeMap<String, String> {
    catching_runs_in(&std::fs::read_to_string(root().join(PLANTED_RESULTS)).unwrap_or_default())
}

fn catching_runs_in(text: &str) -> std::collections::BTreeMap<String, String> {
    // One bug per line, as `record_planted` writes them.
    let field = |line: &str, key: &str| -> Option<String> {
        let rest = line.split(&format!("\"{key}\": ")).nth(1)?;
        let value = match rest.strip_prefix('"') {
            Some(quoted) => quoted.split('"').next()?,
            None => rest.split([',', '}']).next()?.trim(),
        };
        Some(value.to_string())
    };
    text.lines()
        .filter(|l| l.contains("\"caught\": true"))
        .filter_map(|l| {
            let seed: u64 = field(l, "seed")?.parse().ok()?;
            Some((
                field(l, "name")?,
                format!("{}:{seed}", field(l, "scenario")?),
            ))
        })
        .collect()
}

/// `git apply` (or its reverse) of `patch` in the copy `work`, insisting that every file applied.
fn git_apply(work: &Path, patch: &Path, reverse: bool) -> Result<(), String> {
    // `work` lies inside this repository's (ignored) target dir: without the ceiling, git would
    // resolve `diff --git` paths against the repository root and silently skip them.
    let applied = Command::new("git")
        .current_dir(work)
        .env(
            "GIT_CEILING_DIRECTORIES",
            work.parent().expect("work has a parent"),
        )
        .args(["apply", "--verbose"])
        .args(reverse.then_some("--reverse"))
        .arg(patch)
        .output()
        .map_err(|e| format!("git apply: {e}"))?;
    let said = String::from_utf8_lossy(&applied.stderr).to_string();
    if !applied.status.success() || said.contains("Skipped") || !said.contains("Applied") {
        return Err(format!(
            "{} did not {} HEAD's copy: {said}",
            patch.display(),
            if reverse { "come out of" } else { "apply to" }
        ));
    }
    Ok(())
}

/// "scenario seed N: invariants failed" of the first failed run, from what `dalp-sim run` said
/// at its end ("FAILED …" lines).
fn first_failure(log: &Path) -> String {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("FAILED ").map(str::to_string))
        .unwrap_or_else(|| format!("a failed run (see {})", log.display()))
}

/// Whether `dalp-sim` arguments ask for the real backend.
fn real_backend(args: &[&str]) -> bool {
    args.windows(2).any(|w| w == ["--backend", "real"]) || args.contains(&"--backend=real")
}

/// The real backend is the `dalp-real` binary (crate real/: real tokio, sqlx, processes,
/// containers): the same command line as `dalp-sim`.
fn sim_real(args: &[&str]) -> Result<(), String> {
    setup()?;
    let _ = docker()?;
    cargo(
        &["build", "-q", "-p", "dalp-engine", "--bin", "dalp-engine"],
        &[],
    )?;
    cargo(
        &["build", "-q", "-p", "dalp-real", "--bin", "dalp-real"],
        &[],
    )?;
    run(Command::new(root().join("target/debug/dalp-real"))
        .args(args)
        .current_dir(root()))
}

/// Make Docker usable if this machine can: install Debian's docker.io when no `dockerd` exists,
/// start the daemon when none answers (as root), then build the images. `Ok(false)` when no
/// daemon can run here (the real backend then uses local processes); never an error for that.
fn docker() -> Result<bool, String> {
    let answers = || {
        Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !answers() {
        if !have("dockerd") && apt_install(&["docker.io"]).is_err() {
            eprintln!("xtask: docker.io could not be installed");
            return Ok(false);
        }
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout == b"0\n")
            .unwrap_or(false);
        if !is_root {
            eprintln!("xtask: no Docker daemon answers and starting one needs root");
            return Ok(false);
        }
        eprintln!("xtask: starting dockerd (log: target/dockerd.log)");
        let _ = std::fs::create_dir_all(root().join("target"));
        let log = std::fs::File::create(root().join("target/dockerd.log"))
            .map_err(|e| format!("target/dockerd.log: {e}"))?;
        let spawned = Command::new("dockerd")
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn();
        if let Err(e) = spawned {
            eprintln!("xtask: dockerd did not start: {e}");
            return Ok(false);
        }
        let start = std::time::Instant::now();
        while !answers() {
            if start.elapsed() > std::time::Duration::from_secs(60) {
                eprintln!("xtask: dockerd started but does not answer (see target/dockerd.log)");
                return Ok(false);
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }
    if let Err(e) = images() {
        eprintln!("xtask: the Docker images could not be built: {e}");
        return Ok(false);
    }
    // A daemon that builds images may still be unable to run containers (no overlay, no
    // cgroups): try one before the tests rely on it.
    let image = std::env::var("DALP_ANVIL_IMAGE").unwrap_or_else(|_| "dalp/anvil:local".into());
    let runs = Command::new("timeout")
        .args(["120", "docker", "run", "--rm", &image, "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !runs {
        eprintln!("xtask: the Docker daemon cannot run a container here");
    }
    Ok(runs)
}

/// Build the simulation flavour and run `dalp-sim` with `args` from the repository root.
fn sim(profile: Profile, args: &[&str]) -> Result<(), String> {
    let bin = build_sim(profile)?;
    run(Command::new(bin).args(args).current_dir(root()))
}

/// `cargo xtask bench`: the end-to-end simulation benchmark, then the micro-benchmarks, whose
/// harness prints one table of both.
fn bench_all() -> Result<(), String> {
    let out = root().join("target/bench-sim");
    let out_s = out.to_string_lossy().into_owned();
    sim(
        Profile::Bench,
        &[
            "bench",
            "steady-state",
            "--seeds",
            "5",
            "--suite",
            "ci",
            "--out",
            &out_s,
        ],
    )?;
    bench_micro(&[], Some(&out.join("summary.json")))
}

/// The criterion micro-benchmarks (`bench/benches/micro.rs`); `e2e`: the end-to-end figures to
/// add to their table.
fn bench_micro(filter: &[&str], e2e: Option<&Path>) -> Result<(), String> {
    let home = root().join("target/criterion");
    let mut cmd = cargo_cmd();
    cmd.args(["bench", "-q", "-p", "dalp-bench", "--bench", "micro", "--"])
        .args(filter)
        .env("CRITERION_HOME", &home)
        .current_dir(root());
    if let Some(e2e) = e2e {
        cmd.env("DALP_BENCH_E2E", e2e);
    }
    run(&mut cmd)
}

/// `cargo xtask bench count`: wall time on a shared 2-core machine moves by a third from one run
/// to the next, so a change of a few percent in the simulation's cost cannot be seen in it; the
/// instructions a seed executes can (the same seed runs the same code: a deterministic count).
/// Runs the seed under callgrind (about 50 times slower than natively) and prints the total and
/// the functions that execute the most instructions themselves.
fn bench_count(scenario: &str, seed: &str) -> Result<(), String> {
    if !have("valgrind") || !have("callgrind_annotate") {
        apt_install(&["valgrind"])?;
    }
    let bin = build_sim(Profile::Dev)?;
    let out = root().join("target/bench-count");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let profile = out.join("callgrind.out");
    let result = out.join("result.json");
    run(Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg("--quiet")
        .arg(format!("--callgrind-out-file={}", profile.display()))
        .arg(&bin)
        .args(["child", scenario, "--seed", seed, "--result"])
        .arg(&result)
        .current_dir(root()))?;
    let annotated = Command::new("callgrind_annotate")
        .arg(&profile)
        .output()
        .map_err(|e| format!("callgrind_annotate: {e}"))?;
    if !annotated.status.success() {
        return Err(format!(
            "callgrind_annotate failed: {}",
            String::from_utf8_lossy(&annotated.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&annotated.stdout);
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    let total = rows
        .iter()
        .find(|l| l.contains("PROGRAM TOTALS"))
        .ok_or_else(|| {
            format!(
                "no total in callgrind_annotate's output of {}",
                profile.display()
            )
        })?;
    println!(
        "{scenario} seed {seed}, {} build:",
        profile_dir(Profile::Dev)
    );
    println!(
        "  instructions: {}",
        total.split_whitespace().next().unwrap_or("?")
    );
    println!("  by function (own instructions):");
    for row in rows
        .iter()
        .filter(|l| !l.contains("PROGRAM TOTALS"))
        .take(25)
    {
        println!("    {}", short_symbol(row));
    }
    println!(
        "  (profile: {}; open it with callgrind_annotate --inclusive=yes)",
        profile.display()
    );
    Ok(())
}

/// A scenario's file: `NAME` is `scenarios/NAME.toml` (what `dalp-sim run` takes), a path stays
/// one (`child`, which `bench count` runs, takes files only).
fn scenario_file(scenario: &str) -> String {
    if scenario.ends_with(".toml") || scenario.contains('/') {
        scenario.to_string()
    } else {
        format!("scenarios/{scenario}.toml")
    }
}

/// A callgrind_annotate row without the source path and binary: count, share and function.
fn short_symbol(row: &str) -> String {
    let (counts, rest) = row.split_at(row.find(')').map_or(0, |i| i + 1));
    let rest = rest.trim();
    let function = rest.split_once(':').map_or(rest, |(_, f)| f);
    let function = function.split(" [").next().unwrap_or(function);
    format!("{} {function}", counts.trim())
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().map_err(|e| format!("{shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed with {status}"))
    }
}

fn cargo(args: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    let mut cmd = cargo_cmd();
    cmd.args(args).current_dir(root());
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

/// The developer's loop before a commit: nothing here needs PostgreSQL, Anvil or Docker.
fn check() -> Result<(), String> {
    let mut t = Phases::default();
    let r = (|| {
        t.time("format", || cargo(&["fmt", "--all", "--check"], &[]))?;
        t.time("clippy", || {
            cargo(
                &[
                    "clippy",
                    "-q",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ],
                &[],
            )
        })?;
        t.time("clippy (simulation flavour)", || {
            cargo(
                &[
                    "clippy",
                    "-q",
                    "-p",
                    "dalp-sim",
                    "--all-targets",
                    "--target-dir",
                    "target/sim",
                    "--",
                    "-D",
                    "warnings",
                ],
                &[("RUSTFLAGS", "--cfg madsim")],
            )
        })?;
        t.time("unit tests", || {
            cargo_test_counted(
                cargo_cmd(),
                &["test", "-q", "--workspace", "--lib", "--bins"],
            )
            .and_then(|c| match c.ok() {
                true => Ok(()),
                false => Err(format!("{} unit tests failed", c.failed)),
            })
        })?;
        let sim = t.time("build: simulation", || build_sim(Profile::Dev))?;
        t.time("smoke suite", || {
            run(Command::new(sim)
                .args(["run", "smoke", "--out", "target/check-smoke"])
                .current_dir(root()))
        })
    })();
    t.print();
    r
}

/// What CI runs: set up, build everything once, then the real suite in the background (it waits
/// on real time: fault phases, elections, block times) beside the CPU-bound work in the
/// foreground (planted bugs, then every other test), reniced so the real runs' processes keep
/// their CPU. Every phase runs even after one fails; all failures are named at the end, with the
/// wall time of each phase so a regression in test time is visible in the CI log.
fn test() -> Result<(), String> {
    let mut t = Phases::default();
    // The plain flavour is built once here: its incremental state (~0.7 GB on disk, and time to
    // write it) would serve no later build. Every plain cargo call below inherits this (the real
    // suite's and the integration tests' own `cargo build` of the engine included, so nothing
    // is rebuilt); the simulation builds set their own (`build_sim_by`).
    std::env::set_var("CARGO_INCREMENTAL", "0");
    disk_space_note();
    t.time("setup", setup)?;
    // The real backend's tests use Docker where a daemon can run here, local processes otherwise.
    let docker = t.time("docker daemon and images", docker)?;
    eprintln!(
        "xtask: real-backend provider for this run: {}",
        if docker { "docker" } else { "local processes" }
    );
    let mut failures = Vec::new();
    let mut counts = Counts::default();
    // The harness's own mutation test: every planted bug must be caught by the `ci` suite. It
    // builds the simulation: HEAD's committed tree in a copy, each bug incrementally from it, then
    // HEAD's own (that same build when the working tree is clean), sharing target/sim. That first
    // build, from scratch, is the longest path of the whole test: it starts at once, niced, so
    // the engine's and the real suite's builds (at normal priority: the real suite's own run is
    // the next longest path) lose nothing to it while it takes every cycle they leave. The other
    // test binaries build after the real suite's, beside it too. When the tree is clean, the
    // other tests start as soon as both are done and run beside the bugs' builds: they wait on
    // PostgreSQL, Anvil and child processes much of their time.
    let clean = tree_is_clean().unwrap_or(false);
    // Says that the test binaries' build ended (whatever its outcome).
    let (built_tx, built_rx) = std::sync::mpsc::channel::<()>();
    // Says that the engine and the real suite are built: the third-party crates the production
    // tiers' copy needs are in target/debug then (a dropped sender says it too).
    let (deps_tx, deps_rx) = std::sync::mpsc::channel::<()>();
    let (real, built, caught, head, planted_took, beside) = std::thread::scope(|s| {
        let planted = s.spawn(move || {
            let started = std::time::Instant::now();
            let mut beside = None;
            let (caught, head) = planted_and_head(
                &[],
                |committed| {
                    if clean {
                        // The test binaries first (a build that failed is reported below, and
                        // again by the tests' cargo).
                        let _ = built_rx.recv();
                        eprintln!(
                        "xtask: the other tests run beside the planted bugs, on HEAD's simulation \
                         binary {} (log: {}; shown when they end)",
                        committed.display(),
                        root().join(OTHER_TESTS_LOG).display()
                    );
                        let sim = committed.to_path_buf();
                        beside = Some(s.spawn(move || {
                            let started = std::time::Instant::now();
                            (other_tests(&sim, docker), started.elapsed())
                        }));
                    }
                },
                move || {
                    let _ = deps_rx.recv();
                },
            );
            let took = started.elapsed();
            let beside = beside.map(|h| h.join().expect("the thread running the other tests"));
            (caught, head, took, beside)
        });
        let real = start_real_suite(&mut t, docker);
        let _ = deps_tx.send(());
        // Built even when the real suite could not start: the other tests need them.
        let started = std::time::Instant::now();
        let built = (
            test_binaries(niced(cargo_program()), &[]),
            started.elapsed(),
        );
        let _ = built_tx.send(());
        let (caught, head, planted_took, beside) = planted
            .join()
            .expect("the thread building the planted bugs");
        (real, built, caught, head, planted_took, beside)
    });
    let real = real.map_err(|e| failures.push(e)).ok();
    let (r, took) = built;
    t.record("build: tests (beside)", took);
    if let Err(e) = r {
        failures.push(e);
    }
    t.record("planted bugs (from the start)", planted_took);
    if let Err(e) = caught {
        failures.push(e);
    }
    let other = match (beside, head) {
        (Some((r, took)), head) => {
            t.record("tests (beside the planted bugs)", took);
            // HEAD's binary must still have been put back in target/sim.
            if let Err(e) = head {
                failures.push(e);
            }
            Some(r)
        }
        (None, Ok(sim)) => Some(t.time("tests (all but the real suite)", || {
            Ok(other_tests(&sim, docker))
        })?),
        // No other test runs without it; the real suite is still waited for.
        (None, Err(e)) => {
            failures.push(e);
            None
        }
    };
    if let Some(r) = other {
        println!(
            "{}",
            std::fs::read_to_string(root().join(OTHER_TESTS_LOG)).unwrap_or_default()
        );
        match r {
            Ok(c) => {
                if !c.ok() {
                    failures.push(format!("{} tests failed", c.failed));
                }
                counts.add(c);
            }
            Err(e) => failures.push(e),
        }
    }
    if let Some((real, log)) = real {
        let (status, took) = real.join().expect("the thread waiting for the real suite");
        t.record("real suite (in the background)", took);
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        println!("---- the real suite ({}) ----\n{said}", log.display());
        let c = Counts::of(&said);
        match status {
            Err(e) => failures.push(format!("the real suite: {e}")),
            Ok(status) if !status.success() || !c.ok() || c.passed == 0 => {
                failures.push(format!("the real suite failed ({status}); see above"))
            }
            Ok(_) => {}
        }
        counts.add(c);
    }
    println!("tests: {} passed, {} failed", counts.passed, counts.failed);
    t.print();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// The real suite waited on by its own thread.
type RealSuite = std::thread::JoinHandle<(
    std::io::Result<std::process::ExitStatus>,
    std::time::Duration,
)>;

/// Build the engine and the real suite, and start the suite in the background (it is the
/// longest path after the simulation's first build: its runs wait on real time); its log's path.
fn start_real_suite(t: &mut Phases, docker: bool) -> Result<(RealSuite, PathBuf), String> {
    t.time("build: engine", || {
        cargo(&["build", "-p", "dalp-engine", "--bin", "dalp-engine"], &[])
    })?;
    let real_suite = t.time("build: the real suite", || {
        test_binaries(cargo_cmd(), &["--test", "real_backend"])?
            .ok_or_else(|| "cargo built no real_backend test binary (real/tests)".to_string())
    })?;
    let log = root().join("target/real-suite.log");
    let started = std::time::Instant::now();
    let mut real = Command::new(&real_suite);
    real.current_dir(root().join("real"))
        .env("DALP_ENGINE_BIN", root().join("target/debug/dalp-engine"));
    if docker {
        real.env("DALP_DOCKER_TESTS", "1");
    }
    let mut real = spawn_logged(&mut real, &log)?;
    // Its own wall time, not the foreground's: a thread waits for it.
    let real = std::thread::spawn(move || (real.wait(), started.elapsed()));
    eprintln!(
        "xtask: the real suite runs in the background (log: {}; shown when it ends)",
        log.display()
    );
    Ok((real, log))
}

/// The test needs several GB of disk (builds, container images, PostgreSQL data); a full disk
/// shows up later as failures far from their cause ("No space left on device" inside a
/// container, a linker error), so the free space is said up front, loudly when it is short.
fn disk_space_note() {
    const NEEDED_GIB: f64 = 8.0;
    let out = Command::new("df")
        .args(["-Pk"])
        .arg(root())
        .output()
        .ok()
        .filter(|o| o.status.success());
    let free_kib = out.as_ref().and_then(|o| {
        let text = String::from_utf8_lossy(&o.stdout);
        text.lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|f| f.parse::<u64>().ok())
    });
    match free_kib {
        Some(kib) => {
            let gib = kib as f64 / (1024.0 * 1024.0);
            if gib < NEEDED_GIB {
                eprintln!(
                    "xtask: WARNING: only {gib:.1} GiB free on {}'s filesystem; this test needs about {NEEDED_GIB} GiB (builds, images, databases): expect `No space left on device` failures",
                    root().display()
                );
            } else {
                eprintln!(
                    "xtask: {gib:.1} GiB free on {}'s filesystem",
                    root().display()
                );
            }
        }
        None => eprintln!("xtask: could not read the free disk space (df)"),
    }
}

/// Where [`other_tests`] writes what cargo and the tests say (shown when they end).
const OTHER_TESTS_LOG: &str = "target/other-tests.log";

/// Every test but the real suite, niced, with `sim` as the simulation binary; what they said goes
/// to [`OTHER_TESTS_LOG`]; their counts.
fn other_tests(sim: &Path, docker: bool) -> Result<Counts, String> {
    // The simulation's own tests run the madsim build of dalp-sim (one process per seed).
    let mut cmd = niced(cargo_program());
    cmd.env("DALP_SIM_BIN", sim)
        .args(["test", "--workspace", "--no-fail-fast", "--", "--skip"])
        .arg(REAL_SUITE_TEST)
        .current_dir(root());
    if docker {
        cmd.env("DALP_DOCKER_TESTS", "1");
    }
    let log = root().join(OTHER_TESTS_LOG);
    let status = spawn_logged(&mut cmd, &log)?
        .wait()
        .map_err(|e| format!("cargo test: {e}"))?;
    let counts = Counts::of(&std::fs::read_to_string(&log).unwrap_or_default());
    if status.success() || counts.failed > 0 {
        Ok(counts)
    } else {
        Err(format!(
            "cargo test failed ({status}); see {}",
            log.display()
        ))
    }
}

/// The real suite's one test (real/tests/real_backend.rs), run from its own binary beside the
/// other tests: `cargo test` holds the build directory's lock while tests run.
const REAL_SUITE_TEST: &str = "the_real_suite_passes_on_real_services_and_leaves_nothing_behind";

/// Build the workspace's test binaries (those `select` names, e.g. `--test NAME`; all when
/// empty) with `cargo`, with the features of a whole-workspace build so that the later builds
/// reuse every artifact; the path of the real suite's, when built.
fn test_binaries(mut cargo: Command, select: &[&str]) -> Result<Option<PathBuf>, String> {
    use std::io::{BufRead, BufReader};
    let mut child = cargo
        .args([
            "test",
            "--workspace",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .args(select)
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cargo test --no-run: {e}"))?;
    let mut found = None;
    for line in BufReader::new(child.stdout.take().expect("piped stdout")).lines() {
        let line = line.map_err(|e| format!("reading cargo's messages: {e}"))?;
        // One JSON object per line; only the real suite's test artifact is wanted.
        if line.contains("\"name\":\"real_backend\"") && line.contains("\"executable\":\"") {
            let exe = line.split("\"executable\":\"").nth(1).unwrap_or("");
            found = exe.split('"').next().map(PathBuf::from);
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("cargo test --no-run: {e}"))?;
    if !status.success() {
        return Err(format!("building the tests failed ({status})"));
    }
    Ok(found)
}

/// `cmd` started with its stdout and stderr going to `log`.
fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<std::process::Child, String> {
    log_to(cmd, log)?;
    cmd.spawn().map_err(|e| format!("{cmd:?}: {e}"))
}

/// `cmd`'s stdout and stderr both go to `log` (created afresh).
fn log_to(cmd: &mut Command, log: &Path) -> Result<(), String> {
    let f = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let g = f
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    cmd.stdout(f).stderr(g);
    Ok(())
}

/// `program` under `nice -n 10`: CPU-bound foreground work yields to the real suite's services,
/// whose timing the real runs judge.
fn niced(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("nice");
    c.args(["-n", "10"]).arg(program);
    c
}

/// Wall time per phase of a command, printed at its end with the total.
struct Phases(Vec<(&'static str, std::time::Duration)>, std::time::Instant);

impl Default for Phases {
    fn default() -> Self {
        Phases(Vec::new(), std::time::Instant::now())
    }
}

impl Phases {
    fn time<T>(
        &mut self,
        name: &'static str,
        f: impl FnOnce() -> Result<T, String>,
    ) -> Result<T, String> {
        let start = std::time::Instant::now();
        let r = f();
        self.record(name, start.elapsed());
        r
    }

    fn record(&mut self, name: &'static str, took: std::time::Duration) {
        self.0.push((name, took));
    }

    fn print(&self) {
        println!("xtask: phase timings (wall):");
        let total = ("total", self.1.elapsed());
        for (name, took) in self.0.iter().chain([&total]) {
            let s = took.as_secs();
            println!("  {name:<34} {:>3}m{:02}s", s / 60, s % 60);
        }
    }
}

/// Passed and failed tests, summed over `test result:` lines.
#[derive(Default, Clone, Copy)]
struct Counts {
    passed: u64,
    failed: u64,
}

impl Counts {
    fn ok(&self) -> bool {
        self.failed == 0
    }

    fn add(&mut self, o: Counts) {
        self.passed += o.passed;
        self.failed += o.failed;
    }

    /// The counts of one libtest summary line, if `line` is one.
    fn of_line(line: &str) -> Option<Counts> {
        let rest = line.strip_prefix("test result: ")?;
        let count = |word: &str| {
            rest.split(';').find_map(|part| {
                part.trim()
                    .strip_suffix(word)?
                    .trim()
                    .rsplit(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
        };
        Some(Counts {
            passed: count("passed").unwrap_or(0),
            failed: count("failed").unwrap_or(0),
        })
    }

    fn of(text: &str) -> Counts {
        let mut c = Counts::default();
        for l in text.lines().filter_map(Counts::of_line) {
            c.add(l);
        }
        c
    }
}

/// Run `cargo test` (as `cmd`), echoing its output; the tests' counts over all test binaries
/// (cargo's own last line is that of whichever binary ran last, often one with no tests). An
/// error when cargo itself failed other than by failing tests.
fn cargo_test_counted(mut cmd: Command, args: &[&str]) -> Result<Counts, String> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .args(args)
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cargo test: {e}"))?;
    let mut counts = Counts::default();
    for line in BufReader::new(child.stdout.take().expect("piped stdout")).lines() {
        let line = line.map_err(|e| format!("reading cargo test output: {e}"))?;
        println!("{line}");
        if let Some(c) = Counts::of_line(&line) {
            counts.add(c);
        }
    }
    let status = child.wait().map_err(|e| format!("cargo test: {e}"))?;
    if status.success() || counts.failed > 0 {
        Ok(counts)
    } else {
        Err(format!("cargo test failed ({status})"))
    }
}

/// The simulation flavour: same engine code, `tokio` resolved to madsim, its own target dir so the
/// plain and simulated builds never invalidate each other. Returns the `dalp-sim` binary.
fn build_sim(profile: Profile) -> Result<PathBuf, String> {
    build_sim_by(cargo_cmd(), profile, &root())
}

/// [`build_sim`] with `cargo` as given (e.g. [`niced`]), of the workspace at `src` (a planted
/// bug's copy builds into this repository's `target/sim` too).
fn build_sim_by(mut cargo: Command, profile: Profile, src: &Path) -> Result<PathBuf, String> {
    let dir = profile_dir(profile);
    run(cargo
        .args([
            "build",
            "-q",
            "-p",
            "dalp-sim",
            "--bin",
            "dalp-sim",
            "--profile",
            dir,
        ])
        .arg("--target-dir")
        .arg(root().join("target/sim"))
        .env("RUSTFLAGS", "--cfg madsim")
        // The profile's own setting, whatever the caller's environment says (`test` turns
        // incremental compilation off for the plain builds only).
        .env(
            "CARGO_INCREMENTAL",
            match profile {
                Profile::Dev => "1",
                Profile::Bench => "0",
            },
        )
        .current_dir(src))?;
    Ok(sim_bin(profile))
}

fn profile_dir(profile: Profile) -> &'static str {
    match profile {
        Profile::Dev => "sim-dev",
        Profile::Bench => "sim-bench",
    }
}

/// Where `build_sim_by` leaves the simulation binary of `profile`.
fn sim_bin(profile: Profile) -> PathBuf {
    root()
        .join("target/sim")
        .join(profile_dir(profile))
        .join("dalp-sim")
}

/// `cargo` (the one running xtask, when known).
fn cargo_cmd() -> Command {
    Command::new(cargo_program())
}

fn cargo_program() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

fn postgres_installed() -> bool {
    std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(Result::ok).any(|e| {
                e.path().join("bin/postgres").exists() && e.path().join("bin/pgbench").exists()
            })
        })
        .unwrap_or(false)
}

fn apt_get() -> Command {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    if is_root {
        Command::new("apt-get")
    } else {
        let mut c = Command::new("sudo");
        c.args(["-n", "apt-get"]);
        c
    }
}

fn apt_install(packages: &[&str]) -> Result<(), String> {
    eprintln!("xtask: installing {} with apt-get", packages.join(" "));
    run(apt_get().args(["update", "-qq"]))?;
    run(apt_get()
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages))
}

/// The images of the Docker provider, assembled from the host's binaries by
/// `fixtures/images/build.sh` (the one recipe: `ensure_images` in real/src/docker.rs runs it
/// too).
fn images() -> Result<(), String> {
    setup()?;
    run(Command::new("bash").arg(root().join("fixtures/images/build.sh")))
}

/// Install what is missing; idempotent and quick when everything is there.
fn setup() -> Result<(), String> {
    if !postgres_installed() {
        apt_install(&["postgresql", "postgresql-contrib"])?;
    }
    if !have("npm") || !have("node") {
        apt_install(&["nodejs", "npm"])?;
    }
    // The audit report's browser test renders report.html headless (sim/tests/bundle.rs).
    if !have("chromium") {
        apt_install(&["chromium"])?;
    }
    let fixtures = root().join("fixtures");
    let anvil = std::fs::read_to_string(fixtures.join("ANVIL_PATH.txt"))
        .map_err(|e| format!("fixtures/ANVIL_PATH.txt: {e}"))?;
    if !fixtures.join(anvil.trim()).exists() {
        eprintln!("xtask: installing the pinned Anvil and solc (npm ci in fixtures/)");
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&fixtures))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_count_takes_a_scenario_name_or_file() {
        assert_eq!(scenario_file("steady-state"), "scenarios/steady-state.toml");
        assert_eq!(scenario_file("scenarios/x.toml"), "scenarios/x.toml");
        assert_eq!(scenario_file("/tmp/y.toml"), "/tmp/y.toml");
        assert_eq!(scenario_file("regressions/z"), "regressions/z");
    }

    #[test]
    fn catching_runs_are_read_from_the_recorded_results() {
        let text = r#"{
  "date": "2026-12-03T07:57:46Z",
  "bugs": [
    {"name": "a-bug", "caught": true, "scenario": "db-failover-sync", "seed": 2, "invariants": ["durability"]},
    {"name": "missed", "caught": false, "invariants": []},
    {"name": "last", "caught": true, "scenario": "x-y-18", "seed": 478}
  ]
}"#;
        let runs = catching_runs_in(text);
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert_eq!(runs["a-bug"], "db-failover-sync:2");
        assert_eq!(runs["last"], "x-y-18:478");
    }

    #[test]
    fn failure_lines_give_scenario_seed_and_invariants() {
        assert_eq!(
            failure_fields(
                "db-failover-sync seed 2: exactly_once, durability failed\n    reproduce: x"
            ),
            (
                Some("db-failover-sync".into()),
                Some(2),
                vec!["exactly_once".into(), "durability".into()]
            )
        );
        let (s, n, i) = failure_fields("swarm seed 7: the run crashed: boom");
        assert_eq!(
            (s.as_deref(), n, i),
            (Some("swarm"), Some(7), vec!["crashed".into()])
        );
        assert_eq!(
            failure_fields("a failed run (see x.log)").2,
            Vec::<String>::new()
        );
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
