//! The certs-only ("degenerate") PKCS#7 / CMS SignedData that `GET /.well-known/est/cacerts`
//! answers (RFC 7030 §4.1.3), built and read with the RustCrypto `cms` types.

use cms::cert::x509::Certificate;
use cms::cert::CertificateChoices;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{CertificateSet, EncapsulatedContentInfo, SignedData, SignerInfos};
use der::asn1::SetOfVec;
use der::{Decode, Encode};

const ID_DATA: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
const ID_SIGNED_DATA: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");

/// A PKCS#7 that could not be built or read.
#[derive(Debug, thiserror::Error)]
#[error("PKCS#7: {0}")]
pub struct Pkcs7Error(String);

impl From<der::Error> for Pkcs7Error {
    fn from(e: der::Error) -> Self {
        Self(e.to_string())
    }
}

/// DER of a certs-only SignedData holding `certs` (each a certificate's DER).
pub fn certs_only(certs: &[Vec<u8>]) -> Result<Vec<u8>, Pkcs7Error> {
    let mut set = SetOfVec::new();
    for der in certs {
        set.insert(CertificateChoices::Certificate(Certificate::from_der(der)?))?;
    }
    let signed = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::new(),
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: ID_DATA,
            econtent: None,
        },
        certificates: Some(CertificateSet(set)),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::new()),
    };
    let info = ContentInfo {
        content_type: ID_SIGNED_DATA,
        content: der::Any::encode_from(&signed)?,
    };
    Ok(info.to_der()?)
}

/// The certificates (DER) in the body of `GET /.well-known/est/cacerts`: base64 of a
/// PKCS#7 SignedData, with line breaks (RFC 7030 §4.1.3).
pub fn read_cacerts_body(body: &[u8]) -> Result<Vec<Vec<u8>>, Pkcs7Error> {
    use base64::Engine as _;
    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|_| Pkcs7Error("the body is not base64".into()))?;
    read_certs(&der)
}

/// The certificates (DER) inside a PKCS#7 SignedData, in the order stored.
pub fn read_certs(pkcs7_der: &[u8]) -> Result<Vec<Vec<u8>>, Pkcs7Error> {
    let info = ContentInfo::from_der(pkcs7_der)?;
    if info.content_type != ID_SIGNED_DATA {
        return Err(Pkcs7Error("not a SignedData".into()));
    }
    let signed: SignedData = info.content.decode_as()?;
    let mut out = Vec::new();
    for choice in signed
        .certificates
        .map(|s| s.0.into_vec())
        .unwrap_or_default()
    {
        if let CertificateChoices::Certificate(cert) = choice {
            out.push(cert.to_der()?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let a = rcgen::generate_simple_self_signed(vec!["a".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b".into()]).unwrap();
        let ders = vec![a.cert.der().to_vec(), b.cert.der().to_vec()];
        let p7 = certs_only(&ders).unwrap();
        let mut back = read_certs(&p7).unwrap();
        let mut expected = ders.clone();
        back.sort();
        expected.sort();
        assert_eq!(back, expected);
    }

    #[test]
    fn junk_is_an_error_not_a_panic() {
        assert!(read_certs(b"\x30\x03\x02\x01\x00").is_err());
        assert!(read_certs(b"").is_err());
        assert!(certs_only(&[vec![1, 2, 3]]).is_err());
    }
}
