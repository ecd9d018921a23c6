//! The certificate enrollgate issues for an `ott` enrollment, built from the identity and
//! policy only (DESIGN.md, "The issued certificate"):
//!
//! | field | value |
//! |---|---|
//! | subject | CN = identity id |
//! | SAN | one URI, `spiffe://<trust-domain>/identity/<identity id>` |
//! | validity | `now - 60 s` .. `now + lifetime` |
//! | key usage | digitalSignature, keyEncipherment |
//! | extended key usage | clientAuth |
//! | serial | 128 random bits (positive) |
//! | public key | the CSR's, after its signature verified (`pki::csr`) |
//! | CRL distribution point | `<server.public_url>/crl`, when a public URL is configured |

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyUsagePurpose, SanType, SerialNumber,
};

use crate::clock::UnixTime;

/// How far `notBefore` is set back, so a device whose clock runs a little behind accepts
/// its certificate at once.
pub const BACKDATE_SECS: i64 = 60;

/// Bytes of the random serial number (DESIGN.md asks for at least 64 bits).
pub const SERIAL_BYTES: usize = 16;

/// Policy for issued client certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuePolicy {
    /// The SPIFFE trust domain in the URI SAN.
    pub trust_domain: String,
    /// Lifetime of an issued certificate, seconds.
    pub lifetime_secs: i64,
    /// Where the CRL is published (`<server.public_url>/crl`), named in each certificate's
    /// CRL distribution point; `None` without a configured public URL, whose bound
    /// address a verifier elsewhere could not reach.
    pub crl_url: Option<String>,
}

/// A certificate could not be built or signed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// rcgen refused the parameters or the key.
    #[error("could not build the certificate: {0}")]
    Build(#[from] rcgen::Error),
    /// The random generator failed.
    #[error(transparent)]
    Random(#[from] crate::ids::RandomError),
    /// A time outside what X.509 can encode.
    #[error("time out of range")]
    Time,
}

/// A signed certificate.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// DER.
    pub der: Vec<u8>,
    /// PEM.
    pub pem: String,
    /// Start of validity.
    pub not_before: UnixTime,
    /// End of validity.
    pub not_after: UnixTime,
}

/// The SPIFFE ID placed in an identity's certificate.
pub fn spiffe_id(trust_domain: &str, identity_id: &str) -> String {
    format!("spiffe://{trust_domain}/identity/{identity_id}")
}

pub(crate) fn offset_time(t: UnixTime) -> Result<time::OffsetDateTime, IssueError> {
    time::OffsetDateTime::from_unix_timestamp(t).map_err(|_| IssueError::Time)
}

pub(crate) fn random_serial() -> Result<SerialNumber, IssueError> {
    let mut serial = [0u8; SERIAL_BYTES];
    crate::ids::fill_random(&mut serial)?;
    // Positive and without a leading zero octet in DER: top bit clear, next bit set.
    serial[0] = (serial[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&serial))
}

/// The parameters of the client certificate for `identity_id` at `now`.
pub fn client_params(
    identity_id: &str,
    policy: &IssuePolicy,
    now: UnixTime,
) -> Result<CertificateParams, IssueError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, identity_id);
    params.distinguished_name = dn;
    let uri = spiffe_id(&policy.trust_domain, identity_id).try_into()?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.not_before = offset_time(now - BACKDATE_SECS)?;
    params.not_after = offset_time(now.saturating_add(policy.lifetime_secs))?;
    params.serial_number = Some(random_serial()?);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    if let Some(url) = &policy.crl_url {
        params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
            uris: vec![url.clone()],
        }];
    }
    Ok(params)
}

/// Signs client certificates with the internal CA. One per worker: the key is loaded once
/// and nothing is shared on the request path.
pub struct Signer {
    issuer: Issuer<'static, super::CaKey>,
    policy: IssuePolicy,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("policy", &self.policy)
            .field("key", &"...")
            .finish()
    }
}

impl Signer {
    /// A signer for the CA certificate `ca_der` whose private key is `ca_key` (in memory,
    /// or in a PKCS#11 token).
    pub fn new(
        ca_der: &[u8],
        ca_key: impl Into<super::CaKey>,
        policy: IssuePolicy,
    ) -> Result<Self, IssueError> {
        let issuer = Issuer::from_ca_cert_der(&ca_der.into(), ca_key.into())?;
        Ok(Self { issuer, policy })
    }

    /// The policy in force.
    pub fn policy(&self) -> &IssuePolicy {
        &self.policy
    }

