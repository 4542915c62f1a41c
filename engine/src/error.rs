//! One error type for the engine, with the classification that drives retries.
//!
//! Every failure is either *transient* (retry with backoff: the world may change) or *permanent*
//! (retrying cannot help: dead-letter or fail with a typed reason). The classification lives here,
//! in one place, because a misclassified error is one of the classic durable-execution bugs.

use std::fmt;

/// Whether retrying can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    Transient,
    Permanent,
}

/// What went wrong. Variants carry what an operator needs to act; never secrets.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    /// A database error with its SQLSTATE (empty when the driver gave none).
    #[error("database error (SQLSTATE {sqlstate}): {message}")]
    Db { sqlstate: String, message: String },
    /// The database connection failed or broke (I/O, pool exhausted, closed).
    #[error("database unavailable: {0}")]
    DbUnavailable(String),
    /// A database call did not finish within its bound.
    #[error("database call timed out after {0} ms")]
    DbTimeout(u64),
    /// Our lease was superseded: another holder has the workflow now. Never retried by this holder.
    #[error("fenced: workflow {workflow_id} is held by another lease (fencing token {current}, ours {ours})")]
    Fenced {
        workflow_id: i64,
        ours: i64,
        current: i64,
    },
    /// A JSON-RPC error object returned by a node.
    #[error("rpc error {code}: {message}")]
    Rpc { code: i64, message: String },
    /// The RPC transport failed (connect, HTTP 5xx/429, malformed body) on every endpoint tried.
    #[error("rpc unavailable: {0}")]
    RpcUnavailable(String),
    /// An RPC call did not finish within its bound.
    #[error("rpc call {method} timed out after {ms} ms")]
    RpcTimeout { method: String, ms: u64 },
    /// The EVM reverted (in a pre-flight call or on chain).
    #[error("execution reverted: {0}")]
    Reverted(String),
    /// The compliance check ran and said no. The operation is blocked (fail closed).
    #[error("compliance rejected: {0}")]
    ComplianceRejected(String),
    /// The compliance check said no, but not yet on a settled chain: the rejection has not held
    /// for `confirmations` blocks, or a transaction of ours that the engine completed is missing
    /// from the canonical chain (a reorg took it out). Waited on, like an outage; a rejection
    /// that settles becomes [`EngineError::ComplianceRejected`].
    #[error("compliance rejection not settled: {detail}")]
    ComplianceUnsettled {
        /// The head when a rejection was first seen on a settled chain (`None`: not yet).
        rejected_at_block: Option<u64>,
        detail: String,
    },
    /// The signer cannot pay for gas.
    #[error("signer {signer} has insufficient funds: {message}")]
    SignerFunds { signer: String, message: String },
    /// The request itself is invalid.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// What the request names does not exist (an operator requeue of an unknown workflow).
    #[error("not found: {0}")]
    NotFound(String),
    /// A transaction did not reach its confirmation depth within the bound of one attempt.
    #[error("transaction {tx_hash} not confirmed within {secs} s")]
    ConfirmationTimeout { tx_hash: String, secs: u64 },
    /// A signer's nonces used on chain that no record holds are not mined yet: before the step
    /// sends anything it must know whether one of them is its own lost transaction.
    #[error("nonce reconciliation pending: {0}")]
    NonceReconciling(String),
    /// A call to a contract answered with no data: the answering node has no code at that
    /// address in its state. A node behind the chain (the contract's deployment not reached
    /// yet) answers so as well as a wrong address does, so it is retried on the attempt budget
    /// and dead-lettered only when that runs out; the answer is never read as a result.
    #[error("no contract code: {0}")]
    NoContractCode(String),
    /// A record the engine wrote and was told was committed is gone or now names another
    /// workflow: the database lost acknowledged commits (a failover to a replica without them)
    /// and handed the id out again. Not a fault of the request: the step resumes from what the
    /// database holds (a lost transaction is adopted as an orphan, txmgr/orphans.rs).
    #[error("record lost: {0}")]
    RecordLost(String),
    /// Anything else that is a bug or misconfiguration rather than weather.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The words [`EngineError::key_reused`] carries and [`EngineError::http_status`] looks for.
