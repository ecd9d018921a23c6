//! # enrollgate-proto
//!
//! The part of enrollgate that decides: parsers for what peers send and the rules that judge
//! it, as functions over plain values (the only I/O is reading the internal PKI's key files
//! in `pki`, and a PKCS#11 token in `pki::hsm`). It cannot reach RocksDB, monoio, the store
//! or the metrics: they are not among its dependencies, so the compiler keeps the rule that
//! the daemon's layers above (store, server, API handlers, CLI) feed this crate and never
//! the reverse.
//!
//! ```text
//!  bytes from a socket ─▶ http::parse_head ─▶ API handler (in the daemon)
//!                                              │ http::query::param, JSON body
//!           ┌──────────────────────────────────┼───────────────────────────────┐
//!           ▼                                  ▼                               ▼
//!  ott, ottca: enroll::check_token   ott: pki::csr::accept         ca: ca::chain::CaSet::check
//!  (is the token live, now?)         ─▶ pki::issue::Signer         ─▶ enroll::auto_enrolled_identity
//!           │                                  │                               │
//!           └────────── model values ──────────┴───────────────────────────────┴─▶ store command
//!                                                                                  (in the daemon)
//! ```
//!
//! Time is an argument (`clock::UnixTime`) everywhere a decision depends on it.
//!
//! Features: `hsm` (a CA key in a PKCS#11 token), `clap` (`pki::KeyType` as a CLI value),
//! `fuzzing` (the bodies of the cargo-fuzz targets; never in the daemon).

pub mod ca;
pub mod clock;
pub mod enroll;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod http;
pub mod ids;
pub mod model;
pub mod pki;
pub mod token;
