//! The flags several commands share, and their value parsers: each error names the reason, and
//! clap names the flag and the value.

use super::backend::BackendArgs;
use clap::Args;
use std::fmt;
use std::path::PathBuf;

/// How one seed runs: `repro` takes these flags and passes them on to its `child`.
#[derive(Debug, Args)]
pub(super) struct SeedArgs {
    /// The seed to run
    #[arg(long, value_name = "S")]
    pub(super) seed: u64,
    /// This fault schedule (JSON: a list of faults, as results.json's `schedule`) instead of the
    /// seed's
    #[arg(long, value_name = "FILE")]
    pub(super) schedule: Option<PathBuf>,
    /// The seed without faults (the reference of the isolation invariant)
    #[arg(long)]
    pub(super) baseline: bool,
    #[command(flatten)]
    pub(super) backend: BackendArgs,
}

/// `--log LEVEL`: the engines' logs recorded in the trace (simulation only), at this level and
/// above; `off` records none and leaves the trace and its hash as without the flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum LogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub(super) fn level(self) -> Option<tracing::Level> {
        match self {
            LogLevel::Off => None,
            LogLevel::Error => Some(tracing::Level::ERROR),
            LogLevel::Warn => Some(tracing::Level::WARN),
            LogLevel::Info => Some(tracing::Level::INFO),
            LogLevel::Debug => Some(tracing::Level::DEBUG),
            LogLevel::Trace => Some(tracing::Level::TRACE),
        }
    }

    /// What a parent adds to its children's arguments (nothing when off, as before the flag).
    pub(super) fn child_args(self) -> Vec<String> {
        match self.level() {
            None => Vec::new(),
            Some(l) => vec!["--log".into(), l.as_str().to_ascii_lowercase()],
        }
    }
}

/// `--seeds N` (seeds 1 to N) or `--seeds A..B` (A inclusive, B exclusive).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Seeds(pub(super) Vec<u64>);

pub(super) fn parse_seeds(spec: &str) -> Result<Seeds, String> {
    if let Some((a, b)) = spec.split_once("..") {
        let a: u64 = a.parse().map_err(|_| "bad start")?;
        let b: u64 = b.parse().map_err(|_| "bad end")?;
        if a >= b {
            return Err("empty range (A..B is A inclusive, B exclusive)".into());
        }
        Ok(Seeds((a..b).collect()))
    } else {
        let n: u64 = spec.parse().map_err(|_| "not a count or A..B")?;
        if n == 0 {
            return Err("nothing to run".into());
        }
        Ok(Seeds((1..=n).collect()))
    }
}

/// `--first STEM:SEED`: one run to start before the others (the set of runs is unchanged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct FirstRun {
    /// The scenario file's stem, as the results name it.
    pub(super) scenario: String,
    pub(super) seed: u64,
}

pub(super) fn parse_first(spec: &str) -> Result<FirstRun, String> {
    let (scenario, seed) = spec
        .rsplit_once(':')
        .ok_or("expected SCENARIO:SEED (the scenario file's stem, as the results name it)")?;
    if scenario.is_empty() {
        return Err("empty scenario name".into());
    }
    let seed = seed.parse().map_err(|_| "bad seed")?;
    Ok(FirstRun {
        scenario: scenario.into(),
        seed,
    })
}

impl fmt::Display for FirstRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.scenario, self.seed)
    }
}

/// `--shard I/N`: the runs whose index is I modulo N.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Shard {
    pub(super) i: usize,
    pub(super) n: usize,
}

impl Shard {
    pub(super) fn keeps(&self, index: usize) -> bool {
        index % self.n == self.i
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.i, self.n)
    }
}

pub(super) fn parse_shard(spec: &str) -> Result<Shard, String> {
    let (i, n) = spec.split_once('/').ok_or("expected I/N")?;
    let i: usize = i.parse().map_err(|_| "bad I")?;
    let n: usize = n.parse().map_err(|_| "bad N")?;
    if n == 0 || i >= n {
        return Err("need 0 <= I < N".into());
    }
    Ok(Shard { i, n })
}

/// Children at once when `--jobs` is not given: one per core.
pub(super) fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_run_parses_as_stem_and_seed() {
        let f = parse_first("db-failover-sync:7").unwrap();
        assert_eq!((f.scenario.as_str(), f.seed), ("db-failover-sync", 7));
        assert_eq!(f.to_string(), "db-failover-sync:7");
        assert!(parse_first("db-failover-sync")
            .unwrap_err()
            .contains("SCENARIO:SEED"));
        assert!(parse_first(":7").unwrap_err().contains("empty"));
        assert!(parse_first("x:seven").unwrap_err().contains("bad seed"));
    }

    #[test]
    fn seeds_parse_as_count_or_range() {
        assert_eq!(parse_seeds("3").unwrap().0, vec![1, 2, 3]);
        assert_eq!(parse_seeds("10..13").unwrap().0, vec![10, 11, 12]);
        assert!(parse_seeds("5..5").unwrap_err().contains("empty range"));
        assert_eq!(parse_seeds("0").unwrap_err(), "nothing to run");
        assert!(parse_seeds("x").is_err());
        assert_eq!(parse_seeds("x..3").unwrap_err(), "bad start");
    }

    #[test]
    fn shards_parse_and_partition() {
        let s = parse_shard("1/3").unwrap();
        assert_eq!(s.to_string(), "1/3");
        assert_eq!((0..7).filter(|k| s.keeps(*k)).collect::<Vec<_>>(), [1, 4]);
        assert_eq!(parse_shard("3/3").unwrap_err(), "need 0 <= I < N");
        assert_eq!(parse_shard("1").unwrap_err(), "expected I/N");
        assert_eq!(parse_shard("a/2").unwrap_err(), "bad I");
    }
}
