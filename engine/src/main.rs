//! `dalp-engine`: worker, indexer and HTTP API in one process, configured from a TOML file
//! (`--config PATH`) and `DALP_*` environment variables.

#[cfg(madsim)]
fn main() {
    // The simulation drives engine instances directly; the binary is production-only.
}

#[cfg(not(madsim))]
#[tokio::main]
async fn main() -> std::process::ExitCode {
    match real::run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dalp-engine: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(not(madsim))]
mod real {
    use dalp_engine::chain::http::HttpTransport;
    use dalp_engine::clock::SystemClock;
    use dalp_engine::config::Config;
    use dalp_engine::store::startup::connect_with_retry;
    use dalp_engine::Engine;
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;
    use tracing_subscriber::EnvFilter;

    pub async fn run() -> Result<(), String> {
        let mut args = std::env::args().skip(1);
        let mut config_path: Option<PathBuf> = None;
        while let Some(a) = args.next() {
            match a.as_str() {
                "--config" => {
                    config_path = Some(args.next().ok_or("--config needs a path")?.into())
                }
                "--help" | "-h" => {
                    println!("usage: dalp-engine [--config engine.toml]   (DALP_* variables override the file)");
                    return Ok(());
                }
                other => return Err(format!("unknown argument {other:?} (try --help)")),
            }
        }
        tracing_subscriber::fmt()
            .with_env_filter(
                EnvFilter::try_from_env("DALP_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
            )
            .with_target(false)
            // Colour codes only on a terminal: a log file or collector gets plain text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init();
        let env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("DALP_"))
            .collect();
        let config = Config::load(config_path.as_deref(), &env).map_err(|e| e.to_string())?;
        // Bound before anything else: a taken port exits here, before any work is claimed.
        let listen = config.listen.clone();
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .map_err(|e| format!("listen on {listen}: {e}"))?;
        let store = connect_with_retry(
            config.database_url.expose(),
            16,
            config.db_timeout(),
            Duration::from_millis(config.timeouts.db_startup_ms),
        )
        .await
        .map_err(|e| e.to_string())?;
        let transport = Arc::new(HttpTransport::new(Duration::from_millis(
            config.timeouts.rpc_ms,
        )));
        // Jitter only needs to differ between processes; it is not a secret.
        let seed = std::process::id() as u64 ^ (SystemClockSeed::nanos() << 16);
        let engine = Engine::new(
            config,
            Arc::new(store),
            transport,
            Arc::new(SystemClock),
            seed,
        );
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let tasks = engine.start(stop_rx.clone());
        tracing::info!(node = %engine.config.node_id, %listen, "dalp-engine started");
        let server = tokio::spawn(dalp_engine::api::serve(
            listener,
            engine.clone(),
            stop_rx.clone(),
        ));
        let mut background = tokio::task::JoinSet::new();
        for t in tasks {
            background.spawn(t);
        }
        // A background loop (worker, indexer, probes, maintenance) ends only on shutdown. One
        // that ended otherwise (a panic) would leave a process that answers /health but no
        // longer does that job: exit instead, so the supervisor restarts a whole engine.
        tokio::select! {
            _ = shutdown_signal() => {}
            Some(ended) = background.join_next() => {
                let why = match ended {
                    Ok(Ok(())) => "returned".to_string(),
                    Ok(Err(e)) | Err(e) => e.to_string(),
                };
                tracing::error!(%why, "a background task ended before shutdown; exiting");
                return Err(format!("a background task ended before shutdown: {why}"));
            }
        }
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while background.join_next().await.is_some() {}
        })
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        Ok(())
    }

    struct SystemClockSeed;
    impl SystemClockSeed {
        fn nanos() -> u64 {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() as u64)
                .unwrap_or(0)
        }
    }

    async fn shutdown_signal() {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
    }
}
