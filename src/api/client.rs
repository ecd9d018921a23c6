//! The client API: `GET /` and `GET /version`, `GET /.well-known/est/cacerts`, enrollment
//! (`POST /enroll?method=...`, `POST /enroll/{method}`), authentication and the current
//! session and identity ([`super::current`]), as OpenZiti clients call them and as
//! OpenZiti's edge client API spec shapes them (docs/openziti-api.md).

use serde::Deserialize;
use serde_json::json;

use super::{json_body, method_not_allowed, ApiError, Peer, Request};
use crate::app::WorkerCtx;

use crate::clock::UnixTime;
use crate::enroll::{auto_enrolled_identity, check_token, AutoNameError};
use crate::http::query::param;
use crate::http::Response;
use crate::model::{Authenticator, Identity, Method};
use crate::pki::{csr, fingerprint};
use crate::store::{Command, Outcome};

/// Media types accepted for a CSR body (and none at all). The spec's `enroll` lists
/// `application/pkcs7` too; OpenZiti's controller reads it as it reads `text/plain`.
pub const CSR_MEDIA_TYPES: [&str; 4] = [
    "text/plain",
    "application/x-pem-file",
    "application/pkcs10",
    "application/pkcs7",
];

pub(super) async fn route(
    w: &WorkerCtx,
    req: &Request,
    peer: &Peer,
    path: &str,
) -> Result<Response, ApiError> {
    let method = req.head.method.as_str();
    match path {
        // `listRoot`: the API's root answers as `/version` does.
        "/" | "/version" => match method {
            "GET" | "HEAD" => Ok(version()),
            _ => Err(method_not_allowed(req, "GET")),
        },
        "/enroll" => {
            if method != "POST" {
                return Err(method_not_allowed(req, "POST"));
            }
            admit_source(w, peer)?;
            match enroll_method(req)? {
                Method::Ott => {
                    let csr = ott_csr(req)?;
                    let token = param(&req.head.query, "token");
                    let want_pem = req.head.accepts("application/x-pem-file")
                        && !req.head.accepts("application/json");
                    enroll_ott(w, token, &csr, want_pem).await
                }
                // The body carries nothing for ottca (OpenZiti's C SDK sends none, or a
                // JSON identity with a name) and is not read, as before.
                Method::Ottca => {
                    let token = param(&req.head.query, "token");
                    enroll_ottca(w, peer, token).await
                }
                Method::Ca => {
                    let name = requested_name(req)?;
                    enroll_ca(w, peer, name).await
                }
            }
        }
        "/enroll/ott" => {
            if method != "POST" {
                return Err(method_not_allowed(req, "POST"));
            }
            admit_source(w, peer)?;
            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct Body {
                token: Option<String>,
                client_csr: Option<String>,
            }
            let body: Body = json_body(req)?;
            let csr = body.client_csr.ok_or_else(|| {
                ApiError::CouldNotProcessCsr("the body has no 'clientCsr' field".into())
            })?;
            enroll_ott(w, body.token, csr.as_bytes(), false).await
        }
        "/enroll/ottca" => {
            if method != "POST" {
                return Err(method_not_allowed(req, "POST"));
            }
            admit_source(w, peer)?;
            #[derive(Deserialize)]
            struct Body {
                token: Option<String>,
            }
            let body: Body = json_body(req)?;
            enroll_ottca(w, peer, body.token).await
        }
        "/enroll/ca" => {
            if method != "POST" {
                return Err(method_not_allowed(req, "POST"));
            }
            admit_source(w, peer)?;
            let name = requested_name(req)?;
            enroll_ca(w, peer, name).await
        }
        "/authenticate" => {
            if method != "POST" {
                return Err(method_not_allowed(req, "POST"));
            }
            match param(&req.head.query, "method").as_deref() {
                Some("cert") => super::current::authenticate_cert(w, peer).await,
                other => Err(ApiError::InvalidAuth(format!(
                    "authentication method '{}' is not supported; use method=cert",
                    other
                        .unwrap_or_default()
                        .chars()
                        .take(32)
                        .collect::<String>()
                ))),
            }
        }
        "/crl" => match method {
            "GET" | "HEAD" => super::crl::get(w).await,
            _ => Err(method_not_allowed(req, "GET")),
        },
        "/current-identity" => match method {
            "GET" | "HEAD" => super::current::current_identity(w, req).await,
            _ => Err(method_not_allowed(req, "GET")),
        },
        "/current-api-session" => match method {
            "GET" | "HEAD" => super::current::current_api_session(w, req).await,
            "DELETE" => super::current::logout(w, req).await,
            _ => Err(method_not_allowed(req, "GET, DELETE")),
        },
        p if p.starts_with(super::extend::AUTHENTICATORS) => {
            super::extend::route(w, req, peer, p).await
        }
        _ => Err(ApiError::NotFound(format!(
            "no such resource: {}",
            req.head.path
        ))),
    }
}

