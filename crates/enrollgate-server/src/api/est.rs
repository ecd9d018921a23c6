//! EST (RFC 7030, with RFC 8951's clarifications) beside `GET /.well-known/est/cacerts`, for
//! devices that speak EST rather than OpenZiti's protocol (libest, network gear, Azure IoT
//! Edge):
//!
//! ```text
//! POST simpleenroll    HTTP Basic, the enrollment token as the password  -> redeem_ott
//! POST simpleenroll    a bootstrap certificate of an auto-enrollment CA  -> auto_enroll,
//!                                                    renew_from (Bootstrap, first use)
//! POST simplereenroll  the current certificate (mTLS)                    -> renew (first use)
//! GET  csrattrs        -> 204: no attributes are asked for
//! ```
//!
//! Bodies are base64 DER PKCS#10 (`application/pkcs10`); answers are base64 DER certs-only
//! PKCS#7 (`application/pkcs7-mime; smime-type=certs-only`), as RFC 8951 §3 settles it.
//! Nothing here decides an enrollment or a renewal: a token is redeemed by the same
//! function as `/enroll?method=ott` ([`super::client::redeem_ott`]), a certificate is
//! renewed by [`super::renew::renew`], activated by its first use
//! ([`super::auth::authenticate_now`]).

use base64::Engine as _;
use x509_parser::prelude::*;

use super::auth::{self, AuthError};
use super::client::{admit_source, auto_enroll, auto_enrollment_ca, redeem_ott};
use super::error::{method_not_allowed, ApiError};
use super::request::{Peer, Request};
use crate::app::WorkerCtx;
use crate::http::Response;
use crate::model::{Activation, Method};
use crate::pki::csr;

/// The EST operations live under this path (no CA label: one CA is served).
pub const PREFIX: &str = "/.well-known/est/";
/// RFC 7030 §4.1: the CA certificates, to anyone.
pub const CACERTS: &str = "/.well-known/est/cacerts";
/// RFC 7030 §4.2.1.
pub const SIMPLEENROLL: &str = "/.well-known/est/simpleenroll";
/// RFC 7030 §4.2.2.
pub const SIMPLEREENROLL: &str = "/.well-known/est/simplereenroll";
/// RFC 7030 §4.5.
pub const CSRATTRS: &str = "/.well-known/est/csrattrs";
/// The challenge of a `401 EST_UNAUTHORIZED` (RFC 7030 §3.2.3, RFC 7617).
pub const CHALLENGE: &str = "Basic realm=\"enrollgate\"";
/// The media type of an EST answer holding certificates (RFC 7030 §4.2.3).
pub const CERTS_ONLY: &str = "application/pkcs7-mime; smime-type=certs-only";

pub(super) async fn route(
    w: &WorkerCtx,
    req: &Request,
    peer: &Peer,
    path: &str,
) -> Result<Response, ApiError> {
    let method = req.head.method.as_str();
    match path {
        CACERTS => match method {
            "GET" | "HEAD" => Ok(Response::bytes(
                200,
                "application/pkcs7-mime",
                w.shared.cacerts_b64.clone().into_bytes(),
            )
            .with_header("Content-Transfer-Encoding", "base64".into())),
            _ => Err(method_not_allowed(req, "GET")),
        },
        SIMPLEENROLL | SIMPLEREENROLL => {
            if method != "POST" {
                return Err(method_not_allowed(req, "POST"));
            }
            admit_source(w, peer)?;
            crate::enroll::request::check_csr_media(req)?;
            if path == SIMPLEENROLL {
                simpleenroll(w, req, peer).await
            } else {
                simplereenroll(w, req, peer).await
            }
        }
        // No attribute is asked for: the certificate is built from the identity alone.
        CSRATTRS => match method {
            "GET" | "HEAD" => Ok(Response::bytes(204, "application/csrattrs", Vec::new())),
            _ => Err(method_not_allowed(req, "GET")),
        },
        _ => Err(ApiError::NotFound(format!(
            "the EST operation '{}' is not offered; enrollgate serves cacerts, simpleenroll, \
             simplereenroll and csrattrs (serverkeygen and fullcmc are not offered: the key \
             never leaves the device)",
            path.trim_start_matches(PREFIX)
                .chars()
                .take(64)
                .collect::<String>()
        ))),
    }
}

