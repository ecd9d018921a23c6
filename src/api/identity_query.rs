//! The filters of `GET /identities` beyond the name: `type`, `state` (enrollment state) and
//! `certExpiringWithin`, each optional, all applied together. A pure decision over an
//! identity, the time and the expiry of its pending token; the store walks the names.
//!
//! | parameter | values | keeps |
//! |---|---|---|
//! | `type` | `User`, `Device`, `Service` | identities of that type |
//! | `state` | `pending`, `expired`, `enrolled`, `none` | a live token, an expired token, a bound certificate, neither |
//! | `certExpiringWithin` | a duration (`30d`, `12h`) | a bound certificate not yet expired that expires within it |

use std::time::Duration;

use super::ApiError;
use crate::clock::UnixTime;
use crate::http::query::param;
use crate::model::{Identity, IdentityType};

/// Where an identity stands with enrollment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollState {
    /// It has a token that can still be redeemed.
    Pending,
    /// Its token expired unredeemed (an admin can reissue it).
    Expired,
    /// A certificate is bound to it.
    Enrolled,
    /// Neither a token nor a certificate.
    None,
}

impl EnrollState {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "expired" => Self::Expired,
            "enrolled" => Self::Enrolled,
            "none" => Self::None,
            _ => return None,
        })
    }

    /// The state of `i` at `now`, given the expiry of its pending token (if it has one).
    pub fn of(i: &Identity, token_expires_at: Option<UnixTime>, now: UnixTime) -> Self {
        match (&i.authenticator, token_expires_at) {
            (Some(_), _) => Self::Enrolled,
            (None, Some(t)) if t > now => Self::Pending,
            (None, Some(_)) => Self::Expired,
            (None, None) => Self::None,
        }
    }
}

/// The filters of one listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityQuery {
    /// `type`.
    pub kind: Option<IdentityType>,
    /// `state`.
    pub state: Option<EnrollState>,
    /// `certExpiringWithin`.
    pub expiring: Option<Duration>,
}

fn clip(v: &str) -> String {
    v.chars().take(64).collect()
}

impl IdentityQuery {
    /// Reads the filters from a query string.
    pub fn parse(query: &str) -> Result<Self, ApiError> {
        let kind = match param(query, "type").filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => Some(IdentityType::parse(&v).ok_or_else(|| {
                ApiError::InvalidParameter(format!(
                    "'type' must be User, Device or Service, not '{}'",
                    clip(&v)
                ))
            })?),
        };
        let state = match param(query, "state").filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => Some(EnrollState::parse(&v).ok_or_else(|| {
                ApiError::InvalidParameter(format!(
                    "'state' must be pending, expired, enrolled or none, not '{}'",
                    clip(&v)
                ))
            })?),
        };
        // certExpiringWithin=30d: enrolled identities whose certificate has not expired
        // and expires within that time (what the expiry gauges count).
        let expiring = match param(query, "certExpiringWithin").filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => Some(humantime::parse_duration(&v).map_err(|_| {
                ApiError::InvalidParameter(format!(
                    "'certExpiringWithin' must be a duration such as 30d or 12h, not '{}'",
                    clip(&v)
                ))
            })?),
        };
        Ok(Self {
            kind,
            state,
            expiring,
        })
    }

    /// True when no filter is set: the listing need not read the identities it skips.
    pub fn is_all(&self) -> bool {
        *self == Self::default()
    }

    /// Whether `i` passes at `now`; `token_expiry` gives the expiry of a pending
    /// enrollment by id (read only when the state filter needs it).
    pub fn keep(
        &self,
        i: &Identity,
        now: UnixTime,
        token_expiry: &dyn Fn(&str) -> Option<UnixTime>,
    ) -> bool {
        if self.kind.is_some_and(|k| k != i.kind) {
            return false;
        }
        if let Some(within) = self.expiring {
            if !crate::ops::expiry::expires_within(i, now, within) {
                return false;
            }
        }
        if let Some(state) = self.state {
            let expiry = match (&i.authenticator, &i.enrollment_id) {
                (None, Some(eid)) => token_expiry(eid),
                _ => None,
            };
            if EnrollState::of(i, expiry, now) != state {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let q = IdentityQuery::parse("type=Device&state=expired&certExpiringWithin=30d").unwrap();
        assert_eq!(q.kind, Some(IdentityType::Device));
        assert_eq!(q.state, Some(EnrollState::Expired));
        assert_eq!(q.expiring, Some(Duration::from_secs(30 * 86400)));
        assert!(IdentityQuery::parse("type=&state=").unwrap().is_all());
        for bad in ["type=Robot", "state=late", "certExpiringWithin=soon"] {
            assert!(
                matches!(
                    IdentityQuery::parse(bad),
                    Err(ApiError::InvalidParameter(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn states() {
        let json = r#"{"id":"i","name":"n","type":"Device","is_admin":false,"role_attributes":[],"created_at":0,"updated_at":0,"enrollment_id":"e","authenticator":null}"#;
        let i: Identity = serde_json::from_str(json).unwrap();
        assert_eq!(EnrollState::of(&i, Some(10), 5), EnrollState::Pending);
        assert_eq!(EnrollState::of(&i, Some(10), 10), EnrollState::Expired);
        assert_eq!(EnrollState::of(&i, None, 10), EnrollState::None);
        let q = IdentityQuery {
            state: Some(EnrollState::Expired),
            ..Default::default()
        };
        assert!(q.keep(&i, 20, &|_| Some(10)));
        assert!(!q.keep(&i, 5, &|_| Some(10)));
    }
}
