//! `dalp-sim bench`: throughput and memory. The reference scenario's seeds one at a time (one
//! core), then a whole suite with `--jobs` children at once.

use super::jobs::{run_jobs, Job};
use super::options::{default_jobs, parse_seeds, Seeds};
use super::resolve::{one_scenario, resolve};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Measure simulated s per wall s, peak memory per seed, and a suite's seeds per minute
///
/// The reference scenario's seeds run one at a time (one core): simulated s per wall s and peak
/// memory of each seed process. Then the suite's seeds run with --jobs children at once: seeds
/// per minute. Exit 1 when a seed failed.
#[derive(Debug, Args)]
pub(super) struct BenchArgs {
    /// The reference scenario
    #[arg(default_value = "steady-state")]
    scenario: String,
    /// Seeds of the reference scenario: N (1 to N) or A..B (A inclusive, B exclusive)
    #[arg(long, value_name = "N|A..B", value_parser = parse_seeds, default_value = "5")]
    seeds: Seeds,
    /// The suite timed after it
    #[arg(long, value_name = "NAME", default_value = "ci")]
    suite: String,
    /// Children at once for the suite [default: one per core]
    #[arg(long, value_name = "J")]
    jobs: Option<usize>,
    /// Where the children's files are written
    #[arg(long, value_name = "DIR", default_value = "target/bench-sim")]
    out: PathBuf,
}

/// `Ok(false)` when a seed failed. The figures are also written to `<out>/summary.json` (read by
/// `cargo xtask bench`'s table).
pub(super) fn bench(dir: &Path, a: &BenchArgs) -> Result<bool, String> {
    let file = one_scenario(dir, &a.scenario, "bench takes one reference scenario")?;
    let (reference_ok, reference) = reference(&file, &a.seeds.0, &a.out)?;
    let parallel = a.jobs.unwrap_or_else(default_jobs).max(1);
    let (suite_ok, suite) = suite(dir, &a.suite, parallel, &a.out)?;
    let summary = serde_json::json!({ "reference": reference, "suite": suite });
    let path = a.out.join("summary.json");
    crate::trace::write_atomic(&path, summary.to_string().as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(reference_ok && suite_ok)
}

/// Per seed of `file`, one at a time: simulated seconds per wall second and peak RSS; whether
/// every seed passed, and the figures.
fn reference(
    file: &Path,
    seeds: &[u64],
    out_dir: &Path,
) -> Result<(bool, serde_json::Value), String> {
    let jobs: Vec<Job> = seeds
        .iter()
        .map(|s| Job::new(file.to_path_buf(), *s))
        .collect();
    let mut rows = Vec::new();
    let mut failed = false;
    run_jobs(jobs, 1, out_dir, &[], |job, r, took| match r {
        Ok(v) => {
            let sim = v.result.simulated_ms as f64 / 1000.0;
            let wall = v.wall_ms.unwrap_or(0).max(1) as f64 / 1000.0;
            let rss = v.peak_rss_kib.unwrap_or(0) as f64 / 1024.0;
            failed |= !v.result.passed;
            println!(
                "seed {:>4}: {sim:>7.1} sim-s in {wall:>6.3} s run ({:.3} s process) = {:>8.0} sim-s/s, peak RSS {rss:>6.1} MiB{}",
                job.seed,
                took.as_secs_f64(),
                sim / wall,
                if v.result.passed { "" } else { "  (FAILED)" }
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
    // Issue 13's targets: the everyday build (sim-dev, debug assertions on) and the bench build.
    let (build, target) = match cfg!(debug_assertions) {
        true => ("sim-dev", 1_000),
        false => ("sim-bench", 5_000),
    };
    println!(
        "{}: {:.0} simulated s per wall s in the run ({:.0} including process start and exit), peak RSS per seed process {rss:.1} MiB (targets for the {build} build: >= {target}, <= 256 MiB)",
        file.display(),
        sim / wall,
        sim / process
    );
    let figures = serde_json::json!({
        "scenario": file.file_stem().map(|s| s.to_string_lossy().into_owned()),
        "seeds": rows.len(),
        "sim_s_per_wall_s": sim / wall,
        "sim_s_per_process_s": sim / process,
        "peak_rss_mib": rss,
    });
    Ok((!failed, figures))
}

/// The suite's seeds, `parallel` at a time: seeds per minute; whether every seed passed, and the
/// figures.
fn suite(
    dir: &Path,
    suite: &str,
    parallel: usize,
    out_dir: &Path,
) -> Result<(bool, serde_json::Value), String> {
    let (files, suite_seeds) = resolve(dir, suite)?;
    let jobs: Vec<Job> = files
        .iter()
        .flat_map(|f| {
            super::resolve::seeds_of(&suite_seeds, f, None, super::resolve::pinned_seed(f))
                .into_iter()
                .map(move |s| Job::new(f.clone(), s))
        })
        .collect();
    let n = jobs.len();
    let started = Instant::now();
    let mut suite_ok = 0;
    run_jobs(jobs, parallel, out_dir, &[], |_, r, _| {
        if r.is_ok_and(|v| v.result.passed) {
            suite_ok += 1;
        }
    })?;
    let took = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(out_dir.join(".runs"));
    let per_min = n as f64 * 60.0 / took;
    println!(
        "suite {suite}: {n} seeds ({suite_ok} passed) in {took:.1} s with {parallel} at a time = {per_min:.0} seeds per minute"
    );
    let figures = serde_json::json!({
        "name": suite,
        "runs": n,
        "passed": suite_ok,
        "parallel": parallel,
        "wall_s": took,
        "runs_per_min": per_min,
    });
    Ok((suite_ok == n, figures))
}
