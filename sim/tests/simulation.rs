//! The simulation, end to end, through the `dalp-sim` binary built with `--cfg madsim`: replay
//! by seed (two processes, same trace hash), faults visible in the trace, clear errors for bad
//! scenarios, and fault-schedule minimisation. `cargo xtask test` passes the binary's path in
//! `DALP_SIM_BIN`; otherwise the test builds it (it never skips).

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

mod common;
use common::{dalp_sim, root, sim_bin, tempdir};

fn results(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("results.json")).expect("results.json written");
    let v: Value = serde_json::from_str(&text).expect("results.json is JSON");
    v["results"].as_array().expect("results array").clone()
}

fn scenario_names() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root().join("scenarios"))
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "toml").then(|| p.file_stem()?.to_str().map(str::to_string))?
        })
        .collect();
    v.sort();
    v
}

#[test]
fn every_scenario_replays_bit_for_bit_in_separate_processes_and_seeds_differ() {
    let names = scenario_names();
    assert!(names.len() >= 5, "scenarios: {names:?}");
    let mut runs: Vec<BTreeMap<(String, u64), (String, bool)>> = Vec::new();
    for pass in ["a", "b"] {
        let out = tempdir(&format!("det-{pass}"));
        let mut args: Vec<&str> = vec!["run"];
        args.extend(names.iter().map(String::as_str));
        let out_s = out.to_str().unwrap().to_string();
        args.extend(["--seeds", "1..4", "--out", &out_s]);
        let o = dalp_sim(&args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success(),
            "the scenarios must pass on the current engine:\n{stderr}"
        );
        runs.push(
            results(&out)
                .iter()
                .map(|r| {
                    (
                        (
                            r["scenario"].as_str().unwrap().to_string(),
                            r["seed"].as_u64().unwrap(),
                        ),
                        (
                            r["trace_hash"].as_str().unwrap().to_string(),
                            r["passed"] == true,
                        ),
                    )
                })
                .collect(),
        );
        std::fs::remove_dir_all(out).unwrap();
    }
    assert_eq!(runs[0].len(), names.len() * 3);
    for (k, (hash, passed)) in &runs[0] {
        assert!(passed, "{k:?} failed");
        let verdict = dalp_sim::check::determinism(
            &k.0,
            k.1,
            &[
                ("process 1".into(), hash.clone()),
                ("process 2".into(), runs[1][k].0.clone()),
            ],
        );
        assert!(verdict.held, "{:?}", verdict.violations);
    }
    for name in &names {
        let hashes: std::collections::BTreeSet<&String> =
            (1..4).map(|s| &runs[0][&(name.clone(), s)].0).collect();
        assert_eq!(
            hashes.len(),
            3,
            "{name}: different seeds must give different traces"
        );
    }
}

fn repro(scenario: &str, seed: u64, out: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["repro", scenario, "--seed"];
    let seed_s = seed.to_string();
    args.push(&seed_s);
    let out_s = out.to_str().unwrap().to_string();
    args.extend(["--out", &out_s]);
    args.extend(extra);
    let o = dalp_sim(&args);
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.code().is_some_and(|c| c <= 1),
        "repro crashed:\n{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), stdout)
}

fn trace_of(stdout: &str) -> Vec<Value> {
    let path = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("trace: "))
        .find(|p| p.ends_with(".jsonl"))
        .expect("repro names its JSON-lines trace");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The events of the Chrome timeline repro names.
fn chrome_of(stdout: &str) -> Vec<Value> {
    let path = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("trace: "))
        .find(|p| p.ends_with(".chrome.json"))
        .expect("repro names its Chrome timeline");
    let c: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    c["traceEvents"].as_array().unwrap().clone()
}

