//! What the web console (`/console/`, see `crate::console`) needs from the management API:
//! who may call it (an admin certificate, or a `zt-session` header of an admin's session),
//! the refusal of cross-site requests, console sign-in, the QR code of a JWT and the live
//! metrics summary.
//!
//! ```text
//! every management request --> refuse_cross_site --> open routes (sign-in)
//!                                                 \-> authorize (cert | zt-session) --> routes
//! POST console/login-links      (admin)  -> {code, expiresAt, path}   one-time, hashed, 5 min
//! POST console/sessions {code}  (anyone) -> zt-session of the admin who minted the code
//! POST console/sessions/cert    (admin certificate in the TLS handshake) -> zt-session
//! DELETE console/sessions/current (zt-session) -> the session is over
//! GET  console/live             (admin)  -> metrics summary (live.rs)
//! ```
//!
//! A browser attaches a client certificate to every request to this host, whichever site
//! made it, and sends a body labelled `text/plain` cross-site without asking first: so a
//! management request another site caused (`Sec-Fetch-Site: cross-site`/`same-site`, or an
//! `Origin` other than this host) is refused before anything else. The console keeps its
//! session token in page memory and sends it as a header, which no other site can make the
//! browser add. Clients that send neither header (the CLI, curl, SDKs) are unaffected.

pub mod links;
pub mod live;
pub mod qr;

use serde::Deserialize;
use serde_json::json;

use super::auth::{self, Opening};
use super::error::{method_not_allowed, ApiError};
use super::request::{json_body, Peer, Request};
use crate::app::WorkerCtx;
use crate::http::Response;
use crate::model::Identity;

/// Refuses a request that a browser made on behalf of another site (`403 CROSS_SITE_REQUEST`).
pub fn refuse_cross_site(req: &Request) -> Result<(), ApiError> {
    let clip = |s: &str| s.chars().take(100).collect::<String>();
    if let Some(site) = req.head.header("sec-fetch-site") {
        if site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site") {
            return Err(ApiError::CrossSiteRequest(format!(
                "the management API refuses requests made by another site (Sec-Fetch-Site: {})",
                clip(site)
            )));
        }
    }
    if let Some(origin) = req.head.header("origin") {
        let host = req.head.header("host").unwrap_or_default();
        if !same_origin(origin, host) {
            return Err(ApiError::CrossSiteRequest(format!(
                "the management API refuses requests from another origin ('{}' is not https://{})",
                clip(origin),
                clip(host)
            )));
        }
    }
    Ok(())
}

/// Whether `origin` (`https://host[:port]`) names the host and port of `host` (the `Host`
/// header). Default ports are made explicit on both sides; hosts compare case-insensitively.
fn same_origin(origin: &str, host: &str) -> bool {
    let with_port = |h: &str| -> String {
        let has_port = match h.rfind(']') {
            Some(end) => h[end..].contains(':'),
            None => h.contains(':'),
        };
        if has_port {
            h.to_ascii_lowercase()
        } else {
            format!("{}:443", h.to_ascii_lowercase())
        }
    };
    match origin.strip_prefix("https://") {
        Some(o) if !o.is_empty() && !host.is_empty() && !o.contains('/') => {
            with_port(o) == with_port(host)
        }
        _ => false,
    }
}

/// The admin a management request comes from: the `zt-session` header's, when it has one
/// (its identity is read again: it must still exist, be an admin, and hold the certificate
/// the session was opened with, within its validity, and not be disabled), else the
/// client certificate's.
pub async fn authorize(w: &WorkerCtx, req: &Request, peer: &Peer) -> Result<Identity, ApiError> {
    let Some(token) = req.head.header("zt-session") else {
        return auth::require_admin(w, peer).await;
    };
    let now = w.shared.clock.unix_now();
    let refused = |why: &str| {
        ApiError::Unauthorized(format!(
            "the management API needs an admin's certificate or session: {why}"
        ))
    };
    let session = w
        .shared
        .sessions
        .get(token, now)
        .ok_or_else(|| refused("the zt-session is unknown or expired; sign in again"))?;
    let (id, sid) = (session.identity_id.clone(), session.id.clone());
    let (identity, logged_out) = w
        .shared
        .store
        .read(move |s| s.session_state(&id, &sid))
        .await?;
    let identity = identity.ok_or_else(|| refused("the session's identity no longer exists"))?;
    if crate::token::session::ended(&session, &identity, logged_out) {
        return Err(refused("the session has ended; sign in again"));
    }
    if !identity.is_admin {
        return Err(refused("the session's identity is not an admin"));
    }
    if identity.is_disabled_at(now) {
        return Err(ApiError::IdentityDisabled(format!(
            "identity '{}' is disabled",
            identity.name
        )));
    }
    let holds = identity.authenticator.as_ref().is_some_and(|a| {
        auth::authenticator_id(a) == session.authenticator_id
            && now >= a.not_before
            && now < a.not_after
    });
    if !holds {
        return Err(refused(
            "the certificate the session was opened with no longer authenticates",
        ));
    }
    Ok(identity)
}

