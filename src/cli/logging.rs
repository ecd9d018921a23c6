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
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // rust-postgres logs every statement's parameters at debug: record values, a CA's
    // verification token. Never below info, whatever the level asked for.
    QUIET.iter().fold(filter, |f, d| match d.parse() {
        Ok(d) => f.add_directive(d),
        Err(_) => f,
    })
}

/// Crates held at `info` at most: what they log at debug holds secrets.
const QUIET: [&str; 2] = ["tokio_postgres=info", "postgres=info"];

/// The format to use: JSON when asked, or when stderr is systemd's journal.
pub fn effective_format(configured: LogFormat, forced: Option<LogFormat>) -> LogFormat {
    match forced {
        Some(f) => f,
        None if stderr_is_the_journal() => LogFormat::Json,
        None => configured,
    }
}

/// True when standard error is the journal stream systemd announced in `JOURNAL_STREAM`
/// (`device:inode`); a child that inherited the variable but writes elsewhere keeps text.
fn stderr_is_the_journal() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Some(announced) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stderr) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    announces(&announced.to_string_lossy(), stderr.dev(), stderr.ino())
}

/// Whether a `JOURNAL_STREAM` value names the file `dev`:`ino`.
fn announces(journal_stream: &str, dev: u64, ino: u64) -> bool {
    journal_stream
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_database_client_never_logs_below_info() {
        let f = super::filter("trace").to_string();
        for quiet in super::QUIET {
            assert!(f.contains(quiet), "{f}");
        }
    }

    use super::*;

    #[test]
    fn journal_stream_must_name_stderr() {
        assert!(announces("64769:123456", 64769, 123456));
        assert!(!announces("64769:123457", 64769, 123456));
        assert!(!announces("1:123456", 64769, 123456));
        for bad in ["", "64769", "x:y", "64769:123456:1", ":"] {
            assert!(!announces(bad, 64769, 123456), "{bad}");
        }
    }
}
