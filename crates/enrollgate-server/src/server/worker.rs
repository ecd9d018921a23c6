//! One worker: a monoio runtime (io_uring, or epoll where io_uring is refused) on its own
//! thread, accepting on its own socket.

use std::cell::{Cell, RefCell};
use std::net::TcpListener;
use std::rc::Rc;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use crate::app::{SharedRegistry, WorkerCtx};

use super::{conn, ShutdownSignal};

/// What a worker reports once it accepts.
#[derive(Debug, Clone)]
pub struct Started {
    /// Worker number.
    pub index: usize,
    /// True when the runtime uses io_uring, false for epoll.
    pub io_uring: bool,
}

/// This worker's context, rebuilt when the registry's generation moves (SIGHUP).
struct View {
    index: usize,
    registry: Arc<SharedRegistry>,
    generation: Cell<u64>,
    ctx: RefCell<Rc<WorkerCtx>>,
}

impl View {
    fn new(index: usize, registry: Arc<SharedRegistry>) -> std::io::Result<Self> {
        let (generation, shared) = registry.current();
        let ctx = WorkerCtx::new(shared, index)
            .map_err(|e| std::io::Error::other(format!("worker {index}: {e}")))?;
        Ok(Self {
            index,
            registry,
            generation: Cell::new(generation),
            ctx: RefCell::new(Rc::new(ctx)),
        })
    }

    /// The context for a new connection: one atomic load when nothing changed.
    fn ctx(&self) -> Rc<WorkerCtx> {
        if self.registry.generation() != self.generation.get() {
            let (generation, shared) = self.registry.current();
            self.generation.set(generation);
            match WorkerCtx::new(shared, self.index) {
                Ok(ctx) => *self.ctx.borrow_mut() = Rc::new(ctx),
                Err(e) => {
                    tracing::error!(worker = self.index, error = %e, "keeping the previous configuration")
                }
            }
        }
        self.ctx.borrow().clone()
    }
}

