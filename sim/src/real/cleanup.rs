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

/// On SIGINT or SIGTERM: remove everything, then exit with 130. Call once, from inside the
/// runtime that drives the run.
pub fn on_interrupt() {
    rtokio::spawn(async {
        use rtokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        rtokio::select! {
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
