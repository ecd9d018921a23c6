//! Logging through `tracing`: human lines on stderr (coloured only on a terminal), or JSON
//! lines (`log.format = "json"`, `--log-format json`, or automatically under systemd's
//! journal). The level can be changed while running (SIGHUP re-reads `log.level`).

use std::io::IsTerminal as _;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::LogFormat;

/// Changes the active filter.
pub type LogHandle = reload::Handle<EnvFilter, Registry>;

fn filter(level: &str) -> EnvFilter {
    std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"))
}

/// The format to use: JSON when asked, or when stderr is systemd's journal.
pub fn effective_format(configured: LogFormat, forced: Option<LogFormat>) -> LogFormat {
    match forced {
        Some(f) => f,
        None if std::env::var_os("JOURNAL_STREAM").is_some() => LogFormat::Json,
        None => configured,
    }
}

/// Installs the global subscriber; `RUST_LOG`, when set, overrides `level`.
pub fn init(level: &str, format: LogFormat) -> Option<LogHandle> {
    let (filter, handle) = reload::Layer::new(filter(level));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let installed = match format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
            .try_init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(filter)
            .with(fmt.json())
            .try_init(),
    };
    installed.ok().map(|_| handle)
}

/// Applies a new level (ignored while `RUST_LOG` is set, which always wins).
pub fn set_level(handle: &LogHandle, level: &str) -> Result<(), String> {
    handle.reload(filter(level)).map_err(|e| e.to_string())
}
