//! A worker's memory gate: where new connections wait, holding nothing but their socket,
//! while the process is at the connection ceiling `limits.max_memory` sets
//! ([`crate::ops::memory`]).
//!
//! A connection is *admitted* before its TLS handshake allocates anything. While the
//! ceiling is not reached, admission is immediate. At the ceiling, newcomers queue here in
//! arrival order and the gate closes the connection idle longest for each of them, as at
//! `limits.max_connections`; they are admitted as admitted connections close. Waiting here
//! rather than in the kernel's accept queue matters: a full accept queue drops the
//! handshakes' last ACKs, and clients that believe they are connected are eventually
//! reset. A waiting connection costs a socket and a task; it is bounded by
//! `limits.max_connections` and waits at most `limits.idle_timeout`. Each worker admits up
//! to [`FLOOR_PER_WORKER`] connections whatever the ceiling.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::conn::Idle;
use crate::ops::memory::{MemoryGuard, FLOOR_PER_WORKER};

/// How often a gate with waiters looks at the ceiling again (it moves with the sampler,
/// every 10 ms, and with other workers' connections).
const TICK: Duration = Duration::from_millis(5);

/// One worker's gate.
#[derive(Debug)]
pub struct Gate {
    memory: Arc<MemoryGuard>,
    /// This worker's admitted connections.
    admitted: Cell<usize>,
    waiting: RefCell<VecDeque<Rc<Ticket>>>,
    ticking: Cell<bool>,
}

#[derive(Debug, Default)]
struct Ticket {
    admitted: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// An admitted connection; gives its place back when dropped.
#[derive(Debug)]
pub struct Admitted(Rc<Gate>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.admitted.set(self.0.admitted.get().saturating_sub(1));
        self.0.memory.closed();
        self.0.pump();
    }
}

impl Gate {
    /// A gate counting against `memory`.
    pub fn new(memory: Arc<MemoryGuard>) -> Rc<Self> {
        Rc::new(Self {
            memory,
            admitted: Cell::new(0),
            waiting: RefCell::default(),
            ticking: Cell::new(false),
        })
    }

    fn may_admit(&self) -> bool {
        self.admitted.get() < FLOOR_PER_WORKER || !self.memory.at_ceiling()
    }

    fn take_place(self: &Rc<Self>) -> Admitted {
        self.admitted.set(self.admitted.get() + 1);
        self.memory.opened();
        Admitted(self.clone())
    }

    /// Admits waiters in arrival order while there is room; skips those that left.
    fn pump(&self) {
        while self.may_admit() {
            let Some(ticket) = self.waiting.borrow_mut().pop_front() else {
                return;
            };
            self.memory.wait_ended();
            if Rc::strong_count(&ticket) == 1 {
                continue;
            }
            ticket.admitted.set(true);
            self.admitted.set(self.admitted.get() + 1);
            self.memory.opened();
            let waker = ticket.waker.borrow_mut().take();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }

    /// Connections waiting.
    pub fn waiting(&self) -> usize {
        self.waiting.borrow().len()
    }

    /// Admits a new connection, at once when there is room, else after the connections
    /// ahead of it. `None` when it waited `limit` in vain. While connections wait, the
    /// connection idle longest in `idle` is closed for each newcomer, and idle connections
    /// are closed while the open ones exceed a lowered ceiling.
    pub async fn admit(self: &Rc<Self>, idle: &Rc<Idle>, limit: Duration) -> Option<Admitted> {
        // Room made since the last tick goes to those already waiting first.
        self.pump();
        if self.waiting.borrow().is_empty() && self.may_admit() {
            return Some(self.take_place());
        }
        // Here the gate is at the ceiling (pump admits while there is room).
        let ticket = Rc::new(Ticket::default());
        self.waiting.borrow_mut().push_back(ticket.clone());
        self.memory.wait_started();
        idle.close_oldest();
        self.start_ticking(idle);
        let waiter = Waiter {
            gate: self.clone(),
            ticket,
            taken: false,
        };
        monoio::select! {
            admitted = waiter => admitted,
            _ = monoio::time::sleep(limit) => None,
        }
    }

    /// While connections wait: admit what the ceiling allows, and close idle connections
    /// to make room for them and to come down to a lowered ceiling.
    fn start_ticking(self: &Rc<Self>, idle: &Rc<Idle>) {
        if self.ticking.replace(true) {
            return;
        }
        let (gate, idle) = (self.clone(), idle.clone());
        monoio::spawn(async move {
            while gate.waiting() > 0 {
                monoio::time::sleep(TICK).await;
                // Room for the connections over a lowered ceiling and for those waiting.
                let shed = (gate.memory.excess() + gate.waiting())
                    .min(gate.admitted.get().saturating_sub(FLOOR_PER_WORKER));
                for _ in 0..shed {
                    if !idle.close_oldest() {
                        break;
                    }
                }
                gate.pump();
            }
            gate.ticking.set(false);
        });
    }
}

/// Waits for its ticket; an admission it did not take (the wait was given up at the
/// moment it came) is given back.
struct Waiter {
    gate: Rc<Gate>,
    ticket: Rc<Ticket>,
    taken: bool,
}

impl Future for Waiter {
    type Output = Option<Admitted>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.ticket.admitted.get() {
            self.taken = true;
            return Poll::Ready(Some(Admitted(self.gate.clone())));
        }
        *self.ticket.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self.ticket.admitted.get() {
            if !self.taken {
                drop(Admitted(self.gate.clone()));
            }
            return;
        }
        // Gave up waiting: leave the queue, so that nobody makes room for it.
        let before = self.gate.waiting.borrow().len();
        self.gate
            .waiting
            .borrow_mut()
            .retain(|t| !Rc::ptr_eq(t, &self.ticket));
        if self.gate.waiting.borrow().len() < before {
            self.gate.memory.wait_ended();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
    }

