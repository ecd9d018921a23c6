//! enrollgate's internal PKI: the root CA that signs `ott` certificates and the enrollment
//! listener's TLS certificate, created by `enrollgate init` and loaded by the daemon.
//!
//! A CA key in a PKCS#11 token (`hsm`) is behind the `hsm` feature, which the daemon
//! enables: it loads a vendor library at run time, which the fuzz targets have no use for.

pub mod crl;
pub mod csr;
pub mod fingerprint;
#[cfg(feature = "hsm")]
pub mod hsm;
pub mod issue;
pub mod pkcs7;

use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::clock::UnixTime;
pub use issue::{IssueError, IssuePolicy, IssuedCert, Signer};

/// Lifetime of the internal root CA (10 years).
pub const CA_LIFETIME_SECS: i64 = 10 * 365 * 86_400;
/// Lifetime of the enrollment listener's server certificate (2 years).
pub const SERVER_CERT_LIFETIME_SECS: i64 = 2 * 365 * 86_400;

/// The key type of the internal CA and server certificate (`init --key-type`), which also
/// fixes the JWT algorithm: ES256 for EC P-256, RS256 for RSA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    /// ECDSA P-256 (default): fast, and what current OpenZiti clients expect.
    Ec,
    /// RSA 3072: for old clients (OpenZiti C SDK before 2023) that verify only RS256.
    Rsa,
}

/// A new private key of the given type.
pub fn generate_key(kind: KeyType) -> Result<KeyPair, rcgen::Error> {
    match kind {
        KeyType::Ec => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyType::Rsa => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072)
        }
    }
}

/// The internal CA's private key: in memory (read from a file or a credential), or in a
/// PKCS#11 token, where it signs without ever leaving it.
#[derive(Debug)]
pub enum CaKey {
    /// A PKCS#8 key read from `pki.ca_key`.
    Memory(KeyPair),
    /// A key in a token (`pki.ca_key = "pkcs11:..."`), on a session of its own.
    #[cfg(feature = "hsm")]
    Hsm(hsm::HsmKey),
}

impl From<KeyPair> for CaKey {
    fn from(k: KeyPair) -> Self {
        Self::Memory(k)
    }
}

impl rcgen::PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        match self {
            Self::Memory(k) => k.der_bytes(),
            #[cfg(feature = "hsm")]
            Self::Hsm(k) => k.der_bytes(),
        }
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Self::Memory(k) => k.algorithm(),
            #[cfg(feature = "hsm")]
            Self::Hsm(k) => k.algorithm(),
        }
    }
}

impl rcgen::SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        match self {
            Self::Memory(k) => k.sign(msg),
            #[cfg(feature = "hsm")]
            Self::Hsm(k) => k.sign(msg),
        }
    }
}

/// A host name or address the server certificate is valid for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A DNS name.
    Dns(String),
    /// An IP address.
    Ip(IpAddr),
}

impl Host {
    /// Parses a host as it appears in a URL (`example.org`, `10.0.0.1`, `[::1]`).
    pub fn parse(s: &str) -> Self {
        let bare = s.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(ip) => Self::Ip(ip),
            Err(_) => Self::Dns(s.to_ascii_lowercase()),
        }
    }
}

/// The parameters of the internal root CA.
pub fn root_ca_params(name: &str, now: UnixTime) -> Result<CertificateParams, IssueError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "enrollgate");
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = issue::offset_time(now - issue::BACKDATE_SECS)?;
    params.not_after = issue::offset_time(now + CA_LIFETIME_SECS)?;
    params.serial_number = Some(issue::random_serial()?);
    Ok(params)
}

/// The parameters of the enrollment listener's TLS certificate, valid for `hosts` plus
/// `localhost`, `127.0.0.1` and `::1`.
pub fn server_params(hosts: &[Host], now: UnixTime) -> Result<CertificateParams, IssueError> {
    let mut all = vec![
        Host::Dns("localhost".into()),
        Host::Ip(IpAddr::from([127, 0, 0, 1])),
        Host::Ip(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])),
    ];
    for h in hosts {
        if !all.contains(h) {
            all.push(h.clone());
        }
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "enrollgate");
    let cn = match hosts.first() {
        Some(Host::Dns(d)) => d.clone(),
        Some(Host::Ip(ip)) => ip.to_string(),
        None => "localhost".to_string(),
    };
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    for h in &all {
        params.subject_alt_names.push(match h {
            Host::Dns(d) => SanType::DnsName(d.clone().try_into()?),
            Host::Ip(ip) => SanType::IpAddress(*ip),
        });
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = issue::offset_time(now - issue::BACKDATE_SECS)?;
    params.not_after = issue::offset_time(now + SERVER_CERT_LIFETIME_SECS)?;
    params.serial_number = Some(issue::random_serial()?);
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Freshly created PKI material, PEM, as `init` writes it.
pub struct NewPki {
    /// Root CA certificate.
    pub ca_cert_pem: String,
    /// Root CA private key (PKCS#8).
    pub ca_key_pem: String,
    /// Server certificate.
    pub server_cert_pem: String,
    /// Server private key (PKCS#8).
    pub server_key_pem: String,
}

impl std::fmt::Debug for NewPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewPki").finish_non_exhaustive()
    }
}

