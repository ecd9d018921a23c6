//! The enrollment core: each method's steps as functions of the facts, performing no I/O.
//!
//! A driver (the daemon's `api::client` and `api::est`) reads what a step needs (the
//! token's pending enrollment, the CA set, the peer's chain, a fresh id, `now`), calls it,
//! and does what it returns: sign a CSR for an identity, check that a certificate is not
//! bound yet, charge a CA's rate budget, submit a [`Redemption`] or an auto-enrolled
//! identity to the store, answer with [`ott_reply`], [`ottca_reply`] or [`ca_reply`].
//!
//! ```text
//! ott    token ─▶ [read enrollment] ─▶ ott ─▶ [sign CSR] ─▶ Ott::signed ─▶ [commit] ─▶ ott_reply
//! ottca  token ─▶ [read enrollment] ─▶ ottca(chain, CAs) ─▶ [bound?, rate, commit] ─▶ ottca_reply
//! ca     auto_enrollment_ca(chain, CAs) ─▶ presented ─▶ [bound?, new id]
//!            ─▶ auto_identity ─▶ [rate, commit] ─▶ ca_reply
//! ```
//!
//! The store decides again inside its atomic write (a racing request may have consumed the
//! token or bound the certificate in between); these steps answer every refusal that needs
//! no write, early and with its facts.

use rustls_pki_types::CertificateDer;
use serde_json::json;

use super::{auto_enrolled_identity, check_token, AutoNameError, EnrollError};
use crate::ca::chain::{ChainError, Verifier};
use crate::clock::UnixTime;
use crate::http::Response;
use crate::model::{Authenticator, Ca, Enrollment, Identity, Method};
use crate::pki::fingerprint;
use crate::pki::issue::IssuedCert;

pub use super::request::ChainForm;

/// Why an enrollment is refused before the store is written, with its facts. The daemon
/// maps each to its status and code in one place (`api::error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The request carries no token (or an empty one).
    #[error("the request has no enrollment token")]
    NoToken,
    /// The token is unknown, expired, for another method, or its identity is gone.
    #[error(transparent)]
    Token(#[from] EnrollError),
    /// `ottca` and `ca` enrollments need the client to present a certificate.
    #[error("{}", match .0 {
        Method::Ottca => "ottca enrollment needs a client certificate from the enrollment's CA",
        _ => "CA auto-enrollment needs a client certificate",
    })]
    NoClientCertificate(Method),
    /// The client's leaf certificate verified but does not parse as X.509 here.
    #[error("the client certificate does not parse")]
    UnparsableCertificate(Method),
    /// The CA an `ottca` token was issued for was deleted.
    #[error("the enrollment's CA no longer exists")]
    TokenCaGone,
    /// The CA an `ottca` token was issued for is not verified, or no longer allows ottca.
    #[error("the enrollment's CA is not verified or does not allow ottca enrollment")]
    TokenCaNotUsable,
    /// The client's chain does not verify for the method (for `ottca`, to the token's CA;
    /// for `ca`, to a verified CA allowing auto-enrollment).
    #[error("{error}")]
    Chain {
        /// `Ottca` or `Ca`.
        method: Method,
        /// Which certificate, which date, which CA.
        error: ChainError,
    },
    /// The CA's name format gives this device no valid name.
    #[error(transparent)]
    Name(#[from] AutoNameError),
}

/// A token redemption, as the store commits it: consume `token`, bind `authenticator` to
/// `identity_id` (the certificate's fingerprints, indexed so that it binds once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redemption {
    /// `Ott` or `Ottca`.
    pub method: Method,
    /// The token's CA (`ottca`).
    pub ca_id: Option<String>,
    /// The token redeemed.
    pub token: String,
    /// The identity it enrolls.
    pub identity_id: String,
    /// The certificate bound: issued here (`ott`) or presented (`ottca`).
    pub authenticator: Authenticator,
    /// When.
    pub now: UnixTime,
}

/// The token a request carries, if it could be one: present, not empty, and shaped as the
/// gateway's tokens are (anything else is unknown without a lookup).
pub fn token(token: Option<String>) -> Result<String, Refusal> {
    let token = token.filter(|t| !t.is_empty()).ok_or(Refusal::NoToken)?;
    if !crate::ids::is_well_formed(&token) {
        return Err(EnrollError::UnknownToken.into());
    }
    Ok(token)
}