/// The per-source rate limit, checked before any enrollment work.
pub(crate) fn admit_source(w: &WorkerCtx, peer: &Peer) -> Result<(), ApiError> {
    match peer.addr {
        Some(addr) => Ok(w.shared.rates.source(addr.ip())?),
        None => Ok(()),
    }
}

fn version() -> Response {
    let v1 = |path: &str| json!({ "v1": { "path": path, "apiBaseUrls": [] } });
    Response::data(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "runtimeVersion": "rust",
        "apiVersions": {
            "edge": v1(super::CLIENT_PREFIX),
            "edge-client": v1(super::CLIENT_PREFIX),
            "edge-management": v1(super::MANAGEMENT_PREFIX),
        },
        // OpenZiti's capabilities name controller features (HA_CONTROLLER, OIDC_AUTH...)
        // that this gateway does not have; the C SDK warns of every name it does not know
        // on each fetch, so the list is empty rather than one of our own.
        "capabilities": [],
    }))
}

/// The optional `{"name": ...}` body of a `ca` enrollment. As in OpenZiti, a body sent as
/// another type than JSON (older clients send `text/plain`, often empty) carries no name;
/// a body without a type is read as JSON (empty: no name). The name is not checked here:
/// it matters only where the CA's name format has `[requestedName]`, and the name that
/// format gives is checked whole (`enroll_ca`); elsewhere it is ignored, as in OpenZiti.
pub(crate) fn requested_name(req: &Request) -> Result<Option<String>, ApiError> {
    #[derive(Deserialize)]
    struct Body {
        name: Option<String>,
    }
    match req.head.content_type().as_deref() {
        None | Some("application/json") => {}
        Some(_) => return Ok(None),
    }
    let body: Body = json_body(req)?;
    Ok(body.name.filter(|n| !n.is_empty()))
}

/// The authenticator of a certificate the client presented (not issued by us).
fn presented_authenticator(
    leaf: &[u8],
    method: Method,
    now: UnixTime,
) -> Result<Authenticator, ApiError> {
    fingerprint::authenticator(leaf, false, method, now).ok_or_else(|| {
        ApiError::CertificateFailedValidation("the client certificate does not parse".into())
    })
}

/// Refuses a certificate already bound, as it is or in another encoding of its signature,
/// or revoked, before the CA's rate budget is charged: a device retrying cannot spend it.
/// The committer decides again, atomically; this only answers the common case early.
async fn refuse_bound(shared: &crate::app::Shared, auth: &Authenticator) -> Result<(), ApiError> {
    let auth = auth.clone();
    let (bound, blocked) = shared
        .store
        .read(move |s| s.bound_or_blocked(&auth))
        .await?;
    if bound {
        return Err(ApiError::CertInUse(
            "this certificate is already bound to an identity".into(),
        ));
    }
    if blocked {
        return Err(ApiError::CertRevoked(
            crate::store::revocation::REVOKED_MESSAGE.into(),
        ));
    }
    Ok(())
}

