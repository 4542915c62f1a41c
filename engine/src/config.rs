//! Engine configuration: a TOML file, then `DALP_*` environment variables on top.
//!
//! Secrets (signer keys, API tokens) are wrapped so that `Debug` never prints them.

pub use crate::chain::endpoint::RpcEndpoint;
use crate::error::{EngineError, Result};
use crate::signer::SignerKey;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// A secret string (API token). Compared in constant time, never printed.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Constant-time comparison, so a token cannot be guessed byte by byte from timings.
    pub fn matches(&self, candidate: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), candidate.as_bytes());
        if a.is_empty() || a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This engine process's name; it appears in leases and the journal.
    pub node_id: String,
    pub database_url: Secret,
    pub chain_id: u64,
    /// URLs, or `{ name, url }` tables: only the name is ever shown (see `chain::endpoint`).
    pub rpc_endpoints: Vec<RpcEndpoint>,
    #[serde(default = "default_listen")]
    pub listen: String,
    pub api_token: Secret,
    /// Shared operator token, kept for existing deployments: it is the credential named
    /// `operator`. Prefer named `[[operators]]`, whose names are the audited actors.
    #[serde(default)]
    pub operator_token: Secret,
    #[serde(default)]
    pub operators: Vec<OperatorCredential>,
    #[serde(default)]
    pub http: HttpConfig,
    /// Named signer keys; workflows use `default` unless their input names another.
    #[serde(default)]
    pub signers: BTreeMap<String, SignerKey>,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub chain: ChainConfig,
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    #[serde(default)]
    pub indexer: IndexerConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    pub enabled: bool,
    /// Workflows executed at once by this process.
    pub concurrency: usize,
    pub lease_ms: u64,
    pub poll_ms: u64,
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Jitter as a fraction of the delay (0.3 = ±30 %).
    pub jitter: f64,
    /// A workflow whose next attempt is overdue by this much counts as stalled.
    pub stalled_after_ms: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            enabled: true,
            concurrency: 16,
            lease_ms: 10_000,
            poll_ms: 200,
            max_attempts: 8,
            backoff_base_ms: 200,
            backoff_max_ms: 10_000,
            jitter: 0.3,
            stalled_after_ms: 60_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChainConfig {
    /// Blocks on top of a transaction's block before a transaction step completes (1 = included).
    pub confirmations: u64,
    /// Depth after which a block is final: confirmation steps wait for it, the indexer's watermark.
    pub finality_depth: u64,
    pub receipt_poll_ms: u64,
    /// Bound of one confirmation attempt; after it the step retries (with the same nonce and bytes).
    pub confirm_timeout_ms: u64,
    /// A pending transaction older than this, whose fee is below the base fee, is replaced.
    pub stuck_after_ms: u64,
    /// Fee bump for a replacement, in percent (nodes require at least 10).
    pub replacement_bump_percent: u64,
    /// Priority fee offered, in wei.
    pub priority_fee_wei: u128,
    /// Endpoints more than this many blocks behind the best are not used.
    pub max_lag_blocks: u64,
    pub health_probe_ms: u64,
    /// An endpoint that failed is skipped for this long.
    pub endpoint_cooldown_ms: u64,
}

