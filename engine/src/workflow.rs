//! Workflow definitions: ordered steps with typed inputs, and what each step does.
//!
//! A step's output is persisted (the journal) before the next step starts; a resumed workflow
//! reads earlier outputs from the checkpoint (`state`), never from memory. Every step is safe to
//! re-run after a crash between its side effect and its journal write: transaction steps resume
//! their recorded transaction, off-chain effects are keyed by (workflow, kind).

use crate::contracts::{asset_token_deploy_code, check_amount, parse_amount, AssetToken};
use crate::error::{EngineError, Result};
use crate::signer::SignerKey;
use crate::store::{Fence, TxIntent, WorkflowRecord};
use crate::txmgr::TxManager;
use alloy_primitives::{Address, Bytes, B256, U256};
use alloy_sol_types::SolCall;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub const ISSUANCE: &str = "issuance";
pub const TRANSFER: &str = "transfer";
pub const MINT: &str = "mint";
pub const REGISTER_IDENTITY: &str = "register_identity";

pub const KINDS: &[&str] = &[ISSUANCE, TRANSFER, MINT, REGISTER_IDENTITY];

const DEPLOY_GAS: u64 = 2_000_000;
const CALL_GAS: u64 = 200_000;

/// The ordered step names of a workflow kind.
pub fn steps(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        ISSUANCE => &[
            "check_eligibility",
            "deploy_token",
            "await_confirmation",
            "configure_compliance",
            "mint_initial_supply",
            "register_identity",
            "notify",
        ],
        TRANSFER => &["compliance_check", "transfer", "await_confirmation"],
        MINT => &["mint", "await_confirmation"],
        REGISTER_IDENTITY => &["register_identity", "await_confirmation"],
        _ => return None,
    })
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuanceInput {
    pub name: String,
    pub symbol: String,
    #[serde(default = "default_decimals")]
    pub decimals: u8,
    pub initial_supply: String,
    /// Per-holder cap; absent or "0" means no cap.
    #[serde(default)]
    pub max_balance: Option<String>,
    /// The first investor whose identity is registered.
    pub investor: Address,
    #[serde(default)]
    pub country: u16,
    #[serde(default)]
    pub signer: Option<String>,
}