/// The pending enrollment `token` redeems, read off the worker.
async fn pending(
    shared: &crate::app::Shared,
    token: &str,
) -> Result<Option<crate::model::Enrollment>, ApiError> {
    let token = token.to_string();
    Ok(shared
        .store
        .read(move |s| s.enrollment_by_token(&token))
        .await?)
}

/// Redeems an `ottca` token with the client certificate chain of the token's CA.
async fn enroll_ottca(
    w: &WorkerCtx,
    peer: &Peer,
    token: Option<String>,
) -> Result<Response, ApiError> {
    let token = token.filter(|t| !t.is_empty()).ok_or_else(|| {
        ApiError::InvalidEnrollmentToken("the request has no enrollment token".into())
    })?;
    if !crate::ids::is_well_formed(&token) {
        return Err(crate::enroll::EnrollError::UnknownToken.into());
    }
    let shared = &w.shared;
    let now = shared.clock.unix_now();
    let enrollment = pending(shared, &token).await?;
    let enrollment = check_token(enrollment.as_ref(), Method::Ottca, now)?;
    let leaf = peer.chain.first().ok_or_else(|| {
        ApiError::CertificateFailedValidation(
            "ottca enrollment needs a client certificate from the enrollment's CA".into(),
        )
    })?;
    let cas = w.cas.current(&shared.cas);
    let ca_id = enrollment.ca_id.clone().unwrap_or_default();
    let token_ca = match cas.get(&ca_id) {
        Some(ca) if ca.is_verified && ca.is_ott_ca_enrollment_enabled => ca.name.clone(),
        Some(_) => {
            return Err(ApiError::EnrollmentCaNotValid(
                "the enrollment's CA is not verified or does not allow ottca enrollment".into(),
            ))
        }
        None => {
            return Err(ApiError::EnrollmentCaNotValid(
                "the enrollment's CA no longer exists".into(),
            ))
        }
    };
    let refusal = format!("is not the CA of this token, '{token_ca}'");
    cas.verify(&peer.chain, now, &refusal, w.cas.memo(), |ca| {
        ca.id == ca_id
    })
    .map_err(|e| ApiError::CertificateFailedValidation(e.to_string()))?;
    let authenticator = presented_authenticator(leaf, Method::Ottca, now)?;
    refuse_bound(shared, &authenticator).await?;
    // Charged once the request could succeed: whoever holds the token cannot spend the
    // CA's budget with certificates that fail, or that are bound already.
    shared.rates.ca(&ca_id)?;
    shared
        .commit
        .submit(Command::Redeem {
            method: Method::Ottca,
            ca_id: Some(ca_id),
            token,
            identity_id: enrollment.identity_id.clone(),
            authenticator,
            now,
        })
        .await?;
    tracing::info!(identity_id = %enrollment.identity_id, method = "ottca", "identity enrolled");
    Ok(Response::data(json!({})))
}

/// CA auto-enrollment: the identity is created on the spot for a chain from a verified CA
/// that allows it.
async fn enroll_ca(
    w: &WorkerCtx,
    peer: &Peer,
    requested: Option<String>,
) -> Result<Response, ApiError> {
    let now = w.shared.clock.unix_now();
    let ca = auto_enrollment_ca(w, peer, now)?;
    let created = auto_enroll(w, peer, &ca, requested, now).await?;
    Ok(Response::data(json!({ "id": created.id })))
}

/// The verified CA with auto-enrollment that `peer`'s chain verifies against now.
pub(crate) fn auto_enrollment_ca(
    w: &WorkerCtx,
    peer: &Peer,
    now: UnixTime,
) -> Result<crate::model::Ca, ApiError> {
    if peer.chain.is_empty() {
        return Err(ApiError::CertFailedValidation(
            "CA auto-enrollment needs a client certificate".into(),
        ));
    }
    let cas = w.cas.current(&w.shared.cas);
    cas.verify(
        &peer.chain,
        now,
        "is not verified or does not allow auto-enrollment",
        w.cas.memo(),
        |ca| ca.is_verified && ca.is_auto_ca_enrollment_enabled,
    )
    .cloned()
    .map_err(|e| ApiError::CertFailedValidation(e.to_string()))
}

