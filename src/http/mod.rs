//! HTTP/1.1 as the enrollment listener speaks it: request framing (`request`), query
//! strings (`query`) and responses (`response`). Pure functions over bytes; the
//! connection loop in `server::conn` feeds them.

pub mod query;
pub mod request;
pub mod response;

pub use request::{parse_head, BodyKind, Head, HeadError, Parsed};
pub use response::Response;
