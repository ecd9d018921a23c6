//! Enrollment tokens in the daemon: the JWTs and the derivation of secret tokens from the
//! token key are the protocol crate's ([`enrollgate_proto::token`], re-exported here); the
//! key's file, read and created beside the keys, is the daemon's (`secret`).

pub use enrollgate_proto::token::*;

pub mod secret;

pub use secret::{token_sha256, TokenKey, TokenKeyError};