fn default_decimals() -> u8 {
    18
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenAmountInput {
    pub token: Address,
    pub to: Address,
    pub amount: String,
    #[serde(default)]
    pub signer: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterIdentityInput {
    pub token: Address,
    pub account: Address,
    #[serde(default)]
    pub country: u16,
    #[serde(default)]
    pub signer: Option<String>,
}

/// Longest token name accepted (the contract stores it; a block explorer shows it).
pub const MAX_NAME: usize = 64;
/// Longest symbol (the usual ERC-20 convention).
pub const MAX_SYMBOL: usize = 11;
/// Longest signer name.
pub const MAX_SIGNER: usize = 64;

/// Check a request before it is accepted; returns the signer name it uses. Errors name the
/// field and say why, and everything PostgreSQL would refuse (a NUL in a string or key) is
/// refused here, before the database.
pub fn validate(kind: &str, input: &Value) -> Result<String> {
    let fail = |field: &str, why: String| {
        EngineError::Invalid(format!("{kind} input: field `{field}`: {why}"))
    };
    if !KINDS.contains(&kind) {
        return Err(EngineError::Invalid(format!(
            "unknown workflow kind {kind:?}; known: {}",
            KINDS.join(", ")
        )));
    }
    let Some(fields) = input.as_object() else {
        return Err(EngineError::Invalid(format!(
            "{kind} input: must be a JSON object"
        )));
    };
    no_nul(input, "input").map_err(|(field, why)| fail(&field, why))?;
    let addresses: &[&str] = match kind {
        ISSUANCE => &["investor"],
        TRANSFER | MINT => &["token", "to"],
        _ => &["token", "account"],
    };
    for field in addresses {
        if let Some(Value::String(s)) = fields.get(*field) {
            check_address(s).map_err(|why| fail(field, why))?;
        }
    }
    if let Some(Value::String(s)) = fields.get("signer") {
        if s.is_empty() || s.chars().count() > MAX_SIGNER {
            return Err(fail(
                "signer",
                format!("must be 1 to {MAX_SIGNER} characters"),
            ));
        }
    }
    let invalid = |e: serde_json::Error| EngineError::Invalid(format!("{kind} input: {e}"));
    let amount = |field: &str, s: &str| {
        check_amount(s).map_err(|why| fail(field, format!("not an amount ({why}): {s:?}")))
    };
    let signer = match kind {
        ISSUANCE => {
            let i: IssuanceInput = serde_json::from_value(input.clone()).map_err(invalid)?;
            amount("initial_supply", &i.initial_supply)?;
            if let Some(m) = &i.max_balance {
                amount("max_balance", m)?;
            }
            for (field, v, max) in [
                ("name", &i.name, MAX_NAME),
                ("symbol", &i.symbol, MAX_SYMBOL),
            ] {
                if v.trim().is_empty() {
                    return Err(fail(field, "must not be empty".into()));
                }
                if v.chars().count() > max {
                    return Err(fail(field, format!("longer than {max} characters")));
                }
            }
            if i.decimals > 18 {
                return Err(fail("decimals", "at most 18".into()));
            }
            i.signer
        }
        TRANSFER | MINT => {
            let i: TokenAmountInput = serde_json::from_value(input.clone()).map_err(invalid)?;
            let a = amount("amount", &i.amount)?;
            if a.is_zero() {
                return Err(fail("amount", "must be positive".into()));
            }
            i.signer
        }
        _ => {
            serde_json::from_value::<RegisterIdentityInput>(input.clone())
                .map_err(invalid)?
                .signer
        }
    };
    Ok(signer.unwrap_or_else(|| "default".into()))
}

/// The first string or key under `v` holding a NUL (PostgreSQL refuses it in `text` and
/// `jsonb`): its path and the reason.
fn no_nul(v: &Value, path: &str) -> std::result::Result<(), (String, String)> {
    let why = || "contains a NUL character".to_string();
    match v {
        Value::String(s) if s.contains('\0') => Err((path.to_string(), why())),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, x)| no_nul(x, &format!("{path}[{i}]"))),
        Value::Object(m) => m.iter().try_for_each(|(k, x)| {
            if k.contains('\0') {
                return Err((format!("{path} key {k:?}"), why()));
            }
            no_nul(x, &format!("{path}.{k}"))
        }),
        _ => Ok(()),
    }
}

/// An address as a request must write it: `0x` and 40 hex digits; mixed case must be a valid
/// EIP-55 checksum (a typo in a checksummed address is caught), while all-lowercase (and
/// all-uppercase) digits carry no checksum and are accepted, as EIP-55 specifies.
pub fn check_address(s: &str) -> std::result::Result<Address, String> {
    let Some(hex) = s.strip_prefix("0x") else {
        return Err(format!("an address starts with 0x: {s:?}"));
    };
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("an address is 0x and 40 hex digits: {s:?}"));
    }
    let mixed =
        hex.bytes().any(|b| b.is_ascii_lowercase()) && hex.bytes().any(|b| b.is_ascii_uppercase());
    if mixed {
        return Address::parse_checksummed(s, None)
            .map_err(|_| format!("wrong EIP-55 checksum (mixed case that is not the checksum; write it in lowercase to skip the check): {s:?}"));
    }
    s.parse().map_err(|_| format!("not an address: {s:?}"))
}

/// Everything a step needs; borrowed from the engine for one step execution.
pub struct StepContext<'a> {
    pub fence: &'a Fence,
    pub workflow: &'a WorkflowRecord,
    pub step: i32,
    pub txm: &'a TxManager,
    pub signers: &'a BTreeMap<String, SignerKey>,
}