/// Creates the identity `peer`'s certificate auto-enrolls through `ca` (from
/// [`auto_enrollment_ca`]), bound to it: the name from the CA's template, its roles, and
/// the rule that a certificate binds once (`CERT_IN_USE`). For `/enroll?method=ca` and
/// EST's `simpleenroll` by a bootstrap certificate.
pub(crate) async fn auto_enroll(
    w: &WorkerCtx,
    peer: &Peer,
    ca: &crate::model::Ca,
    requested: Option<String>,
    now: UnixTime,
) -> Result<Identity, ApiError> {
    let shared = &w.shared;
    let leaf = peer.chain.first().ok_or_else(|| {
        ApiError::CertFailedValidation("CA auto-enrollment needs a client certificate".into())
    })?;
    let authenticator = presented_authenticator(leaf, Method::Ca, now)?;
    refuse_bound(shared, &authenticator).await?;
    let identity_id = crate::ids::new_id().map_err(|e| ApiError::Unhandled(e.to_string()))?;
    let cn = crate::ca::chain::common_name(leaf);
    let identity = auto_enrolled_identity(
        ca,
        cn.as_deref(),
        requested.as_deref(),
        identity_id,
        authenticator,
        now,
    )
    .map_err(|e| match e {
        AutoNameError::Template(e) => ApiError::InvalidCommonName(e.to_string()),
        AutoNameError::TooLong => ApiError::InvalidName(e.to_string()),
        AutoNameError::Name(e) => e.into(),
    })?;
    // Charged once the request could succeed (after the bound check and the name's), so a
    // device retrying a refusal does not spend its CA's budget for the devices waiting.
    shared.rates.ca(&ca.id)?;
    let outcome = shared
        .commit
        .submit(Command::AutoEnroll {
            ca_id: ca.id.clone(),
            identity,
        })
        .await
        .map_err(|e| match e {
            crate::store::StoreError::CaNotUsable(m) => ApiError::CertFailedValidation(m),
            other => other.into(),
        })?;
    let Outcome::Identity(created) = outcome else {
        return Err(ApiError::Unhandled("unexpected store outcome".into()));
    };
    tracing::info!(identity_id = %created.id, ca_id = %ca.id, method = "ca", "identity auto-enrolled");
    Ok(*created)
}

/// The enrollment method of `POST /enroll`. `method` is optional in the spec; a missing (or
/// empty) one is `ott`, the method every client that leaves it out means. (OpenZiti's
/// controller takes the method of the token's enrollment instead: the same for an ott
/// token; an ottca token without its method is refused here with a message naming it.)
pub(crate) fn enroll_method(req: &Request) -> Result<Method, ApiError> {
    let name = param(&req.head.query, "method").unwrap_or_default();
    if name.is_empty() {
        return Ok(Method::Ott);
    }
    Method::parse(&name).ok_or_else(|| {
        ApiError::InvalidEnrollMethod(format!(
            "unknown enrollment method '{}': use ott, ottca or ca",
            name.chars().take(32).collect::<String>()
        ))
    })
}

/// The JSON body of `POST /enroll` (the spec's `genericEnroll`), as far as an `ott`
/// enrollment reads it. The token stays in the query string, where the spec puts it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenericEnroll {
    /// The CSR, PEM.
    pub client_csr: Option<String>,
}

