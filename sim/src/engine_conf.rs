//! The engine configuration both backends give their engines: the same TOML the `dalp-engine`
//! binary reads, so an engine host in the simulation and an engine process on the real backend
//! run with the same settings (lease, retries, confirmations) and the scenarios' bounds mean the
//! same on both.

/// The engine's signer: Anvil's well-known account 0 (funded at genesis; a test key, never real
/// funds).
pub const SIGNER_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
pub const CHAIN_ID: u64 = 31337;
pub const API_TOKEN: &str = "sim-client-token";
pub const OPERATOR_TOKEN: &str = "sim-operator-token";
/// Attempts of a step before a failure that is not an outage is dead-lettered (the checkers
/// judge dead letters against it): the engine's default, which the generated configuration
/// keeps. (Writing it into the TOML, even with the same value, shifts the seeded hash-map keys
/// of everything built after the parse, and so some seeds' interleavings: see the note on
/// `random-chaos` seed 87.)
pub fn max_attempts() -> u32 {
    dalp_engine::config::WorkerConfig::default().max_attempts
}

use crate::scenario::EngineKnobs;

/// What differs per engine and per backend.
pub struct EngineConf<'a> {
    pub index: usize,
    pub database_url: &'a str,
    pub rpc_endpoints: &'a [String],
    pub finality_depth: u64,
    pub indexer: bool,
    /// The API's listen address (real backend; the simulation serves the API itself).
    pub listen: Option<&'a str>,
    /// The scenario's `[engine]` knobs; only those set are written (an unchanged scenario
    /// gives the engine the same text as before the knobs existed).
    pub knobs: &'a EngineKnobs,
}

/// The engines' confirmation depth for a chain with `finality_depth`.
pub fn confirmations(finality_depth: u64) -> u64 {
    finality_depth.clamp(1, 2)
}

/// The configuration text of engine `c.index` (`engine-<i>`).
pub fn engine_toml(c: &EngineConf) -> String {
    let endpoints: Vec<String> = c.rpc_endpoints.iter().map(|e| format!("{e:?}")).collect();
    let k = c.knobs;
    let confirmations = k
        .confirmations
        .unwrap_or_else(|| confirmations(c.finality_depth));
    let worker: String = [
        ("lease_ms", k.lease_ms),
        ("poll_ms", k.poll_ms),
        ("max_attempts", k.max_attempts.map(u64::from)),
        ("concurrency", k.concurrency.map(u64::from)),
    ]
    .iter()
    .filter_map(|(name, v)| v.map(|v| format!("{name} = {v}\n")))
    .collect();
    let worker = if worker.is_empty() {
        worker
    } else {
        format!("[worker]\n{worker}")
    };
    let listen = c
        .listen
        .map(|l| format!("listen = {l:?}\n"))
        .unwrap_or_default();
    format!(
        r#"node_id = "engine-{i}"
database_url = {db:?}
chain_id = {CHAIN_ID}
rpc_endpoints = [{endpoints}]
api_token = "{API_TOKEN}"
operator_token = "{OPERATOR_TOKEN}"
{listen}[signers]
default = "{SIGNER_KEY}"
[chain]
confirmations = {confirmations}
finality_depth = {finality}
[indexer]
enabled = {indexer}
{worker}"#,
        i = c.index,
        db = c.database_url,
        endpoints = endpoints.join(", "),
        finality = c.finality_depth,
        indexer = c.indexer,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use dalp_engine::config::Config;

    #[test]
    fn the_generated_configuration_is_valid_for_the_engine() {
        let eps = vec![
            "http://127.0.0.1:1".to_string(),
            "http://127.0.0.1:2".into(),
        ];
        let text = engine_toml(&EngineConf {
            index: 2,
            database_url: "postgres://postgres@127.0.0.1:5/dalp",
            rpc_endpoints: &eps,
            finality_depth: 3,
            indexer: true,
            listen: Some("127.0.0.1:8080"),
            knobs: &EngineKnobs::default(),
        });
        assert!(!text.contains("[worker]"), "no knobs, no table:\n{text}");
        let c = Config::from_toml(&text, "test").unwrap();
        assert_eq!(c.node_id, "engine-2");
        let urls: Vec<&str> = c.rpc_endpoints.iter().map(|e| e.url()).collect();
        assert_eq!(urls, eps);
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!((c.chain.confirmations, c.chain.finality_depth), (2, 3));
    }

    #[test]
    fn knobs_reach_the_engine() {
        let eps = vec!["http://127.0.0.1:1".to_string()];
        let knobs = EngineKnobs {
            lease_ms: Some(4000),
            poll_ms: Some(70),
            max_attempts: Some(3),
            concurrency: Some(5),
            confirmations: Some(3),
        };
        let text = engine_toml(&EngineConf {
            index: 0,
            database_url: "postgres://postgres@127.0.0.1:5/dalp",
            rpc_endpoints: &eps,
            finality_depth: 4,
            indexer: false,
            listen: None,
            knobs: &knobs,
        });
        let c = Config::from_toml(&text, "test").unwrap();
        let w = &c.worker;
        assert_eq!(
            (w.lease_ms, w.poll_ms, w.max_attempts, w.concurrency),
            (4000, 70, 3, 5)
        );
        assert_eq!(c.chain.confirmations, 3);
    }
}