impl Default for ChainConfig {
    fn default() -> Self {
        ChainConfig {
            confirmations: 1,
            finality_depth: 2,
            receipt_poll_ms: 500,
            confirm_timeout_ms: 60_000,
            stuck_after_ms: 15_000,
            replacement_bump_percent: 25,
            priority_fee_wei: 1_000_000_000,
            max_lag_blocks: 5,
            health_probe_ms: 2_000,
            endpoint_cooldown_ms: 2_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutConfig {
    /// Every database call (sqlx has no timeout of its own).
    pub db_ms: u64,
    /// Default for RPC calls without their own entry.
    pub rpc_ms: u64,
    /// Per-method overrides, for example `eth_sendRawTransaction = 5000`.
    pub rpc_method_ms: BTreeMap<String, u64>,
    /// Bound on one step execution.
    pub step_ms: u64,
    /// How long start-up retries an unreachable database before giving up.
    pub db_startup_ms: u64,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            db_ms: 5_000,
            rpc_ms: 3_000,
            rpc_method_ms: BTreeMap::from([
                ("eth_sendRawTransaction".to_string(), 5_000),
                ("eth_getLogs".to_string(), 5_000),
            ]),
            step_ms: 120_000,
            db_startup_ms: 60_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexerConfig {
    pub enabled: bool,
    pub poll_ms: u64,
    /// Blocks indexed per loop iteration at most.
    pub batch: u64,
}

impl Default for IndexerConfig {
    fn default() -> Self {
        IndexerConfig {
            enabled: true,
            poll_ms: 500,
            batch: 50,
        }
    }
}

/// A TOML error without the offending line's text (it may hold a secret): where, and why.
fn toml_error(origin: &str, text: &str, e: &toml::de::Error) -> EngineError {
    let why = redact_strings(e.message().trim());
    match e.span() {
        Some(span) if !text.is_empty() => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            EngineError::Invalid(format!("{origin}: line {line}, column {column}: {why}"))
        }
        _ => EngineError::Invalid(format!("{origin}: {why}")),
    }
}

/// serde's messages quote a bad string value (`invalid type: string "…"`): keep the kind only.
fn redact_strings(msg: &str) -> String {
    let mut out = String::new();
    let mut rest = msg;
    while let Some(i) = rest.find("string \"") {
        out.push_str(&rest[..i + "string".len()]);
        let tail = &rest[i + "string \"".len()..];
        let mut escaped = false;
        let end = tail
            .char_indices()
            .find(|&(_, ch)| {
                let close = ch == '"' && !escaped;
                escaped = ch == '\\' && !escaped;
                close
            })
            .map_or(tail.len(), |(j, _)| j + 1);
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

impl Config {
    /// Parse a TOML document; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config> {
        let cfg: Config = toml::from_str(text).map_err(|e| toml_error(origin, text, &e))?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Read the file (if any), apply `DALP_*` variables from `env`, validate.
    pub fn load(path: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Config> {
        let (mut doc, origin) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    EngineError::Invalid(format!("{}: cannot read: {e}", p.display()))
                })?;
                let doc: toml::Table = toml::from_str(&text)
                    .map_err(|e| toml_error(&p.display().to_string(), &text, &e))?;
                (doc, p.display().to_string())
            }
            None => (toml::Table::new(), "environment".to_string()),
        };
        let set = |doc: &mut toml::Table, key: &str, v: toml::Value| {
            doc.insert(key.to_string(), v);
        };
        for (var, key) in [
            ("DALP_NODE_ID", "node_id"),
            ("DALP_DATABASE_URL", "database_url"),
            ("DALP_LISTEN", "listen"),
            ("DALP_API_TOKEN", "api_token"),
            ("DALP_OPERATOR_TOKEN", "operator_token"),
        ] {
            if let Some(v) = env.get(var) {
                set(&mut doc, key, toml::Value::String(v.clone()));
            }
        }
        if let Some(v) = env.get("DALP_CHAIN_ID") {
            let id: i64 = v
                .parse()
                .map_err(|_| EngineError::Invalid(format!("DALP_CHAIN_ID: not a number: {v:?}")))?;
            set(&mut doc, "chain_id", toml::Value::Integer(id));
        }
        if let Some(v) = env.get("DALP_RPC_ENDPOINTS") {
            let list = v
                .split(',')
                .map(|s| toml::Value::String(s.trim().to_string()))
                .collect();
            set(&mut doc, "rpc_endpoints", toml::Value::Array(list));
        }
        if let Some(v) = env.get("DALP_SIGNER_KEY") {
            let signers = doc
                .entry("signers")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(t) = signers {
                t.insert("default".into(), toml::Value::String(v.clone()));
            }
        }
        let cfg: Config = toml::Value::Table(doc)
            .try_into()
            .map_err(|e: toml::de::Error| toml_error(&origin, "", &e))?;
        cfg.validate(&origin)?;
        Ok(cfg)
    }

    fn validate(&self, origin: &str) -> Result<()> {
        let bad = |field: &str, why: &str| {
            Err(EngineError::Invalid(format!(
                "{origin}: field `{field}`: {why}"
            )))
        };
        if self.node_id.trim().is_empty() {
            return bad("node_id", "must not be empty");
        }
        if self.rpc_endpoints.is_empty() {
            return bad("rpc_endpoints", "at least one endpoint is required");
        }
        for (i, e) in self.rpc_endpoints.iter().enumerate() {
            if let Some(why) = e.problem() {
                return bad(&format!("rpc_endpoints[{i}]"), &why);
            }
            if let Some(j) = self.rpc_endpoints[..i]
                .iter()
                .position(|o| o.name() == e.name())
            {
                return bad(
                    &format!("rpc_endpoints[{i}]"),
                    &format!(
                        "same name {:?} as rpc_endpoints[{j}]; give each a name: {{ name = \"…\", url = \"…\" }}",
                        e.name()
                    ),
                );
            }
        }
        if self.api_token.expose().len() < 8 {
            return bad("api_token", "tokens must be at least 8 characters");
        }
        self.validate_http(origin)?;
        if !self.signers.contains_key("default") {
            return bad(
                "signers.default",
                "a default signer key is required (or DALP_SIGNER_KEY)",
            );
        }
        if let Some((field, value, lo, hi)) = self.out_of_range() {
            return bad(
                &field,
                &format!("{value} is outside the accepted range {lo} to {hi}"),
            );
        }
        if !(0.0..1.0).contains(&self.worker.jitter) {
            return bad("worker.jitter", "must be in [0, 1)");
        }
        if self.chain.replacement_bump_percent < 10 {
            return bad(
                "chain.replacement_bump_percent",
                "nodes reject replacements below 10 %",
            );
        }
        if self.chain.confirmations == 0 || self.chain.finality_depth < self.chain.confirmations {
            return bad(
                "chain.finality_depth",
                "need 1 <= confirmations <= finality_depth",
            );
        }
        Ok(())
    }

    /// The first bounded field outside its range: `(field, value, min, max)`. A zero interval
    /// would make a loop spin (poll, probe, receipt poll) or a bound expire at once.
    fn out_of_range(&self) -> Option<(String, u64, u64, u64)> {
        const MIN: u64 = 60_000;
        const HOUR: u64 = 60 * MIN;
        const DAY: u64 = 24 * HOUR;
        let (w, c, t, x) = (&self.worker, &self.chain, &self.timeouts, &self.indexer);
        let mut checks: Vec<(String, u64, u64, u64)> = [
            ("worker.concurrency", w.concurrency as u64, 1, 4096),
            ("worker.max_attempts", u64::from(w.max_attempts), 1, 1000),
            ("worker.lease_ms", w.lease_ms, 1_000, HOUR),
            ("worker.poll_ms", w.poll_ms, 10, MIN),
            ("worker.backoff_base_ms", w.backoff_base_ms, 1, HOUR),
            (
                "worker.backoff_max_ms",
                w.backoff_max_ms,
                w.backoff_base_ms.max(1),
                DAY,
            ),
            ("worker.stalled_after_ms", w.stalled_after_ms, 1_000, DAY),
            ("chain.receipt_poll_ms", c.receipt_poll_ms, 10, MIN),
            ("chain.confirm_timeout_ms", c.confirm_timeout_ms, 1_000, DAY),
            ("chain.stuck_after_ms", c.stuck_after_ms, 1_000, DAY),
            ("chain.health_probe_ms", c.health_probe_ms, 10, 10 * MIN),
            (
                "chain.endpoint_cooldown_ms",
                c.endpoint_cooldown_ms,
                0,
                HOUR,
            ),
            ("timeouts.db_ms", t.db_ms, 10, 10 * MIN),
            ("timeouts.rpc_ms", t.rpc_ms, 10, 10 * MIN),
            ("timeouts.step_ms", t.step_ms, 1_000, DAY),
            ("timeouts.db_startup_ms", t.db_startup_ms, 0, HOUR),
            ("indexer.poll_ms", x.poll_ms, 10, MIN),
            ("indexer.batch", x.batch, 1, 10_000),
        ]
        .into_iter()
        .map(|(f, v, lo, hi)| (f.to_string(), v, lo, hi))
        .collect();
        for (method, ms) in &t.rpc_method_ms {
            checks.push((
                format!("timeouts.rpc_method_ms.{method}"),
                *ms,
                10,
                10 * MIN,
            ));
        }
        checks.into_iter().find(|c| !(c.2..=c.3).contains(&c.1))
    }

    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.worker.lease_ms)
    }
    pub fn db_timeout(&self) -> Duration {
        Duration::from_millis(self.timeouts.db_ms)
    }
}

