//! `enrollgate serve`: load the configuration, open the store, start the committer and the
//! workers, stop cleanly on SIGINT/SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};

use super::CliError;
use crate::app::Shared;
use crate::clock::SystemClock;
use crate::config::{Config, PublicUrl};
use crate::server::{self, listener};
use crate::store::{commit, Store};

/// Arguments of `serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Configuration file.
    #[arg(long)]
    pub config: PathBuf,
    /// Worker threads (default: `server.workers`, else one per core).
    #[arg(long)]
    pub workers: Option<usize>,
}

/// Runs the gateway until SIGINT or SIGTERM.
pub fn serve(args: ServeArgs) -> Result<(), CliError> {
    let config = Config::load(&args.config)?;
    super::logging::init(&config.log_level, config.log_format);

    let workers = match args.workers.unwrap_or(config.workers) {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    };
    let store = Store::open(&config.store_path, false).map_err(|e| {
        CliError::new(format!(
            "cannot open the store at {}: {e}",
            config.store_path.display()
        ))
    })?;
    let (commit_handle, committer) = commit::spawn(store.clone(), config.commit)?;
    let listeners = listener::bind(config.listen, workers)
        .map_err(|e| CliError::new(format!("cannot listen on {}: {e}", config.listen)))?;
    let bound = listeners[0].local_addr()?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| PublicUrl::for_bound(bound));
    let shared = Arc::new(Shared::new(
        config,
        store,
        commit_handle,
        Arc::new(SystemClock),
        public_url.clone(),
    )?);

    let (shutdown, signal) = server::shutdown_pair();
    let trigger = shutdown.clone();
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let signals_handle = signals.handle();
    let signal_thread = std::thread::Builder::new()
        .name("enrollgate-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                seen += 1;
                if seen == 1 {
                    tracing::info!(
                        signal = sig,
                        "shutting down: no new connections, finishing open requests"
                    );
                    trigger.trigger();
                } else {
                    tracing::warn!(signal = sig, "second signal: exiting at once");
                    std::process::exit(130);
                }
            }
        })?;

    let result = server::run(listeners, shared.clone(), &shutdown, signal, |started| {
        let uring = started.iter().all(|s| s.io_uring);
        if !uring {
            tracing::warn!("io_uring is not available here (kernel or seccomp); workers use epoll");
        }
        tracing::info!(
            listen = %bound,
            public_url = %public_url.origin(),
            workers = started.len(),
            driver = if uring { "io_uring" } else { "epoll" },
            "enrollgate ready"
        );
    });
    signals_handle.close();
    let _ = signal_thread.join();
    // Commit what is queued, then stop, whether or not every handle was dropped.
    drop(shared);
    if !committer.stop(std::time::Duration::from_secs(10)) {
        tracing::warn!("the committer did not stop within 10 s");
    }
    result.map_err(|e| CliError::new(format!("server failed: {e}")))?;
    tracing::info!("stopped");
    Ok(())
}
