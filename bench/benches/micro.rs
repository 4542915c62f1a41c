//! Micro-benchmarks of the simulation's hot paths: the database model per request type, block
//! production, the simulated node's JSON-RPC request path, signing, trace hashing and scenario
//! parsing. `cargo xtask bench` runs them beside the end-to-end benchmark and prints one table;
//! `cargo bench -p dalp-bench -- <filter>` runs a subset.
//!
//! Each benchmark builds its state outside the measured closure; a request that changes the
//! state runs on a fresh clone each iteration (`iter_batched`), so every iteration measures the
//! same work.

use alloy_primitives::{Address, Bytes, B256, U256};
use alloy_sol_types::SolCall;
use criterion::{criterion_group, BatchSize, BenchmarkId, Criterion, Throughput};
use dalp_engine::contracts::{asset_token_deploy_code, AssetToken};
use dalp_engine::signer::{SignerKey, UnsignedTx};
use dalp_engine::store::{
    Broadcast, Fees, Fence, NewWorkflow, TokenEvent, TxIntent, TxState, WorkflowId,
};
use dalp_sim::chain::{ChainModel, ChainParams, GWEI};
use dalp_sim::db::{DbModel, DbReply, DbRequest};
use dalp_sim::scenario::Scenario;
use dalp_sim::trace::Trace;
use serde_json::{json, Value};
use std::hint::black_box;
use std::path::Path;

const DAY_MS: u64 = 86_400_000;
const LEASE_MS: u64 = 30_000;
/// Anvil's dev account 0 (the key is public).
const KEY0: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

// ---------------------------------------------------------------------------------------------
// The database model
// ---------------------------------------------------------------------------------------------

/// A database a few minutes into a run: `n` workflows submitted, half of them claimed, each
/// claimed one with a signed transaction and a journal step, and a few indexed blocks.
struct DbFixture {
    model: DbModel,
    now: u64,
    /// A claimed workflow's fence and its live transaction's id.
    fence: Fence,
    tx_id: i64,
}

fn new_workflow(key: &str) -> NewWorkflow {
    NewWorkflow {
        kind: "transfer".into(),
        scope: "signer/1/transfer".into(),
        idempotency_key: key.into(),
        request_hash: format!("hash-{key}"),
        input: json!({ "key": key, "to": "0x00000000000000000000000000000000000000ee", "amount": "7" }),
    }
}

fn intent() -> TxIntent {
    TxIntent {
        signer: Address::repeat_byte(1),
        chain_id: 31337,
        to: Some(Address::repeat_byte(0xee)),
        input: Bytes::from(vec![0xa9, 0x05, 0x9c, 0xbb]),
        value: U256::ZERO,
        gas_limit: 100_000,
    }
}

const FEES: Fees = Fees {
    max_fee_per_gas: 3 * GWEI,
    max_priority_fee_per_gas: GWEI,
};

fn broadcast(n: u64) -> Broadcast {
    Broadcast {
        hash: B256::from(U256::from(n + 1)),
        nonce: n,
        raw: Bytes::from(vec![0x02; 120]),
        max_fee_per_gas: FEES.max_fee_per_gas,
        max_priority_fee_per_gas: FEES.max_priority_fee_per_gas,
    }
}

fn apply(m: &mut DbModel, req: DbRequest, now: u64) -> DbReply {
    let name = req.name();
    m.apply(&req, now)
        .unwrap_or_else(|e| panic!("fixture {name}: {e:?}"))
}

