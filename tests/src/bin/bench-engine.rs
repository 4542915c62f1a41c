//! `cargo xtask bench engine`: journaled step transitions per second through the engine's real
//! store (fenced `complete_step`: lock, check the fencing token, update, append to the journal,
//! commit) with 8 workers, against a local PostgreSQL with fsync on; then `pgbench -N -c 8` on the
//! same server. Prints both and their ratio (target: at least 0.5).

use dalp_engine::store::pg::PgStore;
use dalp_engine::store::{NewWorkflow, Store};
use dalp_integration::*;
use serde_json::json;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WORKERS: usize = 8;
const SECS: u64 = 15;
const STEPS: i32 = 4;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-engine: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let pg = Postgres::start().await?;
    let store =
        Arc::new(PgStore::connect(&pg.url(), WORKERS as u32 + 2, Duration::from_secs(10)).await?);
    // Enough workflows that workers never run dry.
    let n = 40_000;
    println!("preparing {n} workflows ...");
    for i in 0..n {
        store
            .submit(
                NewWorkflow {
                    kind: "bench".into(),
                    scope: "bench".into(),
                    idempotency_key: format!("k{i}"),
                    request_hash: "h".into(),
                    input: json!({}),
                },
                Duration::from_secs(86_400),
            )
            .await?;
    }
    let transitions = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(SECS);
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let (store, transitions) = (store.clone(), transitions.clone());
        tasks.push(tokio::spawn(async move {
            let node = format!("bench-{w}");
            let mut claimed = 0i64;
            while Instant::now() < deadline {
                // Distinct per worker and claim, as the engine's random ids are.
                claimed += 1;
                let lease_id = (w as i64) << 40 | claimed;
                let claims = store
                    .claim(&node, Duration::from_secs(30), 1, lease_id)
                    .await
                    .expect("claim");
                for c in claims {
                    for step in 0..STEPS {
                        let result = (step + 1 == STEPS).then(|| json!({"done": true}));
                        store
                            .complete_step(
                                &c.fence,
                                step,
                                &format!("s{step}"),
                                json!({"n": step}),
                                result,
                            )
                            .await
                            .expect("complete");
                        transitions.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let t0 = Instant::now();
    for t in tasks {
        t.await?;
    }
    let engine_tps = transitions.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64();
    // Each claim is one more committed transaction that the count above leaves out.
    println!("engine: {engine_tps:.0} journaled step transitions/s ({WORKERS} workers, {STEPS} steps per claim, fsync on)");

    let port = pg.port.to_string();
    let pgbench = pg.bin("pgbench");
    let base = ["-h", "127.0.0.1", "-p", &port, "-U", "postgres"];
    let init = Command::new(&pgbench)
        .args(base)
        .args(["-i", "-q", "-s", "8", "postgres"])
        .output()?;
    if !init.status.success() {
        return Err(format!("pgbench -i: {}", String::from_utf8_lossy(&init.stderr)).into());
    }
    let out = Command::new(&pgbench)
        .args(base)
        .args([
            "-N",
            "-c",
            "8",
            "-j",
            "2",
            "-T",
            &SECS.to_string(),
            "postgres",
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let tps: f64 = text
        .lines()
        .find(|l| l.starts_with("tps ="))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            format!(
                "could not read pgbench tps from:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    println!("pgbench -N -c 8: {tps:.0} tps");
    println!(
        "ratio engine/pgbench: {:.2} (target >= 0.5)",
        engine_tps / tps
    );
    Ok(())
}
