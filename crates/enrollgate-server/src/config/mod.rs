//! Configuration: the raw file (`raw`) and the validated [`Config`] the daemon uses.
//!
//! Validation reports every problem at once, each with its key path
//! (`limits.header_timeout: ...`), so an operator fixes a file in one pass.
//! Relative paths in the file are relative to the file's own directory.

mod checker;
pub mod raw;
mod template;

use checker::Checker;
pub use checker::CREDENTIAL;

pub use template::initial_file;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::admission::Limit;
use crate::store::{CommitOptions, Durability};

/// Key-exchange group names accepted in `tls.key_exchange`, in the default order (rustls'
/// own: hybrid post-quantum first).
pub const KX_GROUPS: [&str; 4] = ["x25519mlkem768", "x25519", "secp256r1", "secp384r1"];

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path (`server.listen`), or `(file)` for the file as a whole.
    pub key: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// The problems, in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} problem(s)",
            self.path.display(),
            self.problems.len()
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The public address of the enrollment listener (`iss` of every JWT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    /// Host as written (DNS name, IPv4, or `[v6]`).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl PublicUrl {
    /// Parses `https://HOST[:PORT]` (port 443 when absent; a path is not allowed).
    pub fn parse(s: &str) -> Result<Self, String> {
        let uri: http::Uri = s.parse().map_err(|_| format!("'{s}' is not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!("'{s}' must start with https://"));
        }
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("'{s}' has no host"))?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "'{s}' must be only https://HOST:PORT, without a path"
            ));
        }
        Ok(Self {
            host: host.to_string(),
            port: uri.port_u16().unwrap_or(443),
        })
    }

    /// `https://host:port`
    pub fn origin(&self) -> String {
        format!("https://{}:{}", self.host, self.port)
    }

    /// The URL for a listener bound at `addr` when none was configured: its IP, or
    /// `localhost` for an unspecified address.
    pub fn for_bound(addr: SocketAddr) -> Self {
        let host = if addr.ip().is_unspecified() {
            "localhost".to_string()
        } else if addr.is_ipv6() {
            format!("[{}]", addr.ip())
        } else {
            addr.ip().to_string()
        };
        Self {
            host,
            port: addr.port(),
        }
    }
}

/// Longest `renewal.expired_grace` accepted.
pub const MAX_EXPIRED_GRACE: Duration = Duration::from_secs(365 * 86_400);
/// Longest `pki.cert_lifetime` accepted.
pub const MAX_CERT_LIFETIME: Duration = Duration::from_secs(36_500 * 86_400);
/// Longest `enrollment.token_ttl` (and `enrollment.reenroll_grace`) accepted.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(3_650 * 86_400);
/// `enrollment.reenroll_grace` when the file does not set it: a week for a device whose
/// EST answer was lost to try again.
pub const DEFAULT_REENROLL_GRACE: Duration = Duration::from_secs(7 * 86_400);

/// `limits.max_memory` when the file does not set it.
pub const DEFAULT_MAX_MEMORY: u64 = 1 << 30;
/// Smallest `limits.max_memory` accepted: the store's budget
/// ([`crate::store::rocks::MEMORY_BUDGET`]) and 64 MiB for the process at rest and its
/// connections.
pub const MIN_MAX_MEMORY: u64 = crate::store::rocks::MEMORY_BUDGET + (64 << 20);

/// Parses a size with a binary unit ("512MiB", "1GiB", "65536KiB"), or "off".
pub fn parse_size(text: &str) -> Result<Option<u64>, String> {
    if text == "off" {
        return Ok(None);
    }
    let bad = || format!("'{text}' is not a size (e.g. \"512MiB\", \"2GiB\") or \"off\"");
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let shift = match unit.trim_start() {
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        _ => return Err(bad()),
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).map(Some).ok_or_else(bad)
}