const KEY_REUSED: &str = "already used for a different request";

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl EngineError {
    /// The retry classification (DESIGN.md §3).
    pub fn class(&self) -> ErrorClass {
        use ErrorClass::*;
        match self {
            EngineError::Db { sqlstate, .. } => classify_sqlstate(sqlstate),
            EngineError::DbUnavailable(_) | EngineError::DbTimeout(_) => Transient,
            // A fenced holder must stop; the new holder carries on. Not retried by us.
            EngineError::Fenced { .. } => Permanent,
            EngineError::Rpc { code, message } => classify_rpc(*code, message),
            EngineError::RpcUnavailable(_) | EngineError::RpcTimeout { .. } => Transient,
            EngineError::Reverted(_)
            | EngineError::ComplianceRejected(_)
            | EngineError::Invalid(_)
            | EngineError::NotFound(_) => Permanent,
            // Funds can be topped up: wait, and dead-letter only when attempts run out.
            EngineError::SignerFunds { .. } => Transient,
            EngineError::ConfirmationTimeout { .. } => Transient,
            EngineError::NonceReconciling(_) => Transient,
            EngineError::ComplianceUnsettled { .. } => Transient,
            EngineError::NoContractCode(_) => Transient,
            EngineError::RecordLost(_) => Transient,
            EngineError::Internal(_) => Permanent,
        }
    }

    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    /// A node's answer that it cannot serve the request now, which another node (or the same
    /// one later) may: rate limited (-32005), an internal error (-32603), or a node behind the
    /// chain that lacks the block or state asked for (-32000 "header not found", "missing trie
    /// node": geth and Erigon while syncing or lagging, and providers' load balancers in front
    /// of such nodes). The gateway tries the next endpoint; when every endpoint answers so, the
    /// step waits as for an outage, spending no attempts.
    /// The database cannot serve writes now (a read-only node after a switchover, a shutdown,
    /// a cancelled statement, a lost connection, exhausted resources): an outage to wait out,
    /// like an RPC outage, never a reason to spend the retry budget (DESIGN.md §3).
    pub fn db_outage(&self) -> bool {
        match self {
            EngineError::Db { sqlstate, .. } => {
                matches!(
                    sqlstate.as_str(),
                    "" | "25006" | "57P01" | "57P02" | "57P03" | "57014"
                ) || sqlstate.starts_with("08")
                    || sqlstate.starts_with("53")
            }
            _ => false,
        }
    }

    pub fn node_unavailable(&self) -> bool {
        match self {
            EngineError::Rpc {
                code: -32005 | -32603,
                ..
            } => true,
            EngineError::Rpc {
                code: -32000,
                message,
            } => node_behind(message),
            _ => false,
        }
    }

    /// The HTTP status the API answers with (shared with the simulation's API server).
    pub fn http_status(&self) -> u16 {
        match self {
            EngineError::Invalid(m) if m.contains(KEY_REUSED) => 422,
            EngineError::Invalid(_) => 400,
            EngineError::NotFound(_) => 404,
            e if e.is_transient() => 503,
            _ => 500,
        }
    }

    /// The refusal of an idempotency key already live for a different request (HTTP 422); the
    /// store answers it whichever submission won the insert race.
    pub fn key_reused(key: &str) -> Self {
        EngineError::Invalid(format!("idempotency key {key:?} was {KEY_REUSED}"))
    }

    /// A short stable name for metrics labels and typed failure reasons.
    pub fn reason_code(&self) -> &'static str {
        match self {
            EngineError::Db { .. } => "db_error",
            EngineError::DbUnavailable(_) => "db_unavailable",
            EngineError::DbTimeout(_) => "db_timeout",
            EngineError::Fenced { .. } => "fenced",
            EngineError::Rpc { .. } => "rpc_error",
            EngineError::RpcUnavailable(_) => "rpc_unavailable",
            EngineError::RpcTimeout { .. } => "rpc_timeout",
            EngineError::Reverted(_) => "reverted",
            EngineError::ComplianceRejected(_) => "compliance_rejected",
            EngineError::SignerFunds { .. } => "signer_funds",
            EngineError::Invalid(_) => "invalid_input",
            EngineError::NotFound(_) => "not_found",
            EngineError::ConfirmationTimeout { .. } => "confirmation_timeout",
            EngineError::NonceReconciling(_) => "nonce_reconciling",
            EngineError::ComplianceUnsettled { .. } => "compliance_unsettled",
            EngineError::NoContractCode(_) => "no_contract_code",
            EngineError::RecordLost(_) => "record_lost",
            EngineError::Internal(_) => "internal",
        }
    }

    /// Map a node's JSON-RPC error to the most specific variant.
    pub fn from_rpc(code: i64, message: String, data: Option<&serde_json::Value>) -> Self {
        let lower = message.to_ascii_lowercase();
        if code == 3 || lower.contains("execution reverted") || lower.contains("revert") {
            return EngineError::Reverted(revert_reason(&message, data));
        }
        if lower.contains("insufficient funds") {
            return EngineError::SignerFunds {
                signer: String::new(),
                message,
            };
        }
        EngineError::Rpc { code, message }
    }
}