// ---- HTTP API: operator credentials and server limits ----

/// The name every audited action of the shared `operator_token` is recorded under.
pub const SHARED_OPERATOR: &str = "operator";
/// Longest operator name (it is the audit log's actor).
pub const MAX_OPERATOR_NAME: usize = 64;

/// A named operator: the token itself is never stored, only its SHA-256.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorCredential {
    pub name: String,
    pub token_sha256: TokenHash,
}

/// SHA-256 of a bearer token, written as 64 hex digits (`printf %s TOKEN | sha256sum`).
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> TokenHash {
        use sha2::Digest;
        TokenHash(sha2::Sha256::digest(token.as_bytes()).into())
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// Constant time: every byte is compared whatever the first difference.
    pub fn matches(&self, other: &TokenHash) -> bool {
        self.0
            .iter()
            .zip(other.0)
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for TokenHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bytes = alloy_primitives::hex::decode(&s)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| {
                serde::de::Error::custom(
                    "token_sha256: expected the token's SHA-256 as 64 hex digits",
                )
            })?;
        Ok(TokenHash(bytes))
    }
}

/// Bounds of the HTTP server (`api/serve.rs`): a client cannot hold a connection or a worker
/// by sending slowly, idling, or opening many connections.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// A request's head must arrive within this after the connection starts waiting for it.
    pub header_read_timeout_ms: u64,
    /// Bound on handling one request (answered 503 past it).
    pub request_timeout_ms: u64,
    /// A connection with no bytes read or written for this long is closed.
    pub idle_timeout_ms: u64,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// `/health` checks the database at most this often; callers in between get the cached result.
    pub health_cache_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_read_timeout_ms: 5_000,
            request_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            max_connections: 512,
            max_body_bytes: 64 * 1024,
            health_cache_ms: 1_000,
        }
    }
}

