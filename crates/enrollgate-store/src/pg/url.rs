//! A PostgreSQL URL: parsed once, shown without its password, connected with rustls where it
//! asks for TLS.
//!
//! `postgresql://USER[:PASSWORD]@HOST[:PORT][,HOST[:PORT]...]/DBNAME[?PARAMS]`, with libpq's
//! parameters as `rust-postgres` reads them (`target_session_attrs=read-write` to follow a
//! failover among several hosts, `connect_timeout`, `sslmode=disable|prefer|require`), and
//! `sslrootcert=FILE`: the CA of the server's certificate. With `sslmode=require` the
//! server's certificate is verified against it, host name included (libpq's
//! `verify-full`); without a root there is no TLS to trust, and the URL is refused. The
//! password comes from the URL, or from the store's `password_file`, or from the
//! environment (`ENROLLGATE_STORE_PASSWORD`); it is never logged nor printed.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use postgres::config::{Host, SslMode};
use postgres::{Client, Config};

use crate::StoreError;

/// The environment variable a password may come from.
pub const PASSWORD_ENV: &str = "ENROLLGATE_STORE_PASSWORD";

/// How long a connection attempt waits for each host, unless the URL says
/// `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long sent data may stay unacknowledged before the connection counts as dead (a
/// host gone without a word).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed store URL.
#[derive(Clone)]
pub struct StoreUrl {
    config: Config,
    tls: Option<Arc<rustls::ClientConfig>>,
    shown: String,
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreUrl({})", self.shown)
    }
}

/// Whether `url` names a PostgreSQL database (rather than a RocksDB directory).
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgresql://") || url.starts_with("postgres://")
}

impl StoreUrl {
    /// Parses `url`; `password` (from a file or the environment) is used when the URL has
    /// none. Errors never quote the URL (it may hold a password).
    pub fn parse(url: &str, password: Option<String>) -> Result<Self, String> {
        if !is_postgres(url) {
            return Err("a store URL starts with postgresql://".into());
        }
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let mut root = None;
        let mut kept = form_urlencoded::Serializer::new(String::new());
        for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if k == "sslrootcert" {
                root = Some(v.into_owned());
            } else {
                kept.append_pair(&k, &v);
            }
        }
        let kept = kept.finish();
        let rebuilt = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{kept}")
        };
        let mut config =
            Config::from_str(&rebuilt).map_err(|e| format!("the store URL does not parse: {e}"))?;
        if config.get_password().is_none() {
            if let Some(p) = password {
                config.password(p);
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
        config.keepalives_idle(Duration::from_secs(30));
        // The server's notices ("already exists, skipping") are not the operator's news.
        if config.get_options().is_none() {
            config.options("-c client_min_messages=warning");
        }
        if config.get_application_name().is_none() {
            config.application_name("enrollgate");
        }
        let tls = match (config.get_ssl_mode(), root) {
            (SslMode::Disable, _) => None,
            (_, Some(file)) => Some(Arc::new(client_config(&file)?)),
            (SslMode::Require, None) => {
                return Err(
                    "sslmode=require needs sslrootcert=FILE in the store URL: the CA \
                            that signed the database server's certificate"
                        .into(),
                )
            }
            // prefer, without a root to check a server against: plain.
            (_, None) => {
                config.ssl_mode(SslMode::Disable);
                None
            }
        };
        let shown = shown(&config, tls.is_some());
        Ok(Self { config, tls, shown })
    }

    /// Whether the URL carries a password (from itself, a file or the environment).
    pub fn has_password(&self) -> bool {
        self.config.get_password().is_some()
    }

    /// A new connection. Fails within the connect timeout per host, never hangs.
    pub fn connect(&self) -> Result<Client, StoreError> {
        let connected = match &self.tls {
            None => self.config.connect(postgres::NoTls),
            Some(tls) => self
                .config
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(
                    (**tls).clone(),
                )),
        };
        connected.map_err(|e| {
            let text = match e.as_db_error() {
                Some(db) => format!("{}: {}", db.code().code(), db.message()),
                None => e.to_string(),
            };
            StoreError::Unavailable(format!("cannot connect to {}: {text}", self.shown))
        })
    }
}

/// The URL as shown in logs and errors: user, hosts, database; no password, no parameters
/// but TLS.
fn shown(config: &Config, tls: bool) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            match ports.get(i).or(ports.first()) {
                Some(p) => format!("{host}:{p}"),
                None => host,
            }
        })
        .collect();
    format!(
        "postgresql://{}@{}/{}{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        config.get_dbname().unwrap_or(""),
        if tls { " (TLS)" } else { "" }
    )
}

fn client_config(root_file: &str) -> Result<rustls::ClientConfig, String> {
    let pem = std::fs::read(root_file).map_err(|e| format!("sslrootcert {root_file}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    let blocks = ::pem::parse_many(&pem).map_err(|e| format!("sslrootcert {root_file}: {e}"))?;
    for block in blocks.iter().filter(|b| b.tag() == "CERTIFICATE") {
        roots
            .add(rustls_pki_types::CertificateDer::from(
                block.contents().to_vec(),
            ))
            .map_err(|e| format!("sslrootcert {root_file}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("sslrootcert {root_file}: no certificate in it"));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_its_password() {
        let u = StoreUrl::parse(
            "postgresql://eg:s3cret-pw@127.0.0.1:5433,10.0.0.2:5434/enrollgate?target_session_attrs=read-write",
            None,
        )
        .unwrap();
        let shown = u.to_string();
        assert_eq!(
            shown,
            "postgresql://eg@127.0.0.1:5433,10.0.0.2:5434/enrollgate"
        );
        assert!(!format!("{u:?}").contains("s3cret"));
        assert!(u.has_password());
    }

    #[test]
    fn a_password_from_elsewhere_fills_a_url_without_one() {
        let u = StoreUrl::parse("postgres://eg@localhost/db", Some("pw".into())).unwrap();
        assert!(u.has_password());
        let u = StoreUrl::parse("postgres://eg@localhost/db", None).unwrap();
        assert!(!u.has_password());
    }

    #[test]
    fn tls_without_a_root_to_trust_is_refused_and_errors_never_quote_the_url() {
        let e = StoreUrl::parse("postgresql://eg:pw@h/db?sslmode=require", None).unwrap_err();
        assert!(e.contains("sslrootcert"), "{e}");
        let e = StoreUrl::parse("postgresql://eg:hunter2@h/db?nonsense=1", None).unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        let e = StoreUrl::parse("mysql://eg:pw@h/db", None).unwrap_err();
        assert!(e.contains("postgresql://"), "{e}");
        let e = StoreUrl::parse("postgresql://h/db?sslrootcert=/nonexistent", None).unwrap_err();
        assert!(e.contains("/nonexistent"), "{e}");
    }
}
