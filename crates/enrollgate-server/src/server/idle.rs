//! A worker's connections waiting for their client, and which of them gives way to a
//! newcomer. The table never reads the clock: every decision takes `now`, so a test
//! states the instants it means.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::eviction::{Evicted, Eviction};
use crate::telemetry;

/// A worker's connections waiting for their client: between requests (idle), in the
/// middle of a request whose bytes are still arriving, or with answers the client is slow
/// to read (slow).
///
/// At `limits.max_connections` (or the memory ceiling), a new connection closes the one of
/// them that has waited longest for its client rather than being refused: thousands of
/// connections that never send a request, or that trickle one, cannot lock out a device
/// that wants to enroll. An idle connection waits from the end of its last answer (or of its
/// handshake), and is closed as a keep-alive close between requests, which HTTP clients
/// expect. A slow request waits from its first byte plus `limits.slow_request_grace`, and
/// only after that can be closed: its clock does not restart with each byte it trickles,
/// and a client whose request takes less than the grace keeps its place. A connection
/// whose answer the client does not read likewise waits from the start of that answer (of
/// the first of a pipelined run, which one slowly read answer after another cannot
/// restart) plus the grace. Room is made for a newcomer the worker has accepted, never
/// ahead of one. When there is no such connection, the newcomer waits (in the kernel's
/// accept queue, or at the memory gate).
#[derive(Debug, Default)]
pub struct Idle {
    next: Cell<u64>,
    /// Idle connections, by the instant they started waiting, then arrival order.
    live: RefCell<BTreeMap<(Instant, u64), Rc<Eviction>>>,
    /// Slow requests and slow readers, by the instant they may be pushed out (their start
    /// plus the grace), then arrival order.
    slow: RefCell<BTreeMap<WaitSince, (Rc<Eviction>, Slow)>>,
}

/// When a connection began waiting (or may be pushed out), then its arrival order.
type WaitSince = (Instant, u64);

/// What a slow connection waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slow {
    /// The rest of its request.
    Request,
    /// Its client to read the answer.
    Reader,
}

impl Slow {
    fn label(self) -> &'static str {
        match self {
            Self::Request => "slow_request",
            Self::Reader => "slow_reader",
        }
    }
}

/// One connection waiting for its client; leaves its set when dropped.
pub(super) struct Waiting {
    idle: Rc<Idle>,
    key: WaitKey,
    eviction: Rc<Eviction>,
}

enum WaitKey {
    Idle((Instant, u64)),
    Slow((Instant, u64)),
}

/// Which set holds the connection that has waited longest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Longest {
    Idle,
    Slow,
}

impl Idle {
    fn id(&self) -> u64 {
        let id = self.next.get();
        self.next.set(id + 1);
        id
    }

    /// Registers a connection idle since `since` (the end of its last answer).
    pub(super) fn enter(self: &Rc<Self>, since: Instant) -> Waiting {
        let key = (since, self.id());
        let eviction = Rc::new(Eviction::default());
        self.live.borrow_mut().insert(key, eviction.clone());
        Waiting {
            idle: self.clone(),
            key: WaitKey::Idle(key),
            eviction,
        }
    }

    /// Registers a connection slow since `since` (`what`: a request begun then, or a run
    /// of answers begun then) as waiting for its client, to be pushed out no earlier than
    /// `grace` after that. Each read of a trickling request (each answer of a run)
    /// registers again with the same `since`, so its place in line does not move.
    pub(super) fn enter_slow(
        self: &Rc<Self>,
        since: Instant,
        grace: Duration,
        what: Slow,
    ) -> Waiting {
        let key = (since + grace, self.id());
        let eviction = Rc::new(Eviction::default());
        self.slow.borrow_mut().insert(key, (eviction.clone(), what));
        Waiting {
            idle: self.clone(),
            key: WaitKey::Slow(key),
            eviction,
        }
    }

    /// The set of the connection that has waited longest, among idle connections and slow
    /// requests past their grace at `now`.
    fn longest(&self, now: Instant) -> Option<Longest> {
        let idle = self.live.borrow().first_key_value().map(|(k, _)| k.0);
        let slow = self
            .slow
            .borrow()
            .first_key_value()
            .map(|(k, _)| k.0)
            .filter(|at| *at <= now);
        match (idle, slow) {
            (Some(i), Some(s)) if s < i => Some(Longest::Slow),
            (Some(_), _) => Some(Longest::Idle),
            (None, Some(_)) => Some(Longest::Slow),
            (None, None) => None,
        }
    }