/// The RPC error classes that matter to the transaction lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeRejection {
    NonceTooLow,
    AlreadyKnown,
    ReplacementUnderpriced,
    FeeTooLow,
    Other,
}

/// Recognise Anvil's and geth's messages for a rejected `eth_sendRawTransaction` (DESIGN.md §7).
pub fn node_rejection(message: &str) -> NodeRejection {
    let m = message.to_ascii_lowercase();
    if m.contains("nonce too low") || m.contains("nonce has already been used") {
        NodeRejection::NonceTooLow
    } else if m.contains("already imported") || m.contains("already known") {
        NodeRejection::AlreadyKnown
    } else if m.contains("replacement transaction underpriced")
        || m.contains("replacement underpriced")
    {
        NodeRejection::ReplacementUnderpriced
    } else if m.contains("max fee per gas less than block base fee")
        || m.contains("fee cap less than block base fee")
        || m.contains("underpriced")
    {
        NodeRejection::FeeTooLow
    } else {
        NodeRejection::Other
    }
}

/// A `-32000` message that says the node lacks the block or state asked for (geth, Erigon).
fn node_behind(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("header not found")
        || m.contains("missing trie node")
        || m.contains("state not available")
        || m.contains("state is not available")
}

/// A node's refusal of the signed transaction itself, which no retry of the same bytes can
/// change. Anvil answers every invalid transaction with -32003 ("transaction rejected"), geth
/// with -32000, and the tx manager passes a send's rejection on with code 0: the message
/// decides. The -32003 answers that can change (insufficient funds, nonce, fee below the base
/// fee, underpriced, already known, pool full) are not here.
fn rejected_for_good(lower: &str) -> bool {
    [
        "max initcode size exceeded",
        "transaction type not supported",
        "tx type not supported",
        "invalid chain id",
        "incompatible eip-155",
        "max priority fee per gas higher than max fee per gas",
        "sender not an eoa",
        "oversized data",
        "nonce has max value",
        "gas uint64 overflow",
    ]
    .iter()
    .any(|p| lower.contains(p))
}

