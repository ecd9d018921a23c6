//! How a connection learns that a newer one took its place in one of its worker's tables
//! (handshakes in progress, connections waiting for their client).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::tls::Progress;

/// Tells a connection that a newer one took its place.
#[derive(Debug, Default)]
pub(super) struct Eviction {
    pub(super) evicted: Cell<bool>,
    waker: RefCell<Option<Waker>>,
    /// What the handshake waits for (handshakes only).
    pub(super) progress: Progress,
}

impl Eviction {
    pub(super) fn evict(&self) {
        self.evicted.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// Resolves once the connection holding it has been evicted.
pub(super) struct Evicted(pub(super) Rc<Eviction>);

impl Future for Evicted {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.evicted.get() {
            return Poll::Ready(());
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}