impl DbFixture {
    fn new(n: usize) -> Self {
        let mut m = DbModel::new();
        let mut now = 1_000_000;
        for i in 0..n {
            now += 10;
            apply(
                &mut m,
                DbRequest::Submit {
                    new: new_workflow(&format!("k{i}")),
                    window_ms: DAY_MS,
                },
                now,
            );
        }
        let DbReply::Claims(claims) = apply(
            &mut m,
            DbRequest::Claim {
                node: "engine-0".into(),
                lease_ms: LEASE_MS,
                limit: n / 2,
                lease_id: 7,
                skip_locked: Vec::new(),
            },
            now,
        ) else {
            panic!("claim")
        };
        let mut last = None;
        for (i, c) in claims.iter().enumerate() {
            now += 10;
            apply(
                &mut m,
                DbRequest::CompleteStep {
                    fence: c.fence.clone(),
                    step: 0,
                    name: "validate".into(),
                    output: json!({ "ok": true }),
                    result: None,
                },
                now,
            );
            let DbReply::Tx(tx) = apply(
                &mut m,
                DbRequest::CreateTx {
                    fence: c.fence.clone(),
                    step: 1,
                    intent: intent(),
                    fees: FEES,
                    chain_nonce: 0,
                },
                now,
            ) else {
                panic!("create_tx")
            };
            apply(
                &mut m,
                DbRequest::RecordSigned {
                    fence: c.fence.clone(),
                    tx_id: tx.id,
                    signed: broadcast(i as u64),
                },
                now,
            );
            last = Some((c.fence.clone(), tx.id));
        }
        for b in 1..=5u64 {
            apply(&mut m, index_block(b, 2), now);
        }
        let (fence, tx_id) = last.expect("at least one claimed workflow");
        DbFixture {
            model: m,
            now,
            fence,
            tx_id,
        }
    }
}

/// Block `number` with `events` transfers, over the checkpoint at block `number - 1` (the
/// fixture indexes blocks 1 to 5: block 6 is written, not refused).
fn index_block(number: u64, events: u64) -> DbRequest {
    let hash = B256::from(U256::from(number));
    DbRequest::IndexBlock {
        chain_id: 31337,
        extends: (number > 1).then(|| (number - 1, B256::from(U256::from(number - 1)))),
        number,
        hash,
        events: (0..events)
            .map(|i| TokenEvent {
                block_number: number,
                block_hash: hash,
                tx_hash: B256::from(U256::from(number * 1000 + i)),
                log_index: i,
                contract: Address::repeat_byte(0xc0),
                from: Address::ZERO,
                to: Address::repeat_byte(2),
                value: U256::from(5),
            })
            .collect(),
        finalized: number.saturating_sub(2),
    }
}

