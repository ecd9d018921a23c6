//! Who a client is: the identity its certificate is bound to, if that binding still
//! authenticates now, and the API sessions `POST /authenticate?method=cert` hands out.
//!
//! A certificate authenticates when (1) the client proved it holds the key (TLS), (2) its
//! fingerprint is bound to an identity (I1), (3) it is within its validity, and (4) for a
//! certificate from a third-party CA, that CA still exists, is verified, has
//! `isAuthEnabled`, and the chain the client sent verifies against it now.
//!
//! A renewal EST issued (`Activation::FirstUse`) becomes the active certificate on its
//! first use: [`authenticate_now`] activates it, then authenticates with it. Until then the
//! old certificate authenticates, for at most `enrollment.reenroll_grace` after the renewal
//! was issued (a device that lost the answer re-enrolls within it; a stolen old certificate
//! does not live on beside the new one).

use dashmap::DashMap;

use super::{ApiError, Peer};
use crate::app::WorkerCtx;
use crate::clock::UnixTime;
use crate::model::{Activation, Identity};

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
    /// A renewal's certificate, not activated yet (`extend-verify` activates it).
    #[error("this certificate renews this identity's and is not active yet: verify it first")]
    NotYetActive,
    /// A renewal's certificate that its first use activates (EST): [`authenticate_now`]
    /// does, and authenticates with it. Holds the identity's id.
    #[error("this certificate renews this identity's and becomes active by its first use")]
    FirstUse(String),
    /// The active certificate of an identity whose EST renewal has waited for its first
    /// use longer than `enrollment.reenroll_grace`: only the new certificate authenticates.
    #[error("this certificate was renewed and the grace for using it has passed: use the renewed certificate")]
    Superseded,
    /// The bootstrap certificate an identity enrolled with by EST: it asks EST for a new
    /// certificate, nothing else.
    #[error("this certificate bootstrapped its identity by EST and authenticates only EST simpleenroll; use the certificate EST issued")]
    Bootstrap,
    /// Outside its validity.
    #[error("this certificate is expired or not yet valid")]
    OutsideValidity,
    /// An admin disabled the identity (`IDENTITY_DISABLED`).
    #[error("identity '{0}' is disabled")]
    Disabled(String),
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
    // Before anything else: a disabled identity's first-use renewal is not activated.
    if identity.is_disabled_at(now) {
        return Err(AuthError::Disabled(identity.name));
    }
    let auth = identity
        .authenticator
        .as_ref()
        .filter(|a| a.fingerprint_sha256 == fp)
        .ok_or_else(|| match &identity.lifecycle.renewal {
            Some(r) if r.authenticator.fingerprint_sha256 == fp => match r.activation {
                Activation::FirstUse if !within(&r.authenticator, now) => {
                    AuthError::OutsideValidity
                }
                Activation::FirstUse => AuthError::FirstUse(identity.id.clone()),
                Activation::Verify => AuthError::NotYetActive,
            },
            _ if identity
                .lifecycle
                .bootstrap
                .as_ref()
                .map(|a| a.fingerprint_sha256.as_str())
                == Some(fp) =>
            {
                AuthError::Bootstrap
            }
            _ => AuthError::Unbound,
        })?;
    if !within(auth, now) {
        return Err(AuthError::OutsideValidity);
    }
    if superseded(&identity, w.shared.config.reenroll_grace, now) {
        return Err(AuthError::Superseded);
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

fn within(auth: &crate::model::Authenticator, now: UnixTime) -> bool {
    auth.not_before <= now && now < auth.not_after
}

/// Whether `identity`'s active certificate no longer authenticates because its first-use
/// renewal was issued more than `grace` ago. Read from the record alone: nothing is written
/// when the grace ends, so there is no state to race on.
pub fn superseded(identity: &Identity, grace: std::time::Duration, now: UnixTime) -> bool {
    identity.lifecycle.renewal.as_ref().is_some_and(|r| {
        r.activation == Activation::FirstUse
            && now.saturating_sub(r.authenticator.created_at)
                >= i64::try_from(grace.as_secs()).unwrap_or(i64::MAX)
    })
}

/// [`authenticate`], where a first-use renewal's certificate is activated (one atomic
/// write that unbinds the old certificate) and then authenticates. The outer error is the
/// activation's failure to commit (a full queue, shutdown, the disk); the inner one, why
/// the certificate does not authenticate.
pub async fn authenticate_now(
    w: &WorkerCtx,
    peer: &Peer,
    now: UnixTime,
) -> Result<Result<Identity, AuthError>, ApiError> {
    let identity_id = match authenticate(w, peer, now) {
        Err(AuthError::FirstUse(identity_id)) => identity_id,
        other => return Ok(other),
    };
    let fp = peer.cert_sha256.as_deref().unwrap_or_default();
    match super::renew::activate(w, &identity_id, fp, now).await {
        // A first use racing this one activated it, or a newer renewal replaced it: the
        // certificate is judged as the store holds it now.
        Ok(_) | Err(ApiError::InvalidState(_)) => Ok(authenticate(w, peer, now)),
        Err(e) => Err(e),
    }
}

/// The identity of an admin, or `401 UNAUTHORIZED`.
pub async fn require_admin(w: &WorkerCtx, peer: &Peer) -> Result<Identity, ApiError> {
    let now = w.shared.clock.unix_now();
    let why = |m: String| {
        ApiError::Unauthorized(format!(
            "the management API needs the client certificate of an admin identity: {m}"
        ))
    };
    match authenticate_now(w, peer, now).await? {
        Ok(identity) if identity.is_admin => Ok(identity),
        Ok(_) => Err(why("this identity is not an admin".into())),
        Err(AuthError::Store(e)) => Err(ApiError::Unhandled(e)),
        Err(e @ AuthError::Disabled(_)) => Err(ApiError::IdentityDisabled(e.to_string())),
        Err(e) => Err(why(e.to_string())),
    }
}

/// One API session, as `GET /current-api-session` shows it.
#[derive(Debug, Clone)]
pub struct Session {
    /// Opaque id, shown to the client (OpenZiti's C SDK compares session ids to see whether
    /// a refresh returned the session it holds). Not the token: the id is not a secret.
    pub id: String,
    /// The identity.
    pub identity_id: String,
    /// The authenticator the session was opened with (see [`authenticator_id`]).
    pub authenticator_id: String,
    /// The address the client authenticated from (empty when unknown).
    pub ip_address: String,
    /// When it was opened.
    pub created_at: UnixTime,
    /// Expiry.
    pub expires_at: UnixTime,
}

/// The id an authenticator is shown under: the hex SHA-256 fingerprint of its certificate.
/// A certificate belongs to at most one identity (I1), so it names one authenticator, it
/// is stable across restarts, and it is not a secret.
pub fn authenticator_id(a: &crate::model::Authenticator) -> String {
    a.fingerprint_sha256.clone()
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

/// What a new session is opened for.
#[derive(Debug, Clone, Copy)]
pub struct Opening<'a> {
    /// The identity.
    pub identity_id: &'a str,
    /// Its authenticator's id ([`authenticator_id`]).
    pub authenticator_id: &'a str,
    /// The client's address, if known.
    pub ip_address: Option<std::net::IpAddr>,
}

impl Sessions {
    /// A new session; returns its token and the session.
    pub fn create(&self, open: Opening<'_>, now: UnixTime) -> Result<(String, Session), ApiError> {
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
        let id = crate::ids::new_id().map_err(|e| ApiError::Unhandled(e.to_string()))?;
        let session = Session {
            id,
            identity_id: open.identity_id.to_string(),
            authenticator_id: open.authenticator_id.to_string(),
            ip_address: open.ip_address.map(|a| a.to_string()).unwrap_or_default(),
            created_at: now,
            expires_at: now + SESSION_TTL_SECS,
        };
        {
            let mut mine = self
                .by_identity
                .entry(open.identity_id.to_string())
                .or_default();
            mine.retain(|t| self.map.get(t).is_some_and(|s| s.expires_at > now));
            while mine.len() >= MAX_SESSIONS_PER_IDENTITY {
                let oldest = mine.remove(0);
                self.map.remove(&oldest);
            }
            mine.push(token.clone());
            // Inserted while the identity's entry is held: `end_identity`, which takes the
            // entry first, cannot miss a session opened as it runs.
            self.map.insert(token.clone(), session.clone());
        }
        Ok((token, session))
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

    /// Ends every session of `identity_id` (disabled, re-enrolled or deleted); returns how
    /// many were live. Their tokens authenticate nothing afterwards.
    pub fn end_identity(&self, identity_id: &str) -> usize {
        let Some((_, tokens)) = self.by_identity.remove(identity_id) else {
            return 0;
        };
        tokens
            .iter()
            .filter(|t| self.map.remove(*t).is_some())
            .count()
    }

    /// Ends the session with this token (logout); false when there was none. The token
    /// authenticates nothing afterwards.
    pub fn end(&self, token: &str) -> bool {
        let Some((_, session)) = self.map.remove(token) else {
            return false;
        };
        if let Some(mut mine) = self.by_identity.get_mut(&session.identity_id) {
            mine.retain(|t| t != token);
        }
        self.by_identity
            .remove_if(&session.identity_id, |_, mine| mine.is_empty());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(identity_id: &str) -> Opening<'_> {
        Opening {
            identity_id,
            authenticator_id: "a1",
            ip_address: Some(std::net::Ipv4Addr::LOCALHOST.into()),
        }
    }

    #[test]
    fn a_first_use_renewal_supersedes_the_old_certificate_after_the_grace() {
        use crate::model::{Authenticator, Lifecycle, Method, Renewal};
        let renewal = |activation| Renewal {
            authenticator: Authenticator {
                fingerprint_sha256: "new".into(),
                fingerprint_sha1: String::new(),
                tbs_sha256: String::new(),
                cert_pem: String::new(),
                issued_by_network: true,
                not_before: 0,
                not_after: 10_000,
                method: Method::Ott,
                ca_id: None,
                created_at: 1_000,
            },
            activation,
        };
        let identity = |renewal| Identity {
            id: "i1".into(),
            name: "dev".into(),
            kind: crate::model::IdentityType::Device,
            is_admin: false,
            role_attributes: vec![],
            created_at: 0,
            updated_at: 0,
            enrollment_id: None,
            authenticator: None,
            lifecycle: Lifecycle {
                renewal,
                ..Default::default()
            },
        };
        let grace = std::time::Duration::from_secs(60);
        let est = identity(Some(renewal(Activation::FirstUse)));
        assert!(!superseded(&est, grace, 1_059));
        assert!(superseded(&est, grace, 1_060));
        // OpenZiti's extend has no grace: its client verifies the new certificate.
        let extend = identity(Some(renewal(Activation::Verify)));
        assert!(!superseded(&extend, grace, 9_999));
        assert!(!superseded(&identity(None), grace, 9_999));
    }

    #[test]
    fn sessions_expire() {
        let s = Sessions::default();
        let (t, created) = s.create(open("i1"), 100).unwrap();
        let exp = created.expires_at;
        assert_eq!(exp, 100 + SESSION_TTL_SECS);
        assert_eq!(created.created_at, 100);
        assert_eq!(created.ip_address, "127.0.0.1");
        assert_ne!(created.id, t, "the id is not the bearer token");
        assert_eq!(s.get(&t, 101).unwrap().identity_id, "i1");
        assert!(s.get(&t, exp).is_none());
        assert!(s.get("nope", 101).is_none());
    }

    #[test]
    fn one_identity_cannot_hoard_sessions() {
        let s = Sessions::default();
        let tokens: Vec<String> = (0..40)
            .map(|_| s.create(open("greedy"), 100).unwrap().0)
            .collect();
        let live = tokens.iter().filter(|t| s.get(t, 101).is_some()).count();
        assert_eq!(live, MAX_SESSIONS_PER_IDENTITY);
        assert!(
            s.get(tokens.last().unwrap(), 101).is_some(),
            "the newest is kept"
        );
        assert!(s.get(&tokens[0], 101).is_none(), "the oldest went");
        assert!(s.create(open("other"), 100).is_ok());
    }

    #[test]
    fn ending_an_identity_ends_all_its_sessions_and_no_other() {
        let s = Sessions::default();
        let (a, _) = s.create(open("i1"), 100).unwrap();
        let (b, _) = s.create(open("i1"), 100).unwrap();
        let (c, _) = s.create(open("i2"), 100).unwrap();
        assert_eq!(s.end_identity("i1"), 2);
        assert!(s.get(&a, 101).is_none() && s.get(&b, 101).is_none());
        assert_eq!(s.get(&c, 101).unwrap().identity_id, "i2");
        assert_eq!(s.end_identity("i1"), 0);
    }

    #[test]
    fn a_session_ended_is_gone_and_others_stay() {
        let s = Sessions::default();
        let (a, _) = s.create(open("i1"), 100).unwrap();
        let (b, _) = s.create(open("i1"), 100).unwrap();
        assert!(s.end(&a));
        assert!(s.get(&a, 101).is_none());
        assert!(!s.end(&a), "a second logout finds nothing");
        assert_eq!(s.get(&b, 101).unwrap().identity_id, "i1");
        assert!(s.end(&b));
        assert!(
            s.by_identity.get("i1").is_none(),
            "no empty list is left behind"
        );
    }
}