impl Config {
    /// The operator a bearer token belongs to (`None`: not an operator token).
    pub fn operator_for(&self, token: &str) -> Option<&str> {
        let hash = TokenHash::of(token);
        let mut found = None;
        // No early exit: the time taken does not say which credential (if any) matched.
        for op in &self.operators {
            if op.token_sha256.matches(&hash) && found.is_none() {
                found = Some(op.name.as_str());
            }
        }
        if self.operator_token.matches(token) && found.is_none() {
            found = Some(SHARED_OPERATOR);
        }
        found
    }

    fn validate_http(&self, origin: &str) -> Result<()> {
        let bad = |field: &str, why: &str| {
            Err(EngineError::Invalid(format!(
                "{origin}: field `{field}`: {why}"
            )))
        };
        let shared = !self.operator_token.expose().is_empty();
        if !shared && self.operators.is_empty() {
            return bad(
                "operators",
                "at least one operator credential is required ([[operators]] or operator_token)",
            );
        }
        if shared && self.operator_token.expose().len() < 8 {
            return bad("operator_token", "tokens must be at least 8 characters");
        }
        if shared && self.api_token == self.operator_token {
            return bad("operator_token", "must differ from api_token");
        }
        let api_hash = TokenHash::of(self.api_token.expose());
        let mut names = std::collections::BTreeSet::new();
        for (i, op) in self.operators.iter().enumerate() {
            let field = format!("operators[{i}].name");
            let n = &op.name;
            if n.is_empty() || n.len() > MAX_OPERATOR_NAME {
                return bad(&field, "must be 1 to 64 characters");
            }
            if !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
            {
                return bad(&field, "only letters, digits and . _ - @ are allowed");
            }
            if (shared && n == SHARED_OPERATOR) || !names.insert(n.as_str()) {
                return bad(
                    &field,
                    "names must be unique (`operator` is the shared operator_token's)",
                );
            }
            if op.token_sha256.matches(&api_hash) {
                return bad(
                    &format!("operators[{i}].token_sha256"),
                    "is the api_token's hash: operator tokens must differ from api_token",
                );
            }
        }
        let h = &self.http;
        for (field, v) in [
            ("http.header_read_timeout_ms", h.header_read_timeout_ms),
            ("http.request_timeout_ms", h.request_timeout_ms),
            ("http.idle_timeout_ms", h.idle_timeout_ms),
        ] {
            if !(100..=3_600_000).contains(&v) {
                return bad(field, "must be between 100 ms and 1 hour");
            }
        }
        if h.health_cache_ms > 60_000 {
            return bad(
                "http.health_cache_ms",
                "must be at most 60000 (a stale health answer hides an outage)",
            );
        }
        if !(1..=65_536).contains(&h.max_connections) {
            return bad("http.max_connections", "must be between 1 and 65536");
        }
        if !(1024..=16 * 1024 * 1024).contains(&h.max_body_bytes) {
            return bad("http.max_body_bytes", "must be between 1 KiB and 16 MiB");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

    fn env() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("DALP_NODE_ID".into(), "n1".into()),
            (
                "DALP_DATABASE_URL".into(),
                "postgres://u:pw@localhost/db".into(),
            ),
            ("DALP_CHAIN_ID".into(), "31337".into()),
            ("DALP_RPC_ENDPOINTS".into(), "http://a, http://b".into()),
            ("DALP_API_TOKEN".into(), "api-token-123".into()),
            ("DALP_OPERATOR_TOKEN".into(), "op-token-456".into()),
            ("DALP_SIGNER_KEY".into(), KEY.into()),
        ])
    }

    #[test]
    fn loads_from_env_and_never_prints_secrets() {
        let cfg = Config::load(None, &env()).unwrap();
        let names: Vec<&str> = cfg.rpc_endpoints.iter().map(|e| e.name()).collect();
        assert_eq!(names, vec!["http://a:80", "http://b:80"]);
        let printed = format!("{cfg:?}");
        assert!(!printed.contains(&KEY[2..]), "key leaked: {printed}");
        assert!(!printed.contains("api-token-123"));
        assert!(!printed.contains("pw@"));
    }

    #[test]
    fn unknown_fields_are_errors_naming_the_field() {
        let err = Config::from_toml("node_id = 'x'\nbogus = 1\n", "engine.toml").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("engine.toml") && msg.contains("bogus"),
            "{msg}"
        );
    }

    #[test]
    fn the_shipped_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("engine.example.toml");
        let env = BTreeMap::from([("DALP_SIGNER_KEY".to_string(), KEY.to_string())]);
        let cfg = Config::load(Some(&path), &env).unwrap();
        assert_eq!(cfg.rpc_endpoints.len(), 2);
        assert_eq!(cfg.timeouts.rpc_method_ms["eth_sendRawTransaction"], 5000);
        // The documented hash is the documented token's.
        assert_eq!(cfg.operator_for("change-me-alice"), Some("alice"));
        assert_eq!(cfg.http.max_body_bytes, 65536);
    }

    fn with(extra: &str) -> Result<Config> {
        let base = format!(
            "node_id = 'n'\ndatabase_url = 'postgres://x'\nchain_id = 1\nrpc_endpoints = ['http://a']\n\
             api_token = 'api-token-123'\nsigners.default = '{KEY}'\n{extra}"
        );
        Config::from_toml(&base, "t.toml")
    }

    fn op(name: &str, token: &str) -> String {
        let hex = alloy_primitives::hex::encode(TokenHash::of(token).0);
        format!("[[operators]]\nname = '{name}'\ntoken_sha256 = '{hex}'\n")
    }

    #[test]
    fn named_operators_are_found_by_their_token_hash() {
        let cfg = with(&format!(
            "{}{}",
            op("alice", "alice-secret-1"),
            op("bob", "bob-secret-22")
        ))
        .unwrap();
        assert_eq!(cfg.operator_for("alice-secret-1"), Some("alice"));
        assert_eq!(cfg.operator_for("bob-secret-22"), Some("bob"));
        assert_eq!(cfg.operator_for("api-token-123"), None);
        assert_eq!(cfg.operator_for(""), None);
        assert!(!format!("{cfg:?}").contains(&alloy_primitives::hex::encode(
            TokenHash::of("alice-secret-1").0
        )));
        // The shared token keeps working, as the credential named `operator`.
        let cfg = with("operator_token = 'op-token-456'\n").unwrap();
        assert_eq!(cfg.operator_for("op-token-456"), Some(SHARED_OPERATOR));
    }

    #[test]
    fn bad_operator_credentials_are_refused_naming_the_field() {
        let msg = |extra: &str| with(extra).unwrap_err().to_string();
        assert!(msg("").contains("`operators`"));
        let m = msg(&op("alice", "a-secret-1")
            .replace(&"0".repeat(0), "")
            .replacen("token_sha256 = '", "token_sha256 = 'zz", 1));
        assert!(
            m.contains("token_sha256") && m.contains("64 hex digits"),
            "{m}"
        );
        let m = msg(&format!(
            "{}{}",
            op("alice", "a-secret-1"),
            op("alice", "a-secret-2")
        ));
        assert!(
            m.contains("operators[1].name") && m.contains("unique"),
            "{m}"
        );
        let m = msg(&op("al ice", "a-secret-1"));
        assert!(m.contains("operators[0].name"), "{m}");
        let m = msg(&op("alice", "api-token-123"));
        assert!(
            m.contains("operators[0].token_sha256") && m.contains("api_token"),
            "{m}"
        );
        let m = msg(&format!(
            "operator_token = 'op-token-456'\n{}",
            op("operator", "a-secret-1")
        ));
        assert!(m.contains("operators[0].name"), "{m}");
    }

    #[test]
    fn http_limits_are_validated() {
        let ok = "operator_token = 'op-token-456'\n";
        let cfg = with(ok).unwrap();
        assert_eq!(cfg.http.max_connections, 512);
        for (field, value) in [
            ("header_read_timeout_ms", "0"),
            ("request_timeout_ms", "99"),
            ("idle_timeout_ms", "3600001"),
            ("max_connections", "0"),
            ("max_body_bytes", "10"),
            ("health_cache_ms", "60001"),
        ] {
            let m = with(&format!("{ok}[http]\n{field} = {value}\n"))
                .unwrap_err()
                .to_string();
            assert!(m.contains(&format!("http.{field}")), "{field}: {m}");
        }
    }

    /// A valid TOML document with `extra` appended (a table header or top-level lines).
    fn doc(top: &str, extra: &str) -> String {
        format!(
            "node_id = 'n'\ndatabase_url = 'postgres://u:pw@h/db'\nchain_id = 1\n{top}\n\
             api_token = 'api-token-123'\noperator_token = 'op-token-456'\n\
             [signers]\ndefault = '{KEY}'\n{extra}\n"
        )
    }
    const ONE_EP: &str = "rpc_endpoints = ['http://a']";

    #[test]
    fn zero_intervals_are_rejected_naming_the_field_and_range() {
        Config::from_toml(&doc(ONE_EP, ""), "t").unwrap();
        for (table, field) in [
            ("worker", "poll_ms"),
            ("worker", "lease_ms"),
            ("worker", "backoff_base_ms"),
            ("chain", "health_probe_ms"),
            ("chain", "receipt_poll_ms"),
            ("chain", "confirm_timeout_ms"),
            ("timeouts", "db_ms"),
            ("timeouts", "rpc_ms"),
            ("timeouts", "step_ms"),
            ("indexer", "poll_ms"),
            ("indexer", "batch"),
        ] {
            let text = doc(ONE_EP, &format!("[{table}]\n{field} = 0"));
            let msg = Config::from_toml(&text, "t").unwrap_err().to_string();
            assert!(
                msg.contains(&format!("`{table}.{field}`"))
                    && msg.contains("0 is outside the accepted range"),
                "{table}.{field}: {msg}"
            );
        }
        let text = doc(ONE_EP, "[timeouts.rpc_method_ms]\neth_call = 0");
        let msg = Config::from_toml(&text, "t").unwrap_err().to_string();
        assert!(msg.contains("timeouts.rpc_method_ms.eth_call"), "{msg}");
        let text = doc(
            ONE_EP,
            "[worker]\nbackoff_base_ms = 500\nbackoff_max_ms = 100",
        );
        let msg = Config::from_toml(&text, "t").unwrap_err().to_string();
        assert!(msg.contains("range 500 to"), "{msg}");
    }

    #[test]
    fn malformed_endpoints_are_rejected_naming_the_index() {
        for (eps, want) in [
            (
                "['http://a', 'localhost:8545']",
                "rpc_endpoints[1]`: url: not a URL",
            ),
            (
                "['ws://a']",
                "rpc_endpoints[0]`: url: the engine speaks JSON-RPC over HTTP",
            ),
            ("['http://:8545']", "host is missing"),
            (
                "['https://h/v3/k1', 'https://h/v3/k2']",
                "rpc_endpoints[1]`: same name",
            ),
            (
                "[{ name = 'x y', url = 'http://a' }]",
                "rpc_endpoints[0]`: name:",
            ),
        ] {
            let text = doc(&format!("rpc_endpoints = {eps}"), "");
            let msg = Config::from_toml(&text, "t").unwrap_err().to_string();
            assert!(msg.contains(want), "{eps}: {msg}");
            assert!(!msg.contains("k1") && !msg.contains("k2"), "{msg}");
        }
        let text = doc(
            "rpc_endpoints = ['https://h/v3/k1', { name = 'h2', url = 'https://h/v3/k2' }]",
            "",
        );
        let cfg = Config::from_toml(&text, "t").unwrap();
        assert_eq!(cfg.rpc_endpoints[1].name(), "h2");
        assert!(!format!("{cfg:?}").contains("k1"));
    }

    #[test]
    fn toml_errors_say_where_and_why_without_the_line() {
        let text = doc(ONE_EP, "").replace(
            "database_url = 'postgres://u:pw@h/db'",
            "database_url = 'postgres://u:hunter2@h/db",
        );
        let msg = Config::from_toml(&text, "engine.toml")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("engine.toml: line 2, column"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        // A string where a number belongs: serde quotes the value.
        let text = doc(ONE_EP, "[worker]\npoll_ms = 'hunter2'");
        let msg = Config::from_toml(&text, "engine.toml")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("line 10, column 11: invalid type: string, expected u64"),
            "{msg}"
        );
        assert!(!msg.contains("hunter2"), "{msg}");
        // The same through `load` (file, then environment on top).
        let dir = std::env::temp_dir().join(format!("dalp-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "node_id = 'n'\napi_token = \"hunter2\n").unwrap();
        let msg = Config::load(Some(&path), &env()).unwrap_err().to_string();
        assert!(msg.contains("line 2, column"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        let mut bad_env = env();
        bad_env.insert("DALP_SIGNER_KEY".into(), "0xnot-hunter2".into());
        let msg = Config::load(None, &bad_env).unwrap_err().to_string();
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn secrets_compare_exactly() {
        let s = Secret::new("abcdefgh");
        assert!(s.matches("abcdefgh"));
        assert!(!s.matches("abcdefgX"));
        assert!(!s.matches(""));
        assert!(!Secret::new("").matches(""));
    }
}
