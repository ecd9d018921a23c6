//! A worker's table of TLS handshakes in progress, and who gives way when it is full.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use super::eviction::{Evicted, Eviction};
use super::tls::Progress;
use super::turns::{Turn, Turns};
use crate::config::Limits;
use crate::telemetry;

/// A worker's handshakes in progress: in all, and per source address (IPv6: per /64).
///
/// The table is full at `limits.max_handshakes` (or, for one source, at
/// `limits.max_handshakes_per_source`). A new connection then takes the slot of the
/// handshake that has waited longest for its client (of its own source, when that source
/// is at its cap), which is closed. A handshake whose client has answered (its bytes have
/// arrived, the server has not read them yet) waits for the server, and is kept: when
/// every handshake is the server's turn (a surge the CPU has not caught up with), the new
/// connection queues for a slot in arrival order instead ([`Queued`]), so that work already
/// done is not thrown away; at a source's cap it is closed.
///
/// A flood of handshakes that never finish therefore cannot lock new clients out: a client
/// loses its place only if, while it is the longest-waiting, enough newer connections
/// arrive to fill the table. Holding every slot for the whole `handshake_timeout` would take
/// `max_handshakes / handshake_timeout` new connections per second and per worker (100/s
/// with the defaults); pushing out a client that takes 100 ms to answer takes 10,000/s.
#[derive(Debug, Default)]
pub struct Handshakes {
    next: Cell<u64>,
    /// Live handshakes by admission order.
    live: RefCell<BTreeMap<u64, Slot>>,
    /// Live handshakes of each source, by admission order.
    by_source: RefCell<HashMap<IpAddr, BTreeSet<u64>>>,
    /// Connections waiting for a slot because every handshake was the server's turn.
    queue: Turns,
    /// Slots freed and promised to queued connections that have not taken them yet.
    reserved: Cell<usize>,
    /// `limits.max_handshakes` as of the last admission: a reload that changes it is seen
    /// by the next connection, and slots are only granted below it.
    limit: Cell<usize>,
}

/// A connection waiting in [`Handshakes`]' queue; resolves when a slot is granted, passes a
/// granted slot on if dropped before taking it, and leaves the queue if dropped before.
pub(super) struct Queued {
    table: Rc<Handshakes>,
    turn: Rc<Turn>,
    taken: bool,
}

impl Future for Queued {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.turn.poll_granted(cx)
    }
}

impl Queued {
    /// Takes the granted slot for `source` (the table's limits do not apply: the slot was
    /// freed for this connection).
    pub(super) fn take(mut self, source: IpAddr) -> Handshaking {
        self.taken = true;
        self.table
            .reserved
            .set(self.table.reserved.get().saturating_sub(1));
        self.table.insert(crate::admission::source_key(source))
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if !self.turn.granted() {
            self.table.queue.leave(&self.turn);
        } else if !self.taken {
            self.table
                .reserved
                .set(self.table.reserved.get().saturating_sub(1));
            self.table.grant_free();
        }
    }
}

#[derive(Debug)]
struct Slot {
    source: IpAddr,
    eviction: Rc<Eviction>,
}

/// One handshake in progress; gives its slot back when dropped.
pub(super) struct Handshaking {
    counts: Rc<Handshakes>,
    id: u64,
    eviction: Rc<Eviction>,
}

/// Which limit a new connection met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Full {
    /// `limits.max_handshakes`.
    Worker,
    /// `limits.max_handshakes_per_source`.
    Source,
}

impl Full {
    pub(super) fn key(self) -> &'static str {
        match self {
            Self::Worker => "limits.max_handshakes",
            Self::Source => "limits.max_handshakes_per_source",
        }
    }
}

