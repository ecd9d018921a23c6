//! The daemon: one monoio runtime per worker thread, each accepting on its own
//! `SO_REUSEPORT` socket and serving its connections to completion, with no lock on the
//! request path. Writes leave the workers only through the committer's queue.
//!
//! [`run`] takes already-bound listeners and a shutdown signal, so tests start a real
//! server on port 0 in-process or through the binary alike.

pub mod conn;
mod eviction;
pub mod gate;
pub mod handshakes;
pub mod idle;
pub mod listener;
pub mod tls;
mod turns;
pub mod worker;

use std::net::TcpListener;
use std::sync::Arc;

use crate::app::SharedRegistry;

/// Starts shutdown of every worker when triggered (or when its last clone is dropped).
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: Arc<std::sync::Mutex<Option<flume::Sender<()>>>>,
}

/// The workers' side of [`Shutdown`]: resolves when shutdown starts.
#[derive(Debug, Clone)]
pub struct ShutdownSignal {
    rx: flume::Receiver<()>,
}

impl ShutdownSignal {
    /// Waits until shutdown starts.
    pub async fn wait(&self) {
        // Only disconnection is ever signalled; no message is sent.
        let _ = self.rx.recv_async().await;
    }

    /// True once shutdown started.
    pub fn is_set(&self) -> bool {
        self.rx.is_disconnected()
    }
}

/// A new shutdown pair.
pub fn shutdown_pair() -> (Shutdown, ShutdownSignal) {
    let (tx, rx) = flume::bounded(1);
    (
        Shutdown {
            tx: Arc::new(std::sync::Mutex::new(Some(tx))),
        },
        ShutdownSignal { rx },
    )
}

impl Shutdown {
    /// Starts shutdown (idempotent).
    pub fn trigger(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
    }
}

/// Serves on `listeners` (one worker each) until `signal` fires, then drains and returns.
/// `on_ready` is called once every worker is accepting; if a worker cannot start,
/// `shutdown` stops the others and the error is returned.
pub fn run(
    listeners: Vec<TcpListener>,
    registry: Arc<SharedRegistry>,
    shutdown: &Shutdown,
    signal: ShutdownSignal,
    on_ready: impl FnOnce(&[worker::Started]),
) -> std::io::Result<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut threads = Vec::with_capacity(listeners.len());
    for (index, listener) in listeners.into_iter().enumerate() {
        let registry = registry.clone();
        let signal = signal.clone();
        let ready = ready_tx.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("enrollgate-w{index}"))
                .spawn(move || worker::run(index, listener, registry, signal, ready))?,
        );
    }
    drop(ready_tx);
    let mut started = Vec::with_capacity(threads.len());
    let mut failure = None;
    for _ in 0..threads.len() {
        match ready_rx.recv() {
            Ok(Ok(s)) => started.push(s),
            Ok(Err(e)) => failure = Some(e),
            Err(_) => break,
        }
    }
    if failure.is_none() && started.len() == threads.len() {
        on_ready(&started);
    } else {
        shutdown.trigger();
    }
    let mut result = Ok(());
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(_) => result = Err(std::io::Error::other("a worker thread panicked")),
        }
    }
    match failure {
        Some(e) => Err(e),
        None => result,
    }
}