impl StepContext<'_> {
    fn signer(&self) -> Result<&SignerKey> {
        let name = self
            .workflow
            .input
            .get("signer")
            .and_then(Value::as_str)
            .unwrap_or("default");
        self.signers
            .get(name)
            .ok_or_else(|| EngineError::Invalid(format!("no signer named {name:?} is configured")))
    }

    fn input<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.workflow.input.clone())
            .map_err(|e| EngineError::Invalid(format!("stored input: {e}")))
    }

    /// Output of an earlier, completed step (from the persisted checkpoint).
    fn output(&self, step: &str) -> Result<&Value> {
        self.workflow.state.get(step).ok_or_else(|| {
            EngineError::Internal(format!("checkpoint has no output of step {step}"))
        })
    }

    fn token_from(&self, step: &str) -> Result<Address> {
        let v = self.output(step)?;
        let s = v
            .get("token")
            .or_else(|| v.get("contract_address"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                EngineError::Internal(format!("step {step} recorded no token address"))
            })?;
        s.parse()
            .map_err(|_| EngineError::Internal(format!("bad token address {s}")))
    }

    /// Send the step's transaction. Its input ends with the step's tag, which the contract
    /// ignores (trailing calldata) and which lets a re-run whose records were lost recognise
    /// the transaction it sent before (see `TxManager::execute`).
    async fn tx(&self, to: Option<Address>, call: Bytes, gas_limit: u64) -> Result<Value> {
        let key = self.signer()?;
        let tag = step_tag(
            &self.workflow.kind,
            &self.workflow.idempotency_key,
            self.step,
        );
        let mut input = call.to_vec();
        input.extend_from_slice(tag.as_slice());
        let intent = TxIntent {
            signer: key.address(),
            chain_id: self.txm.chain_id,
            to,
            input: input.into(),
            value: U256::ZERO,
            gas_limit,
        };
        let outcome = self
            .txm
            .execute(self.fence, self.step, key, intent, tag)
            .await?;
        Ok(serde_json::to_value(outcome).expect("outcome json"))
    }

    async fn finality(&self, tx_step: i32) -> Result<Value> {
        let outcome = self
            .txm
            .await_finality(self.fence, tx_step, self.signer()?)
            .await?;
        Ok(serde_json::to_value(outcome).expect("outcome json"))
    }
}

/// The 32 bytes a transaction step appends to its calldata: a function of what identifies the
/// step across a lost database (the request's idempotency key, not the workflow id, which a
/// promoted replica may hand out again).
pub fn step_tag(kind: &str, idempotency_key: &str, step: i32) -> B256 {
    alloy_primitives::keccak256(format!("dalp-step\0{kind}\0{idempotency_key}\0{step}"))
}

fn amount(s: &str) -> Result<U256> {
    parse_amount(s).ok_or_else(|| EngineError::Invalid(format!("not an amount: {s:?}")))
}

