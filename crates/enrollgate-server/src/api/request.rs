//! What every handler reads of a request: the peer as the TLS layer saw it, the API's
//! prefixes, and a JSON body. A leaf of the API layer: the handlers import it, and it
//! imports none of them.

use super::error::ApiError;
pub use crate::http::Request;

pub use crate::http::{CLIENT_PREFIX, MANAGEMENT_PREFIX};

/// What the TLS layer knows of the client.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// Remote address.
    pub addr: Option<std::net::SocketAddr>,
    /// Hex SHA-256 of the client certificate (leaf) the client proved it holds.
    pub cert_sha256: Option<String>,
    /// The chain the client sent, leaf first (empty without a client certificate). Only
    /// possession of the leaf's key was checked in the handshake; the chain itself is
    /// judged per purpose by the handlers.
    pub chain: Vec<rustls_pki_types::CertificateDer<'static>>,
}

/// `rest` of `path` after `prefix`, when `path` is `prefix` itself or below it.
pub(crate) fn under<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    if rest.is_empty() {
        Some("/")
    } else if rest.starts_with('/') {
        Some(rest)
    } else {
        None
    }
}

/// Parses a JSON body, or explains why not (`http::body::json`). A management body must
/// say it is JSON ([`crate::http::body::Untyped::Refused`]).
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(req: &Request) -> Result<T, ApiError> {
    use crate::http::body::{json, Untyped};
    let untyped = match under(&req.head.path, MANAGEMENT_PREFIX) {
        Some(_) => Untyped::Refused,
        None => Untyped::Json,
    };
    Ok(json(req, untyped)?)
}
