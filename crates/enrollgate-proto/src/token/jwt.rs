//! The enrollment JWT (DESIGN.md, "The enrollment JWT").
//!
//! Header: `alg` (ES256 / ES384 / RS256, following the server key), `typ: JWT`,
//! `kid` = hex SHA-1 of the signing certificate's DER. Claims: `iss`, `sub`, `jti`, `em`,
//! `exp`, `aud`. OpenZiti clients check the signature against the TLS certificate that
//! `iss` presents before they trust anything else, which is why the TLS key signs it.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::clock::UnixTime;
use crate::model::Method;

/// The claims of an enrollment JWT.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Public `https://host:port` of the enrollment listener.
    pub iss: String,
    /// Identity id (CA id for CA JWTs).
    pub sub: String,
    /// The enrollment token.
    pub jti: String,
    /// Enrollment method (`ott`, `ottca`, `ca`).
    pub em: String,
    /// Expiry (absent for the reusable CA JWT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<UnixTime>,
    /// Audience: `["openziti-enroller"]`, as OpenZiti's controller writes it (a single
    /// string is accepted when reading).
    #[serde(default)]
    pub aud: Audience,
}

/// The audience OpenZiti puts in enrollment JWTs.
pub const AUDIENCE: &str = "openziti-enroller";

/// `aud`: one string or a list (RFC 7519 allows both).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// A list.
    Many(Vec<String>),
    /// One value.
    One(String),
}

impl Default for Audience {
    fn default() -> Self {
        Self::Many(Vec::new())
    }
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims")
            .field("iss", &self.iss)
            .field("sub", &self.sub)
            .field("jti", &"...")
            .field("em", &self.em)
            .field("exp", &self.exp)
            .finish()
    }
}

/// A JWT could not be made or did not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// The key is of a type that signs no supported JWT algorithm.
    #[error("unsupported signing key: {0}")]
    UnsupportedKey(String),
    /// The token is not a well-formed JWT.
    #[error("not a valid enrollment JWT: {0}")]
    Malformed(String),
    /// The signature does not verify with the server's certificate.
    #[error("the JWT's signature does not verify against the server's certificate")]
    BadSignature,
    /// The header names an algorithm we do not accept.
    #[error("the JWT uses algorithm {0:?}; accepted are ES256, ES384 and RS256")]
    Algorithm(Algorithm),
    /// Signing failed.
    #[error("could not sign the JWT: {0}")]
    Sign(String),
}

/// The JWT algorithm an rcgen key signs with.
pub fn algorithm_for(key: &rcgen::KeyPair) -> Result<Algorithm, JwtError> {
    let alg = key.algorithm();
    if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        Ok(Algorithm::ES256)
    } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        Ok(Algorithm::ES384)
    } else if alg == &rcgen::PKCS_RSA_SHA256 {
        Ok(Algorithm::RS256)
    } else {
        Err(JwtError::UnsupportedKey(format!("{alg:?}")))
    }
}

/// Signs enrollment JWTs with the TLS server key.
pub struct JwtSigner {
    key: EncodingKey,
    header: Header,
    issuer: String,
}

impl std::fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSigner")
            .field("alg", &self.header.alg)
            .field("kid", &self.header.kid)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl JwtSigner {
    /// A signer for the server key `key` (with its PEM text `key_pem`), whose certificate
    /// is `cert_der`, issuing tokens for `issuer`.
    pub fn new(
        key: &rcgen::KeyPair,
        key_pem: &str,
        cert_der: &[u8],
        issuer: String,
    ) -> Result<Self, JwtError> {
        let alg = algorithm_for(key)?;
        let encoding = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(key_pem.as_bytes()),
            _ => EncodingKey::from_ec_pem(key_pem.as_bytes()),
        }
        .map_err(|e| JwtError::UnsupportedKey(e.to_string()))?;
        let mut header = Header::new(alg);
        header.typ = Some("JWT".into());
        header.kid = Some(crate::pki::fingerprint::sha1_hex(cert_der));
        Ok(Self {
            key: encoding,
            header,
            issuer,
        })
    }

    /// The `iss` claim this signer writes.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The algorithm in use.
    pub fn algorithm(&self) -> Algorithm {
        self.header.alg
    }

    /// A signed enrollment JWT.
    pub fn sign(
        &self,
        subject: &str,
        token: &str,
        method: Method,
        expires_at: Option<UnixTime>,
    ) -> Result<String, JwtError> {
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: subject.to_string(),
            jti: token.to_string(),
            em: method.as_str().to_string(),
            exp: expires_at,
            aud: Audience::Many(vec![AUDIENCE.to_string()]),
        };
        jsonwebtoken::encode(&self.header, &claims, &self.key)
            .map_err(|e| JwtError::Sign(e.to_string()))
    }
}

