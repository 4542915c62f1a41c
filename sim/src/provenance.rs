//! Where a run's results came from, for the audit bundle: the tree (git commit, engine and
//! harness tree hashes, dirty or not), the build (rustc, locked crate versions, the binary's
//! SHA-256), the machine, the scenario files with their SHA-256 and targets, and the planted-bug
//! results (checker sensitivity). Gathered by the parent process only (never in a simulated
//! run); anything that cannot be read says "unknown" instead of failing the run.

use crate::promise::Targets;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// What `git` may take per question before the answer is "unknown".
const GIT_TIMEOUT: Duration = Duration::from_secs(5);

pub const UNKNOWN: &str = "unknown";

/// The tree and the build that produced the results.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Build {
    /// `git rev-parse HEAD` of the checkout the run started in, or "unknown".
    pub commit: String,
    /// Uncommitted changes anywhere in the checkout (`None`: unknown).
    pub dirty: Option<bool>,
    /// The engine's tree (`HEAD:engine`) and whether `engine/` had uncommitted changes.
    pub engine_tree: String,
    pub engine_dirty: Option<bool>,
    /// The harness's tree (`HEAD:sim`) and whether `sim/` or `scenarios/` had changes.
    pub harness_tree: String,
    pub harness_dirty: Option<bool>,
    /// `rustc -V` at build time.
    pub rustc: String,
    /// Locked versions of the crates the run depends on (build time).
    pub crates: BTreeMap<String, String>,
    /// `simulation (--cfg madsim)` or `plain`.
    pub flavour: String,
    /// SHA-256 of the running binary: the engine and harness code that actually ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_sha256: Option<String>,
}

/// The machine the run's parent process ran on.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    pub cores: usize,
    /// `MemTotal` of /proc/meminfo (`None`: unknown).
    pub memory_mib: Option<u64>,
    /// /etc/os-release's `PRETTY_NAME`, else the OS family.
    pub os: String,
    pub kernel: String,
    pub arch: String,
}

/// A scenario file the run read: path as given, SHA-256 of its bytes, and its promises.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ScenarioFile {
    pub path: String,
    pub sha256: String,
    pub name: String,
    #[serde(default)]
    pub covers: Vec<String>,
    #[serde(default)]
    pub targets: Targets,
}

/// The planted-bug results (`cargo xtask planted` writes `reports/planted/latest.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Planted {
    /// The file they were read from.
    #[serde(default)]
    pub source: String,
    /// When `xtask planted` finished (UTC, RFC 3339) and the commit it planted them into.
    pub date: String,
    pub commit: String,
    #[serde(default)]
    pub dirty: Option<bool>,
    pub bugs: Vec<PlantedBug>,
}

/// One planted bug: caught or not, and by which run and checkers (the first failure).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PlantedBug {
    pub name: String,
    pub caught: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The invariants (checkers) that failed, or `crashed`.
    #[serde(default)]
    pub invariants: Vec<String>,
}

impl Planted {
    /// The planted-bug results in `path`, `None` when there are none; a file that is there but
    /// unreadable is an error naming it.
    pub fn load(path: &Path) -> Result<Option<Planted>, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut p: Planted =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        p.source = path.display().to_string();
        Ok(Some(p))
    }
}

/// Where `cargo xtask planted` records its results, relative to the checkout.
pub const PLANTED: &str = "reports/planted/latest.json";

/// [`PLANTED`] in the checkout whose scenarios directory is `scenarios_dir`.
pub fn planted_path(scenarios_dir: &Path) -> std::path::PathBuf {
    scenarios_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join(PLANTED)
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    alloy_primitives::hex::encode(Sha256::digest(bytes))
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(alloy_primitives::hex::encode(h.finalize()))
}

impl ScenarioFile {
    pub fn of(path: &Path, s: &crate::scenario::Scenario) -> ScenarioFile {
        ScenarioFile {
            path: path.display().to_string(),
            sha256: std::fs::read(path).map_or_else(|_| UNKNOWN.into(), |b| sha256_hex(&b)),
            name: s.name.clone(),
            covers: s.covers.clone(),
            targets: Targets::of(&s.expect),
        }
    }
}

