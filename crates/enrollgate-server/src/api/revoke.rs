//! Management endpoints that take a certificate out of service, in the shapes of
//! OpenZiti's management API where it has them:
//!
//! ```text
//! POST   /identities/{id}/disable      {"durationMinutes"?: n} | {"durationSeconds"?: n}
//! POST   /identities/{id}/enable
//! POST   /identities/{id}/re-enroll    {"expiresAt"?}   -> 201 the new ott enrollment
//! POST   /authenticators/{id}/re-enroll                   (id: the certificate's SHA-256)
//! GET    /revocations                                     revoked serials, blocked certificates
//! DELETE /revocations/{id}                                lift a blocked certificate
//! ```
//!
//! Disabling, re-enrolling and deleting end the identity's API sessions in the write that
//! commits the change (`Lifecycle::sessions_after`, or no identity), on every node.

use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::records::{find_identity, new_enrollment, parse_expires_at};
use super::request::{json_body, Request};
use super::views;
use crate::app::WorkerCtx;
use crate::clock::{rfc3339, UnixTime};
use crate::http::Response;
use crate::model::{Identity, Method};
use crate::store::{Command, Outcome};

/// The longest suspension with an end (10 years); longer is until enabled.
pub const MAX_SUSPENSION_SECS: i64 = 10 * 365 * 86_400;

/// Adds OpenZiti's suspension fields to an identity view: `disabled` (holds now),
/// `disabledAt`, `disabledUntil` (null when none, or until enabled).
pub fn with_suspension(view: &mut Value, i: &Identity, now: UnixTime) {
    let s = i.lifecycle.disabled.filter(|s| s.holds_at(now));
    view["disabled"] = json!(s.is_some());
    view["disabledAt"] = json!(s.map(|s| rfc3339(s.since)));
    view["disabledUntil"] = json!(s.and_then(|s| s.until).map(rfc3339));
}

fn identity_view(w: &WorkerCtx, i: &Identity) -> Value {
    let mut v = views::identity(i, None);
    with_suspension(&mut v, i, w.shared.clock.unix_now());
    v
}

fn identity_of(outcome: Outcome) -> Result<Identity, ApiError> {
    match outcome {
        Outcome::Identity(i) => Ok(*i),
        _ => Err(ApiError::Unhandled("unexpected store outcome".into())),
    }
}

/// `POST /identities/{id}/disable`.
pub(super) async fn disable(w: &WorkerCtx, req: &Request, id: &str) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Body {
        duration_minutes: Option<i64>,
        duration_seconds: Option<i64>,
    }
    let body: Body = json_body(req)?;
    let secs = match (body.duration_minutes, body.duration_seconds) {
        (Some(_), Some(_)) => {
            return Err(ApiError::CouldNotParseBody(
                "give 'durationMinutes' or 'durationSeconds', not both".into(),
            ))
        }
        (Some(m), None) => Some(m.saturating_mul(60)),
        (None, s) => s,
    };
    // OpenZiti: a duration of 0 (or none) disables until enabled.
    let secs = match secs {
        Some(s) if !(0..=MAX_SUSPENSION_SECS).contains(&s) => {
            return Err(ApiError::CouldNotParseBody(format!(
                "the duration must be from 0 (until enabled) to {MAX_SUSPENSION_SECS} seconds"
            )))
        }
        Some(0) | None => None,
        Some(s) => Some(s),
    };
    find_identity(w, id).await?;
    let now = w.shared.clock.unix_now();
    let outcome = w
        .shared
        .commit
        .submit(Command::Disable {
            identity_id: id.to_string(),
            until: secs.map(|s| now + s),
            now,
        })
        .await?;
    // Its sessions ended in the same write (`sessions_after`), on every node.
    tracing::info!(identity_id = %id, until_secs = ?secs, "identity disabled");
    Ok(Response::data(identity_view(w, &identity_of(outcome)?)))
}

/// `POST /identities/{id}/enable`.
pub(super) async fn enable(w: &WorkerCtx, id: &str) -> Result<Response, ApiError> {
    find_identity(w, id).await?;
    let now = w.shared.clock.unix_now();
    let outcome = w
        .shared
        .commit
        .submit(Command::Enable {
            identity_id: id.to_string(),
            now,
        })
        .await?;
    tracing::info!(identity_id = %id, "identity enabled");
    Ok(Response::data(identity_view(w, &identity_of(outcome)?)))
}