/// Reads the claims without verifying anything (to learn where `iss` is, before the
/// signature can be checked against that server's certificate).
pub fn peek(jwt: &str) -> Result<(Header, Claims), JwtError> {
    let header =
        jsonwebtoken::decode_header(jwt).map_err(|e| JwtError::Malformed(e.to_string()))?;
    let claims = jsonwebtoken::dangerous::insecure_decode_claims::<Claims>(jwt)
        .map_err(|e| JwtError::Malformed(e.to_string()))?;
    Ok((header, claims))
}

/// Verifies `jwt`'s signature with the public key of the certificate `cert_der` and
/// returns its claims. Expiry is not judged here: the caller compares `exp` with its
/// clock so it can say "expired" rather than "invalid".
pub fn verify_with_cert(jwt: &str, cert_der: &[u8]) -> Result<Claims, JwtError> {
    let header =
        jsonwebtoken::decode_header(jwt).map_err(|e| JwtError::Malformed(e.to_string()))?;
    let cert_pem = crate::pki::pem_encode("CERTIFICATE", cert_der);
    let key = match header.alg {
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(cert_pem.as_bytes()),
        Algorithm::RS256 => DecodingKey::from_rsa_pem(cert_pem.as_bytes()),
        other => return Err(JwtError::Algorithm(other)),
    }
    .map_err(|_| JwtError::BadSignature)?;
    let mut validation = Validation::new(header.alg);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Claims>(jwt, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature
            | jsonwebtoken::errors::ErrorKind::InvalidAlgorithm
            | jsonwebtoken::errors::ErrorKind::InvalidEcdsaKey
            | jsonwebtoken::errors::ErrorKind::InvalidRsaKey(_) => JwtError::BadSignature,
            _ => JwtError::Malformed(e.to_string()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{self, Host, KeyType};

    fn signer(kind: KeyType) -> (JwtSigner, Vec<u8>) {
        let p = pki::create(kind, &[Host::parse("gw.example")], 1_750_000_000).unwrap();
        let key = rcgen::KeyPair::from_pem(&p.server_key_pem).unwrap();
        let cert_der = pem::parse(&p.server_cert_pem).unwrap().into_contents();
        let s = JwtSigner::new(
            &key,
            &p.server_key_pem,
            &cert_der,
            "https://gw.example:8443".into(),
        )
        .unwrap();
        (s, cert_der)
    }

    #[test]
    fn ec_round_trip_with_header_fields() {
        let (s, cert) = signer(KeyType::Ec);
        assert_eq!(s.algorithm(), Algorithm::ES256);
        let jwt = s
            .sign("ident1", "tok", Method::Ott, Some(1_800_000_000))
            .unwrap();
        let (header, peeked) = peek(&jwt).unwrap();
        assert_eq!(
            header.kid.as_deref(),
            Some(pki::fingerprint::sha1_hex(&cert).as_str())
        );
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        let claims = verify_with_cert(&jwt, &cert).unwrap();
        assert_eq!(claims, peeked);
        assert_eq!(claims.sub, "ident1");
        assert_eq!(claims.jti, "tok");
        assert_eq!(claims.em, "ott");
        assert_eq!(claims.exp, Some(1_800_000_000));
        assert_eq!(claims.iss, "https://gw.example:8443");
        assert_eq!(claims.aud, Audience::Many(vec!["openziti-enroller".into()]));
    }

    #[test]
    fn rsa_keys_sign_rs256() {
        let (s, cert) = signer(KeyType::Rsa);
        assert_eq!(s.algorithm(), Algorithm::RS256);
        let jwt = s.sign("i", "t", Method::Ott, Some(1)).unwrap();
        assert_eq!(verify_with_cert(&jwt, &cert).unwrap().sub, "i");
    }

    #[test]
    fn another_servers_certificate_does_not_verify() {
        let (s, _) = signer(KeyType::Ec);
        let (_, other_cert) = signer(KeyType::Ec);
        let jwt = s.sign("i", "t", Method::Ott, None).unwrap();
        assert!(matches!(
            verify_with_cert(&jwt, &other_cert),
            Err(JwtError::BadSignature)
        ));
    }

    #[test]
    fn junk_is_malformed() {
        assert!(matches!(peek("not-a-jwt"), Err(JwtError::Malformed(_))));
    }
}