/// The routes that need no admin yet (signing in); `None` for every other path.
pub(super) async fn open_route(
    w: &WorkerCtx,
    req: &Request,
    peer: &Peer,
    segments: &[&str],
) -> Option<Result<Response, ApiError>> {
    let m = req.head.method.as_str();
    Some(match (segments, m) {
        (["console", "sessions"], "POST") => sign_in_with_code(w, req, peer).await,
        (["console", "sessions"], _) => Err(method_not_allowed(req, "POST")),
        (["console", "sessions", "cert"], "POST") => sign_in_with_cert(w, req, peer).await,
        (["console", "sessions", "cert"], _) => Err(method_not_allowed(req, "POST")),
        (["console", "sessions", "current"], "DELETE") => sign_out(w, req).await,
        (["console", "sessions", "current"], _) => Err(method_not_allowed(req, "DELETE")),
        _ => return None,
    })
}

/// The console's admin-only routes (`segments` after `console`).
pub(super) fn admin_route(
    w: &WorkerCtx,
    req: &Request,
    admin: &Identity,
    segments: &[&str],
) -> Result<Response, ApiError> {
    match (segments, req.head.method.as_str()) {
        (["login-links"], "POST") => mint_link(w, req, admin),
        (["login-links"], _) => Err(method_not_allowed(req, "POST")),
        (["live"], "GET") => Ok(Response::data(live::current())),
        (["live"], _) => Err(method_not_allowed(req, "GET")),
        _ => Err(ApiError::NotFound(format!(
            "no such resource: {}",
            req.head.path
        ))),
    }
}

/// `GET .../enrollments/{id}/qr.svg`: the JWT as a QR code.
pub(super) fn qr_response(jwt: &str) -> Result<Response, ApiError> {
    let svg = qr::svg(jwt).map_err(|e| ApiError::Unhandled(e.to_string()))?;
    Ok(Response::bytes(200, "image/svg+xml", svg.into_bytes())
        .with_header("X-Content-Type-Options", "nosniff".into())
        .with_header("Content-Security-Policy", "default-src 'none'".into())
        .with_header("Cache-Control", "no-store".into()))
}

fn mint_link(w: &WorkerCtx, req: &Request, admin: &Identity) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Body {
        ttl_seconds: Option<i64>,
    }
    let body: Body = json_body(req)?;
    let ttl = body.ttl_seconds.unwrap_or(links::DEFAULT_TTL_SECS);
    if !(1..=links::MAX_TTL_SECS).contains(&ttl) {
        return Err(ApiError::CouldNotParseBody(format!(
            "'ttlSeconds' must be from 1 to {}",
            links::MAX_TTL_SECS
        )));
    }
    let authenticator_id = admin
        .authenticator
        .as_ref()
        .map(auth::authenticator_id)
        .unwrap_or_default();
    let now = w.shared.clock.unix_now();
    let (code, link) = links::global()
        .mint(&admin.id, &authenticator_id, ttl, now)
        .map_err(|e| ApiError::Unhandled(e.to_string()))?;
    tracing::info!(identity_id = %admin.id, ttl_secs = ttl, "console login link issued");
    Ok(Response::json(
        201,
        &json!({ "data": {
            "code": code,
            "path": format!("/console/#login={code}"),
            "expiresAt": crate::clock::rfc3339(link.expires_at),
        }, "meta": {} }),
    ))
}