/// `DbModel::apply` per request type, on a database holding 200 workflows.
fn db_model(c: &mut Criterion) {
    let fx = DbFixture::new(200);
    let mut g = c.benchmark_group("db_apply");
    let id: WorkflowId = fx.fence.workflow_id;
    let now = fx.now + 100;
    let requests: Vec<(&str, DbRequest)> = vec![
        (
            "submit",
            DbRequest::Submit {
                new: new_workflow("fresh"),
                window_ms: DAY_MS,
            },
        ),
        (
            "submit_duplicate",
            DbRequest::Submit {
                new: new_workflow("k7"),
                window_ms: DAY_MS,
            },
        ),
        ("workflow", DbRequest::Workflow { id }),
        ("journal", DbRequest::Journal { id }),
        (
            "claim_10",
            DbRequest::Claim {
                node: "engine-1".into(),
                lease_ms: LEASE_MS,
                limit: 10,
                lease_id: 7,
                skip_locked: Vec::new(),
            },
        ),
        (
            "renew_lease",
            DbRequest::RenewLease {
                fence: fx.fence.clone(),
                lease_ms: LEASE_MS,
            },
        ),
        (
            "complete_step",
            DbRequest::CompleteStep {
                fence: fx.fence.clone(),
                step: 1,
                name: "send".into(),
                output: json!({ "tx": "0x01" }),
                result: None,
            },
        ),
        (
            "create_tx",
            DbRequest::CreateTx {
                fence: fx.fence.clone(),
                step: 2,
                intent: intent(),
                fees: FEES,
                chain_nonce: 0,
            },
        ),
        (
            "set_tx_state",
            DbRequest::SetTxState {
                fence: fx.fence.clone(),
                tx_id: fx.tx_id,
                state: TxState::Completed,
                detail: None,
                receipt: Some(json!({ "status": "0x1", "blockNumber": "0x5" })),
            },
        ),
        (
            "tx_for_step",
            DbRequest::TxForStep {
                workflow: id,
                step: 1,
            },
        ),
        (
            "nonce_view",
            DbRequest::NonceView {
                signer: Address::repeat_byte(1),
                chain_id: 31337,
                tag: B256::ZERO,
            },
        ),
        ("index_block", index_block(6, 4)),
        (
            "indexed_balances",
            DbRequest::IndexedBalances {
                chain_id: 31337,
                contract: Address::repeat_byte(0xc0),
            },
        ),
        (
            "stats",
            DbRequest::Stats {
                stalled_after_ms: 60_000,
            },
        ),
    ];
    for (name, req) in requests {
        // Every request must succeed on the fixture, or the benchmark measures an error path.
        let mut check = fx.model.clone();
        if let Err(e) = check.apply(&req, now) {
            panic!("db_apply/{name} fails on the fixture: {e:?}");
        }
        if req.is_write() {
            g.bench_function(name, |b| {
                b.iter_batched_ref(
                    || fx.model.clone(),
                    |m| black_box(m.apply(&req, now)),
                    BatchSize::LargeInput,
                )
            });
        } else {
            g.bench_function(name, |b| b.iter(|| black_box(fx.model.read(&req, now))));
        }
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// The chain model
// ---------------------------------------------------------------------------------------------

fn eth(n: u64) -> U256 {
    U256::from(n) * U256::from(10u64).pow(U256::from(18))
}

/// `count` signed ether transfers from one key, nonces `first..first + count`.
fn transfers(key: &SignerKey, first: u64, count: u64) -> Vec<(Bytes, B256)> {
    (first..first + count)
        .map(|nonce| {
            key.sign(&UnsignedTx {
                chain_id: 31337,
                nonce,
                gas_limit: 21_000,
                max_fee_per_gas: 3 * GWEI,
                max_priority_fee_per_gas: GWEI,
                to: Some(Address::repeat_byte(0xee)),
                value: U256::from(1),
                input: Bytes::new(),
            })
            .expect("sign")
        })
        .collect()
}

fn rpc(m: &mut ChainModel, now: u64, method: &str, params: Value) -> String {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    m.handle_rpc(&body, now, 0)
}

fn rpc_ok(m: &mut ChainModel, now: u64, method: &str, params: Value) -> Value {
    let out: Value = serde_json::from_str(&rpc(m, now, method, params)).expect("json");
    assert!(out.get("error").is_none(), "{method}: {out}");
    out["result"].clone()
}

/// A chain with the fixture token deployed and a few mined transfers; returns the model, the
/// clock, the token and a mined transaction's hash.
fn chain_fixture(key: &SignerKey) -> (ChainModel, u64, Address, B256) {
    let me = key.address();
    let mut now = 1_700_000_000_000;
    let mut m = ChainModel::new(ChainParams::anvil(vec![(me, eth(10_000))]), now);
    let (deploy, _) = key
        .sign(&UnsignedTx {
            chain_id: 31337,
            nonce: 0,
            gas_limit: 3_000_000,
            max_fee_per_gas: 3 * GWEI,
            max_priority_fee_per_gas: GWEI,
            to: None,
            value: U256::ZERO,
            input: asset_token_deploy_code("Bond", "BND", 18),
        })
        .expect("sign");
    rpc_ok(&mut m, now, "eth_sendRawTransaction", json!([deploy]));
    now += 1000;
    m.mine_block(now);
    let token = me.create(0);
    let mut mined = B256::ZERO;
    for (raw, hash) in transfers(key, 1, 5) {
        rpc_ok(&mut m, now, "eth_sendRawTransaction", json!([raw]));
        mined = hash;
    }
    now += 1000;
    m.mine_block(now);
    (m, now, token, mined)
}

/// Block production with N pending transactions.
fn chain_blocks(c: &mut Criterion) {
    let key = SignerKey::from_hex(KEY0).expect("key");
    let (base, now, _, _) = chain_fixture(&key);
    let mut g = c.benchmark_group("mine_block");
    for n in [0u64, 1, 10, 100] {
        let mut m = base.clone();
        for (raw, _) in transfers(&key, 6, n) {
            rpc_ok(&mut m, now, "eth_sendRawTransaction", json!([raw]));
        }
        assert_eq!(m.pending_count() as u64, n);
        g.throughput(Throughput::Elements(n.max(1)));
        g.bench_with_input(BenchmarkId::from_parameter(n), &m, |b, m| {
            b.iter_batched_ref(
                || m.clone(),
                |m| black_box(m.mine_block(now + 1000)),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

/// The simulated node's request path: JSON-RPC text in, text out, per method the engine calls.
fn chain_rpc(c: &mut Criterion) {
    let key = SignerKey::from_hex(KEY0).expect("key");
    let (base, now, token, mined) = chain_fixture(&key);
    let me = key.address();
    let call = AssetToken::balanceOfCall::new((me,)).abi_encode();
    let (next, _) = transfers(&key, 6, 1).remove(0);
    let mut g = c.benchmark_group("node_rpc");
    let reads: Vec<(&str, &str, Value)> = vec![
        ("block_number", "eth_blockNumber", json!([])),
        ("chain_id", "eth_chainId", json!([])),
        (
            "get_transaction_count",
            "eth_getTransactionCount",
            json!([me, "pending"]),
        ),
        (
            "get_transaction_receipt",
            "eth_getTransactionReceipt",
            json!([mined]),
        ),
        (
            "get_block_by_number",
            "eth_getBlockByNumber",
            json!(["latest", false]),
        ),
        (
            "call_balance_of",
            "eth_call",
            json!([{"from": me, "to": token, "data": Bytes::from(call)}, "latest"]),
        ),
        (
            "get_logs",
            "eth_getLogs",
            json!([{"fromBlock": "0x0", "toBlock": "latest", "address": token}]),
        ),
    ];
    for (name, method, params) in reads {
        let mut m = base.clone();
        rpc_ok(&mut m, now, method, params.clone());
        g.bench_function(name, |b| {
            b.iter(|| black_box(rpc(&mut m, now, method, params.clone())))
        });
    }
    let send = json!([next]);
    rpc_ok(
        &mut base.clone(),
        now,
        "eth_sendRawTransaction",
        send.clone(),
    );
    g.bench_function("send_raw_transaction", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |m| black_box(rpc(m, now, "eth_sendRawTransaction", send.clone())),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// Signing an EIP-1559 transaction as the engine does (k256 ECDSA, RLP, keccak).
fn signing(c: &mut Criterion) {
    let key = SignerKey::from_hex(KEY0).expect("key");
    let tx = UnsignedTx {
        chain_id: 31337,
        nonce: 7,
        gas_limit: 100_000,
        max_fee_per_gas: 3 * GWEI,
        max_priority_fee_per_gas: GWEI,
        to: Some(Address::repeat_byte(0xee)),
        value: U256::ZERO,
        input: Bytes::from(vec![0xa9; 68]),
    };
    c.bench_function("engine_sign_tx", |b| b.iter(|| black_box(key.sign(&tx))));
}

// ---------------------------------------------------------------------------------------------
// Trace and scenarios
// ---------------------------------------------------------------------------------------------

/// Recording one typical event: canonical JSON line, chained keccak, append.
fn trace(c: &mut Criterion) {
    let args = json!({ "req": "complete_step", "workflow": 17, "step": 2, "ok": true, "ms": 3 });
    let mut g = c.benchmark_group("trace");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("record_1000_events", |b| {
        b.iter_batched(
            Trace::new,
            |t| {
                for i in 0..1000u64 {
                    t.record(i, "db-0", "db", "commit", args.clone());
                }
                black_box(t.hash())
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// Parsing and validating every catalog scenario (`scenarios/*.toml`).
fn scenarios(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("scenarios directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read scenario");
            (p.display().to_string(), text)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no scenario in {}", dir.display());
    for (name, text) in &files {
        Scenario::parse(text, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let mut g = c.benchmark_group("scenario");
    g.throughput(Throughput::Elements(files.len() as u64));
    g.bench_function("parse_catalog", |b| {
        b.iter(|| {
            for (name, text) in &files {
                black_box(Scenario::parse(text, name).is_ok());
            }
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    db_model,
    chain_blocks,
    chain_rpc,
    signing,
    trace,
    scenarios
);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // The table is for `cargo xtask bench`; `cargo test --benches` runs each once and prints none.
    if std::env::args().any(|a| a == "--bench") {
        table::print();
    }
}

/// One table of every benchmark's median (criterion's estimates under `CRITERION_HOME`), and the
/// end-to-end figures `dalp-sim bench` wrote (`DALP_BENCH_E2E`), for `cargo xtask bench`.
mod table {
    use serde_json::Value;
    use std::path::{Path, PathBuf};

    fn home() -> PathBuf {
        std::env::var_os("CRITERION_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/criterion"))
    }

    fn read(p: &Path) -> Option<Value> {
        serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
    }

    /// Every `<id>/new/{benchmark,estimates}.json` below `dir`.
    fn collect(dir: &Path, rows: &mut Vec<(String, f64, Option<u64>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            if p.file_name().is_some_and(|n| n == "new") {
                let (Some(b), Some(e)) = (
                    read(&p.join("benchmark.json")),
                    read(&p.join("estimates.json")),
                ) else {
                    continue;
                };
                let id = b["full_id"].as_str().unwrap_or("?").to_string();
                let ns = e["median"]["point_estimate"].as_f64().unwrap_or(f64::NAN);
                let elems = b["throughput"]["Elements"].as_u64();
                rows.push((id, ns, elems));
            } else if p.is_dir() && p.file_name().is_some_and(|n| n != "base" && n != "report") {
                collect(&p, rows);
            }
        }
    }

    fn human(ns: f64) -> String {
        if ns >= 1e9 {
            format!("{:.2} s", ns / 1e9)
        } else if ns >= 1e6 {
            format!("{:.2} ms", ns / 1e6)
        } else if ns >= 1e3 {
            format!("{:.2} µs", ns / 1e3)
        } else {
            format!("{ns:.0} ns")
        }
    }

    pub fn print() {
        let mut rows = Vec::new();
        collect(&home(), &mut rows);
        println!();
        println!("{:<44} {:>12} {:>16}", "benchmark", "median", "per element");
        println!("{}", "-".repeat(74));
        for (id, ns, elems) in &rows {
            let per = elems
                .filter(|n| *n > 1)
                .map(|n| human(ns / n as f64))
                .unwrap_or_default();
            println!("{id:<44} {:>12} {per:>16}", human(*ns));
        }
        // `cargo bench` runs the harness in bench/: a relative path is the workspace root's.
        let e2e = std::env::var_os("DALP_BENCH_E2E")
            .map(|p| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p));
        if let Some(e2e) = e2e.and_then(|p| read(&p)) {
            let r = &e2e["reference"];
            let s = &e2e["suite"];
            println!("{}", "-".repeat(74));
            println!(
                "{:<44} {:>12} {:>16}",
                format!(
                    "end-to-end {} (seeds {})",
                    r["scenario"].as_str().unwrap_or("?"),
                    r["seeds"]
                ),
                format!("{:.0}x", r["sim_s_per_wall_s"].as_f64().unwrap_or(f64::NAN)),
                "sim-s per wall-s"
            );
            println!(
                "{:<44} {:>12} {:>16}",
                "  peak RSS per seed process",
                format!("{:.1} MiB", r["peak_rss_mib"].as_f64().unwrap_or(f64::NAN)),
                ""
            );
            println!(
                "{:<44} {:>12} {:>16}",
                format!(
                    "end-to-end suite {} ({} runs, {} at a time)",
                    s["name"].as_str().unwrap_or("?"),
                    s["runs"],
                    s["parallel"]
                ),
                format!("{:.1} s", s["wall_s"].as_f64().unwrap_or(f64::NAN)),
                format!(
                    "{:.0} runs/min",
                    s["runs_per_min"].as_f64().unwrap_or(f64::NAN)
                )
            );
        }
    }
}