/// An `ott` enrollment whose token may be redeemed: the CSR is to be signed for
/// [`Ott::identity_id`], then [`Ott::signed`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "the CSR is to be signed, then Ott::signed"]
pub struct Ott {
    token: String,
    identity_id: String,
}

/// An `ott` enrollment of `token`, whose pending enrollment (looked up by it) is
/// `enrollment`, at `now`.
pub fn ott(token: String, enrollment: Option<&Enrollment>, now: UnixTime) -> Result<Ott, Refusal> {
    let enrollment = check_token(enrollment, Method::Ott, now)?;
    Ok(Ott {
        token,
        identity_id: enrollment.identity_id.clone(),
    })
}

impl Ott {
    /// The identity the certificate is issued to.
    pub fn identity_id(&self) -> &str {
        &self.identity_id
    }

    /// The redemption binding `issued` (the certificate signed for the CSR), or `None` if
    /// it does not parse (a signer fault, not the client's).
    pub fn signed(self, issued: &IssuedCert, now: UnixTime) -> Option<Redemption> {
        let authenticator = fingerprint::issued_authenticator(issued, now)?;
        Some(Redemption {
            method: Method::Ott,
            ca_id: None,
            token: self.token,
            identity_id: self.identity_id,
            authenticator,
            now,
        })
    }
}

/// An `ottca` enrollment of `token` (its pending enrollment is `enrollment`) by a client
/// presenting `chain`: the token's CA must exist, be verified and allow ottca, and the
/// chain must verify to it at `now`.
pub fn ottca(
    token: String,
    enrollment: Option<&Enrollment>,
    chain: &[CertificateDer<'_>],
    cas: &impl Verifier,
    now: UnixTime,
) -> Result<Redemption, Refusal> {
    let enrollment = check_token(enrollment, Method::Ottca, now)?;
    let leaf = chain
        .first()
        .ok_or(Refusal::NoClientCertificate(Method::Ottca))?;
    let ca_id = enrollment.ca_id.clone().unwrap_or_default();
    let token_ca = match cas.ca(&ca_id) {
        Some(ca) if ca.is_verified && ca.is_ott_ca_enrollment_enabled => &ca.name,
        Some(_) => return Err(Refusal::TokenCaNotUsable),
        None => return Err(Refusal::TokenCaGone),
    };
    let refusal = format!("is not the CA of this token, '{token_ca}'");
    cas.verify(chain, now, &refusal, &|ca| ca.id == ca_id)
        .map_err(|error| Refusal::Chain {
            method: Method::Ottca,
            error,
        })?;
    Ok(Redemption {
        method: Method::Ottca,
        ca_id: Some(ca_id),
        token,
        identity_id: enrollment.identity_id.clone(),
        authenticator: presented(leaf, Method::Ottca, now)?,
        now,
    })
}

/// The verified CA allowing auto-enrollment that `chain` verifies to at `now`.
pub fn auto_enrollment_ca<'c>(
    chain: &[CertificateDer<'_>],
    cas: &'c impl Verifier,
    now: UnixTime,
) -> Result<&'c Ca, Refusal> {
    if chain.is_empty() {
        return Err(Refusal::NoClientCertificate(Method::Ca));
    }
    cas.verify(
        chain,
        now,
        "is not verified or does not allow auto-enrollment",
        &|ca| ca.is_verified && ca.is_auto_ca_enrollment_enabled,
    )
    .map_err(|error| Refusal::Chain {
        method: Method::Ca,
        error,
    })
}

/// The authenticator of a certificate the client presented (not issued here), first of
/// `chain`, enrolling by `method`.
pub fn presented(leaf: &[u8], method: Method, now: UnixTime) -> Result<Authenticator, Refusal> {
    fingerprint::authenticator(leaf, false, method, now)
        .ok_or(Refusal::UnparsableCertificate(method))
}

/// The identity `leaf` auto-enrolls through `ca` (from [`auto_enrollment_ca`]): see
/// [`auto_enrolled_identity`]; its CN is read from `leaf`.
pub fn auto_identity(
    ca: &Ca,
    leaf: &[u8],
    requested_name: Option<&str>,
    identity_id: String,
    authenticator: Authenticator,
    now: UnixTime,
) -> Result<Identity, Refusal> {
    let cn = crate::ca::chain::common_name(leaf);
    Ok(auto_enrolled_identity(
        ca,
        cn.as_deref(),
        requested_name,
        identity_id,
        authenticator,
        now,
    )?)
}