async fn sign_in_with_code(
    w: &WorkerCtx,
    req: &Request,
    peer: &Peer,
) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    struct Body {
        code: Option<String>,
    }
    let body: Body = json_body(req)?;
    let code = body
        .code
        .ok_or_else(|| ApiError::CouldNotParseBody("the body has no 'code'".into()))?;
    let now = w.shared.clock.unix_now();
    let link = links::global()
        .redeem(&code, now)
        .map_err(|e| ApiError::InvalidAuth(e.to_string()))?;
    let refused = || {
        ApiError::InvalidAuth(
            "the admin who asked for this login link is no longer an admin with that certificate"
                .into(),
        )
    };
    let id = link.identity_id.clone();
    let identity = w
        .shared
        .store
        .read(move |s| s.identity(&id))
        .await?
        .ok_or_else(refused)?;
    let holds = identity
        .authenticator
        .as_ref()
        .is_some_and(|a| auth::authenticator_id(a) == link.authenticator_id);
    if !identity.is_admin || !holds {
        return Err(refused());
    }
    if identity.is_disabled_at(now) {
        return Err(ApiError::IdentityDisabled(format!(
            "identity '{}' is disabled",
            identity.name
        )));
    }
    open_session(w, peer, &identity, &link.authenticator_id, "login link")
}

async fn sign_in_with_cert(
    w: &WorkerCtx,
    req: &Request,
    peer: &Peer,
) -> Result<Response, ApiError> {
    // The body carries nothing, but must be JSON if present: a cross-site form cannot
    // send that without a preflight (and refuse_cross_site has run).
    let _: serde_json::Value = json_body(req)?;
    let identity = auth::require_admin(w, peer).await?;
    let authenticator_id = identity
        .authenticator
        .as_ref()
        .map(auth::authenticator_id)
        .unwrap_or_default();
    open_session(w, peer, &identity, &authenticator_id, "certificate")
}

fn open_session(
    w: &WorkerCtx,
    peer: &Peer,
    identity: &Identity,
    authenticator_id: &str,
    how: &'static str,
) -> Result<Response, ApiError> {
    let now = w.shared.clock.unix_now();
    let (token, session) = w.shared.sessions.create(
        Opening {
            identity_id: &identity.id,
            authenticator_id,
            ip_address: peer.addr.map(|a| a.ip()),
        },
        now,
    )?;
    tracing::info!(identity_id = %identity.id, session_id = %session.id, how, "console session opened");
    Ok(Response::json(
        201,
        &json!({ "data": {
            "token": token,
            "expiresAt": crate::clock::rfc3339(session.expires_at),
            "identity": { "id": identity.id, "name": identity.name },
        }, "meta": {} }),
    )
    .with_header("Cache-Control", "no-store".into()))
}

async fn sign_out(w: &WorkerCtx, req: &Request) -> Result<Response, ApiError> {
    let unknown = || ApiError::Unauthorized("the zt-session is unknown or expired".into());
    let token = req
        .head
        .header("zt-session")
        .ok_or_else(|| ApiError::Unauthorized("a zt-session header is required".into()))?;
    let session = w
        .shared
        .sessions
        .get(token, w.shared.clock.unix_now())
        .ok_or_else(unknown)?;
    super::current::end_session(w, &session)
        .await
        .map_err(|e| match e {
            ApiError::NotFound(_) => unknown(),
            other => other,
        })?;
    Ok(Response::data(json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert!(same_origin("https://127.0.0.1:8443", "127.0.0.1:8443"));
        assert!(same_origin("https://GW.example", "gw.example:443"));
        assert!(same_origin("https://[::1]:8443", "[::1]:8443"));
        assert!(!same_origin("https://[::1]", "[::1]:8443"));
        assert!(!same_origin("http://127.0.0.1:8443", "127.0.0.1:8443"));
        assert!(!same_origin("https://evil.example", "127.0.0.1:8443"));
        assert!(!same_origin("null", "127.0.0.1:8443"));
        assert!(!same_origin("https://127.0.0.1:8443", ""));
        assert!(!same_origin("https://127.0.0.1:8443/x", "127.0.0.1:8443"));
    }
}
