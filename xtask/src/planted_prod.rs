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
//! take the other's crates for fresh. That dir starts with the main tree's third-party
//! artifacts ([`seed_dependencies`]: built once, not twice on a 2-core machine), and is built
//! with the main tree's feature set (`--workspace`), so that they are the copy's too.
//! Incremental compilation is on there (only the engine and its dependents change between
//! bugs), whatever the caller set.

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
/// not a catch. `dependencies_built` returns once the main tree's target/debug holds the
/// third-party crates (or never will): the copy's target dir is seeded from it then.
pub fn each(
    bugs: &[Bug],
    outcomes: &mut Vec<PlantedOutcome>,
    dependencies_built: impl FnOnce(),
) -> Result<(), String> {
    if bugs.is_empty() {
        return Ok(());
    }
    let root = root();
    let work = root.join("target/planted/prod-src");
    let target = root.join("target/planted/prod-target");
    let logs = root.join("target/planted");
    let caught_by = caught_by_tests_in(
        &std::fs::read_to_string(root.join(crate::PLANTED_RESULTS)).unwrap_or_default(),
    );
    dependencies_built();
    let started = std::time::Instant::now();
    match seed_dependencies(&root.join("target/debug"), &target.join("debug")) {
        Ok(n) => eprintln!(
            "xtask: {n} third-party artifacts of target/debug copied to {} in {} s",
            target.display(),
            started.elapsed().as_secs()
        ),
        // Only slower: the copy builds them itself.
        Err(e) => eprintln!("xtask: target/debug's artifacts not copied ({e}): built afresh"),
    }
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
        let failed = test(tier, &work, &target, &head_log, None)?;
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
            // The test that caught it last runs alone first: when it fails again, that is the
            // verdict without the rest of the binary (most of a run under load); when it
            // passes, the whole binary decides. Only the time depends on the record.
            let first = caught_by.get(&name).and_then(|tests| tests.first());
            let tried = build(tier, &work, &target, &log).and_then(|()| match first {
                Some(only) => match test(tier, &work, &target, &log, Some(only))? {
                    failed if failed.is_empty() => test(tier, &work, &target, &log, None),
                    failed => Ok(failed),
                },
                None => test(tier, &work, &target, &log, None),
            });
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
        // The workspace's features, as the main tree's `cargo test --workspace` resolves them:
        // another selection could unify other features and change the seeded crates' hashes.
        .args(["test", "--workspace", "--test", tier.test]);
    c
}

/// Copy into `to` (a target profile dir) what `from` holds of crates that are not the
/// workspace's: their fingerprints, build-script outputs and artifacts, each file only where
/// `to` lacks it, modification times kept. Cargo takes them as fresh there (a third-party
/// crate's fingerprint depends on its version, features and flags, not on where it was built;
/// build-script paths are rebased to the new dir) and compiles only what differs. A crate's
/// fingerprint is copied before its artifacts: one still being built in `from` has none yet,
/// and is rebuilt in `to` over whatever part of it was copied. The number of files copied.
pub fn seed_dependencies(from: &Path, to: &Path) -> Result<usize, String> {
    let ours = workspace_packages()?;
    let unit = |name: &str| -> Option<(String, String)> {
        let (package, hash) = name.rsplit_once('-')?;
        (hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| (package.to_string(), hash.to_string()))
    };
    let names = |dir: &Path| -> Result<Vec<String>, String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        v.sort();
        Ok(v)
    };
    let mut theirs = std::collections::BTreeSet::new();
    let mut copied = 0;
    for name in names(&from.join(".fingerprint"))? {
        let Some((package, hash)) = unit(&name) else {
            continue;
        };
        if !ours.contains(&package) {
            copied += copy_missing(
                &from.join(".fingerprint").join(&name),
                &to.join(".fingerprint").join(&name),
            )?;
            theirs.insert(hash);
        }
    }
    for dir in ["build", "deps"] {
        if !from.join(dir).is_dir() {
            continue;
        }
        for name in names(&from.join(dir))? {
            // `libfoo-HASH.rlib`, `foo-HASH.d`, a build script's `foo-HASH/`.
            let stem = name.split('.').next().unwrap_or(&name);
            if unit(stem).is_some_and(|(_, hash)| theirs.contains(&hash)) {
                copied += copy_missing(&from.join(dir).join(&name), &to.join(dir).join(&name))?;
            }
        }
    }
    Ok(copied)
}

