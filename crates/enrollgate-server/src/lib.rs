//! # enrollgate-server
//!
//! The daemon of enrollgate, an mTLS enrollment gateway that gives devices, users and
//! services an X.509 identity and speaks OpenZiti's client enrollment protocol: the TLS
//! server and its connection loop, the API handlers, the state the workers share, the
//! configuration and the operations, assembled by [`daemon::run`]. The command line is the
//! `enrollgate` package's, above this crate, which re-exports it whole.
//!
//! ## How a request flows
//!
//! ```text
//!  socket (SO_REUSEPORT, one per worker)
//!    │ accept                                   server::worker  (one monoio runtime per core)
//!    ▼
//!  TLS handshake (rustls, aws-lc-rs)            server::tls
//!    │ peer certificate chain
//!    ▼
//!  HTTP/1.1 framing (httparse)                  http::request
//!    │ Request
//!    ▼
//!  routing + handlers                           api::{client, management}
//!    │  rate limits (per source, per CA)         admission
//!    │  pure decisions: token rules, CSR policy  enroll, pki::{csr, issue}
//!    │  CSR check + signing, off the I/O path   pki::batch  (one signing thread per worker)
//!    ▼
//!  group commit (one synced RocksDB write       store::commit  (one committer thread)
//!    per batch of ready enrollments)            store::apply   (pure: command -> mutations)
//!    │ reply after the write is durable
//!    ▼
//!  response (JSON envelope or PEM)              http::response, api::error
//! ```
//!
//! Everything that decides something (is this token live, which key types are accepted,
//! what goes into the issued certificate, which store mutations a command makes) is a
//! plain function over plain values; sockets, files, RocksDB and the clock sit at the
//! edges and feed them.
//!
//! Those functions live in their own crate, `enrollgate-proto` (`crates/enrollgate-proto`),
//! which has neither RocksDB nor monoio among its dependencies; its modules are re-exported
//! here under their old names (`http`, `clock`, `ids`, `model`, `enroll`, and the cores of
//! `ca`, `pki` and `token`, which this crate extends with what needs the store, threads or
//! metrics). The store is a crate of its own too, `enrollgate-store`
//! (`crates/enrollgate-store`), which depends on the protocol crate and on nothing of this
//! one; it is re-exported here as `store`. See `docs/architecture.md`.

pub use enrollgate_proto::{clock, enroll, http, ids, model};
/// The store (`crates/enrollgate-store`): records, indexes, the committer, the backends.
pub use enrollgate_store as store;

pub mod admission;
pub mod api;
pub mod app;
pub mod ca;
pub mod client;
pub mod config;
pub mod console;
#[cfg(test)]
mod corpus;
pub mod daemon;
pub mod identity_file;
pub mod ops;
pub mod pki;
pub mod server;
pub mod telemetry;
pub mod token;