/// `simpleenroll`: HTTP Basic with an `ott` enrollment token as the password, redeemed
/// exactly as `/enroll?method=ott` redeems it.
async fn simpleenroll(w: &WorkerCtx, req: &Request, peer: &Peer) -> Result<Response, ApiError> {
    let Some(authorization) = req.head.header("authorization") else {
        if !peer.chain.is_empty() {
            return bootstrap_enroll(w, req, peer).await;
        }
        return Err(ApiError::EstUnauthorized(
            "simpleenroll needs HTTP Basic authentication with the enrollment token as the \
             password, or the client certificate of a CA that allows auto-enrollment"
                .into(),
        ));
    };
    let password = basic_password(authorization).map_err(ApiError::EstUnauthorized)?;
    let token = token_of_password(w, &password)?;
    let issued = redeem_ott(w, Some(token), &req.body, "est")
        .await
        .map_err(refused_token)?;
    certs_only(w, &issued.der)
}

/// `simpleenroll` by a bootstrap certificate (an IDevID) from a verified CA that allows
/// auto-enrollment, without Basic credentials. The first time, the certificate
/// auto-enrolls its identity exactly as `POST /enroll?method=ca` does (name template,
/// roles, `CERT_IN_USE`); every time, the answer is a certificate enrollgate issues for the
/// CSR, bound as the identity's renewal and activated by its first use. Then the
/// bootstrap certificate stays bound as the identity's `bootstrap`: it authenticates
/// nothing, never enrolls another identity, and may ask again (a device that lost its
/// issued certificate recovers).
async fn bootstrap_enroll(w: &WorkerCtx, req: &Request, peer: &Peer) -> Result<Response, ApiError> {
    let now = w.shared.clock.unix_now();
    let refused =
        |m: String| ApiError::EstUnauthorized(format!("simpleenroll by a client certificate: {m}"));
    // A chain no CA admits for auto-enrollment authenticates nothing here.
    let ca = auto_enrollment_ca(w, peer, now).map_err(|e| refused(e.to_string()))?;
    let fp = peer
        .cert_sha256
        .clone()
        .ok_or_else(|| refused("no client certificate".into()))?;
    // Checked whole (signature, key) before anything is written: a CSR that the signer
    // would refuse leaves no identity behind. The signer checks it again, cheaply beside
    // the signature it makes; this path runs once per device.
    let csr_der = csr::decode_body(&req.body)?;
    csr::accept(&csr_der)?;
    let bound = {
        let fp = fp.clone();
        w.shared
            .store
            .read(move |s| s.identity_by_fingerprint(&fp))
            .await?
    };
    let (identity, created) = match bound {
        Some(identity) => (identity, false),
        None => (auto_enroll(w, peer, &ca, None, now).await?, true),
    };
    let is_presented = |a: &Option<crate::model::Authenticator>| {
        a.as_ref()
            .is_some_and(|a| !a.issued_by_network && a.fingerprint_sha256 == fp)
    };
    if !is_presented(&identity.authenticator) && !is_presented(&identity.lifecycle.bootstrap) {
        return Err(ApiError::CertInUse(
            "this certificate is bound to an identity otherwise than as its bootstrap \
             certificate"
                .into(),
        ));
    }
    if identity.is_disabled_at(now) {
        return Err(refused("the identity is disabled".into()));
    }
    if !created {
        // Charged as auto_enroll charged a new one (an enrollment through this CA), once
        // the request could succeed: a certificate bound otherwise, or a disabled
        // identity, spends nothing of the CA's budget.
        w.shared.rates.ca(&ca.id)?;
    }
    let renewed = super::renew::renew_from(
        w,
        &identity,
        &fp,
        csr_der,
        Activation::FirstUse,
        now,
        super::renew::Replacing::Bootstrap,
    )
    .await?;
    certs_only(w, &renewed.issued.der)
}