    /// Whether a newcomer could take a place at `now` ([`Idle::close_oldest`] would close
    /// one).
    pub fn has_room(&self, now: Instant) -> bool {
        self.longest(now).is_some()
    }

    /// Closes the connection that has waited longest for its client, for a newcomer that is
    /// there at `now`; false when there is none.
    pub fn close_oldest(&self, now: Instant) -> bool {
        let oldest = match self.longest(now) {
            Some(Longest::Idle) => self.live.borrow_mut().pop_first().map(|(_, e)| (e, "idle")),
            Some(Longest::Slow) => self
                .slow
                .borrow_mut()
                .pop_first()
                .map(|(_, (e, what))| (e, what.label())),
            None => return false,
        };
        match oldest {
            Some((eviction, state)) => {
                eviction.evict();
                telemetry::pushed_out(state);
                true
            }
            None => false,
        }
    }

    /// Connections waiting for a request.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.live.borrow().len()
    }
}

impl Waiting {
    pub(super) fn evicted(&self) -> Evicted {
        Evicted(self.eviction.clone())
    }

    pub(super) fn pushed_out(&self) -> bool {
        self.eviction.evicted.get()
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        match self.key {
            WaitKey::Idle(key) => {
                self.idle.live.borrow_mut().remove(&key);
            }
            WaitKey::Slow(key) => {
                self.idle.slow.borrow_mut().remove(&key);
            }
        }
    }
}

/// Places a worker owes at `limits.max_connections`: newcomers accepted for room that was
/// gone when they came (an idle connection's request arrived meanwhile), kept one over the
/// limit. Each is paid back by closing the next connection that can make room, before any
/// other newcomer is accepted, so the excess does not grow.
#[derive(Debug, Default)]
pub struct Owed(Cell<usize>);

impl Owed {
    /// A newcomer accepted at the limit takes the place of the connection waiting longest,
    /// or is owed one.
    pub fn make_room(&self, idle: &Idle, now: Instant) {
        if !idle.close_oldest(now) {
            self.0.set(self.0.get() + 1);
        }
    }

    /// Pays back what room there is now; forgets the debt once `open` is within `max`.
    pub fn settle(&self, idle: &Idle, open: usize, max: usize, now: Instant) {
        if open <= max {
            self.0.set(0);
            return;
        }
        while self.0.get() > 0 && idle.close_oldest(now) {
            self.0.set(self.0.get() - 1);
        }
    }

