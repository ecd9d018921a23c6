//! API sessions: what `POST /authenticate?method=cert` and the console hand out, and the
//! `zt-session` header carries. A session is its own proof: a token that carries the
//! session (id, identity, authenticator, address, times) and an HMAC of it under a key
//! derived from the token key, which every node of a gateway shares. So a session opened
//! on one node works on every other, and after a restart, with nothing kept in memory.
//!
//! What ends a session before it expires is in the store, read with the identity on every
//! request (the store's `session_state`): a logout writes its id (`sr:`), and disabling or
//! re-enrolling an identity moves its `sessions_after`; a deleted identity has no
//! sessions ([`ended`]). Nothing here knows how a certificate authenticates (the daemon's
//! `api::auth`). The token arrives in a request header: [`Sessions::get`] is fuzzed with
//! the JWTs (`fuzzing::jwt`).

use aws_lc_rs::hmac;
use base64::Engine as _;

use crate::clock::UnixTime;

/// Why a session could not be opened: the system's fault, never the client's.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No random bytes for its id.
    #[error(transparent)]
    Random(#[from] crate::ids::RandomError),
    /// The session did not serialize.
    #[error("a session does not serialize: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// Lifetime of an API session.
pub const SESSION_TTL_SECS: i64 = 30 * 60;

/// The prefix of a session token: its format's version.
const PREFIX: &str = "s1.";

/// Tokens longer than this are not ours (a header bounds them anyway).
const MAX_TOKEN_LEN: usize = 2048;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// One API session, as `GET /current-api-session` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Session {
    /// Opaque id, shown to the client (OpenZiti's C SDK compares session ids to see whether
    /// a refresh returned the session it holds). Not the token: the id is not a secret.
    #[serde(rename = "i")]
    pub id: String,
    /// The identity.
    #[serde(rename = "d")]
    pub identity_id: String,
    /// The authenticator the session was opened with (see [`authenticator_id`]).
    #[serde(rename = "a")]
    pub authenticator_id: String,
    /// The address the client authenticated from (empty when unknown).
    #[serde(rename = "p")]
    pub ip_address: String,
    /// When it was opened.
    #[serde(rename = "c")]
    pub created_at: UnixTime,
    /// Expiry.
    #[serde(rename = "e")]
    pub expires_at: UnixTime,
}

/// The id an authenticator is shown under: the hex SHA-256 fingerprint of its certificate.
/// A certificate belongs to at most one identity (I1), so it names one authenticator, it
/// is stable across restarts, and it is not a secret.
pub fn authenticator_id(a: &crate::model::Authenticator) -> String {
    a.fingerprint_sha256.clone()
}

/// Makes and checks session tokens.
pub struct Sessions {
    key: hmac::Key,
}

impl std::fmt::Debug for Sessions {
    // The key signs bearer tokens.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
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
    /// Sessions signed under `tokens`' session key.
    pub fn new(tokens: &super::TokenKey) -> Self {
        Self {
            key: tokens.session_key(),
        }
    }

    /// A new session; returns its token and the session.
    pub fn create(
        &self,
        open: Opening<'_>,
        now: UnixTime,
    ) -> Result<(String, Session), SessionError> {
        let id = crate::ids::new_id()?;
        let session = Session {
            id,
            identity_id: open.identity_id.to_string(),
            authenticator_id: open.authenticator_id.to_string(),
            ip_address: open.ip_address.map(|a| a.to_string()).unwrap_or_default(),
            created_at: now,
            expires_at: now + SESSION_TTL_SECS,
        };
        let payload = serde_json::to_vec(&session)?;
        let body = B64.encode(&payload);
        let tag = hmac::sign(&self.key, body.as_bytes());
        let token = format!("{PREFIX}{body}.{}", B64.encode(tag.as_ref()));
        Ok((token, session))
    }

    /// The session `token` carries, if this gateway signed it and it has not expired at
    /// `now`. Whether it was ended early is the store's to say (see the module).
    pub fn get(&self, token: &str, now: UnixTime) -> Option<Session> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let (body, tag) = token.strip_prefix(PREFIX)?.split_once('.')?;
        let tag = B64.decode(tag).ok()?;
        hmac::verify(&self.key, body.as_bytes(), &tag).ok()?;
        let session: Session = serde_json::from_slice(&B64.decode(body).ok()?).ok()?;
        (session.expires_at > now).then_some(session)
    }
}

/// Whether `session` was ended before it expired: logged out (`logged_out`), or its
/// identity disabled or re-enrolled since it was opened.
pub fn ended(session: &Session, identity: &crate::model::Identity, logged_out: bool) -> bool {
    logged_out
        || identity
            .lifecycle
            .sessions_after
            .is_some_and(|after| session.created_at <= after)
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

    fn sessions(byte: u8) -> Sessions {
        Sessions::new(&super::super::TokenKey::from_bytes(
            &[byte; super::super::secret::KEY_BYTES],
        ))
    }

    #[test]
    fn sessions_expire() {
        let s = sessions(1);
        let (t, created) = s.create(open("i1"), 100).unwrap();
        let exp = created.expires_at;
        assert_eq!(exp, 100 + SESSION_TTL_SECS);
        assert_eq!(created.created_at, 100);
        assert_eq!(created.ip_address, "127.0.0.1");
        assert_ne!(created.id, t, "the id is not the bearer token");
        assert_eq!(s.get(&t, 101).unwrap(), created);
        assert!(s.get(&t, exp).is_none());
        assert!(s.get("nope", 101).is_none());
    }

    #[test]
    fn a_session_works_wherever_the_token_key_is_the_same_and_nowhere_else() {
        let (t, created) = sessions(1).create(open("i1"), 100).unwrap();
        assert_eq!(sessions(1).get(&t, 101).unwrap(), created, "another node");
        assert!(sessions(2).get(&t, 101).is_none(), "another gateway");
    }

    #[test]
    fn a_token_changed_in_any_way_is_refused() {
        let s = sessions(1);
        let (t, _) = s.create(open("i1"), 100).unwrap();
        for i in 0..t.len() {
            let mut bytes = t.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let changed = String::from_utf8(bytes).unwrap();
            if changed != t {
                assert!(s.get(&changed, 101).is_none(), "byte {i}");
            }
        }
        // Another session's claims under this one's tag.
        let (other, _) = s.create(open("i2"), 100).unwrap();
        let body = other.trim_start_matches(PREFIX).split('.').next().unwrap();
        let tag = t.rsplit('.').next().unwrap();
        assert!(s.get(&format!("{PREFIX}{body}.{tag}"), 101).is_none());
        assert!(s.get(&"x".repeat(MAX_TOKEN_LEN + 1), 101).is_none());
        assert!(s.get("s1.", 101).is_none());
        assert!(s.get("s1.e30.", 101).is_none());
    }

    #[test]
    fn a_session_ends_with_a_logout_or_a_later_suspension() {
        let s = sessions(1);
        let (_, session) = s.create(open("i1"), 100).unwrap();
        let mut identity = crate::model::Identity {
            id: "i1".into(),
            name: "n".into(),
            kind: crate::model::IdentityType::Device,
            is_admin: false,
            role_attributes: vec![],
            created_at: 0,
            updated_at: 0,
            enrollment_id: None,
            lifecycle: Default::default(),
            authenticator: None,
        };
        assert!(!ended(&session, &identity, false));
        assert!(ended(&session, &identity, true));
        identity.lifecycle.sessions_after = Some(99);
        assert!(!ended(&session, &identity, false), "ended before it opened");
        identity.lifecycle.sessions_after = Some(100);
        assert!(ended(&session, &identity, false));
    }
}
