//! HTTP/1.1 as the enrollment listener speaks it: request framing (`request`), query
//! strings (`query`) and responses (`response`). Pure functions over bytes; the
//! connection loop in `server::conn` feeds them.

pub mod body;
pub mod query;
pub mod request;
pub mod response;

/// Prefix of OpenZiti's client API (enrollgate serves it at the root too).
pub const CLIENT_PREFIX: &str = "/edge/client/v1";
/// Prefix of OpenZiti's management API.
pub const MANAGEMENT_PREFIX: &str = "/edge/management/v1";

pub use request::{parse_head, BodyKind, Head, HeadError, Parsed};
pub use response::Response;

/// A complete request.
pub struct Request {
    /// Method, path, query, headers.
    pub head: Head,
    /// Body (at most `limits.max_body_bytes`).
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Request {
    // The query (`?token=`), headers (`zt-session`) and body (CSRs) stay out of Debug.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.head.method)
            .field("path", &self.head.path)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}
