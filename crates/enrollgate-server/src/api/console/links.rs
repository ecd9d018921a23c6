//! One-time console login links: `enrollgate console login-url` asks an admin-only endpoint
//! for a code, prints `https://HOST:PORT/console/#login=CODE`, and the page trades the code
//! for an API session once.
//!
//! ```text
//! CLI (admin cert) --POST console/login-links--> mint(identity, now)  -> CODE (shown once)
//! page             --POST console/sessions {code}--> redeem(CODE, now) -> the admin, or nothing
//! ```
//!
//! Only the SHA-256 of a code is kept, in memory: a heap dump or a restart reveals or keeps
//! nothing usable. A code redeems at most once (it is removed on the first try, right or
//! late), lives at most [`MAX_TTL_SECS`], and the table holds at most [`MAX_LINKS`], so a
//! stolen admin certificate cannot fill memory with links. No clock inside: every call
//! takes `now`.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::clock::UnixTime;

/// Lifetime of a login link unless the minting admin asks for less.
pub const DEFAULT_TTL_SECS: i64 = 5 * 60;
/// The longest lifetime an admin may ask for.
pub const MAX_TTL_SECS: i64 = 15 * 60;
/// Unredeemed links kept at most; beyond, expired ones are pruned, then the oldest goes.
pub const MAX_LINKS: usize = 1024;

/// What a redeemed code opens a session for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The admin identity that minted the link.
    pub identity_id: String,
    /// The authenticator that admin used (see `auth::authenticator_id`): the session dies
    /// with it.
    pub authenticator_id: String,
    /// When the code stops redeeming.
    pub expires_at: UnixTime,
}

/// Why a code does not redeem. One text for both: the caller learns nothing about codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// Unknown, already used, or expired.
    #[error("this login link is unknown, was used already, or expired; ask for a new one with `enrollgate console login-url`")]
    NotRedeemable,
    /// The random generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// The table of unredeemed links, keyed by the SHA-256 of their code.
#[derive(Default)]
pub struct LoginLinks {
    map: Mutex<HashMap<[u8; 32], Link>>,
}

impl std::fmt::Debug for LoginLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginLinks").finish_non_exhaustive()
    }
}

fn digest(code: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, code.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl LoginLinks {
    /// A new code for `identity_id`, valid for `ttl_secs` (clamped to 1..=[`MAX_TTL_SECS`]).
    pub fn mint(
        &self,
        identity_id: &str,
        authenticator_id: &str,
        ttl_secs: i64,
        now: UnixTime,
    ) -> Result<(String, Link), LinkError> {
        let code = crate::ids::new_token().map_err(|_| LinkError::Random)?;
        let link = Link {
            identity_id: identity_id.to_string(),
            authenticator_id: authenticator_id.to_string(),
            expires_at: now.saturating_add(ttl_secs.clamp(1, MAX_TTL_SECS)),
        };
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_LINKS {
            map.retain(|_, l| l.expires_at > now);
        }
        while map.len() >= MAX_LINKS {
            // Still full of live links: the one closest to expiry goes.
            let Some(oldest) = map
                .iter()
                .min_by_key(|(_, l)| l.expires_at)
                .map(|(k, _)| *k)
            else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(digest(&code), link.clone());
        Ok((code, link))
    }

    /// The link of `code`, once: the code is spent by this call whatever it answers.
    pub fn redeem(&self, code: &str, now: UnixTime) -> Result<Link, LinkError> {
        // Codes are 43 URL-safe characters; anything else is not looked up.
        if code.is_empty() || code.len() > 64 || !crate::ids::is_well_formed(code) {
            return Err(LinkError::NotRedeemable);
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.remove(&digest(code)) {
            Some(link) if link.expires_at > now => Ok(link),
            _ => Err(LinkError::NotRedeemable),
        }
    }

    /// Unredeemed links (expired ones included until pruned).
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// True when no link waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The links of this process. Like API sessions they live in memory, are shared by every
/// worker and survive a configuration reload (which rebuilds `Shared`); a restart ends them.
pub fn global() -> &'static LoginLinks {
    static LINKS: std::sync::OnceLock<LoginLinks> = std::sync::OnceLock::new();
    LINKS.get_or_init(LoginLinks::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_redeems_once() {
        let links = LoginLinks::default();
        let (code, _) = links.mint("admin", "fp", DEFAULT_TTL_SECS, 100).unwrap();
        assert_eq!(code.len(), 43);
        assert_eq!(links.redeem(&code, 101).unwrap().identity_id, "admin");
        assert_eq!(links.redeem(&code, 102), Err(LinkError::NotRedeemable));
    }

    #[test]
    fn a_late_code_is_refused_and_spent() {
        let links = LoginLinks::default();
        let (code, link) = links.mint("admin", "fp", 60, 100).unwrap();
        assert_eq!(link.expires_at, 160);
        assert_eq!(links.redeem(&code, 160), Err(LinkError::NotRedeemable));
        assert!(links.is_empty(), "a refused code is gone too");
    }

    #[test]
    fn lifetimes_are_bounded() {
        let links = LoginLinks::default();
        assert_eq!(links.mint("a", "f", 0, 0).unwrap().1.expires_at, 1);
        assert_eq!(
            links.mint("a", "f", i64::MAX, 0).unwrap().1.expires_at,
            MAX_TTL_SECS
        );
    }

    #[test]
    fn junk_and_unknown_codes_are_refused() {
        let links = LoginLinks::default();
        for code in ["", "not a code", &"A".repeat(65), "AAAAAAAAAAAAAAAAAAAA"] {
            assert_eq!(links.redeem(code, 0), Err(LinkError::NotRedeemable));
        }
    }

    #[test]
    fn the_table_is_bounded() {
        let links = LoginLinks::default();
        let (first, _) = links.mint("a", "f", 10, 0).unwrap();
        for _ in 0..MAX_LINKS + 10 {
            links.mint("a", "f", 600, 0).unwrap();
        }
        assert_eq!(links.len(), MAX_LINKS);
        assert!(links.redeem(&first, 1).is_err(), "the oldest went first");
    }
}
