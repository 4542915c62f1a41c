//! The `dalp-sim` command line: `list`, `run`, `repro`, `report`, `bench`, `diff`, `verify`, and the internal
//! `child` that runs one seed. The parent never runs a simulation itself: every seed runs in its
//! own child process (madsim keeps statics across runs in one process), several at a time.
//!
//! This module holds the clap definition and the dispatch; each command has its module, beside
//! the shared parts: `options` (value parsers), `backend` (sim or real services), `resolve`
//! (scenario and suite names), `jobs` (the child processes), `baseline` (the isolation
//! invariant's fault-free runs) and `progress` (`run`'s status line).

mod backend;
mod baseline;
mod bench;
mod child;
mod diff;
mod jobs;
mod list;
mod minimize;
mod options;
mod progress;
mod report_cmd;
mod repro;
mod resolve;
mod run;
mod verify;

pub use backend::{plug_real, Provider, RealBackend};
pub use repro::repro_command;
pub use resolve::Suite;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Deterministic simulation of the dalp engine: scenarios run by seed, one child process per
/// seed, replayed bit for bit.
#[derive(Debug, Parser)]
#[command(
    name = "dalp-sim",
    arg_required_else_help = true,
    after_help = "Exit status: 0 when every run passed, 1 when an invariant failed, 2 on bad input.\n\
                  Simulating needs the --cfg madsim build (`cargo xtask sim …`); the plain build \
                  lists and validates scenarios; `dalp-real`, the same commands, runs --backend real."
)]
struct Cli {
    /// The scenarios directory [default: $DALP_SCENARIOS, else ./scenarios]
    #[arg(long, global = true, value_name = "DIR")]
    scenarios: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Scenarios, suites and the catalog ids they cover
    List,
    Run(run::RunArgs),
    Repro(repro::ReproArgs),
    Report(report_cmd::ReportArgs),
    Bench(bench::BenchArgs),
    Diff(diff::DiffArgs),
    Verify(verify::VerifyArgs),
    /// Run one seed in this process and write its result (the parent starts one per seed)
    #[command(hide = true)]
    Child(child::ChildArgs),
}

/// Run the command line `args` (without the program name). Exit status: 0 pass, 1 an invariant
/// failed, 2 bad input (usage errors included; `--help` is 0).
pub fn main(args: Vec<String>) -> ExitCode {
    let cli = match Cli::try_parse_from(std::iter::once("dalp-sim".to_string()).chain(args)) {
        Ok(cli) => cli,
        Err(e) => {
            // Help on a closed pipe is no error of ours: nothing more to say.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let dir = scenarios_dir(cli.scenarios);
    let out = match &cli.command {
        Command::List => list::list(&dir),
        Command::Run(a) => run::run(&dir, a),
        Command::Repro(a) => repro::repro(&dir, a),
        Command::Report(a) => report_cmd::report_cmd(&dir, a),
        Command::Bench(a) => bench::bench(&dir, a),
        Command::Diff(a) => diff::diff(a),
        Command::Verify(a) => verify::verify(a),
        Command::Child(a) => child::child(a),
    };
    match out {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("dalp-sim: {e}");
            ExitCode::from(2)
        }
    }
}

/// `--scenarios`, else `$DALP_SCENARIOS`, else `./scenarios`.
fn scenarios_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("DALP_SCENARIOS").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("scenarios"))
}

