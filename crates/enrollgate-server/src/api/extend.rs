//! Renewal as OpenZiti clients do it (edge client API, `currentIdentity` authenticators),
//! and the admin's request that an identity renew:
//!
//! ```text
//! GET  /current-identity/authenticators               (zt-session)  -> [authenticatorDetail]
//! GET  /current-identity/authenticators/{id}          (zt-session)  -> authenticatorDetail
//! POST /current-identity/authenticators/{id}/extend   (zt-session, on a connection
//!      {"clientCertCsr": PEM}                          presenting certificate {id})
//!                                                      -> {"clientCert","ca"}, not yet active
//! POST /current-identity/authenticators/{id}/extend-verify   (zt-session)
//!      {"clientCert": PEM}                             -> {} ; the new certificate is active,
//!                                                         the old one retired, in one write
//! management: POST /authenticators/{id}/request-extend      {"rollKeys": bool}
//!             POST /identities/{id}/request-extend          (the same, by identity)
//! ```
//!
//! An authenticator's id is its certificate's SHA-256 fingerprint (`auth::authenticator_id`).
//! The decision itself (third-party certificates refused, key roll, binding) is
//! [`super::renew`]'s, shared with EST.

use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{self, AuthError};
use super::current::{identity_of, session_of};
use super::error::{method_not_allowed, ApiError};
use super::request::{json_body, Peer, Request};
use crate::app::WorkerCtx;
use crate::clock::rfc3339;
use crate::http::Response;
use crate::model::{Activation, Authenticator, Identity};
use crate::store::{Command, Outcome};

/// The collection's path; everything below it is routed here.
pub const AUTHENTICATORS: &str = "/current-identity/authenticators";

/// Routes `path` (at or below [`AUTHENTICATORS`]).
pub(super) async fn route(
    w: &WorkerCtx,
    req: &Request,
    peer: &Peer,
    path: &str,
) -> Result<Response, ApiError> {
    let rest = path.strip_prefix(AUTHENTICATORS).unwrap_or_default();
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.head.method.as_str();
    match (segments.as_slice(), method) {
        ([], "GET" | "HEAD") => list(w, req).await,
        ([], _) => Err(method_not_allowed(req, "GET")),
        ([id], "GET" | "HEAD") => detail(w, req, id).await,
        ([_], _) => Err(method_not_allowed(req, "GET")),
        ([id, "extend"], "POST") => extend(w, req, peer, id).await,
        ([id, "extend-verify"], "POST") => extend_verify(w, req, id).await,
        ([_, "extend" | "extend-verify"], _) => Err(method_not_allowed(req, "POST")),
        _ => Err(ApiError::NotFound(format!(
            "no such resource: {}",
            req.head.path
        ))),
    }
}

/// `authenticatorDetail`, for the identity's active certificate.
pub fn authenticator_detail(identity: &Identity, a: &Authenticator) -> Value {
    let id = auth::authenticator_id(a);
    json!({
        "_links": { "self": { "href": format!(".{AUTHENTICATORS}/{id}") } },
        "id": id,
        "createdAt": rfc3339(a.created_at),
        "updatedAt": rfc3339(identity.updated_at),
        "tags": {},
        "method": "cert",
        "identityId": identity.id,
        "identity": {
            "_links": {},
            "entity": "identities",
            "id": identity.id,
            "name": identity.name,
        },
        "certPem": a.cert_pem,
        "fingerprint": a.fingerprint_sha1,
        "username": "",
        "isIssuedByNetwork": a.issued_by_network,
        "isExtendRequested": identity.lifecycle.extend_requested,
        "isKeyRollRequested": identity.lifecycle.key_roll_requested,
        "extendRequestedAt": null,
        "lastAuthResolvedToRoot": false,
        // enrollgate's own: when the certificate expires, so a client can plan its renewal.
        "expiresAt": rfc3339(a.not_after),
    })
}

/// The session's identity and its active certificate.
async fn session_identity(w: &WorkerCtx, req: &Request) -> Result<Identity, ApiError> {
    let (_, session) = session_of(w, req)?;
    identity_of(w, &session).await
}

fn no_authenticator(id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "this identity has no authenticator with id '{}'",
        id.chars().take(64).collect::<String>()
    ))
}

/// `GET /current-identity/authenticators`.
async fn list(w: &WorkerCtx, req: &Request) -> Result<Response, ApiError> {
    let identity = session_identity(w, req).await?;
    let data: Vec<Value> = identity
        .authenticator
        .iter()
        .map(|a| authenticator_detail(&identity, a))
        .collect();
    let total = data.len();
    Ok(Response::json(
        200,
        &json!({
            "data": data,
            "meta": { "pagination": { "limit": total, "offset": 0, "totalCount": total } },
        }),
    ))
}

/// `GET /current-identity/authenticators/{id}`.
async fn detail(w: &WorkerCtx, req: &Request, id: &str) -> Result<Response, ApiError> {
    let identity = session_identity(w, req).await?;
    let a = identity
        .authenticator
        .as_ref()
        .filter(|a| auth::authenticator_id(a) == id)
        .ok_or_else(|| no_authenticator(id))?;
    Ok(Response::data(authenticator_detail(&identity, a)))
}

