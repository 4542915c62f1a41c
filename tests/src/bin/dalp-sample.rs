//! The main job until the simulation exists: a sample workload through two real engine
//! processes against PostgreSQL and Anvil started here, with the outcome checked on chain.

use alloy_primitives::{Address, U256};
use dalp_integration::chain::ChainView;
use dalp_integration::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("dalp-sample: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<bool> {
    let started = Instant::now();
    println!("starting PostgreSQL, Anvil and two engine nodes ...");
    let pg = Postgres::start().await?;
    let anvil = Anvil::start(1).await?;
    let a = EngineProcess::start(EngineSpec::new("node-a", &pg.url(), &anvil.url())).await?;
    let b = EngineProcess::start(EngineSpec::new("node-b", &pg.url(), &anvil.url())).await?;
    let chain = ChainView::new(&anvil.url());
    let bound = Duration::from_secs(180);

    let mut issuances = Vec::new();
    for (i, sym) in ["AAA", "BBB", "CCC"].iter().enumerate() {
        let engine = if i % 2 == 0 { &a } else { &b };
        let (_, body) = engine
            .submit(
                "issuance",
                &format!("sample-{sym}"),
                &issuance_input(sym, 1_000_000),
            )
            .await?;
        issuances.push(body["workflow_id"].as_i64().ok_or("no workflow id")?);
    }
    let mut tokens = Vec::new();
    for id in &issuances {
        let s = wait_terminal(&a, *id, bound).await?;
        println!(
            "issuance  #{id:<3} {:<10} token {}",
            s["status"].as_str().unwrap_or("?"),
            s["result"]["token"]
        );
        tokens.push(
            s["result"]["token"]
                .as_str()
                .ok_or("issuance did not complete")?
                .parse::<Address>()?,
        );
    }
    // Transfers to the registered investor, one to an unregistered account (fails closed), mints.
    let mut others = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let (_, t) = a
            .submit(
                "transfer",
                &format!("t-{i}"),
                &json!({"token": token, "to": INVESTOR_ADDR, "amount": "2500"}),
            )
            .await?;
        let (_, m) = b
            .submit(
                "mint",
                &format!("m-{i}"),
                &json!({"token": token, "to": SIGNER_ADDR, "amount": "10"}),
            )
            .await?;
        others.push((
            "transfer",
            t["workflow_id"].as_i64().ok_or("id")?,
            "completed",
        ));
        others.push(("mint", m["workflow_id"].as_i64().ok_or("id")?, "completed"));
    }
    let (_, blocked) = a
        .submit(
            "transfer",
            "t-blocked",
            &json!({"token": tokens[0], "to": OTHER_ADDR, "amount": "1"}),
        )
        .await?;
    others.push((
        "transfer",
        blocked["workflow_id"].as_i64().ok_or("id")?,
        "failed",
    ));

    let mut ok = true;
    for (kind, id, expect) in &others {
        let s = wait_terminal(&b, *id, bound).await?;
        let status = s["status"].as_str().unwrap_or("?");
        let reason = s["error"]["reason_code"].as_str().unwrap_or("");
        println!("{kind:<9} #{id:<3} {status:<10} {reason}");
        ok &= status == *expect;
    }
    let txs = chain.mined_from(SIGNER_ADDR.parse()?).await?;
    let expected_txs = 4 * tokens.len() + 2 * tokens.len();
    let dense = txs.iter().enumerate().all(|(i, t)| t.nonce == i as u64);
    println!("\non chain: {} transactions from the signer (expected {expected_txs}), nonces dense: {dense}", txs.len());
    for token in &tokens {
        let supply = chain.total_supply(*token).await?;
        let investor = chain.balance_of(*token, INVESTOR_ADDR.parse()?).await?;
        println!("token {token:#x}: supply {supply}, investor {investor}");
        ok &= supply == U256::from(1_000_010u64) && investor == U256::from(2500u64);
    }
    ok &= txs.len() == expected_txs && dense;
    let metrics = a.metrics().await? + &b.metrics().await?;
    let steps: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("dalp_step_outcomes_total") && l.contains("outcome=\"completed\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    println!(
        "steps completed across both nodes: {steps}; wall time {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!("{}", if ok { "OUTCOME: ok" } else { "OUTCOME: FAILED" });
    Ok(ok)
}
