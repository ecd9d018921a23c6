//! Accepting a certificate signing request: decode the body, verify the CSR's own
//! signature, and keep only its public key, if the key is of a type and size we sign.
//!
//! Nothing else in the CSR is used: its subject, its requested extensions (SANs, key usage,
//! `is_ca`, ...) are ignored; the certificate is built from the identity and policy
//! (`pki::issue`). This is the guard against the rcgen hazard noted in STYLE.md.

use base64::Engine as _;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

/// The smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// The largest RSA modulus accepted, in bits.
pub const MAX_RSA_BITS: usize = 4096;

/// Why a CSR is refused (`COULD_NOT_PROCESS_CSR`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// The body is empty.
    #[error("the request body is empty: send a PEM-encoded PKCS#10 certificate signing request")]
    Empty,
    /// Not PEM, nor base64 DER, nor DER.
    #[error("the body is not a PEM-encoded certificate signing request")]
    NotPem,
    /// PEM, but of another kind of object.
    #[error("expected a PEM block 'CERTIFICATE REQUEST', found '{0}'")]
    WrongPemLabel(String),
    /// The CSR's PEM block is followed by another PEM block: which one was meant is not
    /// guessed.
    #[error("the body holds more than one PEM block: send exactly one 'CERTIFICATE REQUEST'")]
    MoreThanOnePemBlock,
    /// The CSR's PEM block is followed by something other than whitespace.
    #[error("the body holds data after its PEM block: send exactly one 'CERTIFICATE REQUEST' and nothing else")]
    TrailingData,
    /// The bytes do not parse as PKCS#10.
    #[error("the body is not a valid PKCS#10 certificate signing request")]
    NotACsr,
    /// The CSR's signature does not verify with its own public key.
    #[error("the certificate signing request's signature does not verify")]
    BadSignature,
    /// A key type or size enrollgate does not sign.
    #[error("unsupported key in the certificate signing request: {0}; accepted are EC P-256, EC P-384, RSA 2048-4096 and Ed25519")]
    UnsupportedKey(String),
}

/// The kind of key a CSR carries (after it was accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA on P-256.
    EcP256,
    /// ECDSA on P-384.
    EcP384,
    /// RSA with the given modulus size in bits.
    Rsa(usize),
    /// Ed25519.
    Ed25519,
}

/// A CSR whose signature verified and whose key we sign: only the public key survives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedCsr {
    /// The SubjectPublicKeyInfo, DER.
    pub spki_der: Vec<u8>,
    /// What kind of key it is.
    pub key: KeyKind,
}

/// Decodes a request body into CSR DER: PEM (`CERTIFICATE REQUEST` or the older
/// `NEW CERTIFICATE REQUEST`), base64 of DER (as EST's `application/pkcs10` sends it), or
/// raw DER. A PEM body holds exactly one block; only whitespace may surround it.
pub fn decode_body(body: &[u8]) -> Result<Vec<u8>, CsrError> {
    // Raw DER first and untouched: its last bytes may be 0x0a or 0x20, which trimming as
    // text would cut off.
    if body.first() == Some(&0x30) {
        return Ok(body.to_vec());
    }
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() {
        return Err(CsrError::Empty);
    }
    if trimmed.starts_with(b"-----BEGIN") {
        let block = pem::parse(trimmed).map_err(|_| CsrError::NotPem)?;
        match block.tag() {
            "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => {}
            other => return Err(CsrError::WrongPemLabel(other.chars().take(64).collect())),
        }
        let rest = after_first_pem_block(trimmed).ok_or(CsrError::NotPem)?;
        if find(rest, b"-----BEGIN ").is_some() {
            return Err(CsrError::MoreThanOnePemBlock);
        }
        if !rest.trim_ascii().is_empty() {
            return Err(CsrError::TrailingData);
        }
        return Ok(block.into_contents());
    }
    let compact: Vec<u8> = trimmed
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|_| CsrError::NotPem)
}

/// What follows the END line of the first PEM block in `text`, framed as `pem::parse`
/// frames it: the first `-----END ` after the BEGIN line, up to the next `-----`. Taking
/// the first occurrence of each marker can only end the block earlier than `pem::parse`
/// did, which leaves more to refuse, never less.
fn after_first_pem_block(text: &[u8]) -> Option<&[u8]> {
    let rest = skip_past(text, b"-----BEGIN ")?;
    let rest = skip_past(rest, b"-----")?;
    let rest = skip_past(rest, b"-----END ")?;
    skip_past(rest, b"-----")
}

/// The bytes after the first occurrence of `marker` in `hay`.
fn skip_past<'a>(hay: &'a [u8], marker: &[u8]) -> Option<&'a [u8]> {
    find(hay, marker).map(|i| &hay[i + marker.len()..])
}