/// `POST .../{id}/extend`: a renewal of certificate `id`, on a connection that presents it.
async fn extend(w: &WorkerCtx, req: &Request, peer: &Peer, id: &str) -> Result<Response, ApiError> {
    let (_, session) = session_of(w, req)?;
    let now = w.shared.clock.unix_now();
    // The connection's certificate decides, now (the session may be older than a
    // renewal that retired the certificate it was opened with).
    let identity = auth::authenticate_renewable(w, peer, now)
        .await
        .map_err(|e| match e {
            AuthError::Store(e) => e.into(),
            other => ApiError::Unauthorized(format!(
                "extend needs the connection to present the certificate being extended: {other}"
            )),
        })?;
    if identity.id != session.identity_id {
        return Err(ApiError::Unauthorized(
            "the certificate presented belongs to another identity than the session".into(),
        ));
    }
    let presented = peer.cert_sha256.as_deref().unwrap_or_default();
    if id != presented {
        return Err(match &identity.lifecycle.renewal {
            Some(r) if auth::authenticator_id(&r.authenticator) == id => ApiError::InvalidState(
                "this certificate is a pending renewal: verify it (extend-verify) first".into(),
            ),
            _ => no_authenticator(id),
        });
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Body {
        client_cert_csr: Option<String>,
    }
    let body: Body = json_body(req)?;
    let csr = body
        .client_cert_csr
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| {
            ApiError::CouldNotProcessCsr("the body has no 'clientCertCsr' field".into())
        })?;
    let csr_der = crate::pki::csr::decode_body(csr.as_bytes())?;
    // A renewal costs a signature, as an enrollment does: the same per-source limit.
    if let Some(addr) = peer.addr {
        w.shared.rates.source(addr.ip())?;
    }
    let renewed =
        super::renew::renew(w, &identity, presented, csr_der, Activation::Verify, now).await?;
    Ok(Response::data(json!({
        "clientCert": format!("{}{}", renewed.issued.pem, w.shared.issued_chain_tail_pem),
        "ca": w.shared.ca_bundle_pem,
    })))
}

/// `POST .../{id}/extend-verify`: activates the renewal of certificate `id` whose
/// certificate the body carries. A replay, a stale renewal (replaced by a newer extend)
/// or another identity's certificate: `INVALID_STATE`, nothing changed.
async fn extend_verify(w: &WorkerCtx, req: &Request, id: &str) -> Result<Response, ApiError> {
    let identity = session_identity(w, req).await?;
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Body {
        client_cert: Option<String>,
    }
    let body: Body = json_body(req)?;
    let pem = body.client_cert.unwrap_or_default();
    let der = ::pem::parse_many(pem.as_bytes())
        .ok()
        .and_then(|blocks| blocks.into_iter().find(|b| b.tag() == "CERTIFICATE"))
        .map(|b| b.into_contents())
        .ok_or_else(|| {
            ApiError::ExpectedPemCertificate(
                "'clientCert' must hold the PEM certificate extend answered".into(),
            )
        })?;
    let fp = crate::pki::fingerprint::sha256_hex(&der);
    let active = identity.authenticator.as_ref().map(auth::authenticator_id);
    if active.as_deref() != Some(id) {
        // Verified already: the certificate named is the active one now.
        if active.as_deref() == Some(fp.as_str()) {
            return Err(ApiError::InvalidState(
                "this renewal was verified already; its certificate is active".into(),
            ));
        }
        return Err(no_authenticator(id));
    }
    let now = w.shared.clock.unix_now();
    super::renew::activate(w, &identity.id, &fp, now).await?;
    Ok(Response::data(json!({})))
}

/// Management: `POST /authenticators/{id}/request-extend` and
/// `POST /identities/{id}/request-extend`, body `{"rollKeys": bool}` (optional): the
/// identity's sessions report `isCertExtendRequested` (and `isCertKeyRollRequested`) until
/// a renewal is verified.
pub(super) async fn request_extend(
    w: &WorkerCtx,
    req: &Request,
    identity: &Identity,
) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Body {
        #[serde(default)]
        roll_keys: bool,
    }
    let body: Body = json_body(req)?;
    if identity
        .authenticator
        .as_ref()
        .is_some_and(|a| !a.issued_by_network)
    {
        return Err(ApiError::NotRenewable(
            "this identity's certificate was issued by a third-party CA, which renews it".into(),
        ));
    }
    let now = w.shared.clock.unix_now();
    let outcome = w
        .shared
        .commit
        .submit(Command::RequestExtend {
            identity_id: identity.id.clone(),
            extend: true,
            key_roll: body.roll_keys,
            now,
        })
        .await?;
    let Outcome::Identity(updated) = outcome else {
        return Err(ApiError::Unhandled("unexpected store outcome".into()));
    };
    tracing::info!(identity_id = %updated.id, key_roll = body.roll_keys, "certificate renewal requested");
    Ok(Response::data(json!({})))
}

/// The identity whose active certificate is authenticator `id` (management).
pub(super) async fn identity_of_authenticator(
    w: &WorkerCtx,
    id: &str,
) -> Result<Identity, ApiError> {
    let not_found = || {
        ApiError::NotFound(format!(
            "no authenticator with id '{}'",
            id.chars().take(64).collect::<String>()
        ))
    };
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_found());
    }
    let fp = id.to_ascii_lowercase();
    let identity = w
        .shared
        .store
        .read(move |s| s.identity_by_fingerprint(&fp))
        .await?
        .ok_or_else(not_found)?;
    if identity
        .authenticator
        .as_ref()
        .is_some_and(|a| auth::authenticator_id(a) == id.to_ascii_lowercase())
    {
        Ok(identity)
    } else {
        Err(not_found())
    }
}