/// Written files, for the closing line of `run` and `report`.
fn joined(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A reader that closes the pipe early (`dalp-sim list | head -3`) wants no more output. Rust
/// ignores SIGPIPE, so `println!` panics on EPIPE; end quietly instead, as `head`'s writer
/// should. (Restoring SIGPIPE's default instead would also kill the real backend's proxies when
/// a peer resets a socket they write to.)
pub fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let p = info.payload();
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        // An engine fault point's crash: the simulation restarts the node; it is traced.
        if msg.starts_with(dalp_engine::probe::CRASH_MESSAGE) {
            return;
        }
        default(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("dalp-sim").chain(args.iter().copied()))
    }

    #[test]
    fn the_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_and_switches_parse() {
        let cli = parse(&["repro", "s", "--seed", "4", "--minimize"]).unwrap();
        let Command::Repro(a) = cli.command else {
            panic!("repro")
        };
        assert_eq!(a.scenario, "s");
        assert_eq!(a.run.seed, 4);
        assert!(a.minimize && !a.run.baseline);
        let e = parse(&["repro", "s", "--seed"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn the_shrinkers_flags_need_minimize_and_a_bounded_trial_count() {
        let repro = |extra: &str| {
            let mut args = vec!["repro", "s", "--seed", "4", "--minimize"];
            args.extend(extra.split_whitespace());
            match parse(&args).unwrap().command {
                Command::Repro(a) => (a.max_trials, a.save_regression),
                _ => panic!("repro"),
            }
        };
        assert_eq!(repro(""), (200, None));
        let flags = "--max-trials 50 --save-regression r1";
        assert_eq!(repro(flags), (50, Some("r1".to_string())));
        for args in [
            &["repro", "s", "--seed", "4", "--save-regression", "r1"][..],
            &["repro", "s", "--seed", "4", "--max-trials", "9"],
            &[
                "repro",
                "s",
                "--seed",
                "4",
                "--minimize",
                "--max-trials",
                "0",
            ],
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}: {e}");
            let e = e.to_string();
            assert!(
                e.contains("--minimize") || e.contains("--max-trials"),
                "{e}"
            );
        }
    }

    #[test]
    fn positionals_and_flags_interleave_and_scenarios_is_global() {
        let cli = parse(&["run", "a", "--seeds", "1..3", "b", "--scenarios", "x"]).unwrap();
        assert_eq!(cli.scenarios, Some(PathBuf::from("x")));
        let Command::Run(a) = cli.command else {
            panic!("run")
        };
        assert_eq!(a.targets, vec!["a", "b"]);
        assert_eq!(a.seeds.map(|s| s.0), Some(vec![1, 2]));
        let cli = parse(&["--scenarios", "y", "list"]).unwrap();
        assert_eq!(cli.scenarios, Some(PathBuf::from("y")));
    }

    #[test]
    fn unknown_flags_bad_values_and_missing_arguments_are_usage_errors() {
        for args in [
            &["run", "ci", "--bogus", "1"][..],
            &["run", "ci", "--seeds", "0"],
            &["run", "ci", "--shard", "2/2"],
            &["run", "ci", "--backend", "cloud"],
            &["run"],
            &["list", "--seeds", "3"],
            &["repro", "s"],
            &["report"],
            &["child", "f.toml", "--seed", "1"],
            &[],
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}: {e}");
        }
        let e = parse(&["run", "ci", "--seeds", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--seeds") && e.contains("nothing to run"), "{e}");
        assert_eq!(parse(&["--help"]).unwrap_err().exit_code(), 0);
        assert_eq!(parse(&["run", "--help"]).unwrap_err().exit_code(), 0);
    }

    #[test]
    fn the_childs_invocation_parses() {
        // As `jobs::spawn_child` and `repro` start it.
        let cli = parse(&[
            "child",
            "scenarios/x.toml",
            "--seed",
            "7",
            "--result",
            "out/.runs/x-7.json",
            "--trace-dir",
            "out/traces",
            "--always-trace",
            "true",
            "--backend",
            "real",
            "--provider",
            "local",
            "--schedule",
            "s.json",
            "--baseline",
        ])
        .unwrap();
        let Command::Child(a) = cli.command else {
            panic!("child")
        };
        assert!(a.always_trace && a.run.baseline);
        assert_eq!(a.run.seed, 7);
        assert_eq!(
            a.run.backend.backend().unwrap(),
            backend::Backend::Real(backend::Provider::Local)
        );
        let Command::Child(a) = parse(&["child", "x.toml", "--seed", "1", "--result", "r"])
            .unwrap()
            .command
        else {
            panic!("child")
        };
        assert!(!a.always_trace && !a.run.baseline);
        assert_eq!(a.run.backend.backend().unwrap(), backend::Backend::Sim);
        assert_eq!(a.log, options::LogLevel::Off);
    }

    /// `repro` logs at info unless told, `run` not at all; what a parent passes, its child reads.
    #[test]
    fn log_levels_default_per_command_and_reach_the_child() {
        let Command::Repro(r) = parse(&["repro", "x", "--seed", "1"]).unwrap().command else {
            panic!("repro")
        };
        assert_eq!(r.log, options::LogLevel::Info);
        assert!(options::LogLevel::Off.child_args().is_empty());
        let mut args = vec!["child", "x.toml", "--seed", "1", "--result", "r"];
        let extra = options::LogLevel::Debug.child_args();
        args.extend(extra.iter().map(String::as_str));
        let Command::Child(a) = parse(&args).unwrap().command else {
            panic!("child")
        };
        assert_eq!(a.log.level(), Some(tracing::Level::DEBUG));
        let err = parse(&["run", "ci", "--log", "loud"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--log") && err.contains("loud"), "{err}");
    }
}