fn classify_sqlstate(code: &str) -> ErrorClass {
    use ErrorClass::*;
    match code {
        // serialization failure, deadlock: retry the transaction
        "40001" | "40P01" => Transient,
        // admin shutdown, crash shutdown, cannot connect now: reconnect
        "57P01" | "57P02" | "57P03" => Transient,
        // query canceled (statement_timeout): the server was slow, not wrong
        "57014" => Transient,
        // read-only transaction: we reached a demoted node; reconnect to the primary
        "25006" => Transient,
        // lock not available
        "55P03" => Transient,
        // foreign key violation: every parent row the engine names is one it wrote and was told
        // was committed, so the database lost an acknowledged commit (a failover to a replica
        // without it); the step resumes from what the database holds (lost transactions are
        // adopted as orphans, txmgr/orphans.rs), it is not a fault of the request.
        "23503" => Transient,
        c if c.starts_with("08") => Transient, // connection exception
        c if c.starts_with("53") => Transient, // insufficient resources
        "" => Transient,                       // no SQLSTATE: an I/O-level failure
        _ => Permanent,
    }
}

fn classify_rpc(code: i64, message: &str) -> ErrorClass {
    use ErrorClass::*;
    let m = message.to_ascii_lowercase();
    if code == 3 || m.contains("revert") || rejected_for_good(&m) {
        return Permanent;
    }
    // -32005 limit exceeded / 429-like, -32000 header not found / node behind, -32603 internal,
    // and the transaction-pool answers (nonce too low etc.) which the tx manager handles itself.
    match code {
        -32602 | -32601 | -32600 | -32700 => Permanent, // invalid params / method / request / parse
        _ => Transient,
    }
}

fn revert_reason(message: &str, data: Option<&serde_json::Value>) -> String {
    if let Some(hex) = data.and_then(|d| d.as_str()) {
        if let Some(reason) = decode_error_string(hex) {
            return reason;
        }
    }
    message
        .trim_start_matches("execution reverted")
        .trim_start_matches(':')
        .trim()
        .to_string()
}

