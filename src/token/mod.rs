//! Enrollment tokens in the daemon: the JWTs are the protocol crate's
//! ([`enrollgate_proto::token`], re-exported here); the secret tokens are derived from, kept
//! in a file beside the keys, is the daemon's (`secret`).

pub use enrollgate_proto::token::*;

pub mod secret;

pub use secret::{token_sha256, TokenKey, TokenKeyError};
