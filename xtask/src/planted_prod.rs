//! Planted bugs in the production code the simulation does not run: the PostgreSQL store
//! (`engine/src/store/pg.rs`: the simulation runs the engine against its database model) and
//! the HTTP API (`engine/src/api/`: the simulation's clients call the engine directly). A bug
//! there is invisible to the `ci` suite; what guards it is a test binary against the real thing:
//! the store conformance test (the model and `PgStore` on a real PostgreSQL, reply by reply, with
//! the store's contract and concurrency tests) and the API test (hostile HTTP against a served
//! engine). Each patch of a [`TIERS`] directory must make its test binary fail.
//!
//! The copy of HEAD is built in its own target dir: cargo names a workspace crate's artifacts by
//! its path relative to the workspace root, so a copy sharing the main tree's target dir could
//! take the other's crates for fresh. Incremental compilation is on there (only the engine and
//! its dependents change between bugs), whatever the caller set.

use crate::{git_apply, log_to, niced, root, PlantedOutcome};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Production code the simulation does not run, and the test binary guarding it.
pub struct Tier {
    /// The bugs' directory under `fixtures/planted-bugs/`, and their name prefix.
    pub name: &'static str,
    /// The `dalp-integration` test binary that must fail.
    pub test: &'static str,
}

pub const TIERS: [Tier; 2] = [
    Tier {
        name: "store",
        test: "store_conformance",
    },
    Tier {
        name: "api",
        test: "api_http",
    },
];

/// The seed of a random (proptest) test in these runs: a verdict that does not depend on the
/// run, the same cases every time.
const SEED: &str = "1";

/// A selected bug: its tier and patch.
pub struct Bug {
    tier: &'static Tier,
    patch: PathBuf,
}

/// The tiers' planted bugs named (all when none is; a name may carry its tier's prefix,
/// `store/NAME`).
pub fn select(names: &[&str]) -> Result<Vec<Bug>, String> {
    let mut bugs = Vec::new();
    for tier in &TIERS {
        let dir = root().join("fixtures/planted-bugs").join(tier.name);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        };
        let prefix = format!("{}/", tier.name);
        let mut patches: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "patch"))
            .filter(|p| {
                names.is_empty()
                    || names.iter().any(|n| {
                        p.file_stem()
                            .is_some_and(|s| s == n.strip_prefix(prefix.as_str()).unwrap_or(n))
                    })
            })
            .collect();
        patches.sort();
        bugs.extend(patches.into_iter().map(|patch| Bug { tier, patch }));
    }
    Ok(bugs)
}

