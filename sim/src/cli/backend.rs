//! `--backend sim|real` and `--provider auto|docker|local`: where a run's services come from, and
//! what each build can run.

use clap::{Args, ValueEnum};

/// The simulation needs `--cfg madsim`; said by every command that would simulate without it.
pub(super) const NO_SIMULATION: &str =
    "this dalp-sim was built without --cfg madsim and cannot simulate; use `cargo xtask sim …`";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum BackendKind {
    /// The simulation (the --cfg madsim build)
    Sim,
    /// Real PostgreSQL, Anvil and dalp-engine processes (the plain build)
    Real,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum Provider {
    /// Containers when Docker is reachable and the images exist, else local processes
    Auto,
    Docker,
    Local,
}

impl Provider {
    pub(super) fn name(self) -> &'static str {
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
    /// Whether this build can run it: the simulation needs `--cfg madsim`, real services the
    /// plain build.
    pub(super) fn supported(&self) -> Result<(), String> {
        match (self, cfg!(madsim)) {
            (Backend::Sim, true) | (Backend::Real(_), false) => Ok(()),
            (Backend::Sim, false) => Err(NO_SIMULATION.into()),
            (Backend::Real(_), true) => Err(
                "this dalp-sim is the simulation build (--cfg madsim); the real backend is in the plain build: `cargo xtask sim run … --backend real` picks it".into(),
            ),
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
/// in `DALP_ENGINE_BIN`).
#[cfg(not(madsim))]
pub(super) fn prepare(backend: &Backend) -> Result<(), String> {
    if matches!(backend, Backend::Real(_)) && std::env::var_os("DALP_ENGINE_BIN").is_none() {
        let bin = crate::real::engines::engine_binary().map_err(|e| e.to_string())?;
        std::env::set_var("DALP_ENGINE_BIN", bin);
    }
    Ok(())
}

#[cfg(madsim)]
pub(super) fn prepare(_: &Backend) -> Result<(), String> {
    Ok(())
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