#[test]
fn kill_partition_and_failover_show_in_the_trace_and_repro_prints_the_hash() {
    let out = tempdir("faults");
    // Kill: the fault, its heal, and a second start of the killed engine.
    let (ok, stdout) = repro("engine-crash", 1, &out, &[]);
    assert!(ok, "{stdout}");
    let hash = stdout
        .lines()
        .find_map(|l| l.strip_prefix("trace-hash: "))
        .expect("trace-hash line");
    assert_eq!(hash.len(), 64);
    let t = trace_of(&stdout);
    let has = |cat: &str, name: &str| t.iter().any(|e| e["cat"] == cat && e["name"] == name);
    assert!(has("fault", "engine_crash") && has("heal", "engine_crash"));
    assert!(
        t.iter()
            .any(|e| e["cat"] == "engine" && e["node"] == "engine-0" && e["args"]["start"] == 2),
        "engine-0 was killed twice and must have started three times"
    );
    assert!(chrome_of(&stdout)
        .iter()
        .any(|e| e["ph"] == "X" && e["name"] == "engine_crash"));
    // The same seed again: the same hash.
    let (_, again) = repro("engine-crash", 1, &out, &[]);
    assert!(again.contains(&format!("trace-hash: {hash}")));

    // Partition of the lease holder from the database.
    let (ok, stdout) = repro("partition-lease-holder", 1, &out, &[]);
    assert!(ok, "{stdout}");
    let t = trace_of(&stdout);
    let p = t
        .iter()
        .find(|e| e["cat"] == "fault" && e["name"] == "partition")
        .expect("partition traced");
    assert_eq!(p["args"]["fault"]["node"], "engine-0");
    assert!(t
        .iter()
        .any(|e| e["cat"] == "heal" && e["name"] == "partition" && e["dur_ms"] == 25_000));

    // Failover: the primary crashes, the replica is promoted, nothing acknowledged is lost.
    let (ok, stdout) = repro("db-failover-sync", 1, &out, &[]);
    assert!(ok, "{stdout}");
    let t = trace_of(&stdout);
    let f = t
        .iter()
        .find(|e| e["cat"] == "fault" && e["name"] == "db_failover")
        .expect("failover traced");
    assert_eq!(f["args"]["applied"]["promoted"], "db-1");
    assert_eq!(f["args"]["applied"]["loss"]["lost_acknowledged"], 0);
    assert!(
        t.iter().any(|e| e["node"] == "db-1"
            && e["cat"] == "db"
            && e["t_ms"].as_u64().unwrap() > 18_000),
        "the promoted replica takes writes after the failover"
    );
    std::fs::remove_dir_all(out).unwrap();
}

fn hash_of(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("trace-hash: "))
        .expect("trace-hash line")
        .to_string()
}