    /// Issues the client certificate of `identity_id` for the public key `spki_der`
    /// (a SubjectPublicKeyInfo that `pki::csr::accept` returned).
    pub fn issue_client(
        &self,
        spki_der: &[u8],
        identity_id: &str,
        now: UnixTime,
    ) -> Result<IssuedCert, IssueError> {
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki_der)?;
        let params = client_params(identity_id, &self.policy, now)?;
        let cert = params.signed_by(&public_key, &self.issuer)?;
        Ok(IssuedCert {
            der: cert.der().to_vec(),
            pem: cert.pem(),
            not_before: params.not_before.unix_timestamp(),
            not_after: params.not_after.unix_timestamp(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::KeyPair;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::*;

    fn ca() -> (Vec<u8>, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let cert = crate::pki::root_ca_params("test root", 1_700_000_000)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.der().to_vec(), key)
    }

    #[test]
    fn template_takes_nothing_from_the_csr_but_its_key() {
        let (ca_der, ca_key) = ca();
        let policy = IssuePolicy {
            trust_domain: "example.org".into(),
            lifetime_secs: 86_400,
            crl_url: None,
        };
        let signer = Signer::new(&ca_der, ca_key, policy).unwrap();

        // A CSR asking for a CA certificate with a DNS SAN: none of that may survive.
        let device_key = KeyPair::generate().unwrap();
        let mut req = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        req.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let csr_der = req.serialize_request(&device_key).unwrap().der().to_vec();
        let accepted = crate::pki::csr::accept(&csr_der).unwrap();

        let now = 1_750_000_000;
        let issued = signer
            .issue_client(&accepted.spki_der, "id123", now)
            .unwrap();
        let (_, cert) = X509Certificate::from_der(&issued.der).unwrap();

        assert_eq!(cert.subject().to_string(), "CN=id123");
        assert_eq!(cert.validity().not_before.timestamp(), now - 60);
        assert_eq!(cert.validity().not_after.timestamp(), now + 86_400);
        assert_eq!(issued.not_before, now - 60);
        assert_eq!(cert.public_key().raw, accepted.spki_der.as_slice());
        assert!(cert.tbs_certificate.serial.bits() >= 64);

        let mut saw_san = false;
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    assert_eq!(
                        san.general_names,
                        vec![GeneralName::URI("spiffe://example.org/identity/id123")]
                    );
                    saw_san = true;
                }
                ParsedExtension::BasicConstraints(bc) => assert!(!bc.ca),
                ParsedExtension::KeyUsage(ku) => {
                    assert!(ku.digital_signature() && ku.key_encipherment());
                    assert!(!ku.key_cert_sign());
                }
                ParsedExtension::ExtendedKeyUsage(eku) => {
                    assert!(eku.client_auth && !eku.server_auth);
                }
                _ => {}
            }
        }
        assert!(saw_san);
        // Signed by the CA.
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    }

    #[test]
    fn the_crl_distribution_point_is_named_only_with_a_public_url() {
        let dp = |crl_url: Option<&str>| {
            let (ca_der, ca_key) = ca();
            let policy = IssuePolicy {
                trust_domain: "example.org".into(),
                lifetime_secs: 86_400,
                crl_url: crl_url.map(str::to_string),
            };
            let signer = Signer::new(&ca_der, ca_key, policy).unwrap();
            let device = KeyPair::generate().unwrap();
            let issued = signer
                .issue_client(
                    &rcgen::PublicKeyData::subject_public_key_info(&device),
                    "id1",
                    1_750_000_000,
                )
                .unwrap();
            let (_, cert) = X509Certificate::from_der(&issued.der).unwrap();
            let mut uris = Vec::new();
            for ext in cert.extensions() {
                if let ParsedExtension::CRLDistributionPoints(points) = ext.parsed_extension() {
                    for p in points.iter() {
                        if let Some(DistributionPointName::FullName(names)) = &p.distribution_point
                        {
                            for n in names {
                                if let GeneralName::URI(u) = n {
                                    uris.push(u.to_string());
                                }
                            }
                        }
                    }
                }
            }
            uris
        };
        assert_eq!(
            dp(Some("https://gw.example:8443/crl")),
            ["https://gw.example:8443/crl"]
        );
        assert!(dp(None).is_empty());
    }

    #[test]
    fn serials_are_random_and_positive() {
        let a = random_serial().unwrap().to_bytes();
        let b = random_serial().unwrap().to_bytes();
        assert_ne!(a, b);
        assert_eq!(a[0] & 0xc0, 0x40);
    }
}
