//! The records the management routes act on: finding an identity or a pending enrollment
//! by id, making a new enrollment (its token derived, its JWT signed), and reading an
//! `expiresAt`. Shared by `management` and `revoke` (re-enroll), so neither imports the
//! other.

use super::error::ApiError;
use crate::app::WorkerCtx;
use crate::clock::UnixTime;
use crate::model::{Enrollment, Identity, Method};
use crate::store::{Store, StoreError};

/// The record `what` (an identity, a pending enrollment, a CA) with id `id`, read by
/// `read` off the worker, or `404 NOT_FOUND` saying which; an id that cannot be one is not
/// looked up.
pub(super) async fn find_by_id<T: Send + 'static>(
    w: &WorkerCtx,
    id: &str,
    what: &str,
    read: fn(&Store, &str) -> Result<Option<T>, StoreError>,
) -> Result<T, ApiError> {
    let not_found = || {
        ApiError::NotFound(format!(
            "no {what} with id '{}'",
            id.chars().take(64).collect::<String>()
        ))
    };
    if !crate::ids::is_well_formed(id) {
        return Err(not_found());
    }
    let owned = id.to_string();
    w.shared
        .store
        .read(move |s| read(s, &owned))
        .await?
        .ok_or_else(not_found)
}

/// The identity with id `id`, or `404 NOT_FOUND`.
pub(super) async fn find_identity(w: &WorkerCtx, id: &str) -> Result<Identity, ApiError> {
    find_by_id(w, id, "identity", Store::identity).await
}

/// The pending enrollment with id `id`, or `404 NOT_FOUND`.
pub(super) async fn find_enrollment(w: &WorkerCtx, id: &str) -> Result<Enrollment, ApiError> {
    find_by_id(w, id, "pending enrollment", Store::enrollment).await
}

/// Builds a new one-time enrollment (`ott`, or `ottca` bound to `ca_id`).
pub(super) fn new_enrollment(
    w: &WorkerCtx,
    identity_id: &str,
    method: Method,
    ca_id: Option<String>,
    now: UnixTime,
    expires_at: Option<UnixTime>,
) -> Result<Enrollment, ApiError> {
    let rand_err = |e: crate::ids::RandomError| ApiError::Unhandled(e.to_string());
    // The store keeps only the token's hash; the key derives it again for a download.
    let id = crate::ids::new_id().map_err(rand_err)?;
    let token = w.shared.tokens.derive(&id);
    let ttl = i64::try_from(w.shared.config.token_ttl.as_secs()).unwrap_or(i64::MAX);
    let expires_at = expires_at.unwrap_or_else(|| now.saturating_add(ttl));
    let jwt = w
        .jwt
        .sign(identity_id, &token, method, Some(expires_at))
        .map_err(|e| ApiError::Unhandled(e.to_string()))?;
    Ok(Enrollment {
        id,
        token_sha256: vec![crate::token::token_sha256(&token)],
        token,
        method,
        identity_id: identity_id.to_string(),
        ca_id,
        created_at: now,
        expires_at,
        jwt,
    })
}

/// An `expiresAt` of a request body (RFC 3339, in the future), if there is one.
pub(crate) fn parse_expires_at(
    v: Option<&str>,
    now: UnixTime,
) -> Result<Option<UnixTime>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    let t = humantime::parse_rfc3339_weak(v)
        .map(crate::clock::to_unix)
        .map_err(|_| {
            ApiError::CouldNotParseBody(format!("'expiresAt' is not an RFC 3339 time: '{v}'"))
        })?;
    if t <= now {
        return Err(ApiError::CouldNotParseBody(
            "'expiresAt' must be in the future".into(),
        ));
    }
    Ok(Some(t))
}
