//! Planted bugs in the code the simulation does not run: the PostgreSQL store
//! (`engine/src/store/pg.rs`). The simulation runs the engine against its database model, so a
//! bug in the SQL is invisible to the `ci` suite; what guards it is the store conformance test
//! (`tests/tests/store_conformance.rs`: the model and `PgStore` on a real PostgreSQL, reply by
//! reply, plus the store's contract and concurrency tests). Each patch in
//! `fixtures/planted-bugs/store/` must make that test binary fail.
//!
//! The copy of HEAD is built in its own target dir: cargo names a workspace crate's artifacts by
//! its path relative to the workspace root, so a copy sharing the main tree's target dir could
//! take the other's crates for fresh. Incremental compilation is on there (only the engine and
//! its dependents change between bugs), whatever the caller set.

use crate::{git_apply, log_to, niced, root, PlantedOutcome};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the store's planted bugs live.
pub const DIR: &str = "fixtures/planted-bugs/store";

/// The test binary that must fail, and the seed of its random differential test in these runs
/// (a verdict that does not depend on the run: the same cases every time).
const TEST: &str = "store_conformance";
const SEED: &str = "1";

/// The store's planted bugs named (all when none is; a name may carry the `store/` prefix).
pub fn select(names: &[&str]) -> Result<Vec<PathBuf>, String> {
    let dir = root().join(DIR);
    let mut patches: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "patch"))
            .filter(|p| {
                names.is_empty()
                    || names.iter().any(|n| {
                        p.file_stem()
                            .is_some_and(|s| s == n.strip_prefix("store/").unwrap_or(n))
                    })
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    patches.sort();
    Ok(patches)
}

/// Apply each patch to a copy of HEAD's committed tree, run the store conformance test binary,
/// and take the patch out again; each bug's outcome goes to `outcomes` (named `store/NAME`).
/// A patch that does not apply or does not build is an error, not a catch.
pub fn each(patches: &[PathBuf], outcomes: &mut Vec<PlantedOutcome>) -> Result<(), String> {
    if patches.is_empty() {
        return Ok(());
    }
    let root = root();
    let work = root.join("target/planted/store-src");
    let target = root.join("target/planted/store-target");
    let logs = root.join("target/planted");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    crate::run(
        Command::new("sh")
            .current_dir(&root)
            .arg("-c")
            .arg(format!("git archive HEAD | tar -x -C '{}'", work.display())),
    )?;
    let started = std::time::Instant::now();
    eprintln!(
        "xtask: building the store conformance test in a copy of HEAD ({})",
        target.display()
    );
    build(&work, &target, &logs.join("store-committed.build.log"))?;
    // A test that fails on HEAD itself would make every bug look caught.
    let head_log = logs.join("store-committed.log");
    let failed = test(&work, &target, &head_log)?;
    if !failed.is_empty() {
        return Err(format!(
            "the store conformance test fails on HEAD itself ({}; see {}): no planted bug can be judged by it",
            failed.join(", "),
            head_log.display()
        ));
    }
    eprintln!(
        "xtask: built and passed on HEAD in {} s; the store's planted bugs:",
        started.elapsed().as_secs()
    );
    for patch in patches {
        let stem = patch.file_stem().unwrap().to_string_lossy().to_string();
        let name = format!("store/{stem}");
        let started = std::time::Instant::now();
        git_apply(&work, patch, false)?;
        let log = logs.join(format!("store-{stem}.log"));
        let tried = build(&work, &target, &log).and_then(|()| test(&work, &target, &log));
        git_apply(&work, patch, true)?;
        let failed = tried.map_err(|e| format!("planted bug {name}: {e}"))?;
        let took = started.elapsed().as_secs();
        if failed.is_empty() {
            eprintln!(
                "xtask: `{name}` NOT caught: every {TEST} test passed with it ({took} s; see {})",
                log.display()
            );
            outcomes.push(PlantedOutcome {
                name,
                failure: None,
            });
        } else {
            let failure = format!("{TEST} seed {SEED}: {} failed", failed.join(", "));
            eprintln!("xtask: `{name}` caught: {failure} ({took} s)");
            outcomes.push(PlantedOutcome {
                name,
                failure: Some(failure),
            });
        }
    }
    Ok(())
}

fn cargo_test(work: &Path, target: &Path) -> Command {
    let mut c = niced(crate::cargo_program());
    c.current_dir(work)
        .env("CARGO_TARGET_DIR", target)
        .env("CARGO_INCREMENTAL", "1")
        .args(["test", "-p", "dalp-integration", "--test", TEST]);
    c
}

/// Build the test binary of the copy as it stands.
fn build(work: &Path, target: &Path, log: &Path) -> Result<(), String> {
    let mut c = cargo_test(work, target);
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

/// Run the tests (PostgreSQL is started by the tests themselves); the names of those that
/// failed, empty when all passed. A run that ends without a test verdict is an error.
fn test(work: &Path, target: &Path, log: &Path) -> Result<Vec<String>, String> {
    let mut c = cargo_test(work, target);
    // The verdict needs a failing case, not the smallest one: no shrinking (each step of it is
    // a fresh database).
    c.env("PROPTEST_RNG_SEED", SEED)
        .env("CONFORMANCE_SHRINK_ITERS", "0");
    log_to(&mut c, log)?;
    let status = c.status().map_err(|e| format!("cargo: {e}"))?;
    let text = std::fs::read_to_string(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let failed = failed_tests(&text);
    match (status.success(), failed.is_empty()) {
        (true, true) => Ok(failed),
        (false, false) => Ok(failed),
        _ => Err(format!(
            "{TEST} exited {status} with {} failed tests; see {}",
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
