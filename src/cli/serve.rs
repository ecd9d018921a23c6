//! `enrollgate serve`: what belongs to the process around the daemon (`crate::daemon`):
//! signals (stop on SIGINT/SIGTERM, reload on SIGHUP), the umask and open-files limit,
//! logging, the listeners and the metrics endpoint, systemd's notifications and watchdog.

use std::path::PathBuf;
use std::sync::Arc;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use super::CliError;
use crate::app::SharedRegistry;
use crate::config::Config;
use crate::daemon::Daemon;
use crate::ops::{self, notify::Notifier};
use crate::server::ShutdownSignal;
use crate::server::{self, listener};

/// Arguments of `serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Configuration file.
    #[arg(long)]
    pub config: PathBuf,
    /// Worker threads (default: `server.workers`, else one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Log format (default: `log.format`; JSON under systemd's journal).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormatArg>,
    /// Listen here instead of `server.listen` (several nodes on one host, or from one file).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Serve metrics here instead of `metrics.listen`, or `off`.
    #[arg(long, value_name = "ADDR|off", value_parser = metrics_listen)]
    pub metrics_listen: Option<MetricsListen>,
}

/// `--metrics-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy)]
pub struct MetricsListen(pub Option<std::net::SocketAddr>);

fn metrics_listen(s: &str) -> Result<MetricsListen, String> {
    if s == "off" {
        return Ok(MetricsListen(None));
    }
    s.parse()
        .map(|a| MetricsListen(Some(a)))
        .map_err(|e| format!("'{s}' is not an address (IP:PORT) or 'off': {e}"))
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormatArg {
    /// Human-readable lines.
    Text,
    /// JSON lines.
    Json,
}

/// Runs the gateway until SIGINT or SIGTERM.
pub fn serve(args: ServeArgs) -> Result<(), CliError> {
    // Take over SIGINT, SIGTERM and SIGHUP first: one that arrives while the store opens
    // waits in the iterator instead of killing the process with the default action.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    ops::process::private_umask();
    let open_files = ops::process::raise_open_files_limit();
    let overrides = Overrides {
        listen: args.listen,
        metrics_listen: args.metrics_listen,
    };
    let config = overrides.apply(Config::load(&args.config)?);
    let forced = args.log_format.map(|f| match f {
        LogFormatArg::Text => crate::config::LogFormat::Text,
        LogFormatArg::Json => crate::config::LogFormat::Json,
    });
    let log_handle = super::logging::init(
        &config.log_level,
        super::logging::effective_format(config.log_format, forced),
    );

    let workers = match args.workers.unwrap_or(config.workers) {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    };
    // Each connection is a descriptor; warn when the limits cannot be reached.
    let wanted = (config.limits.max_connections * workers) as u64 + 256;
    if let Some(limit) = open_files.filter(|&l| l < wanted) {
        tracing::warn!(
            open_files = limit,
            wanted,
            "the open-files limit is below limits.max_connections x workers; raise LimitNOFILE"
        );
    }
    let (listen, metrics_listen) = (config.listen, config.metrics_listen);
    // What can refuse the configuration (the CA key, the store) does before a port is
    // bound: a load balancer never sees a node that is not going to serve.
    let opened = Daemon::open(config)?;
    let (listeners, _port_lock) = listener::bind(listen, workers)
        .map_err(|e| CliError::new(format!("cannot listen on {listen}: {e}")))?;
    // The recorder first, so what the state records while it loads (CA cache size) counts.
    let metrics_addr = match metrics_listen {
        Some(addr) => Some(
            crate::telemetry::endpoint::start(addr)
                .map_err(|e| CliError::new(format!("cannot serve metrics on {addr}: {e}")))?,
        ),
        None => None,
    };
    let (shutdown, signal) = server::shutdown_pair();
    let daemon = opened.start(listeners, &signal)?;
    let notifier = Arc::new(Notifier::from_env());
    let reload_registry = daemon.registry().clone();
    let reload_notifier = notifier.clone();
    let config_path = args.config.clone();
    // The status line systemd shows, once serving (kept across reloads).
    let status = Arc::new(std::sync::OnceLock::<String>::new());
    let reload_status = status.clone();

    let trigger = shutdown.clone();
    let stop_notifier = notifier.clone();
    let signals_handle = signals.handle();
    let signal_thread = std::thread::Builder::new()
        .name("enrollgate-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                if sig == SIGHUP {
                    reload_notifier.send("RELOADING=1\nSTATUS=reloading the configuration");
                    match reload(&reload_registry, &config_path, overrides, log_handle.as_ref()) {
                        Ok(()) => tracing::info!(config = %config_path.display(), "configuration reloaded"),
                        Err(e) => tracing::error!(config = %config_path.display(), error = %e, "reload refused; the previous configuration stays in force"),
                    }
                    if crate::telemetry::is_ready() {
                        let line = reload_status.get().map_or("serving", String::as_str);
                        reload_notifier.send(&format!("READY=1\nSTATUS={line}"));
                    }
                    continue;
                }
                seen += 1;
                if seen == 1 {
                    tracing::info!(
                        signal = sig,
                        "shutting down: no new connections, finishing open requests"
                    );
                    crate::telemetry::set_ready(false);
                    stop_notifier.send("STOPPING=1\nSTATUS=draining open requests");
                    trigger.trigger();
                } else {
                    tracing::warn!(signal = sig, "second signal: exiting at once");
                    std::process::exit(130);
                }
            }
        })?;

    let bound = daemon.local_addr();
    let public_url = daemon.public_url().clone();
    let heartbeats = daemon.heartbeats();
    let restart_when_refusing = !daemon.store_is_shared();
    let watchdog_signal = signal.clone();
    let result = daemon.serve(&shutdown, signal, |started| {
        let uring = started.iter().all(|s| s.io_uring);
        if !uring {
            tracing::warn!("io_uring is not available here (kernel or seccomp); workers use epoll");
        }
        tracing::info!(
            listen = %bound,
            public_url = %public_url.origin(),
            metrics = %metrics_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
            workers = started.len(),
            driver = if uring { "io_uring" } else { "epoll" },
            accept_queue = %listener::accept_queue_depth()
                .map(|d| d.to_string())
                .unwrap_or_else(|| "unknown".into()),
            "enrollgate ready"
        );
        let line = status.get_or_init(|| {
            format!(
                "serving {} with {} workers",
                public_url.origin(),
                started.len()
            )
        });
        notifier.send(&format!(
            "READY=1\nMAINPID={}\nSTATUS={line}",
            std::process::id()
        ));
        if let Some(interval) = ops::notify::watchdog_interval() {
            spawn_watchdog(
                heartbeats,
                notifier.clone(),
                watchdog_signal,
                interval,
                restart_when_refusing,
            );
        }
    });
    signals_handle.close();
    let _ = signal_thread.join();
    result?;
    tracing::info!("stopped");
    Ok(())
}

