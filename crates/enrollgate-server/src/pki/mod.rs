//! The internal PKI in the daemon: CSR acceptance, the issued-certificate template, the
//! signer, PKCS#7, the CRL and the key loaders are the protocol crate's
//! ([`enrollgate_proto::pki`], re-exported here); this module adds each worker's signing
//! thread (`batch`), which owns threads and records metrics.

pub use enrollgate_proto::pki::*;

pub mod batch;