/// The CSR of an `ott` enrollment on `/enroll`: the body itself (PEM, sent as one of the
/// spec's non-JSON types or without a type), or `clientCsr` of a JSON body.
pub(crate) fn ott_csr(req: &Request) -> Result<std::borrow::Cow<'_, [u8]>, ApiError> {
    if req.head.content_type().as_deref() == Some("application/json") {
        let body: GenericEnroll = json_body(req)?;
        let csr = body.client_csr.ok_or_else(|| {
            ApiError::CouldNotProcessCsr("the JSON body has no 'clientCsr' field".into())
        })?;
        return Ok(std::borrow::Cow::Owned(csr.into_bytes()));
    }
    check_csr_media(req)?;
    Ok(std::borrow::Cow::Borrowed(&req.body))
}

pub(crate) fn check_csr_media(req: &Request) -> Result<(), ApiError> {
    match req.head.content_type() {
        None => Ok(()),
        Some(t) if CSR_MEDIA_TYPES.contains(&t.as_str()) => Ok(()),
        Some(t) => Err(ApiError::UnsupportedMedia(format!(
            "content type '{}' is not accepted for a CSR; send text/plain, application/x-pem-file, application/pkcs10, application/pkcs7 or application/json ({{\"clientCsr\": PEM}})",
            t.chars().take(64).collect::<String>()
        ))),
    }
}

/// Redeems a one-time token with a CSR: token rules, CSR checks, signing, then the atomic
/// redemption (which re-checks the token: only one of many racing requests wins). The one
/// redemption of an `ott` token, for OpenZiti's `/enroll` and EST's `simpleenroll`
/// (`protocol` names the caller in the log).
pub(crate) async fn redeem_ott(
    w: &WorkerCtx,
    token: Option<String>,
    csr_body: &[u8],
    protocol: &'static str,
) -> Result<crate::pki::issue::IssuedCert, ApiError> {
    let token = token.filter(|t| !t.is_empty()).ok_or_else(|| {
        ApiError::InvalidEnrollmentToken("the request has no enrollment token".into())
    })?;
    if !crate::ids::is_well_formed(&token) {
        return Err(crate::enroll::EnrollError::UnknownToken.into());
    }
    let shared = &w.shared;
    let now = shared.clock.unix_now();
    let enrollment = pending(shared, &token).await?;
    let enrollment = check_token(enrollment.as_ref(), Method::Ott, now)?;

    // Decoding the body is cheap and stays here; the CSR's signature check and the
    // certificate's signature run on this worker's signing thread.
    let der = csr::decode_body(csr_body)?;
    let (_, issued) = w.signer.sign(der, &enrollment.identity_id, now).await?;

    let authenticator = fingerprint::issued_authenticator(
        &issued.der,
        &issued.pem,
        issued.not_before,
        issued.not_after,
        now,
    )
    .ok_or_else(|| ApiError::Unhandled("the issued certificate does not parse".into()))?;
    shared
        .commit
        .submit(Command::Redeem {
            method: Method::Ott,
            ca_id: None,
            token,
            identity_id: enrollment.identity_id.clone(),
            authenticator,
            now,
        })
        .await?;
    tracing::info!(identity_id = %enrollment.identity_id, method = "ott", protocol, "identity enrolled");
    Ok(issued)
}

/// Answers an `ott` enrollment on `/enroll` and `/enroll/ott`: [`redeem_ott`], then the
/// certificate chain as OpenZiti clients read it.
async fn enroll_ott(
    w: &WorkerCtx,
    token: Option<String>,
    csr_body: &[u8],
    want_pem: bool,
) -> Result<Response, ApiError> {
    let issued = redeem_ott(w, token, csr_body, "ott").await?;
    let shared = &w.shared;
    // The leaf and the intermediates a verifier needs to reach the root.
    let cert_chain = format!("{}{}", issued.pem, shared.issued_chain_tail_pem);
    if want_pem {
        return Ok(Response::bytes(
            200,
            "application/x-pem-file",
            cert_chain.into_bytes(),
        ));
    }
    Ok(Response::data(json!({
        "cert": cert_chain,
        "ca": shared.ca_bundle_pem,
    })))
}
