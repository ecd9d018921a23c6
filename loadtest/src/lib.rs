//! # enrollgate-loadtest
//!
//! A fleet simulator and load generator for enrollgate (and, in `handshake` mode, for any
//! mutual-TLS server). It makes a device fleet, registers its CA, prepares one-time
//! tokens, then drives enrollments and reports what the server sustained, how long each
//! enrollment took, what failed and how much CPU the tool itself spent.
//!
//! ```text
//!  fleet ──► DIR/ca-root.pem, ca-intermediate.pem, devices.bin      fleet
//!  register-ca ──► POST /cas, GET /cas/{id}, POST /cas/{id}/verify  admin
//!  prepare-ott ──► POST /identities × N ──► TOKENS/tokens.jwt      admin, tokens
//!
//!  run:  prepare (parse the fleet, make the CSRs, build TLS configs; untimed)  plan
//!          │
//!          ▼
//!        dispatcher (closed loop: keep C in flight; open loop: intended       schedule
//!          │         send times k/R, latency counted from them)
//!          ▼
//!        worker threads (one per core or --cpus entry, pinned), each a mio    engine
//!          │  event loop driving many non-blocking connections:
//!          │  connect → rustls handshake → one HTTP/1.1 request → response
//!          ▼
//!        per-worker recorders (HDR histograms, errors by code and kind)       stats
//!          │  merged once a second: progress line, timeline
//!          ▼
//!        summary table, --json, --plot (SVG), exit code by --max-error-rate   report, plot
//!
//!  renew ──► ott enrollments (timed), then per device: authenticate,    renew
//!            extend, extend-verify, each on a fresh connection (timed)
//!
//!  transport ──► a plain TCP server on the gateway's runtime, fed one     transport
//!                enrollment's segments per connection: its CPU per connection
//! ```
//!
//! Everything that decides something without IO (the fleet file format, the schedule,
//! error classification, percentiles, the report's figures, the SVG) is a plain function
//! with unit tests beside it; sockets, files and the clock stay in `engine`, `admin`,
//! `fleet::create` and `cli`.

/// The tool failed.
pub const EXIT_FAILED: i32 = 1;
/// Bad usage.
pub const EXIT_USAGE: i32 = 2;
/// The error rate exceeded `--max-error-rate`.
pub const EXIT_ERROR_RATE: i32 = 3;

pub mod admin;
pub mod cli;
pub mod cpu;
pub mod engine;
pub mod fleet;
pub mod plan;
pub mod plot;
pub mod renew;
pub mod report;
pub mod schedule;
pub mod stats;
pub mod tls;
pub mod tokens;
pub mod transport;

use std::path::Path;

/// A failure of the tool (not of a measured request: those are counted, never raised).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A bad option or an input that cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A management API call failed.
    #[error("{what}: {detail}")]
    Api {
        /// What the tool was doing.
        what: String,
        /// The server's answer (HTTP status, error code and message) or the transport error.
        detail: String,
    },
    /// Key or certificate generation failed.
    #[error("generating keys or certificates: {0}")]
    Crypto(String),
    /// TLS configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

impl Error {
    /// An IO error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

impl From<rcgen::Error> for Error {
    fn from(e: rcgen::Error) -> Self {
        Self::Crypto(e.to_string())
    }
}

impl From<enrollgate::identity_file::IdentityFileError> for Error {
    fn from(e: enrollgate::identity_file::IdentityFileError) -> Self {
        Self::Invalid(e.to_string())
    }
}

/// Writes a new file with mode 0600 (refusing to replace one): fleet keys and tokens are
/// secrets.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), Error> {
    enrollgate::identity_file::write_private(path, data).map_err(|e| match e {
        enrollgate::identity_file::IdentityFileError::Io { source, .. } => Error::io(path, source),
        other => Error::Invalid(other.to_string()),
    })
}

/// Creates `dir` with mode 0700, or accepts it if it exists and is empty.
pub fn make_private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        if entries.next().is_some() {
            return Err(Error::Invalid(format!(
                "{} exists and is not empty; choose a new directory",
                dir.display()
            )));
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(dir, e))
    } else {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(dir, e))
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
