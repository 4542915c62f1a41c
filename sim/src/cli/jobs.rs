//! The child processes: one per seed (`dalp-sim child …`), several at a time, each writing its
//! result to a file the parent reads when it exits.

use crate::outcome::FinishedRun;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// One seed of one scenario to run.
#[derive(Clone)]
pub(super) struct Job {
    pub(super) scenario: PathBuf,
    pub(super) seed: u64,
    /// The seed's fault-free baseline (an empty schedule), for the isolation invariant.
    pub(super) baseline: bool,
}

impl Job {
    pub(super) fn new(scenario: PathBuf, seed: u64) -> Job {
        Job {
            scenario,
            seed,
            baseline: false,
        }
    }

    /// The same scenario and seed without faults.
    pub(super) fn as_baseline(&self) -> Job {
        Job {
            baseline: true,
            ..self.clone()
        }
    }
}

struct Running {
    job: Job,
    child: Child,
    out: PathBuf,
    started: Instant,
}

/// Start `dalp-sim child` for `job` with `extra` arguments; its result goes to the returned path
/// under `out_dir/.runs`, its trace (when written) under `out_dir/traces`.
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

/// Run jobs with at most `parallel` children at once; calls `done` as each finishes.
pub(super) fn run_jobs(
    jobs: Vec<Job>,
    parallel: usize,
    out_dir: &Path,
    extra: &[String],
    done: impl FnMut(&Job, Result<FinishedRun, String>, Duration),
) -> Result<(), String> {
    run_jobs_ticking(jobs, parallel, out_dir, extra, done, || false, || {})?;
    Ok(())
}

/// [`run_jobs`], calling `tick` about twice a second while children run (progress display), and
/// starting no further job once `stop` says so (the children already running finish). Returns how
/// many jobs were never started.
pub(super) fn run_jobs_ticking(
    jobs: Vec<Job>,
    parallel: usize,
    out_dir: &Path,
    extra: &[String],
    mut done: impl FnMut(&Job, Result<FinishedRun, String>, Duration),
    mut stop: impl FnMut() -> bool,
    mut tick: impl FnMut(),
) -> Result<usize, String> {
    let mut last_tick = Instant::now();
    let mut queue: VecDeque<Job> = jobs.into();
    let mut running: Vec<Running> = Vec::new();
    let mut not_started = 0;
    while !queue.is_empty() || !running.is_empty() {
        if !queue.is_empty() && stop() {
            not_started = queue.len();
            queue.clear();
        }
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
        if !reap(&mut running, &mut done)? {
            std::thread::sleep(Duration::from_millis(20));
        }
        if last_tick.elapsed() >= Duration::from_millis(500) {
            last_tick = Instant::now();
            tick();
        }
    }
    Ok(not_started)
}

/// How long one child may run: `DALP_SIM_CHILD_TIMEOUT_S`, else 20 minutes (a simulated seed
/// takes seconds; a real-backend seed a few minutes).
fn child_wall_limit() -> Duration {
    static LIMIT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        Duration::from_secs(
            std::env::var("DALP_SIM_CHILD_TIMEOUT_S")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|s| *s > 0)
                .unwrap_or(1200),
        )
    })
}

/// Hand every child that has exited (or run past [`child_wall_limit`], then killed) to `done`;
/// whether any had.
fn reap(
    running: &mut Vec<Running>,
    done: &mut impl FnMut(&Job, Result<FinishedRun, String>, Duration),
) -> Result<bool, String> {
    let mut progressed = false;
    let mut i = 0;
    while i < running.len() {
        match running[i].child.try_wait() {
            Ok(Some(status)) => {
                let r = running.swap_remove(i);
                done(&r.job, read_result(&r.out, status), r.started.elapsed());
                progressed = true;
            }
            Ok(None) if running[i].started.elapsed() > child_wall_limit() => {
                // A run that does not end (a hang in the simulation or the engine) is a failed
                // run the report names, not a suite that never finishes.
                let mut r = running.swap_remove(i);
                let _ = r.child.kill();
                let _ = r.child.wait();
                let took = r.started.elapsed();
                done(
                    &r.job,
                    Err(format!(
                        "timed out: still running after {} s of wall-clock time (the limit, \
                         DALP_SIM_CHILD_TIMEOUT_S); killed",
                        took.as_secs()
                    )),
                    took,
                );
                progressed = true;
            }
            Ok(None) => i += 1,
            Err(e) => return Err(format!("waiting for a child run: {e}")),
        }
    }
    Ok(progressed)
}

/// The result a child wrote to `out`, or why there is none (its panic first, then its stderr).
fn read_result(out: &Path, status: ExitStatus) -> Result<FinishedRun, String> {
    let why = match std::fs::read_to_string(out) {
        Ok(t) => match serde_json::from_str::<FinishedRun>(&t) {
            Ok(r) => return Ok(r),
            Err(e) => format!("its result {} is unreadable: {e}", out.display()),
        },
        // The usual case of a child that failed: it wrote nothing.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "before writing a result".into(),
        Err(e) => format!("its result {} is unreadable: {e}", out.display()),
    };
    let stderr = std::fs::read_to_string(out.with_extension("stderr")).unwrap_or_default();
    Err(match panic_message(&stderr) {
        // A model inconsistency or a harness bug: say so first.
        Some(p) => format!(
            "the simulator crashed ({status}): {p}\nstderr:\n{}",
            tail(&stderr, 40)
        ),
        None => format!(
            "child exited with {status} {why}; stderr:\n{}",
            tail(&stderr, 40)
        ),
    })
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

    #[test]
    fn a_child_without_a_result_is_named_for_what_it_said_not_for_a_missing_file() {
        use std::os::unix::process::ExitStatusExt;
        let dir = std::env::temp_dir().join(format!("dalp-read-result-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("s-1.json");
        std::fs::write(out.with_extension("stderr"), "dalp-sim: no Docker daemon\n").unwrap();
        let failed = std::process::ExitStatus::from_raw(2 << 8);
        let e = super::read_result(&out, failed).unwrap_err();
        assert!(
            e.contains("before writing a result")
                && e.contains("no Docker daemon")
                && !e.contains("No such file"),
            "{e}"
        );
        std::fs::write(&out, "{").unwrap();
        let e = super::read_result(&out, failed).unwrap_err();
        assert!(e.contains("is unreadable"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
