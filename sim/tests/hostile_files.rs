//! Adversarial scenario files through the `dalp-sim` binary (built with `--cfg madsim`): whatever
//! the file says, the process ends within a bound with exit code 0 (every invariant held), 1 (a
//! run failed, timed out or crashed: reported as such) or 2 (the file was refused, with the file
//! named), and never panics. The unit property test `scenario::hostile_numbers` covers the
//! numbers one by one; this one mutates whole files and runs them, so a value that passes
//! validation but breaks the world, the plan or the checkers is found too.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{root, sim_bin};

/// A small valid scenario touching every section the mutations aim at.
const BASE: &str = r#"name = "hostile-file"
description = "a file the test mutates"
covers = ["FM-ENGINE-CRASH"]
invariants = ["durability", "exactly_once", "nonce_safety"]
[topology]
engines = 2
db_replicas = 1
replication = "async"
replication_lag_ms = 200
rpc_endpoints = 2
block_time_ms = 1000
finality_depth = 2
[engine]
lease_ms = 5000
max_attempts = 5
[workload]
tokens = 1
operations = 4
submit_window_s = 4
[durations]
fault_phase_s = 10
liveness_bound_s = 60
[random]
window_s = [0, 8]
duration_s = [1, 3]
rate_per_min = { engine_crash = 2, rpc_down = 2 }
[[faults]]
kind = "rpc_lag"
endpoint = "rpc-1"
at_s = 1
for_s = 3
blocks = 2
[[faults]]
kind = "reorg"
at_s = 5
depth = 2
[expect]
max_dead_letters = 0
"#;

/// Values that have broken parsers and simulators before: extremes, signs, non-numbers.
const HOSTILE: &[&str] = &[
    "0",
    "-1",
    "1e308",
    "-1e308",
    "nan",
    "inf",
    "4294967295",
    "18446744073709551615",
    "0.0001",
    "\"\"",
    "\"x\"",
    "[]",
    "{}",
    "true",
    "[1, 2, 3]",
    "\"engine-9\"",
    "\"rpc-7\"",
    "\"\\u0000\"",
    "1e-320",
    "99999999999",
];

/// Ordinary numbers, put only where a number was: files that load and must run.
const LEGAL: &[&str] = &[
    "1", "2", "3", "0.5", "7", "30", "120", "600", "1000", "5000",
];

#[derive(Clone, Debug)]
enum Mutation {
    /// Line `n`'s value replaced by a hostile one.
    Value(usize, usize),
    /// Line `n`'s number replaced by another ordinary one.
    Number(usize, usize),
    /// Line `n` removed.
    Drop(usize),
    /// Line `n` repeated (a duplicate key or table).
    Repeat(usize),
    /// Line `n`'s key renamed to one nobody declared.
    UnknownKey(usize),
    /// The file cut after `n` per mille of its bytes.
    Truncate(u16),
    /// Bytes that are not UTF-8 at line `n`.
    Garbage(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => (any::<usize>(), 0..HOSTILE.len()).prop_map(|(n, v)| Mutation::Value(n, v)),
        6 => (any::<usize>(), 0..LEGAL.len()).prop_map(|(n, v)| Mutation::Number(n, v)),
        2 => any::<usize>().prop_map(Mutation::Drop),
        1 => any::<usize>().prop_map(Mutation::Repeat),
        1 => any::<usize>().prop_map(Mutation::UnknownKey),
        1 => (0u16..1000).prop_map(Mutation::Truncate),
        1 => any::<usize>().prop_map(Mutation::Garbage),
    ]
}