/// Copy `from` (a file, or a directory recursively) to `to` where `to` has no such file, with
/// its modification time; symbolic links are skipped. The number of files copied.
fn copy_missing(from: &Path, to: &Path) -> Result<usize, String> {
    let meta = std::fs::symlink_metadata(from).map_err(|e| format!("{}: {e}", from.display()))?;
    if meta.is_dir() {
        std::fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
        let mut n = 0;
        for e in std::fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))? {
            let e = e.map_err(|e| format!("{}: {e}", from.display()))?;
            n += copy_missing(&e.path(), &to.join(e.file_name()))?;
        }
        return Ok(n);
    }
    if !meta.is_file() || to.exists() {
        return Ok(0);
    }
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    std::fs::copy(from, to).map_err(|e| format!("{} to {}: {e}", from.display(), to.display()))?;
    let modified = meta
        .modified()
        .map_err(|e| format!("{}: {e}", from.display()))?;
    std::fs::File::options()
        .write(true)
        .open(to)
        .and_then(|f| f.set_modified(modified))
        .map_err(|e| format!("{}: {e}", to.display()))?;
    Ok(1)
}

/// The names of the workspace's packages (`members` of the root manifest, each one's
/// `[package] name`).
fn workspace_packages() -> Result<std::collections::BTreeSet<String>, String> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    let manifest = root().join("Cargo.toml");
    let text = read(&manifest)?;
    let members = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("members")?.trim().strip_prefix('='))
        .ok_or_else(|| format!("{}: no `members = [...]` line", manifest.display()))?;
    let mut packages = std::collections::BTreeSet::new();
    for member in members
        .split(['[', ']', ','])
        .map(|m| m.trim().trim_matches('"'))
    {
        if member.is_empty() {
            continue;
        }
        let path = root().join(member).join("Cargo.toml");
        let name = read(&path)?
            .lines()
            .find_map(|l| {
                let v = l.trim().strip_prefix("name")?.trim().strip_prefix('=')?;
                Some(v.trim().trim_matches('"').to_string())
            })
            .ok_or_else(|| format!("{}: no package name", path.display()))?;
        packages.insert(name);
    }
    Ok(packages)
}

