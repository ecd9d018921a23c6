//! Who a client is: the identity its certificate is bound to, if that binding still
//! authenticates now, and the API sessions `POST /authenticate?method=cert` hands out.
//!
//! A certificate authenticates when (1) the client proved it holds the key (TLS), (2) its
//! fingerprint is bound to an identity (I1), (3) it is within its validity, and (4) for a
//! certificate from a third-party CA, that CA still exists, is verified, has
//! `isAuthEnabled`, and the chain the client sent verifies against it now.

use dashmap::DashMap;

use super::{ApiError, Peer};
use crate::app::WorkerCtx;
use crate::clock::UnixTime;
use crate::model::Identity;

/// Lifetime of an API session.
pub const SESSION_TTL_SECS: i64 = 30 * 60;
/// Sessions kept at most; expired ones are pruned when this is reached.
pub const MAX_SESSIONS: usize = 100_000;

/// Why a certificate does not authenticate (`401`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No client certificate.
    #[error("no client certificate was presented")]
    NoCertificate,
    /// Not bound to an identity.
    #[error("this certificate is not bound to any identity")]
    Unbound,
    /// Outside its validity.
    #[error("this certificate is expired or not yet valid")]
    OutsideValidity,
    /// Its CA no longer allows authentication, or the chain no longer verifies.
    #[error("this certificate's CA does not allow authentication: {0}")]
    CaRefused(String),
    /// The store failed.
    #[error("{0}")]
    Store(String),
}

/// The identity `peer`'s certificate authenticates as at `now`.
pub fn authenticate(w: &WorkerCtx, peer: &Peer, now: UnixTime) -> Result<Identity, AuthError> {
    let fp = peer
        .cert_sha256
        .as_deref()
        .ok_or(AuthError::NoCertificate)?;
    let identity = w
        .shared
        .store
        .identity_by_fingerprint(fp)
        .map_err(|e| AuthError::Store(e.to_string()))?
        .ok_or(AuthError::Unbound)?;
    let auth = identity.authenticator.as_ref().ok_or(AuthError::Unbound)?;
    if now < auth.not_before || now >= auth.not_after {
        return Err(AuthError::OutsideValidity);
    }
    if !auth.issued_by_network {
        let cas = w.cas.current(&w.shared.cas);
        cas.verify(&peer.chain, now, "authentication", |ca| {
            ca.is_verified && ca.is_auth_enabled
        })
        .map_err(|e| AuthError::CaRefused(e.to_string()))?;
    }
    Ok(identity)
}

/// The identity of an admin, or `401 UNAUTHORIZED`.
pub fn require_admin(w: &WorkerCtx, peer: &Peer) -> Result<Identity, ApiError> {
    let now = w.shared.clock.unix_now();
    let why = |m: String| {
        ApiError::Unauthorized(format!(
            "the management API needs the client certificate of an admin identity: {m}"
        ))
    };
    match authenticate(w, peer, now) {
        Ok(identity) if identity.is_admin => Ok(identity),
        Ok(_) => Err(why("this identity is not an admin".into())),
        Err(AuthError::Store(e)) => Err(ApiError::Unhandled(e)),
        Err(e) => Err(why(e.to_string())),
    }
}

/// One API session.
#[derive(Debug, Clone)]
pub struct Session {
    /// The identity.
    pub identity_id: String,
    /// Expiry.
    pub expires_at: UnixTime,
}

/// API sessions, in memory (a restart ends them; clients authenticate again).
#[derive(Debug, Default)]
pub struct Sessions {
    map: DashMap<String, Session>,
}

impl Sessions {
    /// A new session for `identity_id`; returns its token and expiry.
    pub fn create(&self, identity_id: &str, now: UnixTime) -> Result<(String, UnixTime), ApiError> {
        if self.map.len() >= MAX_SESSIONS {
            self.map.retain(|_, s| s.expires_at > now);
            if self.map.len() >= MAX_SESSIONS {
                return Err(ApiError::RateLimited {
                    message: "too many open sessions".into(),
                    retry_after: 60,
                });
            }
        }
        let token = crate::ids::new_token().map_err(|e| ApiError::Unhandled(e.to_string()))?;
        let expires_at = now + SESSION_TTL_SECS;
        self.map.insert(
            token.clone(),
            Session {
                identity_id: identity_id.to_string(),
                expires_at,
            },
        );
        Ok((token, expires_at))
    }

    /// The live session with this token.
    pub fn get(&self, token: &str, now: UnixTime) -> Option<Session> {
        let s = self.map.get(token)?.clone();
        if s.expires_at <= now {
            self.map.remove(token);
            return None;
        }
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire() {
        let s = Sessions::default();
        let (t, exp) = s.create("i1", 100).unwrap();
        assert_eq!(exp, 100 + SESSION_TTL_SECS);
        assert_eq!(s.get(&t, 101).unwrap().identity_id, "i1");
        assert!(s.get(&t, exp).is_none());
        assert!(s.get("nope", 101).is_none());
    }
}