/// Runs worker `index` until shutdown.
pub fn run(
    index: usize,
    listener: TcpListener,
    registry: Arc<SharedRegistry>,
    signal: ShutdownSignal,
    ready: Sender<std::io::Result<Started>>,
) -> std::io::Result<()> {
    let io_uring = monoio::utils::detect_uring();
    let mut rt = match runtime(true).or_else(|_| runtime(false)) {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(std::io::Error::new(
                e.kind(),
                format!("worker {index}: runtime: {e}"),
            )));
            return Err(e);
        }
    };
    rt.block_on(async move {
        let setup = (|| {
            let view = View::new(index, registry)?;
            let listener = monoio::net::TcpListener::from_std(listener)?;
            Ok::<_, std::io::Error>((view, listener))
        })();
        let (view, listener) = match setup {
            Ok(v) => v,
            Err(e) => {
                let _ = ready.send(Err(std::io::Error::new(e.kind(), e.to_string())));
                return Err(e);
            }
        };
        let _ = ready.send(Ok(Started { index, io_uring }));
        {
            // Proof of life for the watchdog: only this runtime can advance the counter.
            let heartbeats = view.ctx().shared.heartbeats.clone();
            let signal = signal.clone();
            monoio::spawn(async move {
                while !signal.is_set() {
                    if let Some(h) = heartbeats.get(index) {
                        h.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    monoio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            });
        }
        let open = Rc::new(Cell::new(0usize));
        // The memory guard is the same across reloads: it counts every worker's connections.
        let tables = Rc::new(conn::Tables::new(view.ctx().shared.memory.clone()));
        let (warn_limit, warn_accept) = (Throttle::default(), Throttle::default());
        let paused = Cell::new(0u64);
        let owed = super::idle::Owed::default();
        loop {
            let limits = view.ctx().shared.config.limits;
            owed.settle(&tables.idle, open.get(), limits.max_connections, Instant::now());
            // At max_connections a newcomer, once accepted, closes the connection that has
            // waited longest for its client (idle, or a slow request past its grace; it
            // closes as soon as this task yields); nothing is closed ahead of a newcomer.
            // With none, or with max_handshakes connections already waiting at the memory
            // gate, newcomers wait in the kernel's accept queue until a connection closes:
            // nothing is accepted only to be dropped.
            let gate_full = tables.gate.waiting() >= limits.max_handshakes;
            let at_limit = !gate_full && open.get() >= limits.max_connections;
            let full = at_limit && !tables.idle.has_room(Instant::now());
            if full || gate_full {
                if full {
                    paused.set(paused.get() + 1);
                    if warn_limit.due() {
                        tracing::warn!(worker = index, max_connections = limits.max_connections, pauses = paused.replace(0), "connection limit reached and no connection idle; new connections wait in the accept queue");
                    }
                }
                monoio::select! {
                    _ = monoio::time::sleep(std::time::Duration::from_millis(5)) => continue,
                    _ = signal.wait() => break,
                }
            }
            let spawn = |tcp: monoio::net::TcpStream, addr: std::net::SocketAddr| {
                let ctx = view.ctx();
                open.set(open.get() + 1);
                crate::telemetry::connections(1.0);
                let guard = OpenGuard(open.clone());
                let signal = signal.clone();
                let tables = tables.clone();
                let task = async move {
                    conn::serve(&ctx, tcp, addr, &signal, &tables).await;
                    drop(guard);
                };
                debug_assert!(std::mem::size_of_val(&task) <= 2048, "a connection task is {} bytes before admission", std::mem::size_of_val(&task));
                monoio::spawn(task);
            };
            monoio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, addr)) => {
                        // The room seen above may be gone (that idle connection's request
                        // arrived): the newcomer is then kept, one over the limit, and the
                        // next room goes to it (`Owed`).
                        if at_limit {
                            owed.make_room(&tables.idle, Instant::now());
                        }
                        spawn(tcp, addr)
                    }
                    Err(e) => {
                        // Out of descriptors or a transient error: back off briefly, and
                        // say so at most once a second.
                        if warn_accept.due() {
                            tracing::warn!(worker = index, error = %e, "accept failed");
                        }
                        monoio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                },
                _ = signal.wait() => break,
            }
        }
        drop(listener);
        let deadline = Instant::now() + view.ctx().shared.config.shutdown_grace;
        while open.get() > 0 && Instant::now() < deadline {
            monoio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if open.get() > 0 {
            tracing::warn!(worker = index, open = open.get(), "closing connections still open after the grace period");
        }
        Ok(())
    })
}

/// The worker's runtime. `tuned`: an io_uring that runs completion work when the worker
/// enters the kernel rather than interrupting it for each one (`IORING_SETUP_COOP_TASKRUN`),
/// and knows that only this thread submits (`IORING_SETUP_SINGLE_ISSUER`); kernels before
/// 6.0 refuse these, and get the default ring.
pub fn runtime(
    tuned: bool,
) -> std::io::Result<
    monoio::FusionRuntime<
        monoio::time::TimeDriver<monoio::IoUringDriver>,
        monoio::time::TimeDriver<monoio::LegacyDriver>,
    >,
> {
    let mut builder = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer();
    if tuned {
        let mut urb = io_uring::IoUring::builder();
        urb.setup_coop_taskrun().setup_single_issuer();
        builder = builder.uring_builder(urb);
    }
    builder.build()
}

struct OpenGuard(Rc<Cell<usize>>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
        crate::telemetry::connections(-1.0);
    }
}

/// Lets a repeated warning through at most once a second, so a flood does not become a
/// flood of log lines.
#[derive(Default)]
struct Throttle(Cell<Option<Instant>>);

impl Throttle {
    fn due(&self) -> bool {
        let now = Instant::now();
        match self.0.get() {
            Some(last) if now.duration_since(last) < std::time::Duration::from_secs(1) => false,
            _ => {
                self.0.set(Some(now));
                true
            }
        }
    }
}