/// What the command line sets over the configuration file, at start and at each reload.
#[derive(Debug, Clone, Copy)]
struct Overrides {
    listen: Option<std::net::SocketAddr>,
    metrics_listen: Option<MetricsListen>,
}

impl Overrides {
    fn apply(self, mut config: Config) -> Config {
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(MetricsListen(addr)) = self.metrics_listen {
            config.metrics_listen = addr;
        }
        config
    }
}

/// Feeds systemd's watchdog at half its interval, but only while every worker's heartbeat
/// advances: a wedged runtime stops the pings and systemd restarts the service.
/// `restart_when_refusing`: a store that refuses writes too long is only cured by a
/// restart (RocksDB after an I/O error); a shared database is reconnected to by the
/// gateway itself, and a restart would not bring it back sooner.
fn spawn_watchdog(
    heartbeats: Arc<[std::sync::atomic::AtomicU64]>,
    notifier: Arc<Notifier>,
    signal: ShutdownSignal,
    interval: std::time::Duration,
    restart_when_refusing: bool,
) {
    use std::sync::atomic::Ordering;
    let period = interval / 2;
    let spawned = std::thread::Builder::new().name("enrollgate-watchdog".into()).spawn(move || {
        let mut last: Vec<u64> = heartbeats.iter().map(|h| h.load(Ordering::Relaxed)).collect();
        notifier.send("WATCHDOG=1");
        while !signal.is_set() {
            std::thread::sleep(period);
            let now: Vec<u64> = heartbeats.iter().map(|h| h.load(Ordering::Relaxed)).collect();
            let stalled: Vec<usize> = now.iter().zip(&last).enumerate().filter(|(_, (a, b))| a == b).map(|(i, _)| i).collect();
            let refusing = crate::telemetry::store_refusing_for()
                .filter(|&d| restart_when_refusing && d >= crate::telemetry::STORE_REFUSING_LIMIT);
            if stalled.is_empty() && refusing.is_none() {
                notifier.send("WATCHDOG=1");
            } else if !signal.is_set() {
                match refusing {
                    Some(d) => tracing::error!(for_s = d.as_secs(), "the store has refused writes too long; not feeding the watchdog, so that systemd restarts the gateway"),
                    None => tracing::error!(workers = ?stalled, "worker heartbeat stalled; not feeding the watchdog"),
                }
            }
            last = now;
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the watchdog thread");
    }
}

/// SIGHUP: re-reads the configuration and the files it names, and installs them for new
/// connections (certificates and keys, limits, token and certificate policy, log level),
/// refreshing the CA cache. A configuration that does not load, or files that do not, are
/// refused and the running one stays. The listen address, the store and the worker count
/// need a restart.
fn reload(
    registry: &SharedRegistry,
    path: &std::path::Path,
    overrides: Overrides,
    log: Option<&super::logging::LogHandle>,
) -> Result<(), String> {
    // The command line's settings hold over the file's, as at start: `--listen` is not a
    // change of `server.listen`.
    let mut config = overrides.apply(Config::load(path).map_err(|e| e.to_string())?);
    let (_, current) = registry.current();
    for (key, same) in [
        ("server.listen", config.listen == current.config.listen),
        ("store.path", config.store_path == current.config.store_path),
        (
            "store.url",
            config.store_url.as_ref().map(ToString::to_string)
                == current.config.store_url.as_ref().map(ToString::to_string),
        ),
        ("server.workers", config.workers == current.config.workers),
        (
            "store.durability",
            config.commit.durability == current.config.commit.durability,
        ),
        (
            "store.queue_capacity",
            config.commit.queue_capacity == current.config.commit.queue_capacity,
        ),
        (
            "store.max_batch",
            config.commit.max_batch == current.config.commit.max_batch,
        ),
        (
            "metrics.listen",
            config.metrics_listen == current.config.metrics_listen,
        ),
        ("log.format", config.log_format == current.config.log_format),
    ] {
        if !same {
            tracing::warn!(key, "this change needs a restart; it is ignored until then");
        }
    }
    // What runs keeps running: the installed configuration says so, and the next reload
    // compares against it (a change reverted before a restart is no change).
    let running = &current.config;
    config.listen = running.listen;
    config.store_path = running.store_path.clone();
    config.store_url = running.store_url.clone();
    config.workers = running.workers;
    config.commit = running.commit;
    config.metrics_listen = running.metrics_listen;
    config.log_format = running.log_format;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| current.public_url.clone());
    let next = current
        .reloaded(config, public_url)
        .map_err(|e| e.to_string())?;
    if let Err(e) = next.cas.reload(&next.store) {
        tracing::error!(error = %e, "CA cache refresh failed");
    }
    if let Some(handle) = log {
        if let Err(e) = super::logging::set_level(handle, &next.config.log_level) {
            tracing::warn!(error = %e, "could not change the log level");
        }
    }
    registry.swap(Arc::new(next));
    Ok(())
}
