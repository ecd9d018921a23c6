//! `enrollgate check-config`: everything `serve` would trip over, reported at once with
//! key paths: the file's own problems (unknown keys, bad values), then the files it names
//! (missing, unreadable, not what they should be, private keys readable by others, a TLS
//! key that does not match its certificate), and the store.

use std::path::Path;

use crate::config::{Config, Problem};

fn problem(key: &str, message: impl Into<String>) -> Problem {
    Problem {
        key: key.to_string(),
        message: message.into(),
    }
}

/// Every problem of the configuration at `path` (empty: `serve` can start). A wrong value
/// does not hide the files: they are checked too, with the default in place of a wrong
/// path. Only a file that cannot be read, or is not TOML at all, stops the check there.
pub fn check_config(path: &Path) -> Vec<Problem> {
    let (config, mut out) = match Config::load_lenient(path) {
        Ok(checked) => checked,
        Err(e) => return e.problems,
    };
    // A key whose value is wrong was checked with its default in place: a problem found
    // with that file would be about a file the operator never named.
    let valued = out.len();
    let wrong_values: std::collections::HashSet<String> =
        out.iter().map(|p| p.key.clone()).collect();
    let tls_cert = crate::pki::read_cert_chain(&config.tls_cert)
        .map_err(|e| out.push(problem("tls.cert", e.to_string())))
        .ok();
    let tls_key = crate::pki::read_key(&config.tls_key)
        .map_err(|e| out.push(problem("tls.key", e.to_string())))
        .ok();
    if let (Some(chain), Some((key, _))) = (&tls_cert, &tls_key) {
        if !crate::pki::key_matches_cert(key, &chain[0]) {
            out.push(problem(
                "tls.key",
                "the key does not match the certificate in tls.cert",
            ));
        }
    }
    let ca_cert = crate::pki::read_cert_chain(&config.ca_cert)
        .map_err(|e| out.push(problem("pki.ca_cert", e.to_string())))
        .ok();
    let ca_key: Option<crate::pki::CaKey> = match crate::pki::hsm::uri_of(&config.ca_key) {
        Some(uri) => uri
            .and_then(|u| crate::pki::hsm::Token::open(&u)?.key())
            .map(crate::pki::CaKey::Hsm)
            .map_err(|e| out.push(problem("pki.ca_key", e.to_string())))
            .ok(),
        None => crate::pki::read_key(&config.ca_key)
            .map(|(k, _)| k.into())
            .map_err(|e| out.push(problem("pki.ca_key", e.to_string())))
            .ok(),
    };
    if let (Some(chain), Some(key)) = (&ca_cert, &ca_key) {
        if !crate::pki::key_matches_cert(key, &chain[0]) {
            out.push(problem(
                "pki.ca_key",
                "the key does not match the certificate in pki.ca_cert",
            ));
        }
    }
    let tls_ca = match &config.tls_ca {
        Some(path) => crate::pki::read_cert_chain(path)
            .map_err(|e| out.push(problem("tls.ca", e.to_string())))
            .ok(),
        None => Some(Vec::new()),
    };
    if let (Some(server), Some(internal), Some(tls_ca)) = (&tls_cert, &ca_cert, &tls_ca) {
        if let Err(reason) = crate::pki::served_cas(internal, tls_ca, server) {
            out.push(problem("tls.cert", reason));
        }
    }
    // Absent, `serve` makes it (a data directory from before hashed tokens).
    if config.token_key.exists() {
        if let Err(e) = crate::token::secret::load(&config.token_key) {
            out.push(problem("pki.token_key", e.to_string()));
        }
    }
    if !config.store_path.join("CURRENT").is_file() {
        out.push(problem(
            "store.path",
            format!(
                "{}: no RocksDB store here (run enrollgate init, or restore a backup)",
                config.store_path.display()
            ),
        ));
    }
    let files = out.split_off(valued);
    out.extend(files.into_iter().filter(|p| !wrong_values.contains(&p.key)));
    out
}
