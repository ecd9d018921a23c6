//! Certificate fingerprints: SHA-256 (the key of the fingerprint index, invariant I1),
//! SHA-1 (shown because OpenZiti clients display it), and SHA-256 of the to-be-signed part
//! (the key of the content index, I1 whatever the signature's encoding).

use aws_lc_rs::digest;
use x509_parser::prelude::FromDer as _;

use crate::clock::UnixTime;
use crate::model::{Authenticator, Method};

/// Lower-case hex SHA-256 of a certificate's DER.
pub fn sha256_hex(der: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, der))
}

/// Lower-case hex SHA-1 of a certificate's DER.
pub fn sha1_hex(der: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, der))
}

/// Lower-case hex SHA-256 of a certificate's to-be-signed part, when the DER holds one.
pub fn tbs_sha256_hex(der: &[u8]) -> Option<String> {
    Some(hex::encode(digest::digest(&digest::SHA256, tbs_of(der)?)))
}

/// The to-be-signed part of a certificate: the first element of its outer SEQUENCE, read
/// as two DER headers, without parsing the rest (a full parse of the extensions costs
/// several microseconds on the enrollment path).
fn tbs_of(der: &[u8]) -> Option<&[u8]> {
    use x509_parser::asn1_rs::{Any, FromDer as _};
    let (_, outer) = Any::from_der(der).ok()?;
    let content = outer.data;
    let (rest, _) = Any::from_der(content).ok()?;
    content.get(..content.len() - rest.len())
}

/// The authenticator of `issued`, a certificate we issued, bound `now` by `ott`; `None` if
/// its DER does not parse (a signer fault).
pub fn issued_authenticator(
    issued: &crate::pki::issue::IssuedCert,
    now: UnixTime,
) -> Option<Authenticator> {
    let der = issued.der.as_slice();
    Some(Authenticator {
        fingerprint_sha256: sha256_hex(der),
        fingerprint_sha1: sha1_hex(der),
        tbs_sha256: tbs_sha256_hex(der)?,
        cert_pem: issued.pem.clone(),
        issued_by_network: true,
        not_before: issued.not_before,
        not_after: issued.not_after,
        method: Method::Ott,
        created_at: now,
        ca_id: None,
    })
}

/// The authenticator of the certificate `der` (PEM-encoded in the record), bound `now` by
/// `method`; `None` when the DER does not parse.
pub fn authenticator(
    der: &[u8],
    issued_by_network: bool,
    method: Method,
    now: UnixTime,
) -> Option<Authenticator> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    Some(Authenticator {
        fingerprint_sha256: sha256_hex(der),
        fingerprint_sha1: sha1_hex(der),
        tbs_sha256: hex::encode(digest::digest(
            &digest::SHA256,
            cert.tbs_certificate.as_ref(),
        )),
        cert_pem: crate::pki::pem_encode("CERTIFICATE", der),
        issued_by_network,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        method,
        created_at: now,
        ca_id: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_content_hash_is_the_to_be_signed_part_s() {
        let cert = crate::pki::self_signed_for_tests("dev");
        let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert.der()).unwrap();
        assert_eq!(
            tbs_sha256_hex(cert.der()).unwrap(),
            hex::encode(digest::digest(
                &digest::SHA256,
                parsed.tbs_certificate.as_ref()
            ))
        );
        assert_eq!(tbs_sha256_hex(b"\x30\x03\x02\x01"), None, "truncated");
        assert_eq!(tbs_sha256_hex(b""), None);
    }

    #[test]
    fn known_digests() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }
}