/// Execute step `name` of `kind`. Returns the step's output.
pub async fn execute(ctx: &StepContext<'_>, kind: &str, name: &str) -> Result<Value> {
    match (kind, name) {
        (ISSUANCE, "check_eligibility") => {
            let i: IssuanceInput = ctx.input()?;
            let key = ctx.signer()?;
            if i.investor == Address::ZERO {
                return Err(EngineError::Invalid("investor is the zero address".into()));
            }
            let funds = ctx.txm.gateway.balance(key.address()).await?;
            if funds.is_zero() {
                return Err(EngineError::SignerFunds {
                    signer: format!("{:#x}", key.address()),
                    message: "balance is zero".into(),
                });
            }
            Ok(json!({ "issuer": key.address(), "supply": amount(&i.initial_supply)?.to_string() }))
        }
        (ISSUANCE, "deploy_token") => {
            let i: IssuanceInput = ctx.input()?;
            ctx.tx(
                None,
                asset_token_deploy_code(&i.name, &i.symbol, i.decimals),
                DEPLOY_GAS,
            )
            .await
        }
        (ISSUANCE, "await_confirmation") => {
            let mut out = ctx.finality(ctx.step - 1).await?;
            let token = ctx.token_from("deploy_token")?;
            // The deployment is final, so no code means the answering node is behind (or the
            // contract destroyed itself): never a reason to give up at once.
            if ctx.txm.gateway.code(token).await?.is_empty() {
                return Err(EngineError::NoContractCode(format!(
                    "no code at deployed token {token:#x} in the answering node's state"
                )));
            }
            out["token"] = json!(token);
            Ok(out)
        }
        (ISSUANCE, "configure_compliance") => {
            let i: IssuanceInput = ctx.input()?;
            let max = i
                .max_balance
                .as_deref()
                .map(amount)
                .transpose()?
                .unwrap_or(U256::ZERO);
            let token = ctx.token_from("await_confirmation")?;
            ctx.tx(
                Some(token),
                AssetToken::setMaxBalanceCall { maxBalance_: max }
                    .abi_encode()
                    .into(),
                CALL_GAS,
            )
            .await
        }
        (ISSUANCE, "mint_initial_supply") => {
            let i: IssuanceInput = ctx.input()?;
            let token = ctx.token_from("await_confirmation")?;
            let to = ctx.signer()?.address();
            ctx.tx(
                Some(token),
                AssetToken::mintCall {
                    to,
                    amount: amount(&i.initial_supply)?,
                }
                .abi_encode()
                .into(),
                CALL_GAS,
            )
            .await
        }
        (ISSUANCE, "register_identity") => {
            let i: IssuanceInput = ctx.input()?;
            let token = ctx.token_from("await_confirmation")?;
            ctx.tx(
                Some(token),
                AssetToken::registerIdentityCall {
                    account: i.investor,
                    country: i.country,
                }
                .abi_encode()
                .into(),
                CALL_GAS,
            )
            .await
        }
        (ISSUANCE, "notify") => {
            let token = ctx.token_from("await_confirmation")?;
            let payload = json!({ "event": "issuance_completed", "token": token, "workflow_id": ctx.workflow.id });
            crate::fault_point!(
                "fp.notify.before_write",
                EngineError::DbUnavailable("fault point: notify".into())
            );
            let fresh = ctx
                .txm
                .store
                .notify(ctx.fence, "issuance_completed", &payload)
                .await?;
            if fresh {
                crate::probe!("notify.first_delivery");
            } else {
                crate::probe!("notify.duplicate_suppressed");
            }
            // The notification is written; whatever the step does after it may still fail
            // transiently, and the retried step (a new attempt) must not notify again.
            crate::fault_point!(
                "fp.notify.after_write",
                EngineError::Db {
                    sqlstate: "40001".into(),
                    message: "fault point: could not serialize access due to concurrent update"
                        .into(),
                }
            );
            Ok(json!({ "token": token, "notified": true, "first_delivery": fresh }))
        }
        (TRANSFER, "compliance_check") => {
            let i: TokenAmountInput = ctx.input()?;
            let from = ctx.signer()?.address();
            let call = AssetToken::canTransferCall {
                from,
                to: i.to,
                amount: amount(&i.amount)?,
            };
            // An error here (node down, timeout) is transient and retried; it never lets the
            // transfer through: the transfer step only runs after this step's output is persisted.
            let before = ctx.txm.own_history_canonical(from).await?;
            let head = ctx.txm.gateway.block_number().await?;
            let ret = ctx
                .txm
                .gateway
                .eth_call(from, i.token, &call.abi_encode().into())
                .await?;
            if ret.is_empty() {
                return Err(EngineError::NoContractCode(format!(
                    "canTransfer on token {:#x} returned no data at block {head}: the answering node has no code there",
                    i.token
                )));
            }
            let allowed = AssetToken::canTransferCall::abi_decode_returns(&ret).map_err(|e| {
                EngineError::Internal(format!("canTransfer returned malformed data: {e}"))
            })?;
            if allowed {
                return Ok(json!({ "allowed": true }));
            }
            let what = format!(
                "canTransfer({from:#x}, {:#x}, {}) returned false on token {:#x}",
                i.to, i.amount, i.token
            );
            // A "no" is final only on a settled chain (fail closed, but never on a state the
            // engine knows to be in flux): every transaction of ours it completed was canonical
            // before and after the call, and the rejection has held for `confirmations` blocks.
            let after = ctx.txm.own_history_canonical(from).await?;
            let settled = before.is_some() && before == after;
            let first = ctx
                .workflow
                .error
                .as_ref()
                .filter(|e| e["reason_code"] == "compliance_unsettled")
                .and_then(|e| e["rejected_at_block"].as_u64());
            let depth = ctx.txm.chain.confirmations;
            match (settled, first) {
                (true, Some(b)) if head >= b + depth => Err(EngineError::ComplianceRejected(what)),
                (true, first) => Err(EngineError::ComplianceUnsettled {
                    rejected_at_block: Some(first.unwrap_or(head)),
                    detail: format!("{what} at block {head}; final once it holds {depth} blocks"),
                }),
                (false, _) => Err(EngineError::ComplianceUnsettled {
                    rejected_at_block: None,
                    detail: format!(
                        "{what} at block {head}, while a transaction of ours the engine completed is not in the canonical chain (a reorg): the state may change"
                    ),
                }),
            }
        }
        (TRANSFER, "transfer") => {
            let i: TokenAmountInput = ctx.input()?;
            ctx.tx(
                Some(i.token),
                AssetToken::transferCall {
                    to: i.to,
                    amount: amount(&i.amount)?,
                }
                .abi_encode()
                .into(),
                CALL_GAS,
            )
            .await
        }
        (MINT, "mint") => {
            let i: TokenAmountInput = ctx.input()?;
            ctx.tx(
                Some(i.token),
                AssetToken::mintCall {
                    to: i.to,
                    amount: amount(&i.amount)?,
                }
                .abi_encode()
                .into(),
                CALL_GAS,
            )
            .await
        }
        (REGISTER_IDENTITY, "register_identity") => {
            let i: RegisterIdentityInput = ctx.input()?;
            ctx.tx(
                Some(i.token),
                AssetToken::registerIdentityCall {
                    account: i.account,
                    country: i.country,
                }
                .abi_encode()
                .into(),
                CALL_GAS,
            )
            .await
        }
        (TRANSFER | MINT | REGISTER_IDENTITY, "await_confirmation") => {
            ctx.finality(ctx.step - 1).await
        }
        _ => Err(EngineError::Internal(format!(
            "workflow {kind} has no step {name}"
        ))),
    }
}

