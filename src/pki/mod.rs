//! The internal PKI in the daemon: CSR acceptance, the issued-certificate template, the
//! signer, PKCS#7, the CRL and the key loaders are the protocol crate's
//! ([`enrollgate_proto::pki`], re-exported here); this module adds each worker's signing
//! thread (`batch`), which owns threads and records metrics.

pub use enrollgate_proto::pki::*;

pub mod batch;

/// A self-signed certificate for the DNS name `name`, with a new P-256 key (tests of the
/// store and of fsck; the protocol crate's own tests have theirs).
#[cfg(test)]
pub(crate) fn self_signed_for_tests(name: &str) -> rcgen::Certificate {
    let key = rcgen::KeyPair::generate().expect("key");
    rcgen::CertificateParams::new(vec![name.into()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate")
}