/// The position of the first occurrence of `marker` in `hay`.
fn find(hay: &[u8], marker: &[u8]) -> Option<usize> {
    hay.windows(marker.len()).position(|w| w == marker)
}

/// Parses a CSR, verifies its signature and checks its key.
pub fn accept(der: &[u8]) -> Result<AcceptedCsr, CsrError> {
    let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|_| CsrError::NotACsr)?;
    if !rest.is_empty() {
        return Err(CsrError::NotACsr);
    }
    // x509-parser reads some fields loosely (an algorithm identifier's OID under another
    // tag, say); the strict DER decoder of the RustCrypto `x509-cert` types (through `cms`,
    // already here for PKCS#7) refuses what is not exactly a PKCS#10 request.
    {
        use der::Decode as _;
        cms::cert::x509::request::CertReq::from_der(der).map_err(|_| CsrError::NotACsr)?;
    }
    let spki = &csr.certification_request_info.subject_pki;
    let key = classify_key(spki)?;
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    // The signer needs the exact algorithm identifier it knows (RSA with NULL parameters,
    // Ed25519 without): a key encoded otherwise is refused here, never failing later.
    rcgen::SubjectPublicKeyInfo::from_der(spki.raw).map_err(|_| {
        CsrError::UnsupportedKey(
            "the key's algorithm parameters are not encoded as expected".into(),
        )
    })?;
    Ok(AcceptedCsr {
        spki_der: spki.raw.to_vec(),
        key,
    })
}

fn classify_key(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<KeyKind, CsrError> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| CsrError::UnsupportedKey("EC key without a named curve".into()))?;
        if curve == OID_EC_P256 {
            Ok(KeyKind::EcP256)
        } else if curve == OID_NIST_EC_P384 {
            Ok(KeyKind::EcP384)
        } else {
            Err(CsrError::UnsupportedKey(format!("EC curve {curve}")))
        }
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => modulus_bits(rsa.modulus),
            _ => return Err(CsrError::UnsupportedKey("malformed RSA key".into())),
        };
        if (MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            Ok(KeyKind::Rsa(bits))
        } else {
            Err(CsrError::UnsupportedKey(format!("RSA {bits} bits")))
        }
    } else if *alg == OID_SIG_ED25519 {
        Ok(KeyKind::Ed25519)
    } else {
        Err(CsrError::UnsupportedKey(format!("algorithm {alg}")))
    }
}

/// The bit length of a big-endian unsigned integer (leading zero bytes ignored).
fn modulus_bits(bytes: &[u8]) -> usize {
    let first = bytes.iter().position(|&b| b != 0);
    match first {
        None => 0,
        Some(i) => (bytes.len() - i - 1) * 8 + (8 - bytes[i].leading_zeros() as usize),
    }
}

#[cfg(test)]
mod strict {
    use super::*;

