//! A first-come queue of connections waiting for a place: the memory gate
//! ([`super::gate`]) and the handshake table ([`super::handshakes::Handshakes`]) each keep one.
//! The owner decides when there is room and grants the oldest turn; a connection that
//! gives up leaves the queue, so nobody is granted a place for it.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// One connection's place in a queue.
#[derive(Debug, Default)]
pub struct Turn {
    granted: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Turn {
    /// True once the owner granted this turn.
    pub fn granted(&self) -> bool {
        self.granted.get()
    }

    /// Ready once granted; otherwise the task is woken when it is.
    pub fn poll_granted(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.granted.get() {
            return Poll::Ready(());
        }
        *self.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Turns not granted yet, oldest first.
#[derive(Debug, Default)]
pub struct Turns(RefCell<VecDeque<Rc<Turn>>>);

impl Turns {
    /// Queues a new turn.
    pub fn join(&self) -> Rc<Turn> {
        let turn = Rc::new(Turn::default());
        self.0.borrow_mut().push_back(turn.clone());
        turn
    }

    /// Grants the oldest turn and wakes its task; false when none waits.
    pub fn grant_next(&self) -> bool {
        let Some(turn) = self.0.borrow_mut().pop_front() else {
            return false;
        };
        turn.granted.set(true);
        let waker = turn.waker.borrow_mut().take();
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Takes a turn that was not granted out of the queue; false when it was not there.
    pub fn leave(&self, turn: &Rc<Turn>) -> bool {
        let mut queue = self.0.borrow_mut();
        let before = queue.len();
        queue.retain(|t| !Rc::ptr_eq(t, turn));
        queue.len() < before
    }

    /// Turns waiting.
    pub fn len(&self) -> usize {
        self.0.borrow().len()
    }

    /// True when no turn waits.
    pub fn is_empty(&self) -> bool {
        self.0.borrow().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_are_granted_oldest_first_and_those_who_left_are_skipped() {
        let q = Turns::default();
        let (a, b, c) = (q.join(), q.join(), q.join());
        assert!(q.leave(&b));
        assert!(!q.leave(&b), "already gone");
        assert!(q.grant_next());
        assert!(a.granted() && !c.granted());
        assert!(q.grant_next());
        assert!(c.granted() && !b.granted());
        assert!(!q.grant_next());
        assert!(q.is_empty());
    }
}
