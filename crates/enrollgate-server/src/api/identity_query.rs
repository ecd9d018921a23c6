//! The filters of `GET /identities` beyond the name: `type`, `state` (enrollment state) and
//! `certExpiringWithin`, each optional, all applied together. A pure decision over an
//! identity, the time and the expiry of its pending token ([`IdentityQuery::keep`]); [`page`]
//! feeds it one sequential pass over the store's records.
//!
//! | parameter | values | keeps |
//! |---|---|---|
//! | `type` | `User`, `Device`, `Service` | identities of that type |
//! | `state` | `pending`, `expired`, `enrolled`, `none` | a live token, an expired token, a bound certificate, neither |
//! | `certExpiringWithin` | a duration (`30d`, `12h`) | a bound certificate not yet expired that expires within it |

use std::collections::HashMap;
use std::time::Duration;

use super::error::ApiError;
use crate::clock::UnixTime;
use crate::http::query::param;
use crate::model::{Identity, IdentityType};
use crate::store::briefs::IdentityBrief;
use crate::store::{Page, Store, StoreError};

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

    /// The state at `now` of an identity with or without a bound certificate, given the
    /// expiry of its pending token (if it has one).
    pub fn of(enrolled: bool, token_expires_at: Option<UnixTime>, now: UnixTime) -> Self {
        match (enrolled, token_expires_at) {
            (true, _) => Self::Enrolled,
            (false, Some(t)) if t > now => Self::Pending,
            (false, Some(_)) => Self::Expired,
            (false, None) => Self::None,
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

    /// Whether an identity passes at `now`; `token_expiry` gives the expiry of a pending
    /// enrollment by id (asked only when the state filter needs it).
    pub fn keep(
        &self,
        i: &IdentityBrief,
        now: UnixTime,
        token_expiry: &dyn Fn(&str) -> Option<UnixTime>,
    ) -> bool {
        if self.kind.is_some_and(|k| k != i.kind) {
            return false;
        }
        if let Some(within) = self.expiring {
            // As ops::expiry::expires_within: not expired, and expiring within the window.
            let window = i64::try_from(within.as_secs()).unwrap_or(i64::MAX);
            let expiring = i
                .cert_not_after
                .is_some_and(|t| t > now && t <= now.saturating_add(window));
            if !expiring {
                return false;
            }
        }
        if let Some(state) = self.state {
            let enrolled = i.cert_not_after.is_some();
            let expiry = match (&i.enrollment_id, enrolled) {
                (Some(eid), false) => token_expiry(eid),
                _ => None,
            };
            if EnrollState::of(enrolled, expiry, now) != state {
                return false;
            }
        }
        true
    }
}

/// The identities whose name passes `name_ok` and that pass `query` at `now`, in name
/// order, `limit` from `offset`. One sequential pass over the identity records, decoding
/// only what the filters look at (`Store::identity_briefs`), then the page's identities
/// read whole.
pub fn page(
    store: &Store,
    name_ok: &dyn Fn(&str) -> bool,
    query: &IdentityQuery,
    now: UnixTime,
    offset: usize,
    limit: usize,
) -> Result<Page<Identity>, StoreError> {
    let expiries = match query.state {
        Some(_) => store.enrollment_expiries()?,
        None => HashMap::new(),
    };
    let token_expiry = |eid: &str| expiries.get(eid).copied();
    let mut matched =
        store.identity_briefs(&mut |b| name_ok(&b.name) && query.keep(b, now, &token_expiry))?;
    // Names are unique (I2); the name index orders by the same bytes.
    matched.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    let mut items = Vec::with_capacity(limit.min(matched.len()));
    for b in matched.iter().skip(offset).take(limit) {
        // Deleted since the pass: the page is one shorter, as with the name index.
        if let Some(identity) = store.identity(&b.id)? {
            items.push(identity);
        }
    }
    Ok(Page {
        items,
        total: matched.len(),
    })
}

/// Filtered listings running at once at most; more are answered `429` (only admins get
/// here, and a console polls one page at a time).
pub const MAX_CONCURRENT_PASSES: usize = 4;

/// [`page`] on a thread of its own: a pass over a large fleet takes a good part of a second
/// (docs/console.md), which on the worker's event loop would hold up every other connection
/// of that worker, enrollments included.
pub async fn page_off_worker(
    store: Store,
    filter: super::filter::NameFilter,
    query: IdentityQuery,
    now: UnixTime,
    offset: usize,
    limit: usize,
) -> Result<Page<Identity>, ApiError> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static RUNNING: AtomicUsize = AtomicUsize::new(0);
    /// Gives the slot back however the pass ends.
    struct Slot;
    impl Drop for Slot {
        fn drop(&mut self) {
            RUNNING.fetch_sub(1, Ordering::AcqRel);
        }
    }
    if RUNNING.fetch_add(1, Ordering::AcqRel) >= MAX_CONCURRENT_PASSES {
        RUNNING.fetch_sub(1, Ordering::AcqRel);
        crate::telemetry::rate_limited("listing_scans");
        return Err(ApiError::RateLimited {
            message: format!(
                "{MAX_CONCURRENT_PASSES} filtered identity listings are running; retry shortly"
            ),
            retry_after: 1,
        });
    }
    let slot = Slot;
    let (tx, rx) = flume::bounded(1);
    std::thread::Builder::new()
        .name("enrollgate-list".into())
        .spawn(move || {
            let _slot = slot;
            let _ = tx.send(page(
                &store,
                &|name| filter.matches(name),
                &query,
                now,
                offset,
                limit,
            ));
        })
        .map_err(|e| ApiError::Unhandled(format!("cannot start a listing thread: {e}")))?;
    rx.recv_async()
        .await
        .map_err(|_| ApiError::Unhandled("the listing thread ended without an answer".into()))?
        .map_err(ApiError::from)
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
        let brief = IdentityBrief {
            id: "i".into(),
            name: "n".into(),
            kind: IdentityType::Device,
            enrollment_id: Some("e".into()),
            cert_not_after: None,
        };
        assert_eq!(EnrollState::of(false, Some(10), 5), EnrollState::Pending);
        assert_eq!(EnrollState::of(false, Some(10), 10), EnrollState::Expired);
        assert_eq!(EnrollState::of(false, None, 10), EnrollState::None);
        assert_eq!(EnrollState::of(true, Some(1), 10), EnrollState::Enrolled);
        let expired = IdentityQuery {
            state: Some(EnrollState::Expired),
            ..Default::default()
        };
        assert!(expired.keep(&brief, 20, &|_| Some(10)));
        assert!(!expired.keep(&brief, 5, &|_| Some(10)));
        let users = IdentityQuery {
            kind: Some(IdentityType::User),
            ..Default::default()
        };
        assert!(!users.keep(&brief, 5, &|_| None));
    }

    #[test]
    fn certificate_expiry_window() {
        let enrolled = IdentityBrief {
            id: "i".into(),
            name: "n".into(),
            kind: IdentityType::Device,
            enrollment_id: None,
            cert_not_after: Some(100),
        };
        let within = |secs| IdentityQuery {
            expiring: Some(Duration::from_secs(secs)),
            ..Default::default()
        };
        assert!(within(50).keep(&enrolled, 60, &|_| None));
        assert!(
            !within(10).keep(&enrolled, 60, &|_| None),
            "later than the window"
        );
        assert!(
            !within(50).keep(&enrolled, 100, &|_| None),
            "already expired"
        );
    }
}