    /// A request whose signature algorithm's OID carries another tag (0x86 for 0x06): the
    /// signature still verifies over the request info, but it is not a PKCS#10 request.
    /// Found by tests/it/property.rs.
    #[test]
    fn a_request_that_is_not_strict_der_is_refused() {
        let key = rcgen::KeyPair::generate().expect("key");
        let good = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .expect("csr")
            .der()
            .to_vec();
        assert!(accept(&good).is_ok());
        // The outer signatureAlgorithm: SEQUENCE { OID ecdsa-with-SHA256 } after the info.
        let oid = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
        let at = good
            .windows(oid.len())
            .rposition(|w| w == oid)
            .expect("the signature algorithm");
        let mut bad = good.clone();
        bad[at] = 0x86;
        assert_eq!(accept(&bad).unwrap_err(), CsrError::NotACsr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn csr_pem(key: &KeyPair) -> String {
        let mut params = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.serialize_request(key).unwrap().pem().unwrap()
    }

    #[test]
    fn accepts_each_supported_key_type() {
        let cases: [(&'static rcgen::SignatureAlgorithm, KeyKind); 3] = [
            (&rcgen::PKCS_ECDSA_P256_SHA256, KeyKind::EcP256),
            (&rcgen::PKCS_ECDSA_P384_SHA384, KeyKind::EcP384),
            (&rcgen::PKCS_ED25519, KeyKind::Ed25519),
        ];
        for (alg, kind) in cases {
            let key = KeyPair::generate_for(alg).unwrap();
            let der = decode_body(csr_pem(&key).as_bytes()).unwrap();
            let accepted = accept(&der).unwrap();
            assert_eq!(accepted.key, kind);
            assert_eq!(
                accepted.spki_der,
                rcgen::PublicKeyData::subject_public_key_info(&key)
            );
        }
    }

    #[test]
    fn accepts_rsa_2048() {
        let key =
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
        let der = decode_body(csr_pem(&key).as_bytes()).unwrap();
        assert_eq!(accept(&der).unwrap().key, KeyKind::Rsa(2048));
    }

    #[test]
    fn base64_and_der_bodies_decode_like_pem() {
        let key = KeyPair::generate().unwrap();
        let pem_text = csr_pem(&key);
        let der = decode_body(pem_text.as_bytes()).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        assert_eq!(decode_body(b64.as_bytes()).unwrap(), der);
        assert_eq!(decode_body(&der).unwrap(), der);
    }

    #[test]
    fn regression_der_ending_in_a_whitespace_byte_is_not_trimmed() {
        // A DER body whose last byte is 0x0a (as ~2% of signatures are) must arrive whole.
        let key = KeyPair::generate().unwrap();
        let mut der = decode_body(csr_pem(&key).as_bytes()).unwrap();
        der.push(b'\n');
        assert_eq!(decode_body(&der).unwrap(), der);
    }

    #[test]
    fn refuses_bad_bodies() {
        assert_eq!(decode_body(b"  \n"), Err(CsrError::Empty));
        assert_eq!(decode_body(b"hello world"), Err(CsrError::NotPem));
        let cert_pem = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        assert_eq!(
            decode_body(cert_pem.as_bytes()),
            Err(CsrError::WrongPemLabel("CERTIFICATE".into()))
        );
        assert_eq!(
            accept(&[0x30, 0x03, 0x02, 0x01, 0x00]),
            Err(CsrError::NotACsr)
        );
    }

    #[test]
    fn a_pem_body_holds_exactly_one_block() {
        let key = KeyPair::generate().unwrap();
        let csr = csr_pem(&key);
        let other = csr_pem(&KeyPair::generate().unwrap());
        let cert = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        let der = decode_body(csr.as_bytes()).unwrap();

        // Whitespace around the one block is fine, CRLF included.
        for ok in [
            format!("\n\n{csr}\n \t\r\n"),
            csr.replace('\n', "\r\n"),
            csr.trim_end().to_string(),
        ] {
            assert_eq!(decode_body(ok.as_bytes()), Ok(der.clone()), "{ok:?}");
        }

        // A second block of any kind, even the same CSR again.
        for two in [
            format!("{csr}{other}"),
            format!("{csr}{csr}"),
            format!("{csr}\n{cert}"),
            format!("{csr}junk\n{other}"),
        ] {
            assert_eq!(
                decode_body(two.as_bytes()),
                Err(CsrError::MoreThanOnePemBlock),
                "{two:?}"
            );
        }
        // Anything else after the block.
        for trailing in [
            format!("{csr}x"),
            format!("{csr}\n\ngarbage\n"),
            format!("{csr}-----END CERTIFICATE REQUEST-----\n"),
            format!("{csr}\0"),
        ] {
            assert_eq!(
                decode_body(trailing.as_bytes()),
                Err(CsrError::TrailingData),
                "{trailing:?}"
            );
        }
        // A first block that is not a CSR is still named as such.
        assert_eq!(
            decode_body(format!("{cert}{csr}").as_bytes()),
            Err(CsrError::WrongPemLabel("CERTIFICATE".into()))
        );
    }

    #[test]
    fn refuses_a_tampered_signature() {
        let key = KeyPair::generate().unwrap();
        let mut der = decode_body(csr_pem(&key).as_bytes()).unwrap();
        let last = der.len() - 1;
        der[last] ^= 0x01;
        assert_eq!(accept(&der), Err(CsrError::BadSignature));
    }

    #[test]
    fn modulus_bits_are_exact() {
        assert_eq!(modulus_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(modulus_bits(&[0x01, 0x00]), 9);
        assert_eq!(modulus_bits(&[0x7f; 256]), 2047);
        let mut m = vec![0x01];
        m.extend([0u8; 512]);
        assert_eq!(
            modulus_bits(&m),
            4097,
            "just over 4096 must not pass as 4096"
        );
        assert_eq!(modulus_bits(&[0, 0]), 0);
    }

    #[test]
    fn accepted_keys_are_issuable() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let der = decode_body(csr_pem(&key).as_bytes()).unwrap();
        let accepted = accept(&der).unwrap();
        assert!(rcgen::SubjectPublicKeyInfo::from_der(&accepted.spki_der).is_ok());
    }

    #[test]
    fn refuses_trailing_bytes() {
        let key = KeyPair::generate().unwrap();
        let mut der = decode_body(csr_pem(&key).as_bytes()).unwrap();
        der.push(0);
        assert_eq!(accept(&der), Err(CsrError::NotACsr));
    }
}
