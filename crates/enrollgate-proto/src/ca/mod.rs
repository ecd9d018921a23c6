//! Third-party CAs: what an uploaded CA certificate must be (`parse_ca_pem`), the proof
//! that the operator holds its key (`pop`), the names auto-enrolled identities get
//! (`name`), and the verification of client chains against a set of CAs (`chain`), with
//! each worker remembering the signatures it already checked (`memo`).

pub mod chain;
pub mod memo;
pub mod name;
pub mod pop;

use x509_parser::prelude::*;

/// An uploaded CA certificate, checked.
#[derive(Debug, Clone)]
pub struct ParsedCa {
    /// DER.
    pub der: Vec<u8>,
    /// Normalised PEM (LF line endings).
    pub pem: String,
    /// Lower-case hex SHA-256 of the DER.
    pub fingerprint: String,
    /// Its validity (Unix seconds).
    pub not_before: crate::clock::UnixTime,
    /// The end of its validity.
    pub not_after: crate::clock::UnixTime,
}

/// Why a CA certificate (or a certificate given for a CA operation) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
// Not `#[non_exhaustive]`: the daemon maps every variant to a response, and a new one
// must fail its build until it has one.
pub enum CaCertError {
    /// Not one PEM certificate (`EXPECTED_PEM_CERTIFICATE`).
    #[error("{0}")]
    NotPem(String),
    /// A certificate, but not one that can be a CA (`CERTIFICATE_FAILED_VALIDATION`).
    #[error("{0}")]
    Invalid(String),
}

/// The DER of exactly one PEM `CERTIFICATE` block in `text` (white space around it
/// allowed; anything else refused).
pub fn single_pem_cert(text: &[u8]) -> Result<Vec<u8>, CaCertError> {
    let blocks = ::pem::parse_many(text)
        .map_err(|_| CaCertError::NotPem("the body is not a PEM certificate".into()))?;
    let trailing_junk = {
        // pem::parse_many skips text outside blocks: refuse it explicitly.
        let s = String::from_utf8_lossy(text);
        let outside: String = s
            .split("-----END CERTIFICATE-----")
            .map(|part| {
                part.split("-----BEGIN CERTIFICATE-----")
                    .next()
                    .unwrap_or_default()
            })
            .collect();
        !outside.trim().is_empty()
    };
    match blocks.as_slice() {
        [one] if one.tag() == "CERTIFICATE" && !trailing_junk => Ok(one.contents().to_vec()),
        [] => Err(CaCertError::NotPem(
            "the body holds no PEM certificate".into(),
        )),
        [_] if trailing_junk => Err(CaCertError::NotPem(
            "the body holds text outside the PEM certificate".into(),
        )),
        [one] => Err(CaCertError::NotPem(format!(
            "expected a PEM CERTIFICATE block, found '{}'",
            one.tag().chars().take(64).collect::<String>()
        ))),
        many => Err(CaCertError::NotPem(format!(
            "expected exactly one certificate, found {} PEM blocks",
            many.len()
        ))),
    }
}

/// The validity (notBefore, notAfter, Unix seconds) of a certificate (DER).
pub fn validity(der: &[u8]) -> Option<(crate::clock::UnixTime, crate::clock::UnixTime)> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some((
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    ))
}

/// Whether the CA certificate `ca_der` signed the certificate in `cert_pem` itself (its
/// issuer is the CA's subject and the CA's key verifies its signature). A certificate
/// issued through an intermediate is not counted: only the leaf is stored.
pub fn issued_directly(ca_der: &[u8], cert_pem: &str) -> bool {
    let Ok(block) = ::pem::parse(cert_pem) else {
        return false;
    };
    let (Ok((_, ca)), Ok((_, cert))) = (
        X509Certificate::from_der(ca_der),
        X509Certificate::from_der(block.contents()),
    ) else {
        return false;
    };
    cert.issuer().as_raw() == ca.subject().as_raw()
        && cert.verify_signature(Some(ca.public_key())).is_ok()
}

/// Checks an uploaded CA certificate: one PEM certificate with basicConstraints CA=true,
/// usable as a trust anchor.
pub fn parse_ca_pem(text: &[u8]) -> Result<ParsedCa, CaCertError> {
    let der = single_pem_cert(text)?;
    let (rest, cert) = X509Certificate::from_der(&der)
        .map_err(|_| CaCertError::NotPem("the PEM block is not an X.509 certificate".into()))?;
    if !rest.is_empty() {
        return Err(CaCertError::NotPem(
            "trailing bytes after the certificate".into(),
        ));
    }
    if !cert.is_ca() {
        return Err(CaCertError::Invalid(
            "not a CA certificate: basicConstraints CA=true is required".into(),
        ));
    }
    let der_ref = rustls_pki_types::CertificateDer::from(der.as_slice());
    webpki::anchor_from_trusted_cert(&der_ref).map_err(|e| {
        CaCertError::Invalid(format!("the certificate cannot be a trust anchor: {e}"))
    })?;
    let (not_before, not_after) = (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    );
    Ok(ParsedCa {
        not_before,
        not_after,
        pem: crate::pki::pem_encode("CERTIFICATE", &der),
        fingerprint: crate::pki::fingerprint::sha256_hex(&der),
        der,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    fn ca_pem() -> String {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn accepts_one_ca_certificate() {
        let pem_text = ca_pem();
        let parsed = parse_ca_pem(pem_text.as_bytes()).unwrap();
        assert_eq!(parsed.fingerprint.len(), 64);
        assert!(parse_ca_pem(format!("\n  {pem_text}\n").as_bytes()).is_ok());
    }

    #[test]
    fn refuses_non_ca_garbage_and_bundles() {
        let leaf = rcgen::generate_simple_self_signed(vec!["x".into()])
            .unwrap()
            .cert
            .pem();
        assert!(matches!(
            parse_ca_pem(leaf.as_bytes()),
            Err(CaCertError::Invalid(_))
        ));
        assert!(matches!(
            parse_ca_pem(b"garbage"),
            Err(CaCertError::NotPem(_))
        ));
        let two = format!("{}{}", ca_pem(), ca_pem());
        assert!(matches!(
            parse_ca_pem(two.as_bytes()),
            Err(CaCertError::NotPem(_))
        ));
        let junk = format!("junk\n{}", ca_pem());
        assert!(matches!(
            parse_ca_pem(junk.as_bytes()),
            Err(CaCertError::NotPem(_))
        ));
        let key = "-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            parse_ca_pem(key.as_bytes()),
            Err(CaCertError::NotPem(_))
        ));
    }
}
