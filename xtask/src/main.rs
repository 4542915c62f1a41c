//! `cargo xtask`: the project's entry point. It installs what a fresh machine lacks, builds the
//! two flavours (plain, and `--cfg madsim` in `target/sim` so neither invalidates the other), and
//! runs the main job, the tests and the benchmarks.
//!
//! No dependencies, so it builds in seconds before anything else.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  run            the main job: the simulation's `ci` suite on the embedded default (no external
                 service); results in reports/latest; exits non-zero if an invariant fails
  test           set up, then build both flavours and run every test (planted bugs caught by the
                 ci suite, unit, property, simulation determinism, integration on real
                 PostgreSQL + Anvil)
  sim <args>     build the simulation flavour and run `dalp-sim <args>` (list, run, repro, bench);
                 with `--backend real`, `dalp-real` (crate real/) against real services instead
  docker         start a Docker daemon if none runs (installing docker.io when missing) and
                 build the images; says whether Docker can be used
  sample         the sample workload on real PostgreSQL + Anvil through two engine processes
  setup          install what the tests need (PostgreSQL, Node.js/npm, the pinned Anvil and solc)
  build-sim      build dalp-sim (and the engine) under --cfg madsim into target/sim
  nightly [SEEDS] the nightly suite (every scenario, seeds 1..=200 unless SEEDS, e.g. 1..51) in
                 the optimized simulation build (profile sim-bench), one process per seed on every
                 core; results, JUnit and the report (failures grouped by cause) in
                 reports/nightly; exits non-zero if any run failed or crashed
  bench engine   journaled step transitions/s through the real store vs pgbench -N -c 8
  bench sim      simulated s per wall s and peak memory per seed (steady-state), suite seeds/min
  planted [NAME…] apply each planted bug (fixtures/planted-bugs/*.patch) to a copy of HEAD, build
                 the simulation and run the `ci` suite: every planted bug must be caught
  contracts      rebuild the fixture contract with the pinned solc
  images         build the Docker images of `--provider docker` offline from this machine's
                 PostgreSQL and Anvil (dalp/postgres:15-local, dalp/anvil:local; names from
                 DALP_PG_IMAGE / DALP_ANVIL_IMAGE); skipped when unchanged";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match words.as_slice() {
        ["run"] => sim(Profile::Debug, &["run", "ci", "--out", "reports/latest"]),
        ["sim", rest @ ..] if real_backend(rest) => sim_real(rest),
        ["sim", rest @ ..] => sim(Profile::Debug, rest),
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
        ["setup"] => setup(),
        ["build-sim"] => build_sim(Profile::Debug).map(|_| ()),
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
    Debug,
    /// `sim-bench` (release with fat LTO, one codegen unit): what throughput is measured with.
    Bench,
}

/// Mutation testing of the harness: a suite that passes on a broken engine is worthless. Each
/// patch plants one classic durable-execution bug into a copy of HEAD; the `ci` suite must fail.
fn planted(names: &[&str]) -> Result<(), String> {
    let root = root();
    let dir = root.join("fixtures/planted-bugs");
    let mut patches: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "patch"))
        .filter(|p| {
            names.is_empty() || names.iter().any(|n| p.file_stem().is_some_and(|s| s == *n))
        })
        .collect();
    patches.sort();
    if patches.is_empty() {
        return Err(format!(
            "no planted bug matches {names:?} in {}",
            dir.display()
        ));
    }
    let work = root.join("target/planted/src");
    let target = root.join("target/sim-planted");
    let mut missed = Vec::new();
    for patch in &patches {
        let name = patch.file_stem().unwrap().to_string_lossy().to_string();
        eprintln!("xtask: planted bug `{name}`");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
        // A copy of HEAD (committed files only), with the patch applied.
        run(Command::new("sh")
            .current_dir(&root)
            .arg("-c")
            .arg(format!("git archive HEAD | tar -x -C '{}'", work.display())))?;
        // `work` lies inside this repository's (ignored) target dir: without the ceiling, git
        // would resolve `diff --git` paths against the repository root and silently skip them.
        let applied = Command::new("git")
            .current_dir(&work)
            .env(
                "GIT_CEILING_DIRECTORIES",
                work.parent().expect("work has a parent"),
            )
            .args(["apply", "--verbose"])
            .arg(patch)
            .output()
            .map_err(|e| format!("git apply: {e}"))?;
        let said = String::from_utf8_lossy(&applied.stderr).to_string();
        if !applied.status.success() || said.contains("Skipped") || !said.contains("Applied") {
            return Err(format!(
                "planted bug {name}: {} did not apply to HEAD: {said}",
                patch.display()
            ));
        }
        let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        build
            .current_dir(&work)
            .args([
                "build",
                "-q",
                "-p",
                "dalp-sim",
                "--bin",
                "dalp-sim",
                "--target-dir",
            ])
            .arg(&target)
            .env("RUSTFLAGS", "--cfg madsim");
        run(&mut build)?;
        let out = root.join("target/planted").join(&name);
        let status = Command::new(target.join("debug/dalp-sim"))
            .current_dir(&work)
            .args(["run", "ci", "--out"])
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("dalp-sim: {e}"))?;
        match status.code() {
            Some(1) => eprintln!("xtask: `{name}` caught (results in {})", out.display()),
            other => {
                eprintln!("xtask: `{name}` NOT caught (dalp-sim exited {other:?})");
                missed.push(name);
            }
        }
    }
    if missed.is_empty() {
        eprintln!(
            "xtask: all {} planted bugs caught by the ci suite",
            patches.len()
        );
        Ok(())
    } else {
        Err(format!(
            "planted bugs the ci suite did not catch: {}",
            missed.join(", ")
        ))
    }
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
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args).current_dir(root());
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

fn test() -> Result<(), String> {
    setup()?;
    // The real backend's tests use Docker where a daemon can run here, local processes otherwise.
    let docker = docker()?;
    eprintln!(
        "xtask: real-backend provider for this run: {}",
        if docker { "docker" } else { "local processes" }
    );
    cargo(&["build", "-p", "dalp-engine", "--bin", "dalp-engine"], &[])?;
    let sim = build_sim(Profile::Debug)?;
    // The harness's own mutation test: every planted bug must be caught by the `ci` suite.
    planted(&[])?;
    // The simulation's own tests run the madsim build of dalp-sim (one process per seed).
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.env("DALP_SIM_BIN", &sim);
    if docker {
        cmd.env("DALP_DOCKER_TESTS", "1");
    }
    cargo_test_with_summary(cmd, &["test", "--workspace", "--no-fail-fast"])
}

/// Run `cargo test`, echoing its output, and close with one total line over all test binaries
/// (cargo's own last line is that of whichever binary ran last, often one with no tests).
fn cargo_test_with_summary(mut cmd: Command, args: &[&str]) -> Result<(), String> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .args(args)
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cargo test: {e}"))?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().expect("piped stdout")).lines() {
        let line = line.map_err(|e| format!("reading cargo test output: {e}"))?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
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
            passed += count("passed").unwrap_or(0);
            failed += count("failed").unwrap_or(0);
        }
    }
    let status = child.wait().map_err(|e| format!("cargo test: {e}"))?;
    println!("tests: {passed} passed, {failed} failed");
    if status.success() && failed == 0 {
        Ok(())
    } else {
        Err(format!("cargo test failed ({status})"))
    }
}

/// The simulation flavour: same engine code, `tokio` resolved to madsim, its own target dir so the
/// plain and simulated builds never invalidate each other. Returns the `dalp-sim` binary.
fn build_sim(profile: Profile) -> Result<PathBuf, String> {
    let target = root().join("target/sim");
    let mut args = vec![
        "build",
        "-q",
        "-p",
        "dalp-sim",
        "--bin",
        "dalp-sim",
        "--target-dir",
        target.to_str().expect("utf-8 path"),
    ];
    if let Profile::Bench = profile {
        args.extend(["--profile", "sim-bench"]);
    }
    cargo(&args, &[("RUSTFLAGS", "--cfg madsim")])?;
    let dir = match profile {
        Profile::Debug => "debug",
        Profile::Bench => "sim-bench",
    };
    Ok(target.join(dir).join("dalp-sim"))
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
