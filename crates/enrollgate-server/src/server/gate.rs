//! A worker's memory gate: where new connections wait, holding nothing but their socket,
//! while the process is at the connection ceiling `limits.max_memory` sets
//! ([`crate::ops::memory`]).
//!
//! A connection is *admitted* before its TLS handshake allocates anything. While the
//! ceiling is not reached, admission is immediate. At the ceiling, newcomers queue here in
//! arrival order and the gate closes the connection that has waited longest for its client
//! (idle, or a slow request past its grace: [`Idle`]) for each of them, as at
//! `limits.max_connections`; they are admitted as admitted connections close. Waiting here
//! rather than in the kernel's accept queue matters: a full accept queue drops the
//! handshakes' last ACKs, and clients that believe they are connected are eventually
//! reset. A waiting connection costs a socket and a task of at most 2 KiB; at most
//! `limits.max_handshakes` wait per worker (then the worker stops accepting), each at most
//! `limits.idle_timeout`. Each worker admits up
//! to [`FLOOR_PER_WORKER`] connections whatever the ceiling.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::idle::Idle;
use super::turns::{Turn, Turns};
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
    waiting: Turns,
    ticking: Cell<bool>,
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
            waiting: Turns::default(),
            ticking: Cell::new(false),
        })
    }

    fn may_admit(&self) -> bool {
        self.admitted.get() < FLOOR_PER_WORKER || !self.memory.at_ceiling()
    }

    /// Counts one more admitted connection (the [`Admitted`] guard gives it back).
    fn count_in(&self) {
        self.admitted.set(self.admitted.get() + 1);
        self.memory.opened();
    }

    /// Admits waiters in arrival order while there is room.
    fn pump(&self) {
        while self.may_admit() && self.waiting.grant_next() {
            self.memory.wait_ended();
            self.count_in();
        }
    }

    /// Connections waiting.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Admits a new connection, at once when there is room, else after the connections
    /// ahead of it. `None` when it waited `limit` in vain. While connections wait, the
    /// connection waiting longest in `idle` is closed for each newcomer, and such connections
    /// are closed while the open ones exceed a lowered ceiling.
    pub async fn admit(self: &Rc<Self>, idle: &Rc<Idle>, limit: Duration) -> Option<Admitted> {
        // Room made since the last tick goes to those already waiting first.
        self.pump();
        if self.waiting.is_empty() && self.may_admit() {
            self.count_in();
            return Some(Admitted(self.clone()));
        }
        // Here the gate is at the ceiling (pump admits while there is room).
        let turn = self.waiting.join();
        self.memory.wait_started();
        idle.close_oldest(std::time::Instant::now());
        self.start_ticking(idle);
        let waiter = Waiter {
            gate: self.clone(),
            turn,
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
                    if !idle.close_oldest(std::time::Instant::now()) {
                        break;
                    }
                }
                gate.pump();
            }
            gate.ticking.set(false);
        });
    }
}

/// Waits for its turn; an admission it did not take (the wait was given up at the moment
/// it came) is given back, and a turn given up leaves the queue.
struct Waiter {
    gate: Rc<Gate>,
    turn: Rc<Turn>,
    taken: bool,
}

impl Future for Waiter {
    type Output = Option<Admitted>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.turn.poll_granted(cx).is_pending() {
            return Poll::Pending;
        }
        self.taken = true;
        Poll::Ready(Some(Admitted(self.gate.clone())))
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self.turn.granted() {
            if !self.taken {
                drop(Admitted(self.gate.clone()));
            }
        } else if self.gate.waiting.leave(&self.turn) {
            self.gate.memory.wait_ended();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A guard with no ceiling, a gate on it, an empty idle table.
    fn parts() -> (Arc<MemoryGuard>, Rc<Gate>, Rc<Idle>) {
        let memory = Arc::new(MemoryGuard::default());
        (memory.clone(), Gate::new(memory), Rc::new(Idle::default()))
    }

    fn rt() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
    }

    #[test]
    fn without_a_ceiling_every_connection_is_admitted_at_once() {
        rt().block_on(async {
            let (memory, gate, idle) = parts();
            let held = admit_n(&gate, &idle, FLOOR_PER_WORKER * 3).await;
            assert_eq!(memory.open(), FLOOR_PER_WORKER * 3);
            drop(held);
            assert_eq!(memory.open(), 0);
        });
    }

    #[test]
    fn at_the_ceiling_newcomers_wait_in_order_and_enter_as_others_leave() {
        rt().block_on(async {
            let (memory, gate, idle) = parts();
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
            let (memory, gate, idle) = parts();
            let held = admit_n(&gate, &idle, FLOOR_PER_WORKER).await;
            memory.set_ceiling_for_test(FLOOR_PER_WORKER);
            let gave_up = gate.admit(&idle, Duration::from_millis(20)).await;
            assert!(gave_up.is_none());
            assert_eq!(memory.open(), FLOOR_PER_WORKER);
            // It left the queue at once: nothing is closed or held for it.
            assert_eq!((gate.waiting(), memory.waiting()), (0, 0));
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