/// `simplereenroll`: the client certificate names the identity; the CSR's subject and
/// SAN must be the certificate's (RFC 7030 §4.2.2). The new certificate is bound as the
/// identity's renewal, activated by its first use: until then the presented one still
/// authenticates (`enrollment.reenroll_grace` at most), so a lost answer locks no device out.
async fn simplereenroll(w: &WorkerCtx, req: &Request, peer: &Peer) -> Result<Response, ApiError> {
    let now = w.shared.clock.unix_now();
    let identity = auth::authenticate_now(w, peer, now)
        .await?
        .map_err(|e| match e {
            AuthError::Store(e) => e.into(),
            other => ApiError::EstUnauthorized(format!(
                "simplereenroll needs the client certificate of an enrolled identity: {other}"
            )),
        })?;
    // Authenticated: the presented certificate is the identity's active one.
    let (Some(presented), Some(current)) = (&peer.cert_sha256, &identity.authenticator) else {
        return Err(ApiError::Unhandled(
            "an authenticated request without its certificate".into(),
        ));
    };
    let csr_der = csr::decode_body(&req.body)?;
    let current_der = ::pem::parse(&current.cert_pem)
        .map_err(|_| ApiError::Unhandled("a stored certificate is not PEM".into()))?
        .into_contents();
    same_names(&csr_der, &current_der)?;
    let renewed =
        super::renew::renew(w, &identity, presented, csr_der, Activation::FirstUse, now).await?;
    certs_only(w, &renewed.issued.der)
}

/// The base64 body of a certs-only PKCS#7 holding `leaf` and the intermediates to the
/// root, as RFC 8951 requires it (the `Content-Transfer-Encoding` header is informative).
fn certs_only(w: &WorkerCtx, leaf: &[u8]) -> Result<Response, ApiError> {
    let mut certs = vec![leaf.to_vec()];
    certs.extend(
        ::pem::parse_many(&w.shared.issued_chain_tail_pem)
            .map_err(|_| ApiError::Unhandled("the issuing chain is not PEM".into()))?
            .into_iter()
            .map(|p| p.into_contents()),
    );
    let der =
        crate::pki::pkcs7::certs_only(&certs).map_err(|e| ApiError::Unhandled(e.to_string()))?;
    Ok(
        Response::bytes(200, CERTS_ONLY, crate::app::base64_lines(&der).into_bytes())
            .with_header("Content-Transfer-Encoding", "base64".into()),
    )
}

/// The password of an `Authorization: Basic` header. The user name is ignored: RFC 7030
/// leaves it to the server, and EST clients (libest, curl `-u`) always send one.
pub fn basic_password(header: &str) -> Result<String, String> {
    let (scheme, creds) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(
            "simpleenroll authenticates with HTTP Basic (the enrollment token as the \
                    password)"
                .into(),
        );
    }
    let malformed = || "the Basic credentials are not base64 of 'user:password'".to_string();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(creds.trim())
        .map_err(|_| malformed())?;
    let text = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (_user, password) = text.split_once(':').ok_or_else(malformed)?;
    if password.is_empty() {
        return Err("the Basic password is empty: send the enrollment token".into());
    }
    Ok(password.to_owned())
}

/// The token a Basic password carries: the password itself, or, for the JWT an admin hands
/// out, its `jti` once its signature verifies with the listener's key (as `enrollgate
/// enroll` checks it) and it is an `ott` JWT.
fn token_of_password(w: &WorkerCtx, password: &str) -> Result<String, ApiError> {
    if !password.contains('.') {
        return Ok(password.to_owned());
    }
    let claims = crate::token::jwt::verify_with_cert(password, w.shared.server_cert_der())
        .map_err(|_| {
            ApiError::EstUnauthorized(
                "the password is not an enrollment JWT of this gateway (signature or form)".into(),
            )
        })?;
    if claims.em != Method::Ott.as_str() {
        return Err(ApiError::EstUnauthorized(format!(
            "the JWT is for enrollment method '{}'; simpleenroll redeems 'ott' tokens",
            claims.em.chars().take(16).collect::<String>()
        )));
    }
    Ok(claims.jti)
}

/// A token that does not redeem is a credential that does not authenticate: `401`, with the
/// reason (unknown or used, expired, another method) in the message.
fn refused_token(e: ApiError) -> ApiError {
    match e {
        ApiError::EnrollmentExpired(m) => {
            crate::telemetry::token_expired("est");
            ApiError::EstUnauthorized(m)
        }
        ApiError::InvalidEnrollmentToken(m) | ApiError::InvalidEnrollMethod(m) => {
            ApiError::EstUnauthorized(m)
        }
        other => other,
    }
}

