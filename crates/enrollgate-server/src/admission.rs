//! Admission control by rate: per-source-address and per-CA limits on enrollment requests
//! (`limits.per_source_rate`, `limits.per_ca_rate`), answered `429 RATE_LIMITED` with
//! `Retry-After`.
//!
//! Each key (a client address, a CA id) has a GCRA bucket: one `u64`, the "theoretical
//! arrival time" of its next request. A request is admitted while that time is at most
//! `burst` intervals ahead of now, and pushes it one interval further. The state is a
//! sharded map ([`DashMap`]): a request locks one shard for a few instructions, never the
//! whole map, so workers do not contend. Time is an argument (nanoseconds on the caller's
//! monotonic clock), so tests pin it.
//!
//! Memory is bounded: at most `max_keys` keys are tracked. When the map is full, buckets
//! that have drained (their next-arrival time is in the past, so they are equivalent to a
//! fresh key) are dropped; if it is still full, a new key is admitted without being
//! tracked and counted as such, rather than locking out devices that never sent anything.
//!
//! Client addresses are keyed as the whole IPv4 address, or the IPv6 /64 prefix (one
//! site's subnet, which a single host can fill with addresses at will).

use std::borrow::Borrow;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::Duration;

use dashmap::DashMap;

/// A rate: `count` requests per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests per period.
    pub count: u32,
    /// The period.
    pub period: Duration,
}

impl Rate {
    /// Parses `N/s`, `N/min` or `N/h` (also `N/second`, `N/minute`, `N/hour`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (n, unit) = text
            .split_once('/')
            .ok_or_else(|| format!("'{text}' is not a rate like \"50/s\", \"600/min\""))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("'{}' is not a whole number of requests", n.trim()))?;
        if count == 0 {
            return Err("a rate must allow at least 1 request".into());
        }
        let period = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => return Err(format!("unknown unit '{other}': use s, min or h")),
        };
        Ok(Self { count, period })
    }

    /// Time between two requests at this rate, in nanoseconds (at least 1).
    fn interval_ns(self) -> u64 {
        let ns = self.period.as_nanos() / u128::from(self.count.max(1));
        u64::try_from(ns).unwrap_or(u64::MAX).max(1)
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "s",
            60 => "min",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// A rate limit with its burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// The sustained rate.
    pub rate: Rate,
    /// Requests admitted at once after a quiet period (at least 1).
    pub burst: u32,
}

/// The verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted (and counted).
    Admit,
    /// Admitted without being counted: the key table is full.
    Untracked,
    /// Refused; the request would be admitted after this long.
    Wait(Duration),
}

/// GCRA buckets for many keys.
#[derive(Debug)]
pub struct Limiter<K: Eq + Hash> {
    interval_ns: u64,
    /// How far ahead of now the next-arrival time may be and still admit.
    tolerance_ns: u64,
    max_keys: usize,
    buckets: DashMap<K, u64>,
}

impl<K: Eq + Hash> Limiter<K> {
    /// A limiter for `limit`, tracking at most `max_keys` keys.
    pub fn new(limit: Limit, max_keys: usize) -> Self {
        let interval_ns = limit.rate.interval_ns();
        Self {
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(u64::from(limit.burst.max(1) - 1)),
            max_keys: max_keys.max(1),
            buckets: DashMap::new(),
        }
    }

    /// Judges a request for `key` at `now_ns` (monotonic nanoseconds).
    pub fn check<Q>(&self, key: &Q, now_ns: u64) -> Verdict
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(mut tat) = self.buckets.get_mut(key) {
            return self.admit(&mut tat, now_ns);
        }
        if self.buckets.len() >= self.max_keys {
            self.buckets.retain(|_, tat| *tat > now_ns);
            if self.buckets.len() >= self.max_keys {
                return Verdict::Untracked;
            }
        }
        let mut tat = self.buckets.entry(key.to_owned()).or_insert(0);
        self.admit(&mut tat, now_ns)
    }

    fn admit(&self, tat: &mut u64, now_ns: u64) -> Verdict {
        let next = (*tat).max(now_ns);
        let ahead = next - now_ns;
        if ahead > self.tolerance_ns {
            return Verdict::Wait(Duration::from_nanos(ahead - self.tolerance_ns));
        }
        *tat = next.saturating_add(self.interval_ns);
        Verdict::Admit
    }

    /// Keys tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// The rate-limit key of a client address: the IPv4 address, or the IPv6 /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                seg[4..].fill(0);
                IpAddr::V6(seg.into())
            }
        },
    }
}

/// Whole seconds to put in `Retry-After` for a wait (at least 1).
pub fn retry_after_secs(wait: Duration) -> u32 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn limiter(rate: &str, burst: u32, max_keys: usize) -> Limiter<u32> {
        Limiter::new(
            Limit {
                rate: Rate::parse(rate).unwrap(),
                burst,
            },
            max_keys,
        )
    }

    #[test]
    fn rates_parse_and_print() {
        assert_eq!(
            Rate::parse("50/s").unwrap(),
            Rate {
                count: 50,
                period: Duration::from_secs(1)
            }
        );
        assert_eq!(Rate::parse(" 600 / min ").unwrap().to_string(), "600/min");
        assert_eq!(Rate::parse("3/h").unwrap().interval_ns(), 1200 * SEC);
        for bad in ["", "50", "0/s", "-1/s", "x/s", "5/day", "5/"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let l = limiter("10/s", 5, 100);
        let t0 = 1000 * SEC;
        for _ in 0..5 {
            assert_eq!(l.check(&1, t0), Verdict::Admit);
        }
        // The sixth at the same instant waits one interval (100 ms).
        assert_eq!(l.check(&1, t0), Verdict::Wait(Duration::from_millis(100)));
        // A refused request does not push the bucket further.
        assert_eq!(
            l.check(&1, t0 + 50_000_000),
            Verdict::Wait(Duration::from_millis(50))
        );
        assert_eq!(l.check(&1, t0 + SEC / 10), Verdict::Admit);
        // Other keys are independent.
        assert_eq!(l.check(&2, t0), Verdict::Admit);
        // After a quiet second the whole burst is back.
        let t1 = t0 + 2 * SEC;
        for _ in 0..5 {
            assert_eq!(l.check(&1, t1), Verdict::Admit);
        }
        assert!(matches!(l.check(&1, t1), Verdict::Wait(_)));
    }

    #[test]
    fn burst_one_spaces_requests_evenly() {
        let l = limiter("2/s", 1, 10);
        assert_eq!(l.check(&7, SEC), Verdict::Admit);
        assert_eq!(
            l.check(&7, SEC + 1),
            Verdict::Wait(Duration::from_nanos(SEC / 2 - 1))
        );
        assert_eq!(l.check(&7, SEC + SEC / 2), Verdict::Admit);
    }

    #[test]
    fn the_key_table_is_bounded() {
        let l = limiter("1/s", 1, 3);
        let t0 = 10 * SEC;
        for k in 0..3 {
            assert_eq!(l.check(&k, t0), Verdict::Admit);
        }
        // Full with live buckets: a new key is admitted but not tracked.
        assert_eq!(l.check(&99, t0), Verdict::Untracked);
        assert_eq!(l.tracked(), 3);
        // Once the buckets have drained they are dropped to make room.
        assert_eq!(l.check(&99, t0 + 5 * SEC), Verdict::Admit);
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn sources_are_keyed_by_address_or_ipv6_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa:bbbb:cccc:dddd".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