impl Handshakes {
    /// Admits a handshake from `source`. When a limit is reached, the handshake in its
    /// scope that has waited longest for its client is evicted to make room, and the limit
    /// is returned beside the slot; when none is waiting, the limit refuses the newcomer.
    pub(super) fn admit(
        self: &Rc<Self>,
        source: IpAddr,
        limits: &Limits,
    ) -> Result<(Handshaking, Option<Full>), Full> {
        self.limit.set(limits.max_handshakes.max(1));
        // After a reload that raised the limit, the queue takes the new room first.
        self.grant_free();
        let source = crate::admission::source_key(source);
        let own = self
            .by_source
            .borrow()
            .get(&source)
            .map_or(0, BTreeSet::len);
        let full = if own >= limits.max_handshakes_per_source.max(1) {
            Some(Full::Source)
        } else if self.live.borrow().len() + self.reserved.get() >= limits.max_handshakes.max(1)
            || !self.queue.is_empty()
        {
            Some(Full::Worker)
        } else {
            None
        };
        if let Some(scope) = full {
            let victim = {
                let live = self.live.borrow();
                let silent = |id: &u64| {
                    let since = live.get(id)?.eviction.progress.silent_since()?;
                    Some((since, *id))
                };
                match scope {
                    Full::Source => self
                        .by_source
                        .borrow()
                        .get(&source)
                        .and_then(|ids| ids.iter().filter_map(silent).min()),
                    Full::Worker => live.keys().filter_map(silent).min(),
                }
            };
            match victim {
                Some((_, id)) => self.evict(id),
                // With connections queued and a slot free, the newcomer queues behind them.
                None => return Err(scope),
            }
        }
        Ok((self.insert(source), full))
    }

    fn insert(self: &Rc<Self>, source: IpAddr) -> Handshaking {
        let id = self.next.get();
        self.next.set(id + 1);
        let eviction = Rc::new(Eviction::default());
        self.live.borrow_mut().insert(
            id,
            Slot {
                source,
                eviction: eviction.clone(),
            },
        );
        self.by_source
            .borrow_mut()
            .entry(source)
            .or_default()
            .insert(id);
        Handshaking {
            counts: self.clone(),
            id,
            eviction,
        }
    }

    /// Queues a connection for the next slot freed (see [`Queued`]); a slot free now goes
    /// to the oldest queued connection at once.
    pub(super) fn enqueue(self: &Rc<Self>, limits: &Limits) -> Queued {
        self.limit.set(limits.max_handshakes.max(1));
        let turn = self.queue.join();
        self.grant_free();
        Queued {
            table: self.clone(),
            turn,
            taken: false,
        }
    }

    /// Connections queued for a slot and not granted one yet.
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Promises the free slots, below the current limit, to the oldest queued connections.
    fn grant_free(&self) {
        while self.live.borrow().len() + self.reserved.get() < self.limit.get() {
            if !self.queue.grant_next() {
                break;
            }
            self.reserved.set(self.reserved.get() + 1);
        }
    }

    /// Frees slot `id`, when it is still held.
    fn release(&self, id: u64) -> Option<Slot> {
        let slot = self.live.borrow_mut().remove(&id)?;
        let mut by_source = self.by_source.borrow_mut();
        if let Some(ids) = by_source.get_mut(&slot.source) {
            ids.remove(&id);
            if ids.is_empty() {
                by_source.remove(&slot.source);
            }
        }
        Some(slot)
    }

    fn evict(&self, id: u64) {
        if let Some(slot) = self.release(id) {
            slot.eviction.evict();
            telemetry::pushed_out("handshake");
        }
    }

    /// Handshakes in progress.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.live.borrow().len()
    }
}

impl Handshaking {
    /// Resolves when a newer connection takes this slot.
    pub(super) fn evicted(&self) -> Evicted {
        Evicted(self.eviction.clone())
    }

