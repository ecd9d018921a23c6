//! # enrollgate
//!
//! An mTLS enrollment gateway: it gives devices, users and services an X.509 identity and
//! speaks OpenZiti's client enrollment protocol, so OpenZiti clients enroll unchanged.
//!
//! This crate is the command line (`cli`) over the daemon, `enrollgate-server`
//! (`crates/enrollgate-server`), whose modules it re-exports under the same names
//! (`enrollgate::api`, `enrollgate::config`, `enrollgate::daemon`, ...), itself over the
//! store (`crates/enrollgate-store`) and the protocol core (`crates/enrollgate-proto`).
//! See `docs/architecture.md`.

pub use enrollgate_server::*;

pub mod cli;