/// The build's provenance, with git read in `repo` (any directory of the checkout).
pub fn build(repo: &Path) -> Build {
    let git = |args: &[&str]| bounded_output(Command::new("git").arg("-C").arg(repo).args(args));
    let rev = |spec: &str| git(&["rev-parse", spec]).unwrap_or_else(|| UNKNOWN.into());
    let dirty = |paths: &[&str]| {
        let mut args = vec!["status", "--porcelain", "--untracked-files=normal", "--"];
        args.extend(paths);
        // `git -C dir status -- engine` takes paths relative to `dir`: ask from the top.
        let top = git(&["rev-parse", "--show-toplevel"])?;
        bounded_output(Command::new("git").arg("-C").arg(top).args(&args)).map(|o| !o.is_empty())
    };
    let crates = env!("DALP_SIM_LOCKED_CRATES")
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .fold(
            BTreeMap::new(),
            |mut m: BTreeMap<String, String>, (k, v)| {
                m.entry(k.to_string())
                    .and_modify(|old| *old = format!("{old}, {v}"))
                    .or_insert_with(|| v.to_string());
                m
            },
        );
    Build {
        commit: rev("HEAD"),
        dirty: dirty(&[]),
        engine_tree: rev("HEAD:engine"),
        engine_dirty: dirty(&["engine"]),
        harness_tree: rev("HEAD:sim"),
        harness_dirty: dirty(&["sim", "scenarios"]),
        rustc: env!("DALP_SIM_RUSTC_VERSION").to_string(),
        crates,
        flavour: if cfg!(madsim) {
            "simulation (--cfg madsim)".into()
        } else {
            "plain".into()
        },
        binary_sha256: std::env::current_exe()
            .ok()
            .and_then(|p| sha256_file(&p).ok()),
    }
}

/// This machine.
pub fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let memory_mib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib / 1024);
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| std::env::consts::OS.to_string());
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_mib,
        os,
        kernel: if kernel.is_empty() {
            UNKNOWN.into()
        } else {
            kernel
        },
        arch: std::env::consts::ARCH.into(),
    }
}

/// Now, UTC, RFC 3339 to the second (the run's start and end; never in a simulated run).
pub fn now_utc() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// `secs` since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (Howard Hinnant's civil_from_days).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A command's trimmed stdout when it succeeds within [`GIT_TIMEOUT`]; `None` otherwise (not
/// installed, not a checkout, too slow: the child is killed).
fn bounded_output(cmd: &mut Command) -> Option<String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut out = String::new();
                child.stdout.take()?.read_to_string(&mut out).ok()?;
                return status.success().then(|| out.trim().to_string());
            }
            Ok(None) if started.elapsed() < GIT_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(5))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_204_105), "2026-12-02T09:35:05Z");
    }

    #[test]
    fn sha256_is_the_standard_one() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// Outside a checkout nothing fails: the answers are "unknown".
    #[test]
    fn outside_a_checkout_the_tree_is_unknown() {
        let dir = std::env::temp_dir().join(format!("dalp-prov-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let b = build(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!((b.commit.as_str(), b.dirty), (UNKNOWN, None));
        assert_eq!(b.engine_tree, UNKNOWN);
        assert!(b.rustc.starts_with("rustc "), "{}", b.rustc);
        assert!(b.crates.contains_key("dalp-engine"), "{:?}", b.crates);
    }

    #[test]
    fn inside_this_checkout_the_commit_is_known() {
        let b = build(Path::new(env!("CARGO_MANIFEST_DIR")));
        assert_eq!(b.commit.len(), 40, "{b:?}");
        assert!(b.dirty.is_some() && b.engine_dirty.is_some());
        let m = machine();
        assert!(m.cores >= 1 && !m.os.is_empty());
    }

    #[test]
    fn planted_results_absent_are_none_and_broken_ones_name_the_file() {
        let dir = std::env::temp_dir().join(format!("dalp-planted-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("latest.json");
        assert_eq!(Planted::load(&p).unwrap(), None);
        std::fs::write(&p, "{").unwrap();
        let e = Planted::load(&p).unwrap_err();
        assert!(e.contains("latest.json"), "{e}");
        std::fs::write(
            &p,
            r#"{"date":"d","commit":"c","bugs":[{"name":"x","caught":true,"scenario":"s","seed":1,"invariants":["fencing"]}]}"#,
        )
        .unwrap();
        let got = Planted::load(&p).unwrap().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(got.bugs[0].invariants, vec!["fencing"]);
        assert!(got.source.ends_with("latest.json"));
    }
}