fn apply(text: &[u8], m: &Mutation) -> Vec<u8> {
    let s = String::from_utf8_lossy(text).into_owned();
    let mut lines: Vec<String> = s.lines().map(str::to_string).collect();
    let pick = |n: usize| n % lines.len().max(1);
    match m {
        Mutation::Value(n, v) => {
            let i = pick(*n);
            if let Some((k, _)) = lines[i].split_once(" = ") {
                lines[i] = format!("{k} = {}", HOSTILE[*v]);
            }
        }
        Mutation::Number(n, v) => {
            let i = pick(*n);
            if let Some((k, old)) = lines[i].split_once(" = ") {
                if old.parse::<f64>().is_ok() {
                    lines[i] = format!("{k} = {}", LEGAL[*v]);
                }
            }
        }
        Mutation::Drop(n) => {
            let i = pick(*n);
            lines.remove(i);
        }
        Mutation::Repeat(n) => {
            let i = pick(*n);
            let l = lines[i].clone();
            lines.insert(i, l);
        }
        Mutation::UnknownKey(n) => {
            let i = pick(*n);
            if let Some((_, v)) = lines[i].split_once(" = ") {
                lines[i] = format!("no_such_field = {v}");
            }
        }
        Mutation::Truncate(per_mille) => {
            let cut = s.len() * *per_mille as usize / 1000;
            return text[..cut.min(text.len())].to_vec();
        }
        Mutation::Garbage(n) => {
            let i = pick(*n);
            let mut out = lines[..i].join("\n").into_bytes();
            out.extend_from_slice(b"\n\xff\xfe\x00garbage = \xc3\x28\n");
            out.extend_from_slice(lines[i..].join("\n").as_bytes());
            return out;
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out.into_bytes()
}

/// How long one file may take end to end: the parent's own limit on a child is set to 30 s.
const BOUND: Duration = Duration::from_secs(90);

#[test]
fn any_scenario_file_ends_within_a_bound_with_exit_0_1_or_2_and_never_a_panic() {
    let bin = sim_bin();
    let dir = std::env::temp_dir().join(format!("dalp-sim-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The mutations are drawn from a fixed seed: a failure names the case, and rerunning the
    // test reproduces it (PROPTEST_CASES raises the count).
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(48);
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    let codes = std::cell::RefCell::new([0usize; 3]);
    let strategy = (proptest::collection::vec(mutation(), 1..4), 1u64..1000);
    runner
        .run(&strategy, |(mutations, seed)| {
            let mut text = BASE.as_bytes().to_vec();
            for m in &mutations {
                text = apply(&text, m);
            }
            let file = dir.join("hostile.toml");
            std::fs::write(&file, &text).unwrap();
            let out = dir.join("out");
            let _ = std::fs::remove_dir_all(&out);
            let started = Instant::now();
            let mut child = Command::new(bin)
                .args(["run"])
                .arg(&file)
                .args(["--seeds", &format!("{seed}..{}", seed + 1), "--out"])
                .arg(&out)
                .env("DALP_SIM_CHILD_TIMEOUT_S", "30")
                .current_dir(root())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run dalp-sim");
            let status = loop {
                if let Some(s) = child.try_wait().unwrap() {
                    break s;
                }
                if started.elapsed() > BOUND {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(TestCaseError::fail(format!(
                        "still running after {BOUND:?} on {mutations:?} seed {seed}:\n{}",
                        String::from_utf8_lossy(&text)
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            let code = status.code();
            prop_assert!(
                matches!(code, Some(0..=2)),
                "exit {code:?} on {mutations:?} seed {seed}:\n{}\n{stderr}",
                String::from_utf8_lossy(&text)
            );
            prop_assert!(
                !stderr.contains("panicked"),
                "a panic on {mutations:?} seed {seed}:\n{}\n{stderr}",
                String::from_utf8_lossy(&text)
            );
            if code == Some(2) {
                prop_assert!(
                    stderr.contains("hostile.toml"),
                    "a refused file is named: {stderr}"
                );
                prop_assert!(!out.join("results.json").exists(), "nothing half-written");
            }
            codes.borrow_mut()[code.unwrap() as usize] += 1;
            Ok(())
        })
        .unwrap();
    let codes = codes.into_inner();
    eprintln!(
        "hostile files: {} passed, {} failed a run, {} refused",
        codes[0], codes[1], codes[2]
    );
    // The mix must include files that load and run, not only refusals: otherwise the test
    // would say nothing about the simulator.
    assert!(codes[0] + codes[1] > 0, "no mutated file ran: {codes:?}");
    assert!(codes[2] > 0, "no mutated file was refused: {codes:?}");
    std::fs::remove_dir_all(dir).unwrap();
}
