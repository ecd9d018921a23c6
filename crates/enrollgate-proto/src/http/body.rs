//! JSON request bodies: what a body's `Content-Type` says, and the value it holds.

use super::Request;

/// How a body sent without a `Content-Type` is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Untyped {
    /// As JSON (the client API: OpenZiti's clients often send no type).
    Json,
    /// Refused unless empty: the management API. A browser holding an admin certificate can
    /// be made to send a body without a type (no CORS preflight), never one labelled
    /// `application/json`.
    Refused,
}

/// Why a JSON body is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The body was sent as another type than JSON.
    #[error("content type '{content_type}' is not accepted here; send application/json")]
    NotJson {
        /// The type sent (lowercase, without parameters).
        content_type: String,
    },
    /// A body without a type where [`Untyped::Refused`].
    #[error("a management request body needs Content-Type: application/json")]
    Untyped,
    /// Not JSON, or not of the expected shape (serde's account of where).
    #[error("invalid JSON body: {0}")]
    Invalid(String),
}

/// Reads `req`'s body as JSON into `T`. A body of white space only reads as `{}`.
pub fn json<T: serde::de::DeserializeOwned>(
    req: &Request,
    untyped: Untyped,
) -> Result<T, BodyError> {
    let has_body = !req.body.iter().all(u8::is_ascii_whitespace);
    match req.head.content_type().as_deref() {
        None if has_body && untyped == Untyped::Refused => return Err(BodyError::Untyped),
        None | Some("application/json") => {}
        Some(other) => {
            return Err(BodyError::NotJson {
                content_type: other.to_string(),
            })
        }
    }
    let body: &[u8] = if has_body { &req.body } else { b"{}" };
    serde_json::from_slice(body).map_err(|e| BodyError::Invalid(e.to_string()))
}
