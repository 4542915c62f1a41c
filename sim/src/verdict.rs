//! One invariant's verdict on one run: what the checkers, isolation and the results share.

use serde::{Deserialize, Serialize};

/// Whether an invariant held, what was checked, and each violation in words a person can act on.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    pub invariant: String,
    pub held: bool,
    /// What was checked (counts), for the report.
    pub checked: String,
    /// Violations, each actionable; capped at 20 (the count says how many there were).
    pub violations: Vec<String>,
    pub violation_count: usize,
}

impl Verdict {
    pub fn new(invariant: &str, checked: String, mut violations: Vec<String>) -> Self {
        let violation_count = violations.len();
        violations.truncate(20);
        Verdict {
            invariant: invariant.into(),
            held: violation_count == 0,
            checked,
            violations,
            violation_count,
        }
    }
}