/// `POST /identities/{id}/re-enroll`: the identity's certificates are unbound and revoked,
/// and a new `ott` enrollment is pending; answers that enrollment (with its JWT).
pub(super) async fn re_enroll(
    w: &WorkerCtx,
    req: &Request,
    id: &str,
) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Body {
        expires_at: Option<String>,
    }
    let body: Body = json_body(req)?;
    find_identity(w, id).await?;
    let now = w.shared.clock.unix_now();
    let expires_at = parse_expires_at(body.expires_at.as_deref(), now)?;
    let e = new_enrollment(w, id, Method::Ott, None, now, expires_at)?;
    w.shared
        .commit
        .submit(Command::ReEnroll {
            identity_id: id.to_string(),
            enrollment: e.clone(),
            now,
        })
        .await?;
    tracing::info!(identity_id = %id, "identity re-enrolled: certificates revoked, new token issued; its sessions ended");
    Ok(Response::json(
        201,
        &json!({ "data": views::enrollment(&e), "meta": {} }),
    ))
}

/// `POST /authenticators/{id}/re-enroll`, OpenZiti's spelling: the authenticator id is
/// the certificate's SHA-256 fingerprint (`auth::authenticator_id`).
pub(super) async fn re_enroll_authenticator(
    w: &WorkerCtx,
    req: &Request,
    authenticator_id: &str,
) -> Result<Response, ApiError> {
    let well_formed = authenticator_id.len() == 64
        && authenticator_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let identity = match well_formed {
        true => {
            let fp = authenticator_id.to_string();
            w.shared
                .store
                .read(move |s| s.identity_by_fingerprint(&fp))
                .await?
        }
        false => None,
    }
    .filter(|i| {
        i.authenticator
            .as_ref()
            .is_some_and(|a| a.fingerprint_sha256 == authenticator_id)
    })
    .ok_or_else(|| {
        ApiError::NotFound(format!(
            "no authenticator with id '{}'",
            authenticator_id.chars().take(64).collect::<String>()
        ))
    })?;
    re_enroll(w, req, &identity.id).await
}

/// `GET /revocations`: revoked serials (on the CRL until they expire) and blocked
/// third-party certificates.
pub(super) async fn list(w: &WorkerCtx) -> Result<Response, ApiError> {
    let now = w.shared.clock.unix_now();
    let mut data = Vec::new();
    let (revoked, blocked) = w
        .shared
        .store
        .read(|s| Ok((s.revoked()?, s.blocked()?)))
        .await?;
    for r in revoked {
        data.push(json!({
            "id": r.serial,
            "kind": "serial",
            "serial": r.serial,
            "fingerprint": r.fingerprint_sha256,
            "identityId": r.identity_id,
            "reason": r.reason.as_str(),
            "revokedAt": rfc3339(r.revoked_at),
            "expiresAt": rfc3339(r.not_after),
            "onCrl": r.not_after > now,
            "liftable": false,
        }));
    }
    for b in blocked {
        data.push(json!({
            "id": b.tbs_sha256,
            "kind": "certificate",
            "fingerprint": b.fingerprint_sha256,
            "identityId": b.identity_id,
            "identityName": b.identity_name,
            "caId": b.ca_id,
            "reason": b.reason.as_str(),
            "revokedAt": rfc3339(b.revoked_at),
            "expiresAt": rfc3339(b.not_after),
            "onCrl": false,
            "liftable": true,
        }));
    }
    let total = data.len();
    Ok(Response::json(
        200,
        &json!({ "data": data, "meta": { "pagination": { "limit": total, "offset": 0, "totalCount": total } } }),
    ))
}

/// `DELETE /revocations/{id}`: a blocked third-party certificate may bind again.
pub(super) async fn lift(w: &WorkerCtx, id: &str) -> Result<Response, ApiError> {
    let hex = id.len() <= 128 && !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex {
        return Err(ApiError::NotFound(format!(
            "no revocation with id '{}'",
            id.chars().take(64).collect::<String>()
        )));
    }
    let id = id.to_ascii_lowercase();
    w.shared
        .commit
        .submit(Command::Lift {
            tbs_sha256: id.clone(),
        })
        .await?;
    tracing::info!(certificate = %id, "revocation lifted: the certificate may enroll again");
    Ok(Response::data(json!({})))
}