/// Refuses a re-enrollment CSR whose subject or subjectAltName is not the certificate's
/// (RFC 7030 §4.2.2). Names compare by attribute type and value, so a CSR that encodes a
/// value as UTF8String where the certificate has PrintableString still matches.
pub fn same_names(csr_der: &[u8], cert_der: &[u8]) -> Result<(), ApiError> {
    let (_, csr) = X509CertificationRequest::from_der(csr_der)
        .map_err(|_| ApiError::from(csr::CsrError::NotACsr))?;
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|_| ApiError::Unhandled("a stored certificate does not parse".into()))?;
    if names(&csr.certification_request_info.subject) != names(cert.subject()) {
        return Err(ApiError::CsrNameMismatch(format!(
            "the CSR's subject must be the current certificate's, '{}' (RFC 7030 §4.2.2)",
            cert.subject()
        )));
    }
    let csr_san: Vec<GeneralName<'_>> = csr
        .requested_extensions()
        .into_iter()
        .flatten()
        .find_map(|e| match e {
            ParsedExtension::SubjectAlternativeName(san) => Some(san.general_names.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let cert_san: Vec<GeneralName<'_>> = match cert.subject_alternative_name() {
        Ok(san) => san
            .map(|s| s.value.general_names.clone())
            .unwrap_or_default(),
        Err(_) => return Err(ApiError::Unhandled("a stored certificate's SAN".into())),
    };
    if csr_san != cert_san {
        let shown: Vec<String> = cert_san.iter().map(|n| n.to_string()).collect();
        return Err(ApiError::CsrNameMismatch(format!(
            "the CSR's subjectAltName must be the current certificate's, [{}] (RFC 7030 §4.2.2)",
            shown.join(", ")
        )));
    }
    Ok(())
}

/// A name's attributes as (type, value) pairs, in order.
fn names(name: &X509Name<'_>) -> Vec<(String, Vec<u8>)> {
    name.iter_attributes()
        .map(|a| {
            let value = match a.as_str() {
                Ok(s) => s.as_bytes().to_vec(),
                Err(_) => a.attr_value().data.to_vec(),
            };
            (a.attr_type().to_id_string(), value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn the_basic_password_is_read_and_the_user_ignored() {
        let h = format!("Basic {}", b64("anyone:tok:en"));
        assert_eq!(basic_password(&h).unwrap(), "tok:en");
        let h = format!("basic  {}", b64(":t"));
        assert_eq!(basic_password(&h).unwrap(), "t");
        for bad in [
            "Bearer abc".to_string(),
            "Basic".to_string(),
            "Basic !!!".to_string(),
            format!("Basic {}", b64("no-colon")),
            format!("Basic {}", b64("user:")),
        ] {
            assert!(basic_password(&bad).is_err(), "{bad}");
        }
    }

    fn key() -> rcgen::KeyPair {
        rcgen::KeyPair::generate().unwrap()
    }

    fn params(cn: &str, uri: &str) -> rcgen::CertificateParams {
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
        p
    }

    #[test]
    fn a_reenrollment_csr_must_name_what_the_certificate_names() {
        let k = key();
        let cert = params("id1", "spiffe://td/identity/id1")
            .self_signed(&k)
            .unwrap();
        let csr = |p: rcgen::CertificateParams| p.serialize_request(&key()).unwrap().der().to_vec();
        assert!(same_names(&csr(params("id1", "spiffe://td/identity/id1")), cert.der()).is_ok());
        for (cn, uri) in [
            ("id2", "spiffe://td/identity/id1"),
            ("id1", "spiffe://td/identity/id2"),
        ] {
            let e = same_names(&csr(params(cn, uri)), cert.der()).unwrap_err();
            assert!(matches!(e, ApiError::CsrNameMismatch(_)), "{e:?}");
        }
        let mut no_san = params("id1", "spiffe://td/identity/id1");
        no_san.subject_alt_names.clear();
        assert!(same_names(&csr(no_san), cert.der()).is_err());
        assert!(matches!(
            same_names(b"junk", cert.der()),
            Err(ApiError::CouldNotProcessCsr(_))
        ));
    }
}