/// Apply each bug's patch to a copy of HEAD's committed tree, run its tier's test binary, and
/// take the patch out again; each outcome goes to `outcomes` (named `TIER/NAME`). Each tier's
/// test must pass on the copy first. A patch that does not apply or does not build is an error,
/// not a catch.
pub fn each(bugs: &[Bug], outcomes: &mut Vec<PlantedOutcome>) -> Result<(), String> {
    if bugs.is_empty() {
        return Ok(());
    }
    let root = root();
    let work = root.join("target/planted/prod-src");
    let target = root.join("target/planted/prod-target");
    let logs = root.join("target/planted");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    crate::run(
        Command::new("sh")
            .current_dir(&root)
            .arg("-c")
            .arg(format!("git archive HEAD | tar -x -C '{}'", work.display())),
    )?;
    for tier in TIERS
        .iter()
        .filter(|t| bugs.iter().any(|b| b.tier.name == t.name))
    {
        let started = std::time::Instant::now();
        eprintln!(
            "xtask: {} tier: building {} in a copy of HEAD ({})",
            tier.name,
            tier.test,
            target.display()
        );
        let head_log = logs.join(format!("{}-committed.log", tier.name));
        build(tier, &work, &target, &head_log)?;
        // A test that fails on HEAD itself would make every bug look caught.
        let failed = test(tier, &work, &target, &head_log)?;
        if !failed.is_empty() {
            return Err(format!(
                "{} fails on HEAD itself ({}; see {}): no planted bug can be judged by it",
                tier.test,
                failed.join(", "),
                head_log.display()
            ));
        }
        eprintln!(
            "xtask: {} built and passed on HEAD in {} s",
            tier.test,
            started.elapsed().as_secs()
        );
        for bug in bugs.iter().filter(|b| b.tier.name == tier.name) {
            let stem = bug.patch.file_stem().unwrap().to_string_lossy().to_string();
            let name = format!("{}/{stem}", tier.name);
            let started = std::time::Instant::now();
            git_apply(&work, &bug.patch, false)?;
            let log = logs.join(format!("{}-{stem}.log", tier.name));
            let tried =
                build(tier, &work, &target, &log).and_then(|()| test(tier, &work, &target, &log));
            git_apply(&work, &bug.patch, true)?;
            let failed = tried.map_err(|e| format!("planted bug {name}: {e}"))?;
            let took = started.elapsed().as_secs();
            if failed.is_empty() {
                eprintln!(
                    "xtask: `{name}` NOT caught: every {} test passed with it ({took} s; see {})",
                    tier.test,
                    log.display()
                );
                outcomes.push(PlantedOutcome {
                    name,
                    failure: None,
                });
            } else {
                let failure = format!("{} seed {SEED}: {} failed", tier.test, failed.join(", "));
                eprintln!("xtask: `{name}` caught: {failure} ({took} s)");
                outcomes.push(PlantedOutcome {
                    name,
                    failure: Some(failure),
                });
            }
        }
    }
    Ok(())
}

fn cargo_test(tier: &Tier, work: &Path, target: &Path) -> Command {
    let mut c = niced(crate::cargo_program());
    c.current_dir(work)
        .env("CARGO_TARGET_DIR", target)
        .env("CARGO_INCREMENTAL", "1")
        .args(["test", "-p", "dalp-integration", "--test", tier.test]);
    c
}

/// Build the tier's test binary from the copy as it stands.
fn build(tier: &Tier, work: &Path, target: &Path, log: &Path) -> Result<(), String> {
    let mut c = cargo_test(tier, work, target);
    c.arg("--no-run");
    log_to(&mut c, log)?;
    let status = c.status().map_err(|e| format!("cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "the build failed ({status}); see {}",
            log.display()
        ))
    }
}

/// Run the tests (they start PostgreSQL or the engine themselves); the names of those that
/// failed, empty when all passed. A run that ends without a test verdict is an error.
fn test(tier: &Tier, work: &Path, target: &Path, log: &Path) -> Result<Vec<String>, String> {
    let mut c = cargo_test(tier, work, target);
    // The verdict needs a failing case, not the smallest one: no shrinking (each step of the
    // store's is a fresh database).
    c.env("PROPTEST_RNG_SEED", SEED)
        .env("CONFORMANCE_SHRINK_ITERS", "0");
    log_to(&mut c, log)?;
    let status = c.status().map_err(|e| format!("cargo: {e}"))?;
    // The tests' servers are gone with them; their scratch directories (a PostgreSQL data
    // directory of ~300 MB per test) would add up to gigabytes over the bugs.
    let _ = std::fs::remove_dir_all(work.join("target/dalp-real"));
    let text = std::fs::read_to_string(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let failed = failed_tests(&text);
    match (status.success(), failed.is_empty()) {
        (true, true) | (false, false) => Ok(failed),
        _ => Err(format!(
            "{} exited {status} with {} failed tests; see {}",
            tier.test,
            failed.len(),
            log.display()
        )),
    }
}

/// The tests libtest reported failed (`test NAME ... FAILED`), in its order.
fn failed_tests(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("test ")?.strip_suffix(" ... FAILED"))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_tests_are_read_from_libtests_lines() {
        let text = "running 3 tests\ntest a ... ok\ntest b_c ... FAILED\ntest d ... FAILED\n\nfailures:\n    b_c\n";
        assert_eq!(failed_tests(text), vec!["b_c", "d"]);
        assert!(failed_tests("test a ... ok\n").is_empty());
    }
}