/// The answer to an `ott` enrollment: the issued certificate followed by the
/// intermediates a verifier needs to reach the root (`chain_tail_pem`), and the network's
/// CA bundle.
pub fn ott_reply(
    issued: &IssuedCert,
    chain_tail_pem: &str,
    ca_bundle_pem: &str,
    form: ChainForm,
) -> Response {
    let cert_chain = format!("{}{chain_tail_pem}", issued.pem);
    match form {
        ChainForm::Pem => Response::bytes(200, "application/x-pem-file", cert_chain.into_bytes()),
        ChainForm::Json => Response::data(json!({ "cert": cert_chain, "ca": ca_bundle_pem })),
    }
}

/// The answer to an `ottca` enrollment: the client keeps the certificate it presented.
pub fn ottca_reply() -> Response {
    Response::data(json!({}))
}

/// The answer to a `ca` auto-enrollment: the identity created.
pub fn ca_reply(identity: &Identity) -> Response {
    Response::data(json!({ "id": identity.id }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::ca::chain::{CaSet, Memoized};
    use crate::ca::memo::SignatureMemo;

    const NOW: UnixTime = 1_800_000_000;

    struct Pki {
        set: CaSet,
        memo: SignatureMemo,
        /// A leaf of CA `A` (verified, ottca and auto-enrollment allowed), CN `dev-1`.
        leaf_a: Vec<u8>,
        /// A leaf of CA `B` (verified, neither allowed).
        leaf_b: Vec<u8>,
    }

    impl Pki {
        fn verifier(&self) -> Memoized<'_> {
            Memoized {
                set: &self.set,
                memo: &self.memo,
            }
        }
    }

    fn at(t: UnixTime) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp(t).unwrap()
    }

    fn pki() -> Pki {
        let root = |cn: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.not_before = at(NOW - 86_400);
            p.not_after = at(NOW + 86_400);
            let cert = p.self_signed(&key).unwrap();
            (rcgen::Issuer::new(p, key), cert.pem())
        };
        let leaf = |issuer: &rcgen::Issuer<'_, rcgen::KeyPair>, cn: &str| {
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            p.not_before = at(NOW - 60);
            p.not_after = at(NOW + 3_600);
            let key = rcgen::KeyPair::generate().unwrap();
            p.signed_by(&key, issuer).unwrap().der().to_vec()
        };
        let ca = |id: &str, pem: String, allowed: bool| Ca {
            id: id.into(),
            name: format!("ca-{id}"),
            cert_pem: pem,
            fingerprint: id.into(),
            is_verified: true,
            verification_token: "t".into(),
            is_auto_ca_enrollment_enabled: allowed,
            is_ott_ca_enrollment_enabled: allowed,
            is_auth_enabled: true,
            identity_roles: vec!["fleet".into()],
            identity_name_format: crate::model::DEFAULT_NAME_FORMAT.into(),
            created_at: 0,
            updated_at: 0,
        };
        let (a, a_pem) = root("A");
        let (b, b_pem) = root("B");
        Pki {
            set: CaSet::build(vec![ca("A", a_pem, true), ca("B", b_pem, false)]),
            memo: SignatureMemo::off(),
            leaf_a: leaf(&a, "dev-1"),
            leaf_b: leaf(&b, "dev-2"),
        }
    }

    fn enrollment(method: Method, ca_id: Option<&str>) -> Enrollment {
        Enrollment {
            id: "e1".into(),
            token: String::new(),
            method,
            identity_id: "id1".into(),
            ca_id: ca_id.map(Into::into),
            created_at: NOW - 60,
            expires_at: NOW + 60,
            jwt: String::new(),
            token_sha256: vec![],
        }
    }

    #[test]
    fn a_token_must_be_present_and_shaped_as_ours() {
        assert_eq!(token(None), Err(Refusal::NoToken));
        assert_eq!(token(Some(String::new())), Err(Refusal::NoToken));
        assert_eq!(
            token(Some("a b".into())),
            Err(Refusal::Token(EnrollError::UnknownToken))
        );
        assert_eq!(token(Some("tok-1_A".into())), Ok("tok-1_A".into()));
    }

    #[test]
    fn ott_signs_for_the_tokens_identity() {
        let e = enrollment(Method::Ott, None);
        let step = ott("tok".into(), Some(&e), NOW).unwrap();
        assert_eq!(step.identity_id(), "id1");
        assert_eq!(
            ott("tok".into(), None, NOW),
            Err(Refusal::Token(EnrollError::UnknownToken))
        );
        assert!(matches!(
            ott("tok".into(), Some(&e), NOW + 60),
            Err(Refusal::Token(EnrollError::Expired { .. }))
        ));
        let ottca_token = enrollment(Method::Ottca, Some("A"));
        assert!(matches!(
            ott("tok".into(), Some(&ottca_token), NOW),
            Err(Refusal::Token(EnrollError::WrongMethod(_)))
        ));
    }

    #[test]
    fn ottca_needs_the_tokens_ca_usable_and_a_chain_to_it() {
        let pki = pki();
        let cas = pki.verifier();
        let chain = |der: &[u8]| vec![CertificateDer::from(der.to_vec())];
        let e = enrollment(Method::Ottca, Some("A"));
        let r = ottca("tok".into(), Some(&e), &chain(&pki.leaf_a), &cas, NOW).unwrap();
        assert_eq!(r.method, Method::Ottca);
        assert_eq!(r.ca_id.as_deref(), Some("A"));
        assert_eq!((r.token.as_str(), r.identity_id.as_str()), ("tok", "id1"));
        assert_eq!(
            r.authenticator.fingerprint_sha256,
            fingerprint::sha256_hex(&pki.leaf_a)
        );
        assert!(!r.authenticator.issued_by_network);

        assert_eq!(
            ottca("tok".into(), Some(&e), &[], &cas, NOW),
            Err(Refusal::NoClientCertificate(Method::Ottca))
        );
        // A chain of another (known, verified) CA than the token's.
        assert!(matches!(
            ottca("tok".into(), Some(&e), &chain(&pki.leaf_b), &cas, NOW),
            Err(Refusal::Chain {
                method: Method::Ottca,
                ..
            })
        ));
        let of_b = enrollment(Method::Ottca, Some("B"));
        assert_eq!(
            ottca("tok".into(), Some(&of_b), &chain(&pki.leaf_b), &cas, NOW),
            Err(Refusal::TokenCaNotUsable)
        );
        let of_gone = enrollment(Method::Ottca, Some("C"));
        assert_eq!(
            ottca("tok".into(), Some(&of_gone), &chain(&pki.leaf_a), &cas, NOW),
            Err(Refusal::TokenCaGone)
        );
    }

    #[test]
    fn ca_auto_enrollment_names_the_device_from_its_ca() {
        let pki = pki();
        let cas = pki.verifier();
        let chain = vec![CertificateDer::from(pki.leaf_a.clone())];
        let ca = auto_enrollment_ca(&chain, &cas, NOW).unwrap();
        assert_eq!(ca.id, "A");
        let auth = presented(&pki.leaf_a, Method::Ca, NOW).unwrap();
        let identity = auto_identity(ca, &pki.leaf_a, None, "new1".into(), auth, NOW).unwrap();
        assert_eq!(identity.name, "ca-A-dev-1");
        assert_eq!(identity.role_attributes, ["fleet"]);
        assert_eq!(
            String::from_utf8(ca_reply(&identity).body).unwrap(),
            r#"{"data":{"id":"new1"},"meta":{}}"#
        );

        assert_eq!(
            auto_enrollment_ca(&[], &cas, NOW).map(|c| c.id.clone()),
            Err(Refusal::NoClientCertificate(Method::Ca))
        );
        // B is verified but does not allow auto-enrollment.
        let of_b = vec![CertificateDer::from(pki.leaf_b.clone())];
        assert!(matches!(
            auto_enrollment_ca(&of_b, &cas, NOW),
            Err(Refusal::Chain {
                method: Method::Ca,
                ..
            })
        ));
        assert_eq!(
            presented(b"junk", Method::Ca, NOW),
            Err(Refusal::UnparsableCertificate(Method::Ca))
        );
    }

    #[test]
    fn an_ott_answer_is_the_chain_as_json_or_pem() {
        let issued = IssuedCert {
            der: vec![],
            pem: "LEAF\n".into(),
            not_before: NOW,
            not_after: NOW + 1,
        };
        let pem = ott_reply(&issued, "INTER\n", "BUNDLE", ChainForm::Pem);
        assert_eq!(
            (pem.content_type, pem.body.as_slice()),
            ("application/x-pem-file", b"LEAF\nINTER\n".as_slice())
        );
        let json = ott_reply(&issued, "INTER\n", "BUNDLE", ChainForm::Json);
        let v: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
        assert_eq!(v["data"]["cert"], "LEAF\nINTER\n");
        assert_eq!(v["data"]["ca"], "BUNDLE");
    }
}
