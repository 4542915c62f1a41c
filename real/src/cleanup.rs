//! Nothing a real run starts outlives it. Each process or container a provider starts is
//! registered here; its owner's `Drop` removes it in the normal case, and [`kill_all`] removes
//! whatever is left when the run is interrupted (SIGINT, SIGTERM: see [`on_interrupt`]) or
//! panics before the owners drop.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resource {
    Process(u32),
    Container(String),
    /// A Docker network; removed after the containers (it cannot go while one is attached).
    Network(String),
}

static NEXT: AtomicU64 = AtomicU64::new(0);
static LIVE: Mutex<BTreeMap<u64, Resource>> = Mutex::new(BTreeMap::new());

/// Removes its resource from the registry when dropped (the owner has stopped it by then).
#[derive(Debug)]
pub struct Guard(u64);

impl Drop for Guard {
    fn drop(&mut self) {
        LIVE.lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.0);
    }
}

pub fn register(r: Resource) -> Guard {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    LIVE.lock().unwrap_or_else(|p| p.into_inner()).insert(id, r);
    Guard(id)
}

/// What is still registered.
pub fn live() -> Vec<Resource> {
    LIVE.lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .cloned()
        .collect()
}

/// Kill every registered process (SIGKILL; a stopped one is continued first so it dies) and
/// remove every registered container.
pub fn kill_all() {
    let mut all: Vec<Resource> =
        std::mem::take(&mut *LIVE.lock().unwrap_or_else(|p| p.into_inner()))
            .into_values()
            .collect();
    all.sort_by_key(|r| matches!(r, Resource::Network(_)));
    for r in all {
        match r {
            Resource::Process(pid) => {
                // SAFETY: signalling a process id we started.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
            Resource::Container(id) => {
                let _ = Command::new("docker")
                    .args(["rm", "-f", "-v", &id])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            Resource::Network(name) => {
                let _ = Command::new("docker")
                    .args(["network", "rm", &name])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// Remove what earlier runs left behind when they were killed outright (SIGKILL leaves no chance
/// to clean up): containers and networks labelled or named for a run whose process is gone, and
/// local service processes working in a scratch directory of a process that is gone. Run ids and
/// scratch directories carry the owning process id for this.
pub fn sweep_orphans() {
    let alive = |pid: &str| std::path::Path::new(&format!("/proc/{pid}")).exists();
    let docker = |args: &[&str]| -> Vec<String> {
        Command::new("docker")
            .args(args)
            .stderr(Stdio::null())
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    for line in docker(&[
        "ps",
        "-a",
        "--filter",
        "label=dalp.run",
        "--format",
        "{{.ID}} {{.Label \"dalp.run\"}}",
    ]) {
        let mut parts = line.split_whitespace();
        let (Some(id), Some(run)) = (parts.next(), parts.next()) else {
            continue;
        };
        let owner = run.split('-').next().unwrap_or("");
        if !owner.is_empty() && !alive(owner) {
            docker(&["rm", "-f", "-v", id]);
        }
    }
    for name in docker(&["network", "ls", "--format", "{{.Name}}"]) {
        let Some(run) = name.strip_prefix("dalp-") else {
            continue;
        };
        let owner = run.split('-').next().unwrap_or("");
        if owner.chars().all(|c| c.is_ascii_digit()) && !owner.is_empty() && !alive(owner) {
            docker(&["network", "rm", &name]);
        }
    }
    // Local processes: their command line names <scratch root>/<what>-<pid>-<n>.
    let Ok(root) = crate::provision::scratch_root() else {
        return;
    };
    let prefix = format!("{}/", root.display());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().to_string();
        if !pid.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Ok(cmd) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let Some(at) = cmd.find(&prefix) else {
            continue;
        };
        let dir = cmd[at + prefix.len()..]
            .split(['/', ' '])
            .next()
            .unwrap_or("");
        let owner = dir.rsplit('-').nth(1).unwrap_or("");
        if owner.chars().all(|c| c.is_ascii_digit()) && !owner.is_empty() && !alive(owner) {
            // SAFETY: signalling a leftover process of a dead run.
            unsafe {
                libc::kill(pid.parse::<i32>().unwrap_or(0).max(1), libc::SIGKILL);
            }
        }
    }
    sweep_scratch(&root, SCRATCH_KEPT_FOR, &alive);
}

/// How long the scratch directory of a finished run (data directories, engine logs) is kept
/// for a person to read before a later run removes it.
const SCRATCH_KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// Remove the scratch directories (`<what>-<pid>-<n>`) under `root` whose owning process is gone
/// and which nothing changed for `kept_for`: without this they grow by megabytes per run.
fn sweep_scratch(
    root: &std::path::Path,
    kept_for: std::time::Duration,
    alive: &dyn Fn(&str) -> bool,
) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let owner = name.rsplit('-').nth(1).unwrap_or("");
        if owner.is_empty() || !owner.chars().all(|c| c.is_ascii_digit()) || alive(owner) {
            continue;
        }
        let idle = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        if idle.is_some_and(|idle| idle >= kept_for) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Make the calling process receive `sig` when its parent dies (Linux `PR_SET_PDEATHSIG`): a
/// run's child process and the services it starts must not outlive the runner.
pub fn die_with_parent(sig: i32) {
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number has no memory effects.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0);
    }
}

/// On SIGINT or SIGTERM: remove everything, then exit with 130. Call once, from inside the
/// runtime that drives the run.
pub fn on_interrupt() {
    tokio::spawn(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        eprintln!("dalp-sim: interrupted; removing the run's processes and containers");
        kill_all();
        std::process::exit(130);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guard_unregisters_and_kill_all_kills_what_is_left() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let g = register(Resource::Process(child.id()));
        assert!(live().contains(&Resource::Process(child.id())));
        drop(g);
        assert!(!live().contains(&Resource::Process(child.id())));
        let _g = register(Resource::Process(child.id()));
        kill_all();
        let status = child.wait().unwrap();
        assert!(!status.success(), "killed");
        assert!(!live().contains(&Resource::Process(child.id())));
    }
}

#[cfg(test)]
mod sweep_tests {
    use std::time::Duration;

    #[test]
    fn only_scratch_of_dead_owners_idle_long_enough_is_removed() {
        let root = std::env::temp_dir().join(format!("dalp-sweep-{}", std::process::id()));
        for d in [
            "db-0-111-0",
            "db-0-rejoin1-111-4",
            "engine-1-222-3",
            "notes",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let alive = |pid: &str| pid == "222";
        // Nothing is old enough yet.
        super::sweep_scratch(&root, Duration::from_secs(3600), &alive);
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 4);
        super::sweep_scratch(&root, Duration::ZERO, &alive);
        let mut left: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        left.sort();
        assert_eq!(left, ["engine-1-222-3", "notes"]);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
