//! The caller's own API session and identity, in the shapes of OpenZiti's edge client API
//! (`currentApiSessionDetail`, `identityDetail`):
//!
//! ```text
//! POST /authenticate?method=cert   (client certificate)  -> session + zt-session header
//! GET  /current-api-session        (zt-session)          -> the same session
//! DELETE /current-api-session      (zt-session)          -> {} ; the token is dead
//! GET  /current-identity           (zt-session)          -> the identity
//! ```
//!
//! Every field the spec requires is present. Fields that name controller features this
//! gateway does not have (MFA, edge routers, hosting costs, posture, config types) carry
//! the spec's neutral values: `false`, an empty list, an empty object (docs/openziti-api.md).

use serde_json::{json, Value};

use super::auth::{self, Session, SESSION_TTL_SECS};
use super::error::ApiError;
use super::request::{Peer, Request};
use crate::app::WorkerCtx;
use crate::clock::rfc3339;
use crate::http::Response;
use crate::model::Identity;

/// `POST /authenticate?method=cert`: an API session for the identity the certificate is
/// bound to. A first-use renewal's certificate is activated by it.
pub(super) async fn authenticate_cert(w: &WorkerCtx, peer: &Peer) -> Result<Response, ApiError> {
    let now = w.shared.clock.unix_now();
    // First use of an EST renewal activates it; an expired certificate within
    // renewal.expired_grace still opens a session, to renew.
    let identity = match auth::authenticate_now(w, peer, now).await? {
        Err(auth::AuthError::OutsideValidity) => auth::authenticate_renewable(w, peer, now).await,
        other => other,
    }
    .map_err(|e| match e {
        auth::AuthError::Store(e) => e.into(),
        e @ auth::AuthError::Disabled(_) => ApiError::IdentityDisabled(e.to_string()),
        other => ApiError::InvalidAuth(other.to_string()),
    })?;
    let authenticator_id = identity
        .authenticator
        .as_ref()
        .map(auth::authenticator_id)
        .unwrap_or_default();
    let (token, session) = w.shared.sessions.create(
        auth::Opening {
            identity_id: &identity.id,
            authenticator_id: &authenticator_id,
            ip_address: peer.addr.map(|a| a.ip()),
        },
        now,
    )?;
    Ok(
        Response::data(session_detail(&session, &token, &identity))
            .with_header("zt-session", token),
    )
}

/// `GET /current-api-session`.
pub(super) async fn current_api_session(
    w: &WorkerCtx,
    req: &Request,
) -> Result<Response, ApiError> {
    let (token, session) = session_of(w, req)?;
    let identity = identity_of(w, &session).await?;
    Ok(Response::data(session_detail(&session, token, &identity)))
}

/// `DELETE /current-api-session`: logout. The token authenticates nothing afterwards, on
/// any node.
pub(super) async fn logout(w: &WorkerCtx, req: &Request) -> Result<Response, ApiError> {
    let (_, session) = session_of(w, req)?;
    identity_of(w, &session).await?;
    end_session(w, &session).await.map_err(|e| match e {
        // Two logouts racing: the loser finds no session, as if it came second.
        ApiError::NotFound(_) => no_session(),
        other => other,
    })?;
    Ok(Response::data(json!({})))
}

/// Ends `session` on every node (a logout), through the store.
pub(super) async fn end_session(w: &WorkerCtx, session: &Session) -> Result<(), ApiError> {
    w.shared
        .commit
        .submit(crate::store::Command::EndSession {
            session_id: session.id.clone(),
            expires_at: session.expires_at,
            now: w.shared.clock.unix_now(),
        })
        .await?;
    Ok(())
}

/// `GET /current-identity`.
pub(super) async fn current_identity(w: &WorkerCtx, req: &Request) -> Result<Response, ApiError> {
    let (_, session) = session_of(w, req)?;
    let identity = identity_of(w, &session).await?;
    Ok(Response::data(identity_detail(&identity)))
}

fn no_session() -> ApiError {
    ApiError::Unauthorized("a valid zt-session header is required".into())
}

