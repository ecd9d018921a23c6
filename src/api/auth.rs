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
/// Live sessions one identity may hold; a new one replaces its oldest, so no identity can
/// fill the table and lock the others out.
pub const MAX_SESSIONS_PER_IDENTITY: usize = 16;

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
    #[error("this certificate does not authenticate through a third-party CA: {0}")]
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
        cas.verify(
            &peer.chain,
            now,
            "is not verified or does not allow authentication",
            w.cas.memo(),
            |ca| ca.is_verified && ca.is_auth_enabled,
        )
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
#[derive(Default)]
pub struct Sessions {
    map: DashMap<String, Session>,
    by_identity: DashMap<String, Vec<String>>,
}

impl std::fmt::Debug for Sessions {
    // Session tokens are bearer secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("live", &self.map.len())
            .finish()
    }
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
        {
            let mut mine = self.by_identity.entry(identity_id.to_string()).or_default();
            mine.retain(|t| self.map.get(t).is_some_and(|s| s.expires_at > now));
            while mine.len() >= MAX_SESSIONS_PER_IDENTITY {
                let oldest = mine.remove(0);
                self.map.remove(&oldest);
            }
            mine.push(token.clone());
        }
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

    #[test]
    fn one_identity_cannot_hoard_sessions() {
        let s = Sessions::default();
        let tokens: Vec<String> = (0..40)
            .map(|_| s.create("greedy", 100).unwrap().0)
            .collect();
        let live = tokens.iter().filter(|t| s.get(t, 101).is_some()).count();
        assert_eq!(live, MAX_SESSIONS_PER_IDENTITY);
        assert!(
            s.get(tokens.last().unwrap(), 101).is_some(),
            "the newest is kept"
        );
        assert!(s.get(&tokens[0], 101).is_none(), "the oldest went");
        assert!(s.create("other", 100).is_ok());
    }
}