/// Creates a root CA and a server certificate for `hosts`.
pub fn create(kind: KeyType, hosts: &[Host], now: UnixTime) -> Result<NewPki, IssueError> {
    let ca_key = generate_key(kind)?;
    let mut made = create_with(&ca_key, kind, hosts, now)?;
    made.ca_key_pem = ca_key.serialize_pem();
    Ok(made)
}

/// Creates a root CA whose key is `ca_key` (which may sign in a token: `ca_key_pem` is
/// then empty) and a server certificate for `hosts` with a new key of type `kind`.
pub fn create_with(
    ca_key: &impl rcgen::SigningKey,
    kind: KeyType,
    hosts: &[Host],
    now: UnixTime,
) -> Result<NewPki, IssueError> {
    let ca_params = root_ca_params("enrollgate root CA", now)?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let server_key = generate_key(kind)?;
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let server_cert = server_params(hosts, now)?.signed_by(&server_key, &issuer)?;
    Ok(NewPki {
        ca_cert_pem: ca_cert.pem(),
        ca_key_pem: String::new(),
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
    })
}

/// A PKI file that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not hold what it should.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Reads a file of PEM certificates and returns their DER, in order.
pub fn read_cert_chain(path: &Path) -> Result<Vec<Vec<u8>>, LoadError> {
    let text = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let invalid = |reason: String| LoadError::Invalid {
        path: path.display().to_string(),
        reason,
    };
    let blocks = pem::parse_many(&text).map_err(|e| invalid(e.to_string()))?;
    let certs: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| b.into_contents())
        .collect();
    if certs.is_empty() {
        return Err(invalid("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8) as an rcgen key pair; refuses a file that group or
/// others may read.
pub fn read_key(path: &Path) -> Result<(KeyPair, String), LoadError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    // A key others can read is a key others may have: refuse it, as sshd does.
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(LoadError::Invalid {
            path: path.display().to_string(),
            reason: format!(
                "mode {mode:04o}; a private key must not be readable by group or others (chmod 600)"
            ),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    // Never echo the file's content in the error: it is a private key.
    let key = KeyPair::from_pem(&text).map_err(|_| LoadError::Invalid {
        path: path.display().to_string(),
        reason: "not a PKCS#8 PEM private key (EC P-256/P-384, RSA or Ed25519)".into(),
    })?;
    Ok((key, text))
}

/// True when `key` is the private key of the certificate `cert_der`.
pub fn key_matches_cert(key: &(impl rcgen::PublicKeyData + ?Sized), cert_der: &[u8]) -> bool {
    use x509_parser::prelude::FromDer as _;
    x509_parser::certificate::X509Certificate::from_der(cert_der)
        .map(|(_, c)| {
            c.public_key().raw == rcgen::PublicKeyData::subject_public_key_info(key).as_slice()
        })
        .unwrap_or(false)
}

/// True when a certificate's issuer is its own subject (a root).
pub fn is_self_signed(der: &[u8]) -> bool {
    use x509_parser::prelude::FromDer as _;
    match x509_parser::certificate::X509Certificate::from_der(der) {
        Ok((_, c)) => c.issuer().as_raw() == c.subject().as_raw(),
        Err(_) => false,
    }
}

/// The CA certificates `/.well-known/est/cacerts` serves: the internal CA chain, then those
/// of `tls_ca` (the CAs that issued the listener's certificate, `tls.ca`), then the CA
/// certificates of the listener's own chain file, each once. OpenZiti clients trust nothing
/// else when they connect to enroll, so one of them must have signed the listener's
/// certificate: `Err` says why none did (the caller names the files).
pub fn served_cas(
    internal: &[Vec<u8>],
    tls_ca: &[Vec<u8>],
    server_chain: &[Vec<u8>],
) -> Result<Vec<Vec<u8>>, String> {
    use x509_parser::prelude::FromDer as _;
    let mut served: Vec<Vec<u8>> = Vec::new();
    for der in internal
        .iter()
        .chain(tls_ca)
        .chain(server_chain.iter().skip(1))
    {
        if !served.contains(der) {
            served.push(der.clone());
        }
    }
    fn parse(der: &[u8]) -> Result<x509_parser::certificate::X509Certificate<'_>, String> {
        x509_parser::certificate::X509Certificate::from_der(der)
            .map(|(_, c)| c)
            .map_err(|_| "a certificate does not parse".to_string())
    }
    let leaf = parse(server_chain.first().ok_or("no certificate")?)?;
    // A served certificate that signed the leaf is a trust anchor for clients (Go's
    // x509 takes any certificate of its root pool as one). A signature x509-parser
    // cannot check (ECDSA with SHA-512, say) is left to the clients, on the name alone.
    let issued = served.iter().any(|der| {
        parse(der).is_ok_and(|ca| {
            ca.subject().as_raw() == leaf.issuer().as_raw()
                && match leaf.verify_signature(Some(ca.public_key())) {
                    Ok(()) => true,
                    Err(x509_parser::error::X509Error::SignatureUnsupportedAlgorithm) => true,
                    Err(_) => false,
                }
        })
    });
    if issued {
        return Ok(served);
    }
    Err(format!(
        "its issuer ({}) is not among the CAs that /.well-known/est/cacerts serves, which \
         are all that OpenZiti clients trust: set tls.ca to a PEM file of the CA \
         certificates that issued it (its root, and any intermediate it needs)",
        leaf.issuer()
    ))
}

/// PEM text (LF line endings, as rcgen and openssl write) of one DER object.
pub fn pem_encode(tag: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// PEM text of DER certificates, concatenated.
pub fn pem_of_certs(ders: &[Vec<u8>]) -> String {
    ders.iter().map(|d| pem_encode("CERTIFICATE", d)).collect()
}

/// A self-signed certificate for the DNS name `name`, with a new P-256 key (tests).
#[cfg(test)]
pub(crate) fn self_signed_for_tests(name: &str) -> rcgen::Certificate {
    let key = rcgen::KeyPair::generate().expect("key");
    rcgen::CertificateParams::new(vec![name.into()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse() {
        assert_eq!(Host::parse("Example.ORG"), Host::Dns("example.org".into()));
        assert_eq!(
            Host::parse("10.1.2.3"),
            Host::Ip("10.1.2.3".parse().unwrap())
        );
        assert_eq!(Host::parse("[::1]"), Host::Ip("::1".parse().unwrap()));
    }

    #[test]
    fn created_server_cert_chains_to_the_ca_and_names_the_hosts() {
        use x509_parser::prelude::*;
        let pki = create(KeyType::Ec, &[Host::parse("gw.example.org")], 1_750_000_000).unwrap();
        let ca = ::pem::parse(&pki.ca_cert_pem).unwrap();
        let srv = ::pem::parse(&pki.server_cert_pem).unwrap();
        let (_, ca) = X509Certificate::from_der(ca.contents()).unwrap();
        let (_, srv) = X509Certificate::from_der(srv.contents()).unwrap();
        srv.verify_signature(Some(ca.public_key())).unwrap();
        assert!(ca.is_ca());
        let san = srv.subject_alternative_name().unwrap().unwrap().value;
        let names: Vec<String> = san.general_names.iter().map(|g| g.to_string()).collect();
        for expected in ["DNSName(localhost)", "DNSName(gw.example.org)"] {
            assert!(names.iter().any(|n| n == expected), "{names:?}");
        }
        assert_eq!(san.general_names.len(), 4);
    }

    #[test]
    fn cacerts_serve_the_ca_of_a_listener_certificate_from_elsewhere() {
        use std::slice::from_ref as one;
        let der = |pem: &str| ::pem::parse(pem).unwrap().into_contents();
        let own = create(KeyType::Ec, &[Host::parse("gw")], 1_750_000_000).unwrap();
        let web = create(KeyType::Ec, &[Host::parse("gw")], 1_750_000_000).unwrap();
        let (own_ca, web_ca) = (der(&own.ca_cert_pem), der(&web.ca_cert_pem));
        let (own_srv, web_srv) = (der(&own.server_cert_pem), der(&web.server_cert_pem));
        // As init makes it: the internal CA alone.
        let served = served_cas(one(&own_ca), &[], one(&own_srv)).unwrap();
        assert_eq!(served, vec![own_ca.clone()]);
        // A listener certificate from another CA, not named: refused, saying what to do.
        let err = served_cas(one(&own_ca), &[], one(&web_srv)).unwrap_err();
        assert!(err.contains("tls.ca"), "{err}");
        // Named in tls.ca, or carried in the listener's chain file: served after the
        // internal CA, once.
        let both = vec![own_ca.clone(), web_ca.clone()];
        assert_eq!(
            served_cas(one(&own_ca), one(&web_ca), one(&web_srv)).unwrap(),
            both
        );
        let chain = [web_srv.clone(), web_ca.clone()];
        assert_eq!(served_cas(one(&own_ca), &[], &chain).unwrap(), both);
        assert_eq!(
            served_cas(one(&own_ca), one(&web_ca), &chain).unwrap(),
            both
        );
        // A CA of the same name but another key does not vouch for it.
        let impostor = der(&create(KeyType::Ec, &[Host::parse("gw")], 1_750_000_000)
            .unwrap()
            .ca_cert_pem);
        assert!(served_cas(one(&own_ca), one(&impostor), one(&web_srv)).is_err());
    }
}