    #[test]
    fn without_a_ceiling_every_connection_is_admitted_at_once() {
        rt().block_on(async {
            let memory = Arc::new(MemoryGuard::default());
            let gate = Gate::new(memory.clone());
            let idle = Rc::new(Idle::default());
            let held = admit_n(&gate, &idle, FLOOR_PER_WORKER * 3).await;
            assert_eq!(memory.open(), FLOOR_PER_WORKER * 3);
            drop(held);
            assert_eq!(memory.open(), 0);
        });
    }

    #[test]
    fn at_the_ceiling_newcomers_wait_in_order_and_enter_as_others_leave() {
        rt().block_on(async {
            let memory = Arc::new(MemoryGuard::default());
            let gate = Gate::new(memory.clone());
            let idle = Rc::new(Idle::default());
            let mut held = admit_n(&gate, &idle, FLOOR_PER_WORKER).await;
            memory.set_ceiling_for_test(FLOOR_PER_WORKER);
            let order = Rc::new(RefCell::new(Vec::new()));
            let mut tasks = Vec::new();
            for i in 0..3 {
                let (gate, idle, order) = (gate.clone(), idle.clone(), order.clone());
                tasks.push(monoio::spawn(async move {
                    let a = gate.admit(&idle, Duration::from_secs(5)).await;
                    order.borrow_mut().push(i);
                    a
                }));
                monoio::time::sleep(Duration::from_millis(1)).await;
            }
            assert_eq!((gate.waiting(), memory.waiting()), (3, 3));
            assert!(order.borrow().is_empty(), "nobody enters at the ceiling");
            // Two leave: the first two waiters enter, in order.
            held.pop();
            held.pop();
            let first = tasks.remove(0).await.expect("first admitted");
            let second = tasks.remove(0).await.expect("second admitted");
            assert_eq!(*order.borrow(), vec![0, 1]);
            assert_eq!(memory.open(), FLOOR_PER_WORKER);
            // The ceiling is lifted: the last one enters on the next tick.
            memory.set_ceiling_for_test(usize::MAX);
            let third = tasks.remove(0).await.expect("third admitted");
            assert_eq!(memory.open(), FLOOR_PER_WORKER + 1);
            drop((first, second, third, held));
            assert_eq!(memory.open(), 0);
        });
    }

    #[test]
    fn a_waiter_that_gives_up_leaves_no_place_taken() {
        rt().block_on(async {
            let memory = Arc::new(MemoryGuard::default());
            let gate = Gate::new(memory.clone());
            let idle = Rc::new(Idle::default());
            let held = admit_n(&gate, &idle, FLOOR_PER_WORKER).await;
            memory.set_ceiling_for_test(FLOOR_PER_WORKER);
            let gave_up = gate.admit(&idle, Duration::from_millis(20)).await;
            assert!(gave_up.is_none());
            assert_eq!(memory.open(), FLOOR_PER_WORKER);
            // It left the queue at once: nothing is closed or held for it.
            assert_eq!((gate.waiting(), memory.waiting()), (0, 0));
            // The abandoned ticket is skipped, not admitted.
            drop(held);
            assert_eq!(memory.open(), 0);
            assert_eq!((gate.waiting(), memory.waiting()), (0, 0));
        });
    }

    /// `n` connections admitted with no wait.
    async fn admit_n(gate: &Rc<Gate>, idle: &Rc<Idle>, n: usize) -> Vec<Admitted> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(gate.admit(idle, Duration::ZERO).await.expect("admitted"));
        }
        v
    }
}
