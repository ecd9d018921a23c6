//! Proof of possession of a CA's key: a certificate whose subject CN is the CA's
//! verification token, signed by the CA (only its key holder can make one).

use x509_parser::prelude::*;

use crate::clock::UnixTime;

/// Why a proof is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
// Not `#[non_exhaustive]`: the daemon maps every variant to a response, and a new one
// must fail its build until it has one.
pub enum PopError {
    /// Not a PEM certificate (`EXPECTED_PEM_CERTIFICATE`).
    #[error("{0}")]
    NotPem(String),
    /// The CN is not the verification token (`INVALID_COMMON_NAME`).
    #[error("the certificate's common name is not the CA's verification token")]
    WrongCommonName,
    /// Not signed by the CA, or not valid now (`CERTIFICATE_FAILED_VALIDATION`).
    #[error("the certificate does not verify against the CA: {0}")]
    DoesNotVerify(String),
}

/// Checks `proof_pem` against the CA `ca_der` and its `token` at `now`.
///
/// The proof needs no extensions: `openssl x509 -req` without an extension file makes a
/// version 1 certificate, and that is enough to show the operator holds the CA key. So the
/// check is the issuer name, the CA's signature and the validity period, not a full
/// path validation (which refuses version 1 certificates).
pub fn check(proof_pem: &[u8], ca_der: &[u8], token: &str, now: UnixTime) -> Result<(), PopError> {
    let der = super::single_pem_cert(proof_pem).map_err(|e| PopError::NotPem(e.to_string()))?;
    let (_, cert) = X509Certificate::from_der(&der)
        .map_err(|_| PopError::NotPem("the PEM block is not an X.509 certificate".into()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok());
    if cn != Some(token) {
        return Err(PopError::WrongCommonName);
    }
    let (_, ca) = X509Certificate::from_der(ca_der)
        .map_err(|_| PopError::DoesNotVerify("the stored CA certificate does not parse".into()))?;
    if cert.issuer().as_raw() != ca.subject().as_raw() {
        return Err(PopError::DoesNotVerify(
            "it was not issued by this CA".into(),
        ));
    }
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|_| PopError::DoesNotVerify("the CA's signature does not verify".into()))?;
    let validity = cert.validity();
    if now < validity.not_before.timestamp() || now >= validity.not_after.timestamp() {
        return Err(PopError::DoesNotVerify(
            "it is expired or not yet valid".into(),
        ));
    }
    Ok(())
}