/// Decode `Error(string)` revert data (selector 0x08c379a0).
pub fn decode_error_string(hex: &str) -> Option<String> {
    let bytes = alloy_primitives::hex::decode(hex.trim_start_matches("0x")).ok()?;
    if bytes.len() < 4 + 64 || bytes[..4] != [0x08, 0xc3, 0x79, 0xa0] {
        return None;
    }
    use alloy_sol_types::SolValue;
    String::abi_decode(&bytes[4..]).ok()
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
        })
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn database_outages_are_told_from_errors_that_spend_attempts() {
        let db = |code: &str| EngineError::Db {
            sqlstate: code.into(),
            message: "m".into(),
        };
        for code in ["25006", "57P01", "57014", "08006", "53300", ""] {
            assert!(db(code).db_outage(), "{code}");
        }
        for code in ["40001", "23503", "23505", "22003"] {
            assert!(!db(code).db_outage(), "{code}");
        }
        assert!(!EngineError::DbTimeout(5).db_outage());
    }

    use super::*;

    #[test]
    fn api_statuses_of_store_refusals() {
        // A reused idempotency key is 422 (whichever submission won the race), an unknown
        // workflow 404, any other invalid request 400.
        assert_eq!(EngineError::key_reused("k").http_status(), 422);
        assert_eq!(
            EngineError::NotFound("workflow 9".into()).http_status(),
            404
        );
        assert_eq!(EngineError::Invalid("bad".into()).http_status(), 400);
        assert_eq!(
            EngineError::NotFound(String::new()).reason_code(),
            "not_found"
        );
    }

    #[test]
    fn sqlstates_are_classified() {
        for transient in [
            "40001", "40P01", "57P01", "08006", "08001", "25006", "53300", "57014",
        ] {
            let e = EngineError::Db {
                sqlstate: transient.into(),
                message: String::new(),
            };
            assert!(e.is_transient(), "{transient} must be transient");
        }
        for permanent in ["23505", "42601", "22P02"] {
            let e = EngineError::Db {
                sqlstate: permanent.into(),
                message: String::new(),
            };
            assert!(!e.is_transient(), "{permanent} must be permanent");
        }
    }

    #[test]
    fn rpc_errors_are_classified() {
        assert!(
            !EngineError::from_rpc(3, "execution reverted: not owner".into(), None).is_transient()
        );
        assert!(EngineError::from_rpc(-32005, "rate limited".into(), None).is_transient());
        assert!(EngineError::RpcTimeout {
            method: "eth_call".into(),
            ms: 10
        }
        .is_transient());
        assert!(!EngineError::from_rpc(-32602, "invalid params".into(), None).is_transient());
        // A node behind the chain answers a call to a contract it has not seen with no data.
        assert!(EngineError::NoContractCode("canTransfer".into()).is_transient());
        assert!(matches!(
            EngineError::from_rpc(
                -32003,
                "Insufficient funds for gas * price + value".into(),
                None
            ),
            EngineError::SignerFunds { .. }
        ));
    }

    #[test]
    fn permanent_node_rejections_are_not_retried() {
        // Anvil's -32003, geth's -32000, and code 0 as the tx manager passes a send's rejection on.
        for code in [-32003, -32000, 0] {
            for m in [
                "max initcode size exceeded",
                "transaction type not supported",
                "invalid chain id for signer",
                "Incompatible EIP-155 transaction, signed for another chain",
                "max priority fee per gas higher than max fee per gas",
            ] {
                let e = EngineError::from_rpc(code, m.into(), None);
                assert!(!e.is_transient(), "{code} {m}");
                assert!(!e.node_unavailable(), "{code} {m}");
            }
        }
        // -32003 answers that may change: funds topped up, nonce, fees, pool.
        for m in [
            "Insufficient funds for gas * price + value",
            "nonce too low",
            "nonce too high",
            "max fee per gas less than block base fee",
            "replacement transaction underpriced",
            "transaction already imported",
            "txpool is full",
        ] {
            assert!(
                EngineError::from_rpc(-32003, m.into(), None).is_transient(),
                "{m}"
            );
        }
    }

    #[test]
    fn node_unavailability_is_transient_and_recognised() {
        let rpc = |code, m: &str| EngineError::from_rpc(code, m.into(), None);
        for e in [
            rpc(-32000, "header not found"),
            rpc(-32000, "missing trie node 1d3c… (path ) <nil>"),
            rpc(-32005, "daily request count exceeded, request rate limited"),
            rpc(-32603, "internal error"),
        ] {
            assert!(e.is_transient(), "{e}");
            assert!(e.node_unavailable(), "{e}");
        }
        // Answers about the request itself, not the node's state.
        for e in [
            rpc(-32000, "intrinsic gas too low"),
            rpc(-32003, "nonce too low"),
            rpc(-32602, "invalid params"),
            rpc(3, "execution reverted: not owner"),
            EngineError::RpcUnavailable("rpc-0: http status 503".into()),
        ] {
            assert!(!e.node_unavailable(), "{e}");
        }
    }

    #[test]
    fn anvil_and_geth_rejections_are_recognised() {
        assert_eq!(node_rejection("nonce too low"), NodeRejection::NonceTooLow);
        assert_eq!(
            node_rejection("transaction already imported"),
            NodeRejection::AlreadyKnown
        );
        assert_eq!(node_rejection("already known"), NodeRejection::AlreadyKnown);
        assert_eq!(
            node_rejection("replacement transaction underpriced"),
            NodeRejection::ReplacementUnderpriced
        );
        assert_eq!(node_rejection("something else"), NodeRejection::Other);
    }

    #[test]
    fn revert_data_is_decoded() {
        use alloy_sol_types::SolValue;
        let mut data = vec![0x08, 0xc3, 0x79, 0xa0];
        data.extend("identity not verified".to_string().abi_encode());
        let hex = format!("0x{}", alloy_primitives::hex::encode(data));
        let e = EngineError::from_rpc(
            3,
            "execution reverted".into(),
            Some(&serde_json::json!(hex)),
        );
        assert_eq!(e, EngineError::Reverted("identity not verified".into()));
    }
}