/// Connection and request limits (per worker where it says so).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body accepted (`413` beyond).
    pub max_body_bytes: usize,
    /// Largest request head accepted (`431` beyond).
    pub max_header_bytes: usize,
    /// A TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// A request head must arrive within this from its first byte.
    pub header_timeout: Duration,
    /// A request body must arrive within this.
    pub body_timeout: Duration,
    /// An idle keep-alive connection is closed after this.
    pub idle_timeout: Duration,
    /// A response (or a close) must be written within this; a client that stops reading
    /// loses its connection.
    pub write_timeout: Duration,
    /// A request whose head or body is still arriving, the connection waiting for its
    /// client's next bytes, counts as waiting from its first byte plus this: before, it
    /// cannot be closed for a newcomer (see `max_connections`).
    pub slow_request_grace: Duration,
    /// Open connections per worker at most; at the limit a new connection, once accepted,
    /// closes the one that has waited longest for its client (idle between requests, or a
    /// request still arriving, see `slow_request_grace`), and when there is none, newcomers
    /// wait in the kernel's accept queue.
    pub max_connections: usize,
    /// TLS handshakes in progress per worker at most (a surge of handshakes cannot starve
    /// requests already admitted); at the limit a new connection closes the handshake
    /// waiting longest for its client, and when none is waiting, it queues for a slot.
    pub max_handshakes: usize,
    /// TLS handshakes in progress per worker from one client address (IPv6: one /64) at
    /// most, with the same rule within that address: one source cannot take every slot.
    pub max_handshakes_per_source: usize,
    /// Resident memory the process stays under, if capped (see [`crate::ops::memory`]):
    /// at 90% of it, the connections open become a ceiling on open connections.
    pub max_memory: Option<u64>,
    /// CSRs waiting for a worker's signing thread at most; beyond, `ott` enrollments get
    /// `429 RATE_LIMITED`.
    pub sign_queue: usize,
    /// CSRs checked and signed in one batch at most (bounds a batch's latency).
    pub sign_batch: usize,
    /// Enrollment requests per client address (IPv6: per /64), if limited.
    pub per_source: Option<Limit>,
    /// Enrollments per third-party CA (`ottca` and `ca`), if limited.
    pub per_ca: Option<Limit>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            max_header_bytes: 16 * 1024,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            slow_request_grace: Duration::from_secs(2),
            max_connections: 10_000,
            max_handshakes: 1024,
            max_handshakes_per_source: 256,
            max_memory: Some(DEFAULT_MAX_MEMORY),
            sign_queue: 1024,
            sign_batch: 64,
            per_source: None,
            per_ca: None,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// Enrollment listener address.
    pub listen: SocketAddr,
    /// Public URL; derived from the bound address when absent.
    pub public_url: Option<PublicUrl>,
    /// Worker threads (0 = one per core).
    pub workers: usize,
    /// Server certificate chain (PEM).
    pub tls_cert: PathBuf,
    /// Server private key (PEM, PKCS#8); also signs JWTs.
    pub tls_key: PathBuf,
    /// CA certificates (PEM) that issued the server certificate, when the internal CA did
    /// not: served in `/.well-known/est/cacerts` beside the internal CA, which is all that
    /// OpenZiti clients trust when they connect.
    pub tls_ca: Option<PathBuf>,
    /// Key-exchange groups offered, in preference order (names as in [`KX_GROUPS`]).
    pub key_exchange: Vec<String>,
    /// Stateless session tickets for clients that reconnect (TLS 1.3 and 1.2).
    pub session_tickets: bool,
    /// Internal CA certificate.
    pub ca_cert: PathBuf,
    /// Internal CA private key.
    pub ca_key: PathBuf,
    /// The secret enrollment tokens are derived from (`token::secret`); by default
    /// `token.key` beside the CA key.
    pub token_key: PathBuf,
    /// SPIFFE trust domain of issued certificates.
    pub trust_domain: String,
    /// Lifetime of issued certificates.
    pub cert_lifetime: Duration,
    /// Lifetime of enrollment tokens.
    pub token_ttl: Duration,
    /// How long after an EST `simplereenroll` the old certificate still authenticates
    /// while the new one has not been used (its first use ends this at once).
    pub reenroll_grace: Duration,
    /// RocksDB directory (when `store_url` is not set).
    pub store_path: PathBuf,
    /// The shared PostgreSQL database, if the store is one (`store.url`).
    pub store_url: Option<crate::store::pg::StoreUrl>,
    /// Committer tuning.
    pub commit: CommitOptions,
    /// Limits.
    pub limits: Limits,
    /// `tracing` filter (`info`, `enrollgate=debug`, ...).
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// How long a stopping daemon lets open requests finish.
    pub shutdown_grace: Duration,
    /// The metrics listener (`/metrics`, `/healthz`, `/readyz`); `None` when `"off"`.
    pub metrics_listen: Option<SocketAddr>,
    /// How long after its expiry an enrollgate-issued certificate may still authenticate
    /// to renew itself (`renewal.expired_grace`; zero, the default: never).
    pub renewal_expired_grace: Duration,
}

