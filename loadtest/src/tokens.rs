//! One-time tokens prepared for a run (`prepare-ott --out DIR`):
//!
//! ```text
//! DIR/tokens.jwt      one enrollment JWT a line, in creation order
//! DIR/server-ca.pem   the gateway's CA bundle (from the admin identity file), so a run
//!                     verifies the server as a device would
//! DIR/tokens.json     what they are: method, CA, count, gateway
//! ```
//!
//! The directory is 0700 and the files 0600: the tokens enroll identities.

use std::path::Path;

use rustls_pki_types::CertificateDer;

use crate::Error;

/// The JWTs, one a line.
pub const JWTS: &str = "tokens.jwt";
/// The gateway's CA bundle.
pub const SERVER_CA: &str = "server-ca.pem";
/// Metadata.
pub const META: &str = "tokens.json";

/// Tokens read back for a run.
#[derive(Clone)]
pub struct TokenSet {
    /// Their enrollment method (`ott` or `ottca`), the same for all.
    pub method: String,
    /// The tokens (the JWTs' `jti`), in order.
    pub tokens: Vec<String>,
    /// The gateway's CA bundle, if it was stored.
    pub server_ca: Option<Vec<CertificateDer<'static>>>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("method", &self.method)
            .field("tokens", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

/// The method and token of every JWT in `text` (one a line; blank lines skipped). All
/// must have the same method.
pub fn parse_jwts(text: &str) -> Result<(String, Vec<String>), Error> {
    let mut method: Option<String> = None;
    let mut tokens = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (_, claims) = enrollgate::token::jwt::peek(line)
            .map_err(|e| Error::Invalid(format!("{JWTS} line {}: {e}", n + 1)))?;
        match &method {
            None => method = Some(claims.em.clone()),
            Some(m) if *m != claims.em => {
                return Err(Error::Invalid(format!(
                    "{JWTS} line {}: method '{}' among '{m}' tokens; keep one method per directory",
                    n + 1,
                    claims.em
                )))
            }
            Some(_) => {}
        }
        tokens.push(claims.jti);
    }
    let method = method.ok_or_else(|| Error::Invalid(format!("{JWTS} holds no token")))?;
    Ok((method, tokens))
}

/// Reads a token directory.
pub fn read(dir: &Path) -> Result<TokenSet, Error> {
    let path = dir.join(JWTS);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let (method, tokens) = parse_jwts(&text)?;
    let ca_path = dir.join(SERVER_CA);
    let server_ca = if ca_path.exists() {
        Some(read_certs(&ca_path)?)
    } else {
        None
    };
    Ok(TokenSet {
        method,
        tokens,
        server_ca,
    })
}

/// Writes a token directory (which must be new or empty).
pub fn write(
    dir: &Path,
    jwts: &[String],
    server_ca_pem: &str,
    meta: &serde_json::Value,
) -> Result<(), Error> {
    crate::make_private_dir(dir)?;
    let mut text = jwts.join("\n");
    text.push('\n');
    crate::write_private(&dir.join(JWTS), text.as_bytes())?;
    if !server_ca_pem.trim().is_empty() {
        crate::write_private(&dir.join(SERVER_CA), server_ca_pem.as_bytes())?;
    }
    let mut m = serde_json::to_vec_pretty(meta).map_err(|e| Error::Invalid(e.to_string()))?;
    m.push(b'\n');
    crate::write_private(&dir.join(META), &m)
}

/// The certificates of a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let certs: Vec<_> = pem::parse_many(&text)
        .map_err(|_| Error::Invalid(format!("{}: not PEM", path.display())))?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect();
    if certs.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}
