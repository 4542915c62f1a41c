//! `--backend sim|real` and `--provider auto|docker|local`: where a run's services come from, and
//! what each build can run.

use crate::outcome::RunResult;
use crate::scenario::{Fault, Scenario};
use crate::trace::Trace;
use clap::{Args, ValueEnum};
use std::sync::{Arc, OnceLock};

/// The real backend, plugged in by the `dalp-real` binary (crate `dalp-real`): this crate carries
/// no real runtime, processes or containers, so it builds the same in both flavours.
pub trait RealBackend: Sync {
    /// Before the children start (the engine binary built once; with Docker, the images checked
    /// once rather than by every child).
    fn prepare(&self, provider: Provider) -> Result<(), String>;
    /// Run one seed against real services from `provider`; blocks.
    fn run_seed(
        &self,
        scenario: Arc<Scenario>,
        seed: u64,
        schedule: Vec<Fault>,
        provider: Provider,
    ) -> Result<(RunResult, Trace), String>;
}

static REAL: OnceLock<&'static dyn RealBackend> = OnceLock::new();

/// Make `--backend real` run on `backend` in this process (and its children, which run the same
/// binary). Called once, before `cli::main`.
pub fn plug_real(backend: &'static dyn RealBackend) {
    assert!(
        REAL.set(backend).is_ok(),
        "the real backend is plugged once"
    );
}

pub(super) fn real() -> Result<&'static dyn RealBackend, String> {
    REAL.get().copied().ok_or_else(|| {
        "this dalp-sim has no real backend: `dalp-real` (crate real/) runs --backend real; `cargo xtask sim run … --backend real` builds and runs it".into()
    })
}

/// The simulation needs `--cfg madsim`; said by every command that would simulate without it.
pub(super) const NO_SIMULATION: &str =
    "this dalp-sim was built without --cfg madsim and cannot simulate; use `cargo xtask sim …`";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum BackendKind {
    /// The simulation (the --cfg madsim build)
    Sim,
    /// Real PostgreSQL, Anvil and dalp-engine processes (the `dalp-real` binary, crate real/)
    Real,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Provider {
    /// Containers when Docker is reachable and the images exist, else local processes
    Auto,
    Docker,
    Local,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::Auto => "auto",
            Provider::Docker => "docker",
            Provider::Local => "local",
        }
    }
}

/// The flags, as `run`, `repro` and `child` take them.
#[derive(Debug, Args)]
pub(super) struct BackendArgs {
    /// Where the services come from
    #[arg(long, value_enum, default_value_t = BackendKind::Sim)]
    backend: BackendKind,
    /// With --backend real: who starts the services [default: auto]
    #[arg(long, value_enum)]
    provider: Option<Provider>,
}

impl BackendArgs {
    pub(super) fn backend(&self) -> Result<Backend, String> {
        match (self.backend, self.provider) {
            (BackendKind::Sim, None) => Ok(Backend::Sim),
            (BackendKind::Sim, Some(_)) => Err("--provider applies to --backend real only".into()),
            (BackendKind::Real, p) => Ok(Backend::Real(p.unwrap_or(Provider::Auto))),
        }
    }
}

/// Where the services of a run come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Backend {
    Sim,
    /// Real services, from this provider.
    Real(Provider),
}

impl Backend {
    /// Whether this binary can run it: the simulation needs `--cfg madsim`, real services the
    /// `dalp-real` binary.
    pub(super) fn supported(&self) -> Result<(), String> {
        match self {
            Backend::Sim if cfg!(madsim) => Ok(()),
            Backend::Sim => Err(NO_SIMULATION.into()),
            Backend::Real(_) => real().map(|_| ()),
        }
    }

    /// `sim` or `real`, as the results' provenance says it.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Backend::Sim => "sim",
            Backend::Real(_) => "real",
        }
    }

    /// The provider asked for (real services only).
    pub(super) fn provider(&self) -> Option<Provider> {
        match self {
            Backend::Sim => None,
            Backend::Real(p) => Some(*p),
        }
    }

    /// Arguments the children get.
    pub(super) fn child_args(&self) -> Vec<String> {
        match self {
            Backend::Sim => Vec::new(),
            Backend::Real(p) => vec![
                "--backend".into(),
                "real".into(),
                "--provider".into(),
                p.name().into(),
            ],
        }
    }

    /// What a printed repro command adds for this backend.
    pub(super) fn repro_suffix(&self) -> &'static str {
        match self {
            Backend::Sim => "",
            Backend::Real(_) => " --backend real",
        }
    }
}

/// Before the children start: the real backend's engine binary, built once (children find it
/// in `DALP_ENGINE_BIN`), and its images.
pub(super) fn prepare(backend: &Backend) -> Result<(), String> {
    match backend {
        Backend::Sim => Ok(()),
        Backend::Real(p) => real()?.prepare(*p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_names_are_the_flag_values() {
        for p in Provider::value_variants() {
            assert_eq!(p.to_possible_value().unwrap().get_name(), p.name());
        }
    }
}
