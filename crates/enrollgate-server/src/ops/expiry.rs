//! Certificate expiry, visible before it bites: a fleet that enrolled in one day has every
//! certificate expire in the same hour a year later. A scanner thread counts the bound
//! certificates that have expired, or expire within 7 or 30 days, into gauges that an alert
//! can watch weeks ahead; the management API filters identities by the same measure.
//!
//! The counting is a pure function of the identities and `now`; the thread only reads the
//! store and the clock and sets the gauges.

use std::time::Duration;

use crate::clock::UnixTime;
use crate::model::Identity;
use crate::store::Store;

/// How often the scanner counts. Each scan decodes every identity (about a second of one
/// core per million identities here); a certificate's expiry is a matter of days.
pub const SCAN_EVERY: Duration = Duration::from_secs(300);

/// The windows the gauges count, in days.
pub const WINDOWS_DAYS: [u64; 2] = [7, 30];

const DAY: u64 = 86_400;

/// Bound certificates by expiry, at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpiryCounts {
    /// Bound certificates, all told.
    pub bound: u64,
    /// Past their `notAfter`: these identities can no longer authenticate.
    pub expired: u64,
    /// Not expired, and expiring within each of [`WINDOWS_DAYS`] (the longer window
    /// includes the shorter).
    pub within: [u64; WINDOWS_DAYS.len()],
}

/// Whether the identity's certificate expires after `now` and within `window` of it: the
/// one test behind the gauges, the API's `certExpiringWithin` and `identity list --expiring`.
pub fn expires_within(identity: &Identity, now: UnixTime, window: Duration) -> bool {
    let window = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
    identity
        .authenticator
        .as_ref()
        .is_some_and(|a| a.not_after > now && a.not_after <= now.saturating_add(window))
}

impl ExpiryCounts {
    /// Sets the expiry gauges to these counts.
    pub fn record(&self) {
        let within: Vec<(u64, u64)> = WINDOWS_DAYS.iter().copied().zip(self.within).collect();
        crate::telemetry::certificate_expiry(&within, self.expired, self.bound);
    }

    /// Counts one identity in.
    pub fn add(&mut self, identity: &Identity, now: UnixTime) {
        let Some(a) = &identity.authenticator else {
            return;
        };
        self.bound += 1;
        if a.not_after <= now {
            self.expired += 1;
            return;
        }
        for (count, days) in self.within.iter_mut().zip(WINDOWS_DAYS) {
            if expires_within(identity, now, Duration::from_secs(days * DAY)) {
                *count += 1;
            }
        }
    }
}

/// Counts every identity in the store at `now`.
pub fn scan(store: &Store, now: UnixTime) -> Result<ExpiryCounts, crate::store::StoreError> {
    let mut counts = ExpiryCounts::default();
    store.identities_where(&mut |i| {
        counts.add(i, now);
        false
    })?;
    Ok(counts)
}

/// Counts once and sets the gauges: `serve` does this before it is ready, so that the
/// gauges hold the store's counts from the first scrape.
pub fn count_now(
    count: impl Fn() -> Result<ExpiryCounts, crate::store::StoreError>,
) -> Result<ExpiryCounts, crate::store::StoreError> {
    let counts = count()?;
    counts.record();
    Ok(counts)
}

/// Starts the scanner thread: `count` every [`SCAN_EVERY`] (the first after one period:
/// [`count_now`] did the first), until `stop` returns true (checked every quarter second,
/// so that shutdown never waits a period). `count` reads the store in force (a reload may
/// change it) at the clock's `now`.
pub fn spawn_scanner(
    count: impl Fn() -> Result<ExpiryCounts, crate::store::StoreError> + Send + 'static,
    stop: impl Fn() -> bool + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("enrollgate-expiry".into())
        .spawn(move || {
            let tick = Duration::from_millis(250);
            let mut warned = false;
            loop {
                let mut waited = Duration::ZERO;
                while waited < SCAN_EVERY && !stop() {
                    std::thread::sleep(tick);
                    waited += tick;
                }
                if stop() {
                    break;
                }
                let started = std::time::Instant::now();
                match count() {
                    Ok(counts) => {
                        counts.record();
                        tracing::debug!(
                            bound = counts.bound,
                            expired = counts.expired,
                            within_7d = counts.within[0],
                            within_30d = counts.within[1],
                            took_ms = started.elapsed().as_millis() as u64,
                            "certificate expiry counted"
                        );
                        warned = false;
                    }
                    Err(e) if !warned => {
                        tracing::warn!(error = %e, "cannot count expiring certificates; the expiry gauges keep their last values");
                        warned = true;
                    }
                    Err(_) => {}
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Authenticator, IdentityType, Method};

    fn with_cert(not_after: Option<UnixTime>) -> Identity {
        Identity {
            id: "i".into(),
            name: "n".into(),
            kind: IdentityType::Device,
            is_admin: false,
            role_attributes: vec![],
            created_at: 0,
            updated_at: 0,
            enrollment_id: None,
            lifecycle: Default::default(),
            authenticator: not_after.map(|not_after| Authenticator {
                fingerprint_sha256: String::new(),
                fingerprint_sha1: String::new(),
                tbs_sha256: String::new(),
                cert_pem: String::new(),
                issued_by_network: true,
                not_before: 0,
                not_after,
                method: Method::Ott,
                created_at: 0,
                ca_id: None,
            }),
        }
    }

    #[test]
    fn certificates_are_counted_into_their_windows() {
        const DAY: i64 = super::DAY as i64;
        let now = 1_000_000;
        let mut c = ExpiryCounts::default();
        for not_after in [
            None,                     // not enrolled: not counted
            Some(now - 1),            // expired
            Some(now),                // expires this second: expired
            Some(now + 1),            // within 7 and 30 days
            Some(now + 7 * DAY),      // the 7th day still counts
            Some(now + 7 * DAY + 1),  // within 30 days only
            Some(now + 30 * DAY),     // within 30 days
            Some(now + 30 * DAY + 1), // beyond both
        ] {
            c.add(&with_cert(not_after), now);
        }
        assert_eq!(
            c,
            ExpiryCounts {
                bound: 7,
                expired: 2,
                within: [2, 4],
            }
        );
    }

    #[test]
    fn the_filter_agrees_with_the_counts() {
        const DAY: i64 = super::DAY as i64;
        let now = 50;
        let window = Duration::from_secs(7 * DAY as u64);
        assert!(!expires_within(&with_cert(None), now, window));
        assert!(!expires_within(&with_cert(Some(now)), now, window));
        assert!(expires_within(&with_cert(Some(now + 1)), now, window));
        assert!(expires_within(&with_cert(Some(now + 7 * DAY)), now, window));
        assert!(!expires_within(
            &with_cert(Some(now + 7 * DAY + 1)),
            now,
            window
        ));
    }
}