/// The live session named by the `zt-session` header, and its token.
pub(super) fn session_of<'r>(
    w: &WorkerCtx,
    req: &'r Request,
) -> Result<(&'r str, Session), ApiError> {
    let now = w.shared.clock.unix_now();
    let token = req.head.header("zt-session").ok_or_else(no_session)?;
    let session = w.shared.sessions.get(token, now).ok_or_else(no_session)?;
    Ok((token, session))
}

pub(super) async fn identity_of(w: &WorkerCtx, session: &Session) -> Result<Identity, ApiError> {
    let (id, sid) = (session.identity_id.clone(), session.id.clone());
    let (identity, logged_out) = w
        .shared
        .store
        .read(move |s| s.session_state(&id, &sid))
        .await?;
    let identity = identity
        .ok_or_else(|| ApiError::Unauthorized("the session's identity no longer exists".into()))?;
    if crate::token::session::ended(session, &identity, logged_out) {
        return Err(no_session());
    }
    // Disabling ends the identity's sessions; this closes the window of a session opened
    // while the suspension was being committed.
    if identity.is_disabled_at(w.shared.clock.unix_now()) {
        return Err(ApiError::Unauthorized(
            "the session's identity is disabled".into(),
        ));
    }
    Ok(identity)
}

fn link(href: &str) -> Value {
    json!({ "href": href })
}

/// `currentApiSessionDetail`.
pub fn session_detail(s: &Session, token: &str, identity: &Identity) -> Value {
    let created = rfc3339(s.created_at);
    json!({
        "_links": {
            "self": link("./current-api-session"),
            "current-identity": link("./current-identity"),
        },
        "id": s.id,
        "createdAt": created,
        // A session here never changes after it is opened.
        "updatedAt": created,
        "cachedUpdatedAt": created,
        "lastActivityAt": created,
        "cachedLastActivityAt": created,
        "tags": {},
        "token": token,
        "expiresAt": rfc3339(s.expires_at),
        "expirationSeconds": SESSION_TTL_SECS,
        "identity": {
            "_links": {},
            "entity": "identities",
            "id": identity.id,
            "name": identity.name,
        },
        "identityId": identity.id,
        "authenticatorId": s.authenticator_id,
        "ipAddress": s.ip_address,
        "authQueries": [],
        "configTypes": [],
        "isMfaRequired": false,
        "isMfaComplete": false,
        // Only the certificates enrollgate issued renew here (a third-party CA renews its own).
        "isCertExtendable": identity.authenticator.as_ref().is_some_and(|a| a.issued_by_network),
        "isCertExtendRequested": identity.lifecycle.extend_requested,
        "isCertKeyRollRequested": identity.lifecycle.key_roll_requested,
        "improperClientCertChain": false,
    })
}

/// `identityDetail`.
pub fn identity_detail(i: &Identity) -> Value {
    let kind = i.kind.as_str();
    let authenticators = match &i.authenticator {
        Some(a) => json!({
            "cert": { "id": auth::authenticator_id(a), "fingerprint": a.fingerprint_sha1 }
        }),
        None => json!({}),
    };
    json!({
        "_links": { "self": link("./current-identity") },
        "id": i.id,
        "name": i.name,
        "createdAt": rfc3339(i.created_at),
        "updatedAt": rfc3339(i.updated_at),
        "tags": {},
        "appData": {},
        "type": {
            "_links": {},
            "entity": "identity-types",
            "id": kind,
            "name": kind,
        },
        "typeId": kind,
        "isAdmin": i.is_admin,
        "isDefaultAdmin": false,
        "roleAttributes": i.role_attributes,
        "authenticators": authenticators,
        // The identity holds a session (this request came with it), so it has enrolled:
        // its enrollment was consumed then.
        "enrollment": {},
        "authPolicy": {
            "_links": {},
            "entity": "auth-policies",
            "id": "default",
            "name": "Default",
        },
        "authPolicyId": "default",
        "disabled": false,
        "externalId": null,
        "hasApiSession": true,
        "hasEdgeRouterConnection": false,
        "edgeRouterConnectionStatus": "offline",
        "isMfaEnabled": false,
        "permissions": [],
        "envInfo": {},
        "sdkInfo": {},
        "defaultHostingCost": 0,
        "defaultHostingPrecedence": "default",
        "serviceHostingCosts": {},
        "serviceHostingPrecedences": {},
    })
}