#[test]
fn engine_logs_go_into_the_trace_when_asked_and_leave_it_alone_when_off() {
    let out = tempdir("logs");
    let (ok, stdout) = repro("engine-crash", 1, &out, &["--log", "debug"]);
    assert!(ok, "{stdout}");
    let logged = hash_of(&stdout);
    let t = trace_of(&stdout);
    let logs: Vec<&Value> = t.iter().filter(|e| e["cat"] == "log").collect();
    assert!(
        logs.iter().any(|e| e["node"] == "engine-0"
            && e["name"] == "info"
            && e["args"]["message"] == "step completed"
            && e["args"]["workflow_id"].is_u64()
            && e["args"]["step"].is_string()
            && e["args"]["attempt"].is_u64()
            && e["t_ms"].as_u64().unwrap() > 0),
        "a completed step is logged on its engine's track with the step's fields"
    );
    assert!(logs.iter().all(
        |e| e["node"].as_str().is_some_and(|n| n.starts_with("engine-"))
            && e["args"]["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("dalp_engine"))
    ));
    assert!(chrome_of(&stdout)
        .iter()
        .any(|e| e["cat"] == "log" && e["ph"] == "i" && e["args"]["message"] == "step completed"));
    // Deterministic with logs: the same seed again, the same hash.
    let (_, again) = repro("engine-crash", 1, &out, &["--log", "debug"]);
    assert_eq!(hash_of(&again), logged);
    // Off: no log events, and the run's hash (a suite run logs nothing unless asked), which is
    // the logged trace without its log events: logging does not change the run.
    let (_, off) = repro("engine-crash", 1, &out, &["--log", "off"]);
    let off_hash = hash_of(&off);
    assert_ne!(off_hash, logged);
    let quiet = trace_of(&off);
    assert!(quiet.iter().all(|e| e["cat"] != "log"));
    let without_logs: Vec<&Value> = t.iter().filter(|e| e["cat"] != "log").collect();
    assert_eq!(without_logs, quiet.iter().collect::<Vec<_>>());
    let run_out = out.join("run");
    let out_s = run_out.to_str().unwrap().to_string();
    let o = dalp_sim(&["run", "engine-crash", "--seeds", "1..2", "--out", &out_s]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(results(&run_out)[0]["trace_hash"], off_hash.as_str());
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn a_malformed_scenario_gets_an_error_naming_file_field_and_reason_and_writes_nothing() {
    let dir = tempdir("bad");
    let cases = [
        (
            "engines = 2",
            "engines = 2\nspare_engines = 1",
            "spare_engines",
            "unknown field",
        ),
        (
            "kind = \"engine_crash\"",
            "kind = \"engine_meltdown\"",
            "kind",
            "engine_meltdown",
        ),
        (
            "node = \"engine-1\"",
            "node = \"engine-9\"",
            "faults[0].node",
            "engine-9",
        ),
        (
            "rpc_endpoints = 2",
            "rpc_endpoints = 0",
            "topology.rpc_endpoints",
            "1 to 4",
        ),
    ];
    let good = "name = \"bad\"\ndescription = \"d\"\n[topology]\nengines = 2\nrpc_endpoints = 2\n[workload]\ntokens = 1\noperations = 2\nsubmit_window_s = 5\n[durations]\nfault_phase_s = 10\nliveness_bound_s = 10\n[[faults]]\nkind = \"engine_crash\"\nnode = \"engine-1\"\nat_s = 1\n";
    for (from, to, field, reason) in cases {
        let file = dir.join("bad.toml");
        std::fs::write(&file, good.replace(from, to)).unwrap();
        let out = dir.join("out");
        let o = dalp_sim(&[
            "run",
            file.to_str().unwrap(),
            "--seeds",
            "1",
            "--out",
            out.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("bad.toml"), "names the file: {stderr}");
        assert!(stderr.contains(field), "names the field {field}: {stderr}");
        assert!(stderr.contains(reason), "says why ({reason}): {stderr}");
        assert!(!out.join("results.json").exists(), "nothing half-written");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// The only engine is killed before it can finish the first issuance and stays down until the
/// heal instant; the liveness bound is too short for the restarted engine to finish it (its old
/// lease must expire first): durability fails. The other faults are noise.
const FAILS_DURABILITY: &str = r#"
name = "min"
description = "minimisation fixture"
covers = ["FM-ENGINE-CRASH"]
invariants = ["durability"]
[topology]
engines = 1
rpc_endpoints = 2
block_time_ms = 1000
[workload]
tokens = 1
operations = 4
submit_window_s = 10
[durations]
fault_phase_s = 40
liveness_bound_s = 0.5
[[faults]]
kind = "rpc_lag"
endpoint = "rpc-1"
at_s = 0.5
for_s = 3
blocks = 2
[[faults]]
kind = "engine_crash"
node = "engine-0"
at_s = 1.5
[[faults]]
kind = "clock_skew"
node = "engine-0"
skew_ms = 30000
at_s = 3
for_s = 5
"#;

/// `--minimize` writes a standalone scenario that parses, validates, pins the seed, keeps the
/// fault that matters, and fails again on the same invariant when replayed by itself;
/// `--save-regression` keeps the same file under the scenarios' `regressions/`.
#[test]
fn minimize_writes_a_standalone_scenario_that_reproduces_the_violation() {
    let dir = tempdir("min");
    let file = dir.join("min.toml");
    std::fs::write(&file, FAILS_DURABILITY).unwrap();
    let scen = dir.join("scenarios");
    std::fs::create_dir_all(&scen).unwrap();
    let (ok, stdout) = repro(
        file.to_str().unwrap(),
        1,
        &dir,
        &[
            "--minimize",
            "--max-trials",
            "40",
            "--save-regression",
            "min-crash",
            "--scenarios",
            scen.to_str().unwrap(),
        ],
    );
    assert!(!ok, "the fixture must fail:\n{stdout}");
    assert!(stdout.contains("VIOLATED durability"), "{stdout}");
    assert!(stdout.contains("shrunk in "), "{stdout}");
    let written = stdout
        .lines()
        .find_map(|l| l.strip_prefix("wrote "))
        .and_then(|l| l.strip_suffix(" (reproduces: violated durability)"))
        .unwrap_or_else(|| panic!("names the file and the violation:\n{stdout}"));
    let s = dalp_sim::scenario::Scenario::load(Path::new(written)).expect("parses and validates");
    assert_eq!(s.seed, Some(1));
    assert!(s.random.is_none());
    // The liveness bound of 0.5 s is the fixture's real defect: with a shorter fault phase the
    // last operation cannot finish in it, crash or not, so the shrinker may drop every fault.
    let kinds: Vec<&str> = s.faults.iter().map(|f| f.kind().as_str()).collect();
    assert!(kinds.is_empty() || kinds == ["engine_crash"], "{stdout}");
    assert!(
        s.workload.operations < 4 && s.durations.fault_phase_s < 40.0,
        "{stdout}"
    );
    assert_eq!(
        s.durations.liveness_bound_s, 0.5,
        "never shortened nor lengthened"
    );
    let kept = scen.join("regressions/min-crash.toml");
    assert_eq!(
        std::fs::read_to_string(&kept).unwrap(),
        std::fs::read_to_string(written).unwrap()
    );
    let cmd = stdout
        .lines()
        .find_map(|l| l.strip_prefix("reproduce: "))
        .expect("prints the command");
    assert!(
        cmd.ends_with(&format!("{} --seed 1", kept.display())),
        "{cmd}"
    );
    // Replayed by itself, without --minimize: the same invariant fails.
    let (ok, again) = repro(kept.to_str().unwrap(), 1, &dir.join("again"), &[]);
    assert!(!ok && again.contains("VIOLATED durability"), "{again}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn fail_fast_starts_no_run_after_the_first_failure() {
    let dir = tempdir("fail-fast");
    let file = dir.join("min.toml");
    std::fs::write(&file, FAILS_DURABILITY).unwrap();
    let out = dir.join("out");
    let o = dalp_sim(&[
        "run",
        file.to_str().unwrap(),
        "engine-crash",
        "--seeds",
        "1..3",
        "--jobs",
        "1",
        "--fail-fast",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    // Two runs of the failing fixture and two of engine-crash, each of those with its fault-free
    // baseline: all but the first are left.
    assert!(
        stderr.contains("5 of 6 planned runs (baselines included) were not started"),
        "{stderr}"
    );
    assert!(
        stderr.contains("FAILED min seed 1: durability failed"),
        "{stderr}"
    );
    let runs = results(&out);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["passed"], false);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn run_writes_results_junit_and_the_catalog_report() {
    let out = tempdir("ci-outputs");
    let out_s = out.to_str().unwrap();
    let o = dalp_sim(&[
        "run",
        "engine-crash",
        "rpc-node-down",
        "--seeds",
        "1..3",
        "--out",
        out_s,
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    // Not a terminal: one plain line per finished run.
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with('[')).count(),
        4,
        "{stderr}"
    );

    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(doc["schema"], "dalp-sim/results/v2");
    assert_eq!(doc["summary"]["runs"], 4);
    assert_eq!(doc["summary"]["passed"], 4);
    assert_eq!(doc["summary"]["failed"], 0);
    for r in doc["results"].as_array().unwrap() {
        assert_eq!(r["outcome"], "pass", "{r}");
        let expected = if r["scenario"] == "engine-crash" {
            "FM-ENGINE-CRASH"
        } else {
            "FM-RPC-NODE-DOWN"
        };
        assert_eq!(r["covers"], serde_json::json!([expected]));
        assert_eq!(r["data_loss_window_ms"], 0);
        assert!(r["recovery_ms"].is_u64(), "{r}");
        assert!(r["repro"]
            .as_str()
            .unwrap()
            .starts_with("cargo xtask sim repro"));
        assert_eq!(r["trace_hash"].as_str().unwrap().len(), 64);
    }

    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert!(junit.starts_with("<?xml"));
    assert!(
        junit.contains("<testsuites name=\"dalp-sim\" tests=\"4\" failures=\"0\" errors=\"0\""),
        "{junit}"
    );
    assert_eq!(junit.matches("<testcase ").count(), 4);
    for s in ["engine-crash", "rpc-node-down"] {
        for seed in [1, 2] {
            assert!(junit.contains(&format!("<testcase classname=\"{s}\" name=\"seed {seed}\"")));
        }
    }
    assert!(!junit.contains("<failure"));

    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let section = md
        .split("## FM-ENGINE-CRASH\n")
        .nth(1)
        .expect("a section for FM-ENGINE-CRASH")
        .split("\n## ")
        .next()
        .unwrap();
    assert!(section.contains("| scenario | seeds run |"), "{section}");
    assert!(
        section.contains("| `engine-crash` | 2 (1–2) | 2 / 0 |"),
        "{section}"
    );
    assert!(md.contains("**PASS**: 4 runs of 2 scenarios"), "{md}");
    assert!(
        md.contains("## FM-STEP-TRANSIENT\n\n**Not covered**"),
        "{md}"
    );
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<h2>FM-ENGINE-CRASH</h2>"));
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn report_merges_the_results_of_shards() {
    let dir = tempdir("shards");
    for i in 0..2 {
        let out = dir.join(format!("shard-{i}"));
        let shard = format!("{i}/2");
        let o = dalp_sim(&[
            "run",
            "engine-crash",
            "rpc-node-down",
            "--seeds",
            "1..3",
            "--shard",
            &shard,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(results(&out).len(), 2);
    }
    let merged = dir.join("merged");
    let a = dir.join("shard-0/results.json");
    let b = dir.join("shard-1/results.json");
    let o = dalp_sim(&[
        "report",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        // A shard given twice is counted once.
        a.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(merged.join("results.json")).unwrap())
            .unwrap();
    assert_eq!(doc["schema"], "dalp-sim/results/v2");
    assert_eq!(doc["summary"]["runs"], 4);
    assert_eq!(doc["summary"]["passed"], 4);
    assert_eq!(doc["summary"]["duplicates_dropped"], 2);
    let keys: Vec<(String, u64)> = results(&merged)
        .iter()
        .map(|r| {
            (
                r["scenario"].as_str().unwrap().to_string(),
                r["seed"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        vec![
            ("engine-crash".to_string(), 1),
            ("engine-crash".to_string(), 2),
            ("rpc-node-down".to_string(), 1),
            ("rpc-node-down".to_string(), 2),
        ]
    );
    let junit = std::fs::read_to_string(merged.join("junit.xml")).unwrap();
    assert!(
        junit.contains("tests=\"4\" failures=\"0\" errors=\"0\""),
        "{junit}"
    );
    let md = std::fs::read_to_string(merged.join("report.md")).unwrap();
    assert!(md.contains("**PASS**: 4 runs of 2 scenarios"), "{md}");
    assert!(md.contains("merged from 3 file(s)"), "{md}");
    assert!(merged.join("report.html").exists());
    std::fs::remove_dir_all(dir).unwrap();
}

/// The shard and merge commands of the nightly workflow (.github/workflows/nightly.yml), as
/// declared there and in the Kubernetes Indexed Job, run one after another on a small suite: the
/// merged results are exactly the single-machine ones (same runs, same trace hashes), empty
/// shards included.
#[test]
fn the_declared_shard_commands_merge_to_the_single_machine_results() {
    let wf = std::fs::read_to_string(root().join(".github/workflows/nightly.yml")).unwrap();
    let step = |prefix: &str| -> String {
        wf.lines()
            .find_map(|l| {
                l.trim_start()
                    .strip_prefix("run: ")
                    .filter(|c| c.starts_with(prefix))
            })
            .unwrap_or_else(|| panic!("the workflow declares no `run: {prefix}…` step"))
            .to_string()
    };
    let shards: Vec<String> = wf
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("shard: ["))
        .expect("the workflow declares a shard matrix")
        .trim_end_matches(']')
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let (run, merge) = (step(".ci/nightly-shard"), step(".ci/nightly-merge"));
    assert!(
        run.contains(&format!(" {} ", shards.len())),
        "the shard count in `{run}` is not the matrix's {}",
        shards.len()
    );
    let k8s = std::fs::read_to_string(root().join("deploy/k8s/nightly-shards.yaml")).unwrap();
    assert!(
        k8s.contains(&format!("completions: {}", shards.len())),
        "{k8s}"
    );
    assert!(
        k8s.contains(&format!(
            ".ci/nightly-shard \"$JOB_COMPLETION_INDEX\" {} ",
            shards.len()
        )),
        "{k8s}"
    );

    let dir = tempdir("matrix");
    let (suite, seeds) = ("engine-crash rpc-node-down", "1..4");
    let sh = |cmd: String| {
        let cmd = cmd
            .replace("shards/", &format!("{}/shards/", dir.display()))
            .replace("reports/nightly", &format!("{}/merged", dir.display()));
        let o = Command::new("bash")
            .args(["-c", &cmd])
            .env("DALP_SIM_BIN", sim_bin())
            .env("DALP_NIGHTLY_SUITE", suite)
            .env("DALP_NIGHTLY_SEEDS", seeds)
            .current_dir(root())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    for s in &shards {
        sh(run.replace("${{ matrix.shard }}", s));
    }
    sh(merge);
    let single = dir.join("single");
    let o = dalp_sim(&[
        "run",
        "engine-crash",
        "rpc-node-down",
        "--seeds",
        seeds,
        "--out",
        single.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let key = |runs: Vec<Value>| -> Vec<String> {
        let mut k: Vec<String> = runs
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} {}",
                    r["scenario"], r["seed"], r["passed"], r["trace_hash"]
                )
            })
            .collect();
        k.sort();
        k
    };
    let merged = key(results(&dir.join("merged")));
    assert_eq!(merged.len(), 6, "{merged:?}");
    assert_eq!(merged, key(results(&single)));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn isolation_compares_a_run_with_its_fault_free_baseline() {
    let out = tempdir("isolation");
    let o = dalp_sim(&[
        "run",
        "rpc-node-down",
        "--seeds",
        "1..2",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("(+1 fault-free baselines)"), "{stderr}");
    let rs = results(&out);
    assert_eq!(
        rs.len(),
        1,
        "the baseline is kept under its run, not as a run"
    );
    let r = &rs[0];
    let iso = r["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["invariant"] == "isolation")
        .expect("an isolation verdict");
    assert_eq!(iso["held"], true, "{iso}");
    assert!(
        iso["checked"]
            .as_str()
            .unwrap()
            .contains("rpc_down rpc-0 5.000 s–25.000 s"),
        "{iso}"
    );
    let b = &r["baseline"];
    assert_eq!(b["passed"], true, "{b}");
    assert_eq!(b["trace_hash"].as_str().unwrap().len(), 64);
    assert_ne!(
        b["trace_hash"], r["trace_hash"],
        "the baseline has no faults"
    );
    // The per-run data the comparison reads.
    assert_eq!(r["fault_windows"][0]["start_ms"], 5000, "{r}");
    assert_eq!(r["fault_windows"][0]["end_ms"], 25000, "{r}");
    assert!(r["ops"].as_array().unwrap().len() >= 30);
    let w = &r["isolation"]["windows"][0];
    assert!(w["baseline_finished"].as_u64().unwrap() >= 3, "{w}");
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn a_reader_closing_the_pipe_early_ends_the_listing_quietly() {
    // The reading end is closed before dalp-sim writes a byte (`dalp-sim list | head -0`), so
    // its first write meets EPIPE whatever the timing.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(sim_bin())
        .arg("list")
        .current_dir(root())
        .stdout(writer)
        .output()
        .expect("run dalp-sim list");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.is_empty(),
        "closed pipe: {}, stderr: {err}",
        out.status
    );
}

/// Seeds the `nightly` suite once failed on the unmodified engine, each pinned to its cause's
/// fix so it can never come back unseen.
#[test]
fn nightly_regression_seeds_pass() {
    // (scenario, seed, cause). Model bug — a planned switchover stopped the demoted primary's
    // log shipping, so the replica was promoted without the tail and the demoted primary later
    // replayed the new timeline on a forked state ("replica diverged applying lsn …").
    let cases: &[(&str, u64, &str)] = &[
        ("db-read-only", 11, "switchover tail not shipped"),
        ("db-read-only", 14, "switchover tail not shipped"),
        ("db-read-only", 26, "switchover tail not shipped"),
        ("db-read-only", 38, "switchover tail not shipped"),
        ("db-read-only", 42, "switchover tail not shipped"),
        ("db-read-only", 43, "switchover tail not shipped"),
        // Checker bug — isolation judged work that waited on the crashed engine (a token's
        // issuance it held until its lease expired), or a 2 s counting span (1 against 3).
        (
            "engine-crash",
            4,
            "isolation: work held by the crashed engine judged",
        ),
        ("engine-crash", 6, "isolation: 2 s counting span judged"),
        ("engine-crash", 11, "isolation: 2 s counting span judged"),
        (
            "engine-crash",
            25,
            "isolation: dependent work or a short span judged",
        ),
        (
            "engine-crash",
            29,
            "isolation: dependent work or a short span judged",
        ),
        (
            "engine-crash",
            31,
            "isolation: dependent work or a short span judged",
        ),
        (
            "engine-crash",
            40,
            "isolation: dependent work or a short span judged",
        ),
        (
            "engine-crash",
            44,
            "isolation: dependent work or a short span judged",
        ),
        (
            "engine-crash",
            48,
            "isolation: dependent work or a short span judged",
        ),
        (
            "partition-one-way",
            14,
            "isolation: 2 s counting span judged",
        ),
        (
            "partition-one-way",
            36,
            "isolation: 2 s counting span judged",
        ),
        (
            "partition-one-way",
            50,
            "isolation: 2 s counting span judged",
        ),
        // Checker bug — visibility judged a 3 s eth_call 503 that no eth_call met.
        ("step-transient", 6, "visibility: fault met no request"),
        // Engine bug (found by valid_work at 200 seeds) — a compliance "no" taken as final while
        // a reorg-dropped registration of ours waited behind in-flight transactions.
        (
            "random-chaos",
            87,
            "engine: compliance decided on an unsettled chain",
        ),
        // Engine bug — canTransfer asked of an endpoint 19 blocks behind, where the token had no
        // code yet: the empty answer was read as a permanent error and blocked transfers were
        // dead-lettered instead of failing closed once answered on the current chain.
        (
            "random-chaos",
            80,
            "engine: a call answered with no data taken as final",
        ),
        // Engine bug (found by the first swarm seeds) — the only RPC endpoint fell 10 blocks
        // behind; a resumed step's send said "nonce too low", the lagging node knew no receipt
        // for our mined transaction, and the engine re-signed the step at a new nonce: two mints.
        (
            "swarm",
            32,
            "engine: a sole endpoint that fell behind believed about a receipt",
        ),
        // Harness bug — the swarm's liveness bound ignored the drawn capacity (one engine,
        // concurrency 1: 58 operations one transaction at a time).
        (
            "swarm",
            38,
            "harness: liveness bound blind to a drawn concurrency of 1",
        ),
        // Engine bug — "nonce too low" and no receipt from the only endpoint, which had fallen
        // behind since the last health probe: the engine re-signed at once (two effects). It
        // now hands the transaction to the confirmation check, which resynchronises only after
        // seeing its nonce taken without our receipt twice.
        (
            "swarm",
            182,
            "engine: nonce too low without a receipt taken as someone else's use",
        ),
        (
            "swarm",
            211,
            "engine: nonce too low without a receipt taken as someone else's use",
        ),
        // Harness bugs — madsim's restart keeps the old process's sockets (a fault point's
        // restart timer overlapping a scheduled crash: "address already in use"); the failover
        // checker judged the failover attempt of a call sent into a partition.
        (
            "swarm",
            226,
            "harness: restarted engine found its port bound",
        ),
        (
            "swarm",
            161,
            "failover: a call sent into a partition judged",
        ),
        // Harness bug — reply tags were unique per client only: a restarted engine's new client
        // (same port) took a late reply to its predecessor's request as its own ("database
        // reply to tx_by_nonce has the wrong shape"), and blocked transfers were dead-lettered.
        (
            "swarm",
            889,
            "harness: a late reply matched a restarted client's request",
        ),
        (
            "swarm",
            1463,
            "engine: a node fallen behind since the last probe answered a compliance call",
        ),
    ];
    let mut failed = Vec::new();
    for (scenario, seed, cause) in cases {
        let out = tempdir(&format!("regression-{scenario}-{seed}"));
        let o = dalp_sim(&[
            "run",
            scenario,
            "--seeds",
            &format!("{seed}..{}", seed + 1),
            "--out",
            out.to_str().unwrap(),
        ]);
        if !o.status.success() {
            failed.push(format!(
                "{scenario} seed {seed} ({cause}): {}\n{}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ));
        }
    }
    assert!(failed.is_empty(), "regressions:\n{}", failed.join("\n"));
}
