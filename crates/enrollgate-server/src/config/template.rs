//! The configuration file `init` writes: every key with its default, documented in place.

use std::net::SocketAddr;
use std::path::Path;

use super::PublicUrl;

/// The configuration file `init` writes.
/// Without a public URL (listening on port 0), `iss` follows the bound address. With
/// `data_dir`, file paths are absolute paths into it (for a configuration kept elsewhere,
/// e.g. in systemd's `ConfigurationDirectory`); without, they are relative to the file.
pub fn initial_file(
    listen: SocketAddr,
    public_url: Option<&PublicUrl>,
    data_dir: Option<&Path>,
) -> String {
    // Quoted as TOML strings: a data directory may hold quotes or backslashes.
    let p = |rel: &str| {
        let path = match data_dir {
            Some(d) => d.join(rel).display().to_string(),
            None => rel.to_string(),
        };
        toml::Value::String(path).to_string()
    };
    let (tls_cert, tls_key, ca_cert, ca_key, token_key, store) = (
        p("pki/server.crt"),
        p("pki/server.key"),
        p("pki/ca.crt"),
        p("pki/ca.key"),
        p("pki/token.key"),
        p("store"),
    );
    let url_line = match public_url {
        Some(u) => format!("public_url = \"{}\"", u.origin()),
        None => "# public_url = \"https://HOST:PORT\"   # default: the bound address".to_string(),
    };
    format!(
        r#"# enrollgate configuration. Relative paths are relative to this file's directory.
# Every key is documented in README.md ("Configuration reference").

[server]
listen = "{listen}"
{url_line}
workers = 0                     # 0 = one worker per core

[tls]                           # the enrollment listener's certificate; its key signs JWTs
cert = {tls_cert}
key = {tls_key}
# ca = "web-ca.pem"             # the CAs that issued `cert`, when the internal CA did not
key_exchange = ["x25519mlkem768", "x25519", "secp256r1", "secp384r1"]
session_tickets = false

[pki]                           # the internal CA that signs `ott` certificates
ca_cert = {ca_cert}
ca_key = {ca_key}
# Enrollment tokens are derived from this secret; the store keeps only their hashes.
token_key = {token_key}
trust_domain = "enrollgate"
cert_lifetime = "365d"

[enrollment]
token_ttl = "24h"
reenroll_grace = "7d"           # EST simplereenroll: the old certificate works until the new one's first use, at most this long

[store]
path = {store}
durability = "sync"             # "relaxed" replies before the WAL is synced
queue_capacity = 4096
max_batch = 1024

[limits]
max_body_bytes = 65536
max_header_bytes = 16384
handshake_timeout = "10s"
header_timeout = "10s"
body_timeout = "30s"
idle_timeout = "60s"
write_timeout = "30s"
slow_request_grace = "2s"       # a request arriving longer may give its place (see max_connections)
max_connections = 10000         # per worker
max_handshakes = 1024           # per worker
max_handshakes_per_source = 256 # per worker, from one address (IPv6: one /64)
max_memory = "1GiB"             # resident memory cap, whole process; "off" for none
sign_queue = 1024               # CSRs waiting per worker's signing thread; beyond: 429
sign_batch = 64                 # CSRs signed in one batch at most
# per_source_rate = "20/s"      # enrollment requests per client address (IPv6: per /64)
# per_source_burst = 40
# per_ca_rate = "1000/s"        # enrollments per third-party CA (ottca, ca)
# per_ca_burst = 2000

[log]
level = "info"
format = "text"                 # or "json"

[shutdown]
grace = "10s"                   # open requests may finish within this after SIGTERM

[metrics]
listen = "127.0.0.1:9464"       # /metrics, /healthz, /readyz; "off" to disable

[renewal]
expired_grace = "0s"            # an expired certificate may still renew itself this long; 0: never
"#
    )
}
