//! Renewing an enrolled identity's certificate: the one place that decides a renewal, for
//! every protocol that asks for one (OpenZiti's `extend`, EST's `simplereenroll`).
//!
//! The new certificate is built from the identity alone (`pki::issue`: subject and SAN
//! name the identity id), so it carries the same subject and SAN as the one it renews,
//! with a fresh validity and the CSR's key. It is bound beside the active certificate by
//! [`Command::Renew`] and authenticates nothing until activated ([`Command::Activate`]).

use super::error::ApiError;
use crate::app::WorkerCtx;
use crate::clock::UnixTime;
use crate::model::{Activation, Identity, Renewal};
use crate::pki::fingerprint;
use crate::pki::issue::IssuedCert;
use crate::store::apply::{Command, Outcome};

/// A renewal issued and bound, waiting for its activation.
#[derive(Debug)]
pub struct Renewed {
    /// The identity as stored after the renewal.
    pub identity: Identity,
    /// The new certificate.
    pub issued: IssuedCert,
}

/// Issues a renewal of `identity`'s certificate for the CSR `csr_der` (decoded from the
/// body) and binds it, not yet active. `presented_sha256` is the fingerprint of the
/// certificate the request authenticated with: the store refuses the renewal if it is no
/// longer the identity's active certificate when the renewal commits.
///
/// Refused: a certificate a third-party CA issued (its CA renews it:
/// `CERT_NOT_RENEWABLE`), and, when an admin asked for a new key, a CSR for the current
/// key (`COULD_NOT_PROCESS_CSR`).
pub async fn renew(
    w: &WorkerCtx,
    identity: &Identity,
    presented_sha256: &str,
    csr_der: Vec<u8>,
    activation: Activation,
    now: UnixTime,
) -> Result<Renewed, ApiError> {
    renew_from(
        w,
        identity,
        presented_sha256,
        csr_der,
        activation,
        now,
        Replacing::Issued,
    )
    .await
}

/// What a renewal replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replacing {
    /// A certificate enrollgate issued: every renewal but the next one.
    Issued,
    /// The third-party bootstrap certificate (IDevID) of an EST `simpleenroll`, whose chain
    /// the handler verified against an auto-enrollment CA: the renewal is the certificate
    /// enrollgate issues in its place, and the bootstrap one stays bound
    /// (`Lifecycle::bootstrap`) once it is activated (by its first use).
    Bootstrap,
}

/// [`renew`], where `replacing` says whether a third-party bootstrap certificate may be
/// replaced (EST `simpleenroll` by a client certificate); otherwise it is refused
/// (`CERT_NOT_RENEWABLE`).
pub async fn renew_from(
    w: &WorkerCtx,
    identity: &Identity,
    presented_sha256: &str,
    csr_der: Vec<u8>,
    activation: Activation,
    now: UnixTime,
    replacing: Replacing,
) -> Result<Renewed, ApiError> {
    let current = identity
        .authenticator
        .as_ref()
        .ok_or_else(|| ApiError::InvalidState("this identity has not enrolled".into()))?;
    if !current.issued_by_network && replacing != Replacing::Bootstrap {
        return Err(ApiError::NotRenewable(
            "this certificate was issued by a third-party CA, which renews it; enrollgate \
             renews only the certificates it issued"
                .into(),
        ));
    }
    let (csr, issued) = w.signer.sign(csr_der, &identity.id, now).await?;
    if identity.lifecycle.key_roll_requested && same_key(&current.cert_pem, &csr.spki_der) {
        return Err(ApiError::CouldNotProcessCsr(
            "an admin asked this identity for a new key: the CSR must carry a key other than \
             the current certificate's"
                .into(),
        ));
    }
    let authenticator = fingerprint::issued_authenticator(&issued, now)
        .ok_or_else(|| ApiError::Unhandled("the issued certificate does not parse".into()))?;
    let outcome = w
        .shared
        .commit
        .submit(Command::Renew {
            identity_id: identity.id.clone(),
            current_sha256: presented_sha256.to_owned(),
            renewal: Renewal {
                authenticator,
                activation,
            },
            now,
        })
        .await?;
    let Outcome::Identity(identity) = outcome else {
        return Err(ApiError::Unhandled("unexpected store outcome".into()));
    };
    tracing::info!(identity_id = %identity.id, ?activation, "certificate renewal issued");
    Ok(Renewed {
        identity: *identity,
        issued,
    })
}

/// Whether the certificate `cert_pem` carries the public key `spki_der`.
fn same_key(cert_pem: &str, spki_der: &[u8]) -> bool {
    use x509_parser::prelude::FromDer;
    let Ok(p) = ::pem::parse(cert_pem) else {
        return false;
    };
    x509_parser::certificate::X509Certificate::from_der(p.contents())
        .is_ok_and(|(_, c)| c.public_key().raw == spki_der)
}

/// Activates `identity`'s pending renewal whose certificate has the fingerprint
/// `fingerprint_sha256`: it becomes the active certificate and the old one is unbound, in
/// one write. A replayed or stale activation is refused (`INVALID_STATE`).
pub async fn activate(
    w: &WorkerCtx,
    identity_id: &str,
    fingerprint_sha256: &str,
    now: UnixTime,
) -> Result<Identity, ApiError> {
    let outcome = w
        .shared
        .commit
        .submit(Command::Activate {
            identity_id: identity_id.to_owned(),
            fingerprint_sha256: fingerprint_sha256.to_owned(),
            now,
        })
        .await?;
    let Outcome::Identity(identity) = outcome else {
        return Err(ApiError::Unhandled("unexpected store outcome".into()));
    };
    tracing::info!(identity_id = %identity.id, "renewed certificate activated");
    Ok(*identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_of_a_certificate_is_recognised() {
        let key = rcgen::KeyPair::generate().unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.example".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let spki = |k: &rcgen::KeyPair| rcgen::PublicKeyData::subject_public_key_info(k);
        assert!(same_key(&cert.pem(), &spki(&key)));
        assert!(!same_key(&cert.pem(), &spki(&other)));
        assert!(!same_key("not a pem", &spki(&key)));
    }
}