    /// What the handshake waits for, kept up to date by [`TlsStream::accept`].
    pub(super) fn progress(&self) -> &Progress {
        &self.eviction.progress
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        // An evicted slot was released already, and went to the connection that evicted it.
        if self.counts.release(self.id).is_some() {
            self.counts.grant_free();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::task::Waker;
    use std::time::{Duration, Instant};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn admit(hs: &Rc<Handshakes>, source: &str, limits: &Limits) -> (Handshaking, Option<Full>) {
        hs.admit(ip(source), limits).unwrap()
    }

    /// Marks a handshake as waiting for its client since `ms` milliseconds ago.
    fn waits(h: &Handshaking, ms: u64) {
        h.progress()
            .waiting_since(Instant::now() - Duration::from_millis(ms));
    }

    fn evicted(h: &Handshaking) -> bool {
        h.eviction.evicted.get()
    }

    #[test]
    fn a_source_at_its_cap_replaces_its_own_longest_waiting_handshake() {
        let limits = Limits {
            max_handshakes: 5,
            max_handshakes_per_source: 3,
            ..Limits::default()
        };
        let hs = Rc::new(Handshakes::default());
        let (first, full) = admit(&hs, "192.0.2.1", &limits);
        assert_eq!(full, None);
        let (second, _) = admit(&hs, "192.0.2.1", &limits);
        let (third, _) = admit(&hs, "192.0.2.1", &limits);
        let (other, _) = admit(&hs, "192.0.2.9", &limits);
        waits(&other, 900);
        // Every handshake of the source is being worked on: the newcomer is refused.
        assert_eq!(hs.admit(ip("192.0.2.1"), &limits).err(), Some(Full::Source));
        // The one waiting longest for its client goes, not the oldest.
        waits(&first, 10);
        waits(&second, 50);
        let (fourth, full) = admit(&hs, "192.0.2.1", &limits);
        assert_eq!(full, Some(Full::Source));
        assert!(evicted(&second));
        assert!(!evicted(&first) && !evicted(&third) && !evicted(&fourth));
        assert!(!evicted(&other), "another source's slot is kept");
        assert_eq!(hs.len(), 4);
        // The evicted slot is free already: dropping it later frees nothing else.
        drop(second);
        assert_eq!(hs.len(), 4);
    }

    #[test]
    fn when_every_handshake_is_busy_newcomers_queue_and_take_freed_slots_in_order() {
        let limits = Limits {
            max_handshakes: 2,
            max_handshakes_per_source: 2,
            ..Limits::default()
        };
        let hs = Rc::new(Handshakes::default());
        let (a, _) = admit(&hs, "192.0.2.1", &limits);
        let (b, _) = admit(&hs, "192.0.2.2", &limits);
        assert_eq!(hs.admit(ip("192.0.2.3"), &limits).err(), Some(Full::Worker));
        let first = hs.enqueue(&limits);
        let second = hs.enqueue(&limits);
        let gave_up = hs.enqueue(&limits);
        let third = hs.enqueue(&limits);
        assert_eq!(hs.queued(), 4);
        // A finished handshake's slot goes to the oldest queued connection...
        drop(a);
        assert!(first.turn.granted() && !second.turn.granted());
        // ...and is not taken by a newcomer, which queues behind.
        assert_eq!(hs.admit(ip("192.0.2.9"), &limits).err(), Some(Full::Worker));
        let f = first.take(ip("192.0.2.3"));
        assert_eq!((hs.len(), hs.queued()), (2, 3));
        drop(gave_up);
        drop(b);
        assert!(second.turn.granted());
        // A connection that leaves with a granted slot passes it on, past those who left.
        drop(second);
        assert!(third.turn.granted());
        let t = third.take(ip("192.0.2.4"));
        assert_eq!((hs.len(), hs.queued()), (2, 0));
        drop((f, t));
        assert_eq!(hs.len(), 0);
        // Nobody queued and room: admission is direct again; a slot free when a
        // connection queues is granted at once.
        let (_c, full) = admit(&hs, "192.0.2.5", &limits);
        assert_eq!(full, None);
        let q = hs.enqueue(&limits);
        assert!(q.turn.granted());
    }

    #[test]
    fn a_reload_of_max_handshakes_reaches_the_queue_at_the_next_connection() {
        let two = Limits {
            max_handshakes: 2,
            max_handshakes_per_source: 8,
            ..Limits::default()
        };
        let hs = Rc::new(Handshakes::default());
        let (a, _) = admit(&hs, "192.0.2.1", &two);
        let (b, _) = admit(&hs, "192.0.2.2", &two);
        let q1 = hs.enqueue(&two);
        let q2 = hs.enqueue(&two);
        assert!(!q1.turn.granted() && !q2.turn.granted());
        // Raised to 4: the next connection's admission grants the new room to those
        // queued first (in order), and the newcomer queues behind them.
        let four = Limits {
            max_handshakes: 4,
            ..two
        };
        assert_eq!(hs.admit(ip("192.0.2.3"), &four).err(), Some(Full::Worker));
        assert!(q1.turn.granted() && q2.turn.granted(), "no release needed");
        let t1 = q1.take(ip("192.0.2.4"));
        let t2 = q2.take(ip("192.0.2.5"));
        assert_eq!(hs.len(), 4);
        // Lowered to 2 with 4 in progress: a finished handshake frees no slot for the
        // queue until the table is under the new limit.
        let q3 = hs.enqueue(&two);
        drop(a);
        drop(b);
        assert!(
            !q3.turn.granted(),
            "3 and then 2 in progress: not under 2 yet"
        );
        drop(t1);
        assert!(q3.turn.granted());
        drop(t2);
    }

    #[test]
    fn a_newcomer_still_pushes_out_a_silent_handshake_while_others_queue() {
        let limits = Limits {
            max_handshakes: 2,
            ..Limits::default()
        };
        let hs = Rc::new(Handshakes::default());
        let (a, _) = admit(&hs, "192.0.2.1", &limits);
        let (b, _) = admit(&hs, "192.0.2.2", &limits);
        let queued = hs.enqueue(&limits);
        waits(&b, 5);
        let (c, full) = admit(&hs, "192.0.2.3", &limits);
        assert_eq!(full, Some(Full::Worker));
        assert!(evicted(&b) && !evicted(&a));
        // The evicted slot went to the newcomer, not to the queue.
        drop(b);
        assert!(!queued.turn.granted());
        drop(a);
        assert!(queued.turn.granted());
        // A slot is promised but not taken yet, and one is free: a newcomer takes the free
        // one without pushing out the silent handshake.
        let limits = Limits {
            max_handshakes: 3,
            ..limits
        };
        waits(&c, 5);
        let (_d, full) = admit(&hs, "192.0.2.4", &limits);
        assert_eq!(full, None);
        assert!(!evicted(&c));
    }

    #[test]
    fn a_full_worker_replaces_its_longest_waiting_handshake() {
        let limits = Limits {
            max_handshakes: 3,
            max_handshakes_per_source: 2,
            ..Limits::default()
        };
        let hs = Rc::new(Handshakes::default());
        // An IPv6 host cannot escape its cap by changing the low 64 bits.
        let (x, _) = admit(&hs, "2001:db8::1", &limits);
        let (y, _) = admit(&hs, "2001:db8::2", &limits);
        waits(&x, 5);
        let (_z, full) = admit(&hs, "2001:db8::3", &limits);
        assert_eq!(full, Some(Full::Source));
        assert!(evicted(&x) && !evicted(&y));
        let (a, _) = admit(&hs, "192.0.2.1", &limits);
        assert_eq!(hs.len(), 3);
        assert_eq!(
            hs.admit(ip("192.0.2.2"), &limits).err(),
            Some(Full::Worker),
            "nobody waits: refused"
        );
        waits(&a, 1);
        waits(&y, 2);
        let (_b, full) = admit(&hs, "192.0.2.2", &limits);
        assert_eq!(full, Some(Full::Worker));
        assert!(evicted(&y) && !evicted(&a));
    }

    #[test]
    fn a_handshake_whose_client_answered_is_not_pushed_out() {
        let limits = Limits {
            max_handshakes: 2,
            max_handshakes_per_source: 2,
            ..Limits::default()
        };
        let hs = Rc::new(Handshakes::default());
        let (a, _) = admit(&hs, "192.0.2.1", &limits);
        let (b, _) = admit(&hs, "192.0.2.2", &limits);
        // Both wait, `a` longer; but `a`'s client has answered (its read woke the task).
        waits(&a, 100);
        waits(&b, 10);
        a.progress().answered.wake_by_ref();
        let (_c, full) = admit(&hs, "192.0.2.3", &limits);
        assert_eq!(full, Some(Full::Worker));
        assert!(!evicted(&a), "the server's turn: kept");
        assert!(evicted(&b), "waiting on a silent client: pushed out");
        // Now only `a` (answered) and the newcomer (working) are left: refused.
        assert_eq!(hs.admit(ip("192.0.2.4"), &limits).err(), Some(Full::Worker));
    }

    #[test]
    fn finished_handshakes_give_their_slots_back() {
        let limits = Limits {
            max_handshakes: 3,
            max_handshakes_per_source: 3,
            ..Limits::default()
        };
        let hs = Rc::new(Handshakes::default());
        let held: Vec<_> = (0..3).map(|_| admit(&hs, "192.0.2.1", &limits).0).collect();
        assert!(hs.admit(ip("192.0.2.1"), &limits).is_err());
        drop(held);
        assert_eq!(hs.len(), 0);
        assert!(
            hs.by_source.borrow().is_empty(),
            "the table forgets the source"
        );
        let (_s, full) = admit(&hs, "192.0.2.1", &limits);
        assert_eq!(full, None);
    }

    #[test]
    fn the_evicted_future_resolves_only_after_eviction() {
        let limits = Limits {
            max_handshakes: 1,
            ..Limits::default()
        };
        let hs = Rc::new(Handshakes::default());
        let (old, _) = admit(&hs, "192.0.2.1", &limits);
        waits(&old, 1);
        let mut evicted = std::pin::pin!(old.evicted());
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(evicted.as_mut().poll(&mut cx).is_pending());
        let (_new, full) = admit(&hs, "192.0.2.2", &limits);
        assert_eq!(full, Some(Full::Worker));
        assert!(evicted.as_mut().poll(&mut cx).is_ready());
    }
}