/// Whether step `name` sends a transaction (so a dead-letter there may release its nonce).
pub fn is_tx_step(kind: &str, name: &str) -> bool {
    !matches!(
        name,
        "check_eligibility" | "await_confirmation" | "notify" | "compliance_check"
    ) && steps(kind).is_some()
}

/// The workflow's result, once its last step completed.
pub fn result(kind: &str, state: &Value) -> Value {
    match kind {
        ISSUANCE => {
            json!({ "token": state.get("await_confirmation").and_then(|v| v.get("token")) })
        }
        _ => {
            let last_tx = steps(kind)
                .and_then(|s| s.iter().rev().find(|n| is_tx_step(kind, n)))
                .copied()
                .unwrap_or("");
            json!({ "tx_hash": state.get(last_tx).and_then(|v| v.get("tx_hash")) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(kind: &str, input: Value) -> String {
        validate(kind, &input).unwrap_err().to_string()
    }

    const LOWER: &str = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";
    const CHECKSUMMED: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";

    #[test]
    fn addresses_need_0x_and_a_valid_checksum_when_mixed_case() {
        let mint = |to: &str| json!({"token": LOWER, "to": to, "amount": "5"});
        assert!(validate(MINT, &mint(LOWER)).is_ok());
        assert!(validate(MINT, &mint(CHECKSUMMED)).is_ok());
        assert!(validate(MINT, &mint(&LOWER.to_uppercase().replace("0X", "0x"))).is_ok());
        let typo = CHECKSUMMED.replace("C51812", "c51812");
        let e = err(MINT, mint(&typo));
        assert!(e.contains("`to`") && e.contains("EIP-55"), "{e}");
        let e = err(MINT, mint(&LOWER[2..]));
        assert!(e.contains("`to`") && e.contains("starts with 0x"), "{e}");
        let e = err(
            ISSUANCE,
            json!({"name": "A", "symbol": "A", "initial_supply": "1", "investor": "0x12"}),
        );
        assert!(
            e.contains("`investor`") && e.contains("40 hex digits"),
            "{e}"
        );
        let e = err(REGISTER_IDENTITY, json!({"token": LOWER, "account": &typo}));
        assert!(e.contains("`account`"), "{e}");
    }

    #[test]
    fn amounts_with_separators_spaces_or_no_digits_are_refused() {
        for bad in ["1_000", " 5 ", "", "0x"] {
            let e = err(
                TRANSFER,
                json!({"token": LOWER, "to": LOWER, "amount": bad}),
            );
            assert!(
                e.contains("`amount`") && e.contains("not an amount ("),
                "{bad:?}: {e}"
            );
        }
        let issuance = |supply: &str| json!({"name": "A", "symbol": "A", "initial_supply": supply, "investor": LOWER});
        assert!(err(ISSUANCE, issuance(" 1")).contains("`initial_supply`"));
        assert!(validate(ISSUANCE, &issuance("1000")).is_ok());
    }

    #[test]
    fn nul_characters_are_refused_naming_the_field_or_key() {
        let e = err(
            ISSUANCE,
            json!({"name": "A\u{0}B", "symbol": "A", "initial_supply": "1", "investor": LOWER}),
        );
        assert!(e.contains("`input.name`") && e.contains("NUL"), "{e}");
        let e = err(
            MINT,
            json!({"token": LOWER, "to": LOWER, "amount": "1", "x\u{0}": 1}),
        );
        assert!(e.contains("key \"x\\0\"") && e.contains("NUL"), "{e}");
    }

    #[test]
    fn text_fields_have_length_limits() {
        let issuance = |name: &str, symbol: &str| json!({"name": name, "symbol": symbol, "initial_supply": "1", "investor": LOWER});
        assert!(validate(ISSUANCE, &issuance(&"n".repeat(MAX_NAME), "SYM")).is_ok());
        let e = err(ISSUANCE, issuance(&"n".repeat(MAX_NAME + 1), "SYM"));
        assert!(e.contains("`name`") && e.contains("longer than 64"), "{e}");
        let e = err(ISSUANCE, issuance("N", &"S".repeat(MAX_SYMBOL + 1)));
        assert!(
            e.contains("`symbol`") && e.contains("longer than 11"),
            "{e}"
        );
        let e = err(ISSUANCE, issuance(" ", "S"));
        assert!(e.contains("`name`") && e.contains("empty"), "{e}");
        let e = err(
            MINT,
            json!({"token": LOWER, "to": LOWER, "amount": "1", "signer": "s".repeat(MAX_SIGNER + 1)}),
        );
        assert!(e.contains("`signer`"), "{e}");
        assert!(err(MINT, json!([1])).contains("JSON object"));
    }

    #[test]
    fn every_kind_has_steps_and_validation_names_fields() {
        for k in KINDS {
            assert!(!steps(k).unwrap().is_empty());
        }
        let e = validate(
            TRANSFER,
            &json!({"token": Address::ZERO, "to": Address::ZERO, "amount": "abc"}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("amount"), "{e}");
        let e = validate(
            TRANSFER,
            &json!({"token": Address::ZERO, "to": Address::ZERO, "amount": "1", "x": 1}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        assert!(validate("nope", &json!({})).is_err());
        assert_eq!(
            validate(
                MINT,
                &json!({"token": Address::ZERO, "to": Address::ZERO, "amount": "5"})
            )
            .unwrap(),
            "default"
        );
    }

    #[test]
    fn tx_steps_are_known() {
        assert!(is_tx_step(ISSUANCE, "deploy_token"));
        assert!(!is_tx_step(ISSUANCE, "await_confirmation"));
        assert!(!is_tx_step(TRANSFER, "compliance_check"));
        assert!(is_tx_step(TRANSFER, "transfer"));
    }
}