impl Config {
    /// Reads and validates the file at `path`: every problem, or the configuration.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::settled(path, Self::load_lenient(path)?)
    }

    /// Reads the file at `path` and validates what it can: the configuration, with the
    /// default in place of every value that is wrong, and the problems found. An error only
    /// when nothing can be read: the file is missing or unreadable, or not TOML at all.
    /// `check-config` goes on from here to the files the configuration names.
    pub fn load_lenient(path: &Path) -> Result<(Self, Vec<Problem>), ConfigError> {
        let fail = |message: String| ConfigError {
            path: path.to_path_buf(),
            problems: vec![Problem {
                key: "(file)".into(),
                message,
            }],
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let (raw, parsed) = raw::parse(&text).map_err(fail)?;
        Ok(Self::checked(path, raw, parsed))
    }

    /// Validates a parsed file.
    pub fn from_raw(
        path: &Path,
        raw: raw::RawConfig,
        parsed: Vec<(String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::settled(path, Self::checked(path, raw, parsed))
    }

    /// The configuration when nothing was found wrong with it, else every problem.
    fn settled(path: &Path, checked: (Self, Vec<Problem>)) -> Result<Self, ConfigError> {
        match checked {
            (config, problems) if problems.is_empty() => Ok(config),
            (_, problems) => Err(ConfigError {
                path: path.to_path_buf(),
                problems,
            }),
        }
    }

    /// The configuration a parsed file describes, with defaults where its values are
    /// wrong, and every problem found.
    fn checked(
        path: &Path,
        raw: raw::RawConfig,
        parsed: Vec<(String, String)>,
    ) -> (Self, Vec<Problem>) {
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut c = Checker {
            base,
            problems: Vec::new(),
        };
        for (key, message) in parsed {
            c.problem(&key, message);
        }

        let listen_text = raw.server.listen.as_deref().unwrap_or("127.0.0.1:8443");
        let listen = listen_text.parse::<SocketAddr>().unwrap_or_else(|_| {
            c.problem(
                "server.listen",
                format!("'{listen_text}' is not an IP:PORT address (e.g. \"0.0.0.0:8443\")"),
            );
            SocketAddr::from(([127, 0, 0, 1], 8443))
        });
        let public_url = raw.server.public_url.as_deref().and_then(|s| {
            PublicUrl::parse(s)
                .map_err(|m| c.problem("server.public_url", m))
                .ok()
        });
        let workers = raw.server.workers.unwrap_or(0);
        if workers > 1024 {
            c.problem("server.workers", "at most 1024");
        }

        let tls_cert = c.path("tls.cert", raw.tls.cert.as_ref(), "pki/server.crt");
        let tls_key = c.path("tls.key", raw.tls.key.as_ref(), "pki/server.key");
        let tls_ca = raw.tls.ca.as_ref().map(|v| c.path("tls.ca", Some(v), ""));
        let key_exchange: Vec<String> = match &raw.tls.key_exchange {
            None => KX_GROUPS.iter().map(|s| s.to_string()).collect(),
            Some(list) => {
                let lower: Vec<String> = list.iter().map(|s| s.to_ascii_lowercase()).collect();
                if lower.is_empty() {
                    c.problem("tls.key_exchange", "needs at least one group");
                }
                for g in &lower {
                    if !KX_GROUPS.contains(&g.as_str()) {
                        c.problem(
                            "tls.key_exchange",
                            format!("unknown group '{g}'; known: {}", KX_GROUPS.join(", ")),
                        );
                    }
                }
                lower
            }
        };
        let session_tickets = raw.tls.session_tickets.unwrap_or(false);
        let ca_cert = c.path("pki.ca_cert", raw.pki.ca_cert.as_ref(), "pki/ca.crt");
        let ca_key = c.path("pki.ca_key", raw.pki.ca_key.as_ref(), "pki/ca.key");
        let token_key = match (&raw.pki.token_key, &raw.pki.ca_key) {
            (Some(v), _) => c.path("pki.token_key", Some(v), ""),
            // Beside the CA key; a CA key passed as a credential keeps it company.
            (None, Some(ca)) if ca.starts_with(CREDENTIAL) => {
                c.path("pki.token_key", None, "credential:token.key")
            }
            (None, Some(ca)) if crate::pki::hsm::Pkcs11Uri::is_uri(ca) => {
                c.path("pki.token_key", None, "pki/token.key")
            }
            (None, _) => ca_key.with_file_name("token.key"),
        };
        let trust_domain = raw
            .pki
            .trust_domain
            .clone()
            .unwrap_or_else(|| "enrollgate".into());
        if trust_domain.is_empty()
            || !trust_domain.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'_'
            })
        {
            c.problem(
                "pki.trust_domain",
                format!("'{trust_domain}' is not a SPIFFE trust domain (lower-case letters, digits, '.', '-', '_')"),
            );
        }
        let cert_lifetime = c.duration(
            "pki.cert_lifetime",
            raw.pki.cert_lifetime.as_ref(),
            Duration::from_secs(365 * 86_400),
        );
        let token_ttl = c.duration(
            "enrollment.token_ttl",
            raw.enrollment.token_ttl.as_ref(),
            Duration::from_secs(86_400),
        );
        // Upper bounds keep every computed date encodable (X.509 ends at year 9999) and
        // refuse what is surely a typo.
        if cert_lifetime > MAX_CERT_LIFETIME {
            c.problem("pki.cert_lifetime", "at most 100 years (36500d)");
        }
        if token_ttl > MAX_TOKEN_TTL {
            c.problem("enrollment.token_ttl", "at most 10 years (3650d)");
        }
        let reenroll_grace = c.duration(
            "enrollment.reenroll_grace",
            raw.enrollment.reenroll_grace.as_ref(),
            DEFAULT_REENROLL_GRACE,
        );
        if reenroll_grace > MAX_TOKEN_TTL {
            c.problem("enrollment.reenroll_grace", "at most 10 years (3650d)");
        }

        let store_path = c.path("store.path", raw.store.path.as_ref(), "store");
        let store_url = match &raw.store.url {
            None => {
                if raw.store.password_file.is_some() {
                    c.problem("store.password_file", "is for store.url, which is not set");
                }
                None
            }
            Some(url) => {
                if raw.store.path.is_some() {
                    c.problem(
                        "store.url",
                        "store.path and store.url name two stores: keep one",
                    );
                }
                let password = match &raw.store.password_file {
                    Some(file) => {
                        let file = c.path("store.password_file", Some(file), "");
                        match std::fs::read_to_string(&file) {
                            Ok(text) => Some(text.trim_end_matches(['\r', '\n']).to_string()),
                            Err(e) => {
                                c.problem(
                                    "store.password_file",
                                    format!("{}: {e}", file.display()),
                                );
                                None
                            }
                        }
                    }
                    None => std::env::var(crate::store::pg::url::PASSWORD_ENV).ok(),
                };
                match crate::store::pg::StoreUrl::parse(&url.0, password) {
                    Ok(u) => Some(u),
                    Err(e) => {
                        c.problem("store.url", e);
                        None
                    }
                }
            }
        };
        let durability = match raw.store.durability.as_deref() {
            None | Some("sync") => Durability::Sync,
            Some("relaxed") => Durability::Relaxed,
            Some(other) => {
                c.problem(
                    "store.durability",
                    format!("'{other}' is not \"sync\" or \"relaxed\""),
                );
                Durability::Sync
            }
        };
        let defaults = CommitOptions::default();
        let commit = CommitOptions {
            durability,
            queue_capacity: c.positive(
                "store.queue_capacity",
                raw.store.queue_capacity,
                defaults.queue_capacity,
            ),
            max_batch: c.positive("store.max_batch", raw.store.max_batch, defaults.max_batch),
        };

        let d = Limits::default();
        let l = &raw.limits;
        let limits = Limits {
            max_body_bytes: c.positive("limits.max_body_bytes", l.max_body_bytes, d.max_body_bytes),
            max_header_bytes: c.positive(
                "limits.max_header_bytes",
                l.max_header_bytes,
                d.max_header_bytes,
            ),
            handshake_timeout: c.duration(
                "limits.handshake_timeout",
                l.handshake_timeout.as_ref(),
                d.handshake_timeout,
            ),
            header_timeout: c.duration(
                "limits.header_timeout",
                l.header_timeout.as_ref(),
                d.header_timeout,
            ),
            body_timeout: c.duration(
                "limits.body_timeout",
                l.body_timeout.as_ref(),
                d.body_timeout,
            ),
            idle_timeout: c.duration(
                "limits.idle_timeout",
                l.idle_timeout.as_ref(),
                d.idle_timeout,
            ),
            write_timeout: c.duration(
                "limits.write_timeout",
                l.write_timeout.as_ref(),
                d.write_timeout,
            ),
            slow_request_grace: c.duration(
                "limits.slow_request_grace",
                l.slow_request_grace.as_ref(),
                d.slow_request_grace,
            ),
            max_connections: c.positive(
                "limits.max_connections",
                l.max_connections,
                d.max_connections,
            ),
            max_handshakes: c.positive("limits.max_handshakes", l.max_handshakes, d.max_handshakes),
            max_handshakes_per_source: c.positive(
                "limits.max_handshakes_per_source",
                l.max_handshakes_per_source,
                d.max_handshakes_per_source,
            ),
            max_memory: match l.max_memory.as_deref().map(parse_size) {
                None => d.max_memory,
                Some(Ok(Some(n))) if n < MIN_MAX_MEMORY => {
                    c.problem(
                        "limits.max_memory",
                        format!(
                            "at least {}MiB (the store's caches take up to {}MiB), or \"off\"",
                            MIN_MAX_MEMORY.div_ceil(1 << 20),
                            crate::store::rocks::MEMORY_BUDGET.div_ceil(1 << 20)
                        ),
                    );
                    d.max_memory
                }
                Some(Ok(v)) => v,
                Some(Err(m)) => {
                    c.problem("limits.max_memory", m);
                    d.max_memory
                }
            },
            sign_queue: c.positive("limits.sign_queue", l.sign_queue, d.sign_queue),
            sign_batch: c.positive("limits.sign_batch", l.sign_batch, d.sign_batch),
            per_source: c.rate_limit(
                "limits.per_source_rate",
                l.per_source_rate.as_deref(),
                "limits.per_source_burst",
                l.per_source_burst,
            ),
            per_ca: c.rate_limit(
                "limits.per_ca_rate",
                l.per_ca_rate.as_deref(),
                "limits.per_ca_burst",
                l.per_ca_burst,
            ),
        };
        if limits.max_header_bytes < 1024 {
            c.problem("limits.max_header_bytes", "at least 1024");
        }
        // Connections still in their handshake are not idle, so they cannot be pushed out
        // at max_connections: silent connects would lock clients out if they could fill it.
        if limits.max_handshakes >= limits.max_connections {
            c.problem(
                "limits.max_handshakes",
                format!(
                    "must be below limits.max_connections ({})",
                    limits.max_connections
                ),
            );
        }

        let log_level = raw.log.level.clone().unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            c.problem(
                "log.level",
                format!("'{log_level}' is not a log filter (e.g. \"info\", \"enrollgate=debug\")"),
            );
        }
        let log_format = match raw.log.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                c.problem(
                    "log.format",
                    format!("'{other}' is not \"text\" or \"json\""),
                );
                LogFormat::Text
            }
        };

        let shutdown_grace = c.duration(
            "shutdown.grace",
            raw.shutdown.grace.as_ref(),
            Duration::from_secs(10),
        );
        // Zero is the default and a valid choice (an expired certificate renews nothing);
        // at most a year, so that a typo cannot keep a lost device's certificate alive.
        let renewal_expired_grace = match raw.renewal.expired_grace.as_deref() {
            None | Some("0" | "0s") => Duration::ZERO,
            Some(s) => match humantime::parse_duration(s) {
                Ok(d) if d <= MAX_EXPIRED_GRACE => d,
                Ok(_) => {
                    c.problem("renewal.expired_grace", "at most one year (365d)");
                    Duration::ZERO
                }
                Err(_) => {
                    c.problem(
                        "renewal.expired_grace",
                        format!("'{s}' is not a duration (e.g. \"0s\", \"7d\")"),
                    );
                    Duration::ZERO
                }
            },
        };

        let metrics_listen = match raw.metrics.listen.as_deref() {
            Some("off") => None,
            other => {
                let text = other.unwrap_or("127.0.0.1:9464");
                match text.parse::<SocketAddr>() {
                    Ok(a) => Some(a),
                    Err(_) => {
                        c.problem(
                            "metrics.listen",
                            format!("'{text}' is not an IP:PORT address or \"off\""),
                        );
                        None
                    }
                }
            }
        };

        let config = Self {
            path: path.to_path_buf(),
            listen,
            public_url,
            workers,
            tls_cert,
            tls_key,
            tls_ca,
            key_exchange,
            session_tickets,
            ca_cert,
            ca_key,
            token_key,
            trust_domain,
            cert_lifetime,
            token_ttl,
            reenroll_grace,
            store_path,
            store_url,
            commit,
            limits,
            log_level,
            log_format,
            shutdown_grace,
            metrics_listen,
            renewal_expired_grace,
        };
        (config, c.problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Config, ConfigError> {
        let (raw, problems) = raw::parse(text).map_err(|m| ConfigError {
            path: "t.toml".into(),
            problems: vec![Problem {
                key: "(file)".into(),
                message: m,
            }],
        })?;
        Config::from_raw(Path::new("/etc/enrollgate/enrollgate.toml"), raw, problems)
    }

    #[test]
    fn initial_file_is_valid_and_paths_are_relative_to_it() {
        let url = PublicUrl::parse("https://gw.example:8443").unwrap();
        let c = load_text(&initial_file(
            "0.0.0.0:8443".parse().unwrap(),
            Some(&url),
            None,
        ))
        .unwrap();
        assert_eq!(
            load_text(&initial_file("127.0.0.1:0".parse().unwrap(), None, None))
                .unwrap()
                .public_url,
            None
        );
        assert_eq!(c.tls_key, Path::new("/etc/enrollgate/pki/server.key"));
        assert_eq!(c.public_url, Some(url));
        assert_eq!(c.token_ttl, Duration::from_secs(86_400));
        assert_eq!(c.commit.durability, Durability::Sync);
    }

    #[test]
    fn data_directories_with_quotes_and_backslashes_are_quoted() {
        let odd = Path::new("/srv/odd \"dir\" \\ here");
        let c = load_text(&initial_file(
            "127.0.0.1:0".parse().unwrap(),
            None,
            Some(odd),
        ))
        .unwrap();
        assert_eq!(c.ca_key, odd.join("pki/ca.key"));
        assert_eq!(c.token_key, odd.join("pki/token.key"));
        assert_eq!(c.store_path, odd.join("store"));
    }

    /// A file of a version before hashed tokens names no token key: it is the file
    /// `token.key` beside the CA key, wherever that is.
    #[test]
    fn the_token_key_defaults_to_beside_the_ca_key() {
        let c = load_text("[pki]\nca_key = \"/var/lib/enrollgate/pki/ca.key\"\n").unwrap();
        assert_eq!(c.token_key, Path::new("/var/lib/enrollgate/pki/token.key"));
        let c = load_text("[pki]\ntoken_key = \"secrets/t.key\"\n").unwrap();
        assert_eq!(c.token_key, Path::new("/etc/enrollgate/secrets/t.key"));
    }

    /// A credential name is a file name in `$CREDENTIALS_DIRECTORY`, never a path out of it
    /// (whatever the environment of the test).
    #[test]
    fn a_credential_name_is_a_file_name() {
        for bad in [
            "credential:",
            "credential:../ca.key",
            "credential:a/b",
            "credential:..",
        ] {
            let e = load_text(&format!("[pki]\nca_key = \"{bad}\"\n")).unwrap_err();
            assert!(
                e.problems
                    .iter()
                    .any(|p| p.key == "pki.ca_key" && p.message.contains("not a credential name")),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn the_expired_grace_is_zero_unless_set_and_bounded() {
        assert_eq!(load_text("").unwrap().renewal_expired_grace, Duration::ZERO);
        let c = load_text("[renewal]\nexpired_grace = \"7d\"\n").unwrap();
        assert_eq!(c.renewal_expired_grace, Duration::from_secs(7 * 86_400));
        for bad in ["forever", "2y"] {
            let e = load_text(&format!("[renewal]\nexpired_grace = \"{bad}\"\n")).unwrap_err();
            assert!(
                e.problems.iter().any(|p| p.key == "renewal.expired_grace"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn empty_file_takes_defaults() {
        let c = load_text("").unwrap();
        assert_eq!(c.listen, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.public_url, None);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let err = load_text(
            r#"
            bogus = 1
            [server]
            listen = "nope"
            colour = "blue"
            [enrollment]
            token_ttl = "forever"
            [store]
            durability = "maybe"
            [limits]
            max_body_bytes = 0
            per_source_rate = "5/fortnight"
            per_ca_burst = 3
            slow_request_grace = "0s"
            header_timeout = "300000000000y"
            [pki]
            cert_lifetime = "9000y"
            "#,
        )
        .unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        for expected in [
            "bogus",
            "server.colour",
            "server.listen",
            "enrollment.token_ttl",
            "store.durability",
            "limits.max_body_bytes",
            "limits.per_source_rate",
            "limits.per_ca_burst",
            "limits.slow_request_grace",
            "limits.header_timeout",
            "pki.cert_lifetime",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
        let too_long = err
            .problems
            .iter()
            .find(|p| p.key == "limits.header_timeout");
        assert!(too_long.is_some_and(|p| p.message.contains("at most 100 years")));
    }

    /// Values of the wrong type are reported like the rest, each with its key, and do not
    /// hide the other problems.
    #[test]
    fn values_of_the_wrong_type_are_all_reported_with_their_keys() {
        let err = load_text(
            r#"
            metrics = 5
            [server]
            workers = "x"
            [store]
            durability = "fast"
            [limits]
            max_body_bytes = 0
            max_connections = "many"
            per_ca_burst = -1
            bogus_key = 1
            [tls]
            key_exchange = "x25519"
            "#,
        )
        .unwrap_err();
        let problem = |key: &str| {
            err.problems
                .iter()
                .find(|p| p.key == key)
                .map(|p| p.message.clone())
                .unwrap_or_else(|| panic!("{key} missing from {:?}", err.problems))
        };
        assert!(problem("server.workers").contains("invalid type: string \"x\""));
        assert!(problem("limits.max_connections").contains("invalid type"));
        assert!(problem("limits.per_ca_burst").contains("-1"));
        assert!(problem("tls.key_exchange").contains("expected a sequence"));
        assert!(problem("metrics").contains("invalid type"));
        assert_eq!(problem("limits.bogus_key"), "unknown key");
        problem("store.durability");
        problem("limits.max_body_bytes");
        assert!(
            err.problems.iter().all(|p| p.key != "(file)"),
            "{:?}",
            err.problems
        );
    }

    #[test]
    fn rate_limits_are_off_by_default_and_burst_defaults_to_the_rate() {
        assert_eq!(load_text("").unwrap().limits.per_source, None);
        let c = load_text(
            r#"
            [limits]
            per_source_rate = "20/s"
            per_ca_rate = "600/min"
            per_ca_burst = 50
            "#,
        )
        .unwrap();
        let src = c.limits.per_source.unwrap();
        assert_eq!((src.rate.to_string(), src.burst), ("20/s".into(), 20));
        let ca = c.limits.per_ca.unwrap();
        assert_eq!((ca.rate.to_string(), ca.burst), ("600/min".into(), 50));
    }

    #[test]
    fn handshake_slots_must_be_fewer_than_connections() {
        let err =
            load_text("[limits]\nmax_connections = 1000\nmax_handshakes = 1000\n").unwrap_err();
        assert_eq!(err.problems[0].key, "limits.max_handshakes");
        assert!(load_text("[limits]\nmax_connections = 1001\nmax_handshakes = 1000\n").is_ok());
    }

    #[test]
    fn the_memory_cap_takes_binary_units_or_off() {
        assert_eq!(load_text("").unwrap().limits.max_memory, Some(1 << 30));
        let cap = |v: &str| load_text(&format!("[limits]\nmax_memory = \"{v}\"\n"));
        assert_eq!(cap("512MiB").unwrap().limits.max_memory, Some(512 << 20));
        assert_eq!(cap("2GiB").unwrap().limits.max_memory, Some(2 << 30));
        assert_eq!(cap("off").unwrap().limits.max_memory, None);
        for bad in [
            "512MB",
            "1.5GiB",
            "",
            "MiB",
            "-1GiB",
            "99999999999TiB",
            "64MiB",
        ] {
            let err = cap(bad).unwrap_err();
            assert_eq!(err.problems[0].key, "limits.max_memory", "{bad}");
        }
    }

    #[test]
    fn public_urls() {
        assert_eq!(
            PublicUrl::parse("https://[::1]:9000").unwrap(),
            PublicUrl {
                host: "[::1]".into(),
                port: 9000
            }
        );
        assert_eq!(PublicUrl::parse("https://gw.example").unwrap().port, 443);
        assert!(PublicUrl::parse("http://gw.example:80").is_err());
        assert!(PublicUrl::parse("https://gw.example:80/path").is_err());
        assert_eq!(
            PublicUrl::for_bound("0.0.0.0:1234".parse().unwrap()).origin(),
            "https://localhost:1234"
        );
    }
}