/// Build the tier's test binary from the copy as it stands; cargo's output goes beside `log`
/// (`NAME.build.log`), the test's own to `log`.
fn build(tier: &Tier, work: &Path, target: &Path, log: &Path) -> Result<(), String> {
    let log = &log.with_extension("build.log");
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

/// Run the tests (they start PostgreSQL or the engine themselves), all or `only` the one named;
/// the names of those that failed, empty when all passed (or none is named `only`). A run that
/// ends without a test verdict is an error.
fn test(
    tier: &Tier,
    work: &Path,
    target: &Path,
    log: &Path,
    only: Option<&String>,
) -> Result<Vec<String>, String> {
    let mut c = cargo_test(tier, work, target);
    // The verdict needs a failing case, not the smallest one: no shrinking (each step of the
    // store's is a fresh database).
    c.env("PROPTEST_RNG_SEED", SEED)
        .env("CONFORMANCE_SHRINK_ITERS", "0");
    if let Some(name) = only {
        c.args(["--", "--exact", name]);
    }
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

/// Per planted bug of these tiers, the tests that failed with it as [`crate::PLANTED_RESULTS`]
/// recorded them (its `invariants`: libtest's order, the first to fail first). A stale or
/// missing entry costs time, never the verdict.
fn caught_by_tests_in(text: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    // One bug per line, as `record_planted` writes them; test names need no escaping.
    text.lines()
        .filter(|l| l.contains("\"caught\": true"))
        .filter_map(|l| {
            let name = l.split("\"name\": \"").nth(1)?.split('"').next()?;
            if !TIERS
                .iter()
                .any(|t| name.starts_with(&format!("{}/", t.name)))
            {
                return None;
            }
            let list = l.split("\"invariants\": [").nth(1)?.split(']').next()?;
            let tests = list
                .split(',')
                .map(|t| t.trim().trim_matches('"').to_string())
                .filter(|t| !t.is_empty())
                .collect();
            Some((name.to_string(), tests))
        })
        .collect()
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

    #[test]
    fn the_tests_that_caught_a_production_bug_are_read_from_the_record() {
        let text = r#"{
  "bugs": [
    {"name": "fence-ignores-lease-id", "caught": true, "scenario": "x", "seed": 18, "invariants": ["exactly_once"]},
    {"name": "store/pg-a", "caught": true, "scenario": "store_conformance", "seed": 1, "invariants": ["regression_b", "model_c"]},
    {"name": "store/pg-missed", "caught": false, "invariants": []},
    {"name": "api/token", "caught": true, "scenario": "api_http", "seed": 1, "invariants": ["health"]}
  ]
}"#;
        let m = caught_by_tests_in(text);
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m["store/pg-a"], vec!["regression_b", "model_c"]);
        assert_eq!(m["api/token"], vec!["health"]);
        assert!(caught_by_tests_in("not json").is_empty());
    }

    #[test]
    fn the_workspace_packages_are_read_from_the_manifests() {
        let p = workspace_packages().unwrap();
        for name in ["dalp-engine", "dalp-sim", "dalp-integration", "xtask"] {
            assert!(p.contains(name), "{name} missing from {p:?}");
        }
        assert!(!p.contains("serde"));
    }

    #[test]
    fn seeding_copies_third_party_units_only_and_keeps_what_is_there() {
        let dir = std::env::temp_dir().join(format!("xtask-seed-{}", std::process::id()));
        let (from, to) = (dir.join("from"), dir.join("to"));
        let _ = std::fs::remove_dir_all(&dir);
        let put = |p: PathBuf, text: &str| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        let (theirs, ours) = ("0123456789abcdef", "fedcba9876543210");
        put(
            from.join(format!(".fingerprint/serde-{theirs}/lib-serde")),
            "fp",
        );
        put(from.join(format!("deps/libserde-{theirs}.rlib")), "rlib");
        put(from.join(format!("deps/serde-{theirs}.d")), "d");
        put(from.join(format!("build/serde-{theirs}/out/x")), "out");
        put(
            from.join(format!(".fingerprint/dalp-engine-{ours}/lib-dalp_engine")),
            "fp",
        );
        put(
            from.join(format!("deps/libdalp_engine-{ours}.rlib")),
            "ours",
        );
        // An artifact without a fingerprint (still being built, or left over) is not taken.
        put(from.join("deps/libtokio-1111111111111111.rlib"), "partial");
        put(to.join(format!("deps/serde-{theirs}.d")), "kept");
        assert_eq!(seed_dependencies(&from, &to).unwrap(), 3);
        let read = |p: &str| std::fs::read_to_string(to.join(p)).ok();
        assert_eq!(
            read(&format!("deps/libserde-{theirs}.rlib")).as_deref(),
            Some("rlib")
        );
        assert_eq!(
            read(&format!("deps/serde-{theirs}.d")).as_deref(),
            Some("kept")
        );
        assert_eq!(
            read(&format!("build/serde-{theirs}/out/x")).as_deref(),
            Some("out")
        );
        assert_eq!(read(&format!("deps/libdalp_engine-{ours}.rlib")), None);
        assert_eq!(read("deps/libtokio-1111111111111111.rlib"), None);
        assert!(!to.join(format!(".fingerprint/dalp-engine-{ours}")).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
