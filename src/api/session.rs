//! API sessions: what `POST /authenticate?method=cert` and the console hand out, and the
//! `zt-session` header carries. In memory, per process: a restart ends them, and clients
//! authenticate again. Nothing here knows how a certificate authenticates (`auth`).

use dashmap::DashMap;

use super::ApiError;
use crate::clock::UnixTime;

/// Lifetime of an API session.
pub const SESSION_TTL_SECS: i64 = 30 * 60;
/// Sessions kept at most; expired ones are pruned when this is reached.
pub const MAX_SESSIONS: usize = 100_000;
/// Live sessions one identity may hold; a new one replaces its oldest, so no identity can
/// fill the table and lock the others out.
pub const MAX_SESSIONS_PER_IDENTITY: usize = 16;

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