    /// Places owed.
    #[cfg(test)]
    fn get(&self) -> usize {
        self.0.get()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_longest_idle_connection_is_closed_first() {
        let idle = Rc::new(Idle::default());
        assert!(!idle.close_oldest(now()), "nothing idle, nothing closed");
        let first = idle.enter(now());
        let second = idle.enter(now());
        let third = idle.enter(now());
        // A connection that took a request is no longer idle.
        drop(first);
        assert!(idle.close_oldest(now()));
        assert!(second.eviction.evicted.get());
        assert!(!third.eviction.evicted.get());
        assert_eq!(idle.len(), 1);
        drop(second);
        assert_eq!(idle.len(), 1, "an evicted connection left the set already");
        assert!(idle.close_oldest(now()));
        assert!(third.eviction.evicted.get());
        assert!(!idle.close_oldest(now()));
    }

    /// The instant every test calls now: fixed, so that no decision depends on how long
    /// the test took.
    fn now() -> Instant {
        thread_local! {
            static NOW: Instant = Instant::now() + Duration::from_secs(600);
        }
        NOW.with(|n| *n)
    }

    fn ago(d: Duration) -> Instant {
        now() - d
    }

    #[test]
    fn a_slow_request_gives_its_place_only_after_the_grace() {
        let idle = Rc::new(Idle::default());
        let grace = Duration::from_secs(2);
        let young = idle.enter_slow(ago(Duration::from_millis(100)), grace, Slow::Request);
        assert!(
            !idle.close_oldest(now()),
            "a request within its grace is kept"
        );
        assert!(!young.pushed_out());
        let old = idle.enter_slow(ago(Duration::from_secs(3)), grace, Slow::Request);
        let older = idle.enter_slow(ago(Duration::from_secs(5)), grace, Slow::Request);
        assert!(idle.close_oldest(now()));
        assert!(
            older.pushed_out(),
            "the request that began first goes first"
        );
        assert!(!old.pushed_out());
        assert!(idle.close_oldest(now()));
        assert!(old.pushed_out());
        assert!(!idle.close_oldest(now()));
        assert!(!young.pushed_out());
    }

    #[test]
    fn the_connection_waiting_longest_goes_first_a_slow_one_from_the_end_of_its_grace() {
        let idle = Rc::new(Idle::default());
        let grace = Duration::from_secs(1);
        // Idle for 30 s; a request begun 20 s ago (waiting, by this count, 19 s); a
        // connection idle for 10 s; a connection idle since just now.
        let long_idle = idle.enter(ago(Duration::from_secs(30)));
        let slow = idle.enter_slow(ago(Duration::from_secs(20)), grace, Slow::Request);
        let idle_10s = idle.enter(ago(Duration::from_secs(10)));
        let fresh = idle.enter(now());
        assert!(idle.close_oldest(now()));
        assert!(long_idle.pushed_out());
        assert!(idle.close_oldest(now()));
        assert!(slow.pushed_out(), "before connections idle for less long");
        assert!(!idle_10s.pushed_out());
        assert!(idle.close_oldest(now()));
        assert!(idle_10s.pushed_out());
        assert!(idle.close_oldest(now()));
        assert!(fresh.pushed_out());
        assert!(!idle.has_room(now()));
    }

    #[test]
    fn a_request_within_its_grace_gives_no_room() {
        let idle = Rc::new(Idle::default());
        let young = idle.enter_slow(now(), Duration::from_secs(1), Slow::Request);
        assert!(!idle.has_room(now()));
        assert!(!idle.close_oldest(now()));
        // A connection that has just finished its handshake, or its last answer, is idle:
        // that is room, and it goes before the young request.
        let fresh = idle.enter(now());
        assert!(idle.has_room(now()));
        assert!(idle.close_oldest(now()));
        assert!(fresh.pushed_out());
        assert!(!young.pushed_out());
    }

    #[test]
    fn a_newcomer_kept_without_room_is_paid_back_at_the_next_room() {
        let idle = Rc::new(Idle::default());
        let owed = Owed::default();
        // Room was seen, then gone (the idle connection's request arrived) when the newcomer
        // was accepted: 11 open against 10.
        owed.make_room(&idle, now());
        assert_eq!(owed.get(), 1);
        owed.settle(&idle, 11, 10, now());
        assert_eq!(owed.get(), 1, "nothing to close yet");
        let waiting = idle.enter(now());
        owed.settle(&idle, 11, 10, now());
        assert!(waiting.pushed_out(), "the next room pays the debt");
        assert_eq!(owed.get(), 0);
        // A debt is forgotten once the worker is back within its limit.
        owed.make_room(&idle, now());
        owed.settle(&idle, 10, 10, now());
        assert_eq!(owed.get(), 0);
        let other = idle.enter(now());
        owed.settle(&idle, 11, 10, now());
        assert!(!other.pushed_out());
    }

    #[test]
    fn a_trickling_request_keeps_its_place_in_line() {
        let idle = Rc::new(Idle::default());
        let grace = Duration::from_secs(2);
        let since = ago(Duration::from_secs(3));
        // Each read registers the request again (a byte arrived in between): its place in
        // line is still its start, ahead of a request that began later.
        drop(idle.enter_slow(since, grace, Slow::Request));
        let later = idle.enter_slow(ago(Duration::from_millis(2500)), grace, Slow::Request);
        let again = idle.enter_slow(since, grace, Slow::Request);
        assert!(idle.close_oldest(now()));
        assert!(again.pushed_out());
        assert!(!later.pushed_out());
        // It left the line when pushed out: dropping it later removes nothing else.
        drop(again);
        assert_eq!(idle.slow.borrow().len(), 1);
    }
}
