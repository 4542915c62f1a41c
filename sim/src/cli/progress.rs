//! The progress of `run` on stderr: on a terminal one line redrawn in place (done/total,
//! passed/failed, elapsed, ETA) with failures printed above it as full lines; otherwise one plain
//! line per finished run.

use std::io::Write as _;
use std::time::{Duration, Instant};

pub(super) struct Progress {
    total: usize,
    pub(super) done: usize,
    passed: usize,
    failed: usize,
    started: Instant,
    tty: bool,
}

impl Progress {
    pub(super) fn new(total: usize, tty: bool) -> Self {
        Progress {
            total,
            done: 0,
            passed: 0,
            failed: 0,
            started: Instant::now(),
            tty,
        }
    }

    /// A run finished: `line` describes it.
    pub(super) fn finished(&mut self, line: &str, passed: bool) {
        self.done += 1;
        if passed {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        if !self.tty {
            eprintln!("{line}");
            return;
        }
        if !passed {
            // Clear the status line, print the failure in full, redraw below it.
            eprint!("\r\x1b[2K{line}\n");
        }
        self.draw();
    }

    pub(super) fn draw(&self) {
        if !self.tty {
            return;
        }
        eprint!("\r\x1b[2K{}", self.status(self.started.elapsed()));
        let _ = std::io::stderr().flush();
    }

    fn status(&self, elapsed: Duration) -> String {
        let eta = if self.done == 0 {
            "?".to_string()
        } else {
            let left = elapsed.as_secs_f64() / self.done as f64 * (self.total - self.done) as f64;
            clock(left)
        };
        format!(
            "[{}/{}] {} passed, {} failed, {} elapsed, ETA {eta}",
            self.done,
            self.total,
            self.passed,
            self.failed,
            clock(elapsed.as_secs_f64())
        )
    }

    pub(super) fn clear(&self) {
        if self.tty {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
        }
    }
}

/// Seconds as `1h02m03s`, `2m05s` or `7s`.
fn clock(secs: f64) -> String {
    let s = secs.round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_status_shows_counts_elapsed_and_eta() {
        let mut p = Progress::new(10, false);
        assert!(p.status(Duration::from_secs(3)).ends_with("ETA ?"));
        p.finished("x", true);
        p.finished("y", false);
        assert_eq!(
            p.status(Duration::from_secs(20)),
            "[2/10] 1 passed, 1 failed, 20s elapsed, ETA 1m20s"
        );
        assert_eq!(clock(3723.0), "1h02m03s");
    }
}
