//! One client connection: TLS handshake (bounded in time), then HTTP/1.1 requests with
//! keep-alive and pipelining, each bounded in size and time.
//!
//! | limit | what happens |
//! |---|---|
//! | `handshake_timeout` | the connection is closed |
//! | `idle_timeout` (no request started) | the connection is closed |
//! | `header_timeout` (head started, not complete) | `408`-less close (slowloris) |
//! | `max_header_bytes` | `431 HEADERS_TOO_LARGE`, closed |
//! | `max_body_bytes` | `413 REQUEST_TOO_LARGE` before the body is read, closed |
//! | `body_timeout` | the connection is closed |
//! | `write_timeout` (a client that stops reading) | the connection is closed |
//! | `max_handshakes` (per worker) | the handshake waiting longest for its client is closed to make room; with none waiting (every handshake is the server's turn), the new connection queues for a slot, holding only its socket, at most `idle_timeout` |
//! | `max_handshakes_per_source` (per worker) | that source's handshake waiting longest for its client is closed to make room; with none waiting, the new connection is closed |
//! | `max_connections` (per worker, in `worker.rs`) | a new connection, once accepted, closes the one that has waited longest for its client: idle between requests, or a request still arriving past `slow_request_grace` (counted from its end); with none, new connections wait in the kernel's accept queue |
//! | `max_memory` (process, in `gate.rs`) | at the connection ceiling, a new connection waits (holding only its socket, at most `idle_timeout`) and the connection idle longest is closed to make room |

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use super::gate::Gate;
use super::tls::{Progress, TlsStream};
use super::turns::{Turn, Turns};
use super::ShutdownSignal;
use crate::api::{self, ApiError, Peer, Request};
use crate::app::WorkerCtx;
use crate::config::Limits;
use crate::http::{parse_head, BodyKind, Head, HeadError, Parsed, Response};
use crate::pki::fingerprint;
use crate::telemetry;

enum Next {
    /// A request head and the bytes it took.
    Head(Head, usize),
    /// The connection ended or timed out: close quietly.
    Close,
    /// A newcomer took this idle connection's place: close at once (a close_notify if the
    /// socket takes it now, no waiting on a client that does not read).
    PushedOut,
    /// Answer this error and close.
    Refuse(ApiError),
}

fn request_id() -> String {
    crate::ids::new_id().unwrap_or_else(|_| "-".into())
}

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
struct Queued {
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
    fn take(mut self, source: IpAddr) -> Handshaking {
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
struct Handshaking {
    counts: Rc<Handshakes>,
    id: u64,
    eviction: Rc<Eviction>,
}

/// Which limit a new connection met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Full {
    /// `limits.max_handshakes`.
    Worker,
    /// `limits.max_handshakes_per_source`.
    Source,
}

impl Full {
    fn key(self) -> &'static str {
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
    fn admit(
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
    fn enqueue(self: &Rc<Self>, limits: &Limits) -> Queued {
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
    fn evicted(&self) -> Evicted {
        Evicted(self.eviction.clone())
    }

    /// What the handshake waits for, kept up to date by [`TlsStream::accept`].
    fn progress(&self) -> &Progress {
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
struct Waiting {
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

    fn enter(self: &Rc<Self>) -> Waiting {
        self.enter_since(Instant::now())
    }

    fn enter_since(self: &Rc<Self>, since: Instant) -> Waiting {
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
    fn enter_slow(self: &Rc<Self>, since: Instant, grace: Duration, what: Slow) -> Waiting {
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
    /// requests past their grace.
    fn longest(&self) -> Option<Longest> {
        let idle = self.live.borrow().first_key_value().map(|(k, _)| k.0);
        let slow = self
            .slow
            .borrow()
            .first_key_value()
            .map(|(k, _)| k.0)
            .filter(|at| *at <= Instant::now());
        match (idle, slow) {
            (Some(i), Some(s)) if s < i => Some(Longest::Slow),
            (Some(_), _) => Some(Longest::Idle),
            (None, Some(_)) => Some(Longest::Slow),
            (None, None) => None,
        }
    }

    /// Whether a newcomer could take a place now ([`Idle::close_oldest`] would close one).
    pub fn has_room(&self) -> bool {
        self.longest().is_some()
    }

    /// Closes the connection that has waited longest for its client, for a newcomer that is
    /// there; false when there is none.
    pub fn close_oldest(&self) -> bool {
        let oldest = match self.longest() {
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
    fn evicted(&self) -> Evicted {
        Evicted(self.eviction.clone())
    }

    fn pushed_out(&self) -> bool {
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
    pub fn make_room(&self, idle: &Idle) {
        if !idle.close_oldest() {
            self.0.set(self.0.get() + 1);
        }
    }

    /// Pays back what room there is now; forgets the debt once `open` is within `max`.
    pub fn settle(&self, idle: &Idle, open: usize, max: usize) {
        if open <= max {
            self.0.set(0);
            return;
        }
        while self.0.get() > 0 && idle.close_oldest() {
            self.0.set(self.0.get() - 1);
        }
    }

    /// Places owed.
    #[cfg(test)]
    fn get(&self) -> usize {
        self.0.get()
    }
}

/// A worker's connection tables: the memory gate, handshakes in progress and connections
/// between requests.
#[derive(Debug)]
pub struct Tables {
    /// Where connections wait while the process is at its memory ceiling.
    pub gate: Rc<Gate>,
    /// Handshakes in progress.
    pub handshakes: Rc<Handshakes>,
    /// Connections waiting for a request.
    pub idle: Rc<Idle>,
}

impl Tables {
    /// Empty tables whose gate counts against `memory`.
    pub fn new(memory: std::sync::Arc<crate::ops::memory::MemoryGuard>) -> Self {
        Self {
            gate: Gate::new(memory),
            handshakes: Rc::default(),
            idle: Rc::default(),
        }
    }
}

/// Tells a connection that a newer one took its place.
#[derive(Debug, Default)]
struct Eviction {
    evicted: Cell<bool>,
    waker: RefCell<Option<Waker>>,
    /// What the handshake waits for (handshakes only).
    progress: Progress,
}

impl Eviction {
    fn evict(&self) {
        self.evicted.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// Resolves once the connection holding it has been evicted.
struct Evicted(Rc<Eviction>);

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

/// Serves one connection to its end. `tables` holds this worker's handshakes in progress
/// (see [`Handshakes`] for what happens at `limits.max_handshakes`) and its connections
/// between requests (see [`Idle`]).
pub async fn serve(
    ctx: &WorkerCtx,
    tcp: TcpStream,
    addr: SocketAddr,
    signal: &ShutdownSignal,
    tables: &Tables,
) {
    let limits = ctx.shared.config.limits;
    // Nothing is allocated for the connection before the memory gate admits it.
    let admitted = monoio::select! {
        a = tables.gate.admit(&tables.idle, limits.idle_timeout) => a,
        _ = signal.wait() => None,
    };
    let Some(admitted) = admitted else {
        telemetry::handshake("refused", None);
        tracing::debug!(%addr, "closed after waiting for the memory ceiling (limits.max_memory)");
        return;
    };
    let in_progress = match tables.handshakes.admit(addr.ip(), &limits) {
        Ok((slot, full)) => {
            if let Some(full) = full {
                tracing::debug!(%addr, limit = full.key(), "handshake table full; the handshake waiting longest was closed");
            }
            slot
        }
        Err(Full::Source) => {
            telemetry::handshake("refused", None);
            tracing::debug!(%addr, "every handshake of this source is busy; connection closed");
            return;
        }
        // Every handshake is the server's turn (a surge the CPU has not caught up with):
        // wait for a slot in arrival order, holding only the socket.
        Err(Full::Worker) => {
            let mut queued = tables.handshakes.enqueue(&limits);
            let granted = monoio::select! {
                () = &mut queued => true,
                _ = monoio::time::sleep(limits.idle_timeout) => false,
                _ = signal.wait() => false,
            };
            if !granted {
                telemetry::handshake("refused", None);
                tracing::debug!(%addr, "no handshake slot came free in time; connection closed");
                return;
            }
            queued.take(addr.ip())
        }
    };
    // The rest of the connection's state is allocated now, not while it waits (a waiting
    // connection's task stays small).
    Box::pin(serve_admitted(ctx, tcp, addr, signal, tables, in_progress)).await;
    drop(admitted);
}

async fn serve_admitted(
    ctx: &WorkerCtx,
    tcp: TcpStream,
    addr: SocketAddr,
    signal: &ShutdownSignal,
    tables: &Tables,
    in_progress: Handshaking,
) {
    let limits = ctx.shared.config.limits;
    let started = Instant::now();
    let handshake = TlsStream::accept(tcp, ctx.shared.tls.clone(), in_progress.progress());
    let bounded = monoio::time::timeout(limits.handshake_timeout, handshake);
    let evicted = in_progress.evicted();
    let outcome = monoio::select! {
        r = bounded => Some(r),
        () = evicted => None,
    };
    let Some(outcome) = outcome else {
        telemetry::handshake("evicted", None);
        tracing::debug!(%addr, "TLS handshake evicted by a newer connection");
        return;
    };
    let mut tls = match outcome {
        Ok(Ok(s)) => {
            drop(in_progress);
            telemetry::handshake("ok", Some(started.elapsed()));
            s
        }
        Ok(Err(e)) => {
            telemetry::handshake("failed", None);
            tracing::debug!(%addr, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            telemetry::handshake("timeout", None);
            tracing::debug!(%addr, "TLS handshake timed out");
            return;
        }
    };
    let chain = tls
        .peer_certificates()
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    let peer = Peer {
        addr: Some(addr),
        cert_sha256: chain.first().map(|leaf| fingerprint::sha256_hex(leaf)),
        chain,
    };
    let wt = limits.write_timeout;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    // When the connection started answering without waiting for its client in between
    // (requests pipelined): a client reading its answers slowly is slow from there.
    let mut answering: Option<Instant> = None;
    loop {
        if buf.is_empty() {
            // The next request is the client's to send: the run of answers ended.
            answering = None;
        }
        // When the request began, set once it turns out to be slow (its bytes are not all
        // in).
        let mut slow: Option<Instant> = None;
        let (head, head_len) =
            match read_head(&mut tls, &mut buf, &limits, signal, &tables.idle, &mut slow).await {
                Next::Head(h, n) => (h, n),
                Next::Close => return close(tls, wt).await,
                Next::PushedOut => return close(tls, PUSHED_OUT_CLOSE).await,
                Next::Refuse(err) => return refuse(tls, err, &tables.idle, &limits).await,
            };
        buf.drain(..head_len);
        let body = match head.body {
            BodyKind::None => Vec::new(),
            BodyKind::Chunked => {
                let err = ApiError::LengthRequired(
                    "chunked request bodies are not accepted; send Content-Length".into(),
                );
                return refuse(tls, err, &tables.idle, &limits).await;
            }
            BodyKind::Length(n) if n > limits.max_body_bytes => {
                let err = ApiError::RequestTooLarge(format!(
                    "the body is {n} bytes; at most {} are accepted",
                    limits.max_body_bytes
                ));
                return refuse(tls, err, &tables.idle, &limits).await;
            }
            BodyKind::Length(n) => {
                if head.expect_continue && buf.len() < n {
                    let since = *answering.get_or_insert_with(Instant::now);
                    let reader = Reader::new(&tables.idle, &limits, since);
                    if !write(&mut tls, b"HTTP/1.1 100 Continue\r\n\r\n", wt, reader).await {
                        return;
                    }
                    // The body is the client's to send: its answer starts a new run.
                    answering = None;
                }
                match read_body(&mut tls, &mut buf, n, &limits, &tables.idle, &mut slow).await {
                    More::Got => {}
                    More::Close => return close(tls, wt).await,
                    More::PushedOut => return close(tls, PUSHED_OUT_CLOSE).await,
                }
                buf.drain(..n).collect()
            }
        };
        let req = Request { head, body };
        let id = request_id();
        let resp = api::handle(ctx, &req, &peer, &id).await;
        // After a reload, a connection does not keep serving with the old keys and limits;
        // at the memory ceiling, it gives its place to a newcomer.
        let keep_alive = req.head.keep_alive
            && !signal.is_set()
            && !ctx.shared.is_superseded()
            && !ctx.shared.memory.at_ceiling();
        let bytes = resp.serialize(keep_alive, req.head.method == "HEAD");
        let since = *answering.get_or_insert_with(Instant::now);
        let reader = Reader::new(&tables.idle, &limits, since);
        if !keep_alive {
            let waiting = reader.enter();
            monoio::select! {
                biased;
                _ = monoio::time::timeout(wt, tls.write_and_close(&bytes)) => {}
                () = waiting.evicted() => {}
            }
            return;
        }
        if !write(&mut tls, &bytes, wt, reader).await {
            return;
        }
        // An idle keep-alive connection holds a small buffer, whatever its last request was.
        if buf.is_empty() && buf.capacity() > 16 * 1024 {
            buf = Vec::with_capacity(4096);
        }
    }
}

/// A connection about to wait for its client to read: where it would register as a slow
/// reader.
struct Reader<'a> {
    idle: &'a Rc<Idle>,
    since: Instant,
    grace: Duration,
}

impl<'a> Reader<'a> {
    fn new(idle: &'a Rc<Idle>, limits: &Limits, since: Instant) -> Self {
        Self {
            idle,
            since,
            grace: limits.slow_request_grace,
        }
    }

    fn enter(&self) -> Waiting {
        self.idle.enter_slow(self.since, self.grace, Slow::Reader)
    }
}

/// Writes `bytes` within `limit`; false when the client did not take them in time, or
/// when, past its grace, a newcomer took this connection's place meanwhile (the caller
/// then drops the connection).
async fn write(tls: &mut TlsStream, bytes: &[u8], limit: Duration, reader: Reader<'_>) -> bool {
    let waiting = reader.enter();
    let written = monoio::select! {
        biased;
        r = monoio::time::timeout(limit, tls.write_all_plain(bytes)) => matches!(r, Ok(Ok(()))),
        () = waiting.evicted() => false,
    };
    written && !waiting.pushed_out()
}

/// How long a connection pushed out for a newcomer may take to close: it stays counted
/// against `max_connections` until it has.
const PUSHED_OUT_CLOSE: Duration = Duration::from_millis(100);

/// Closes cleanly, within `limit`.
async fn close(tls: TlsStream, limit: Duration) {
    let _ = monoio::time::timeout(limit, tls.close()).await;
}

/// Answers `err` and closes; the client is a slow reader from now.
async fn refuse(mut tls: TlsStream, err: ApiError, idle: &Rc<Idle>, limits: &Limits) {
    let limit = limits.write_timeout;
    let reader = Reader::new(idle, limits, Instant::now());
    let (status, _) = err.status_and_code();
    let resp = Response::json(status, &err.envelope(&request_id()));
    if write(&mut tls, &resp.serialize(false, false), limit, reader).await {
        let linger = Duration::from_millis(500);
        let _ = monoio::time::timeout(limit + linger, tls.close_lingering(linger)).await;
    }
}

async fn read_head(
    tls: &mut TlsStream,
    buf: &mut Vec<u8>,
    limits: &Limits,
    signal: &ShutdownSignal,
    idle: &Rc<Idle>,
    slow: &mut Option<Instant>,
) -> Next {
    loop {
        match parse_head(buf) {
            Ok(Parsed::Complete(head, n)) => return Next::Head(head, n),
            Ok(Parsed::Partial) => {}
            Err(HeadError::TooManyHeaders) => {
                return Next::Refuse(ApiError::HeadersTooLarge(
                    HeadError::TooManyHeaders.to_string(),
                ))
            }
            Err(e) => return Next::Refuse(ApiError::MalformedRequest(e.to_string())),
        }
        if buf.len() > limits.max_header_bytes {
            return Next::Refuse(ApiError::HeadersTooLarge(format!(
                "the request head exceeds {} bytes",
                limits.max_header_bytes
            )));
        }
        let room = limits.max_header_bytes + 1 - buf.len();
        if buf.is_empty() {
            // Between requests: wait up to the idle timeout, until shutdown, or until a
            // new connection needs this one's place. The read is polled first: a request
            // that has arrived is served, not pushed out.
            let waiting = idle.enter();
            monoio::select! {
                biased;
                r = monoio::time::timeout(limits.idle_timeout, tls.read_plain(buf, room)) => match r {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return Next::Close,
                },
                _ = signal.wait() => return Next::Close,
                () = waiting.evicted() => return Next::PushedOut,
            }
        } else {
            // The head started with the bytes in `buf`: its clock runs from here.
            let since = *slow.get_or_insert_with(Instant::now);
            let left = (since + limits.header_timeout).saturating_duration_since(Instant::now());
            match read_more(tls, buf, room, left, since, idle, limits).await {
                More::Got => {}
                More::Close => return Next::Close,
                More::PushedOut => return Next::PushedOut,
            }
        }
    }
}

/// What waiting for more of a request gave.
enum More {
    /// Bytes arrived.
    Got,
    /// Timeout or end of stream.
    Close,
    /// A newcomer took the place of this slow request.
    PushedOut,
}

/// Reads more of a request begun at `since` and still arriving, at most `max` bytes, within
/// `left`. Meanwhile the connection waits for its client, and a newcomer may take its place
/// once the request is past `limits.slow_request_grace` ([`Idle`]). Bytes that arrived in
/// the same turn as the newcomer do not win the place back: the worker has admitted the
/// newcomer already.
async fn read_more(
    tls: &mut TlsStream,
    buf: &mut Vec<u8>,
    max: usize,
    left: Duration,
    since: Instant,
    idle: &Rc<Idle>,
    limits: &Limits,
) -> More {
    let waiting = idle.enter_slow(since, limits.slow_request_grace, Slow::Request);
    let more = monoio::select! {
        biased;
        r = monoio::time::timeout(left, tls.read_plain(buf, max)) => match r {
            Ok(Ok(n)) if n > 0 => More::Got,
            _ => More::Close,
        },
        () = waiting.evicted() => More::PushedOut,
    };
    if waiting.pushed_out() {
        return More::PushedOut;
    }
    more
}

/// Reads until `buf` holds at least `n` bytes, within `limits.body_timeout`; the request
/// is slow from its head's first byte (`slow`), or from now if the head came whole.
async fn read_body(
    tls: &mut TlsStream,
    buf: &mut Vec<u8>,
    n: usize,
    limits: &Limits,
    idle: &Rc<Idle>,
    slow: &mut Option<Instant>,
) -> More {
    let deadline = Instant::now() + limits.body_timeout;
    while buf.len() < n {
        let since = *slow.get_or_insert_with(Instant::now);
        let left = deadline.saturating_duration_since(Instant::now());
        match read_more(tls, buf, n - buf.len(), left, since, idle, limits).await {
            More::Got => {}
            other => return other,
        }
    }
    More::Got
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
    fn the_longest_idle_connection_is_closed_first() {
        let idle = Rc::new(Idle::default());
        assert!(!idle.close_oldest(), "nothing idle, nothing closed");
        let first = idle.enter();
        let second = idle.enter();
        let third = idle.enter();
        // A connection that took a request is no longer idle.
        drop(first);
        assert!(idle.close_oldest());
        assert!(second.eviction.evicted.get());
        assert!(!third.eviction.evicted.get());
        assert_eq!(idle.len(), 1);
        drop(second);
        assert_eq!(idle.len(), 1, "an evicted connection left the set already");
        assert!(idle.close_oldest());
        assert!(third.eviction.evicted.get());
        assert!(!idle.close_oldest());
    }

    fn ago(d: Duration) -> Instant {
        Instant::now()
            .checked_sub(d)
            .expect("a clock that started a minute ago")
    }

    #[test]
    fn a_slow_request_gives_its_place_only_after_the_grace() {
        let idle = Rc::new(Idle::default());
        let grace = Duration::from_secs(2);
        let young = idle.enter_slow(ago(Duration::from_millis(100)), grace, Slow::Request);
        assert!(!idle.close_oldest(), "a request within its grace is kept");
        assert!(!young.pushed_out());
        let old = idle.enter_slow(ago(Duration::from_secs(3)), grace, Slow::Request);
        let older = idle.enter_slow(ago(Duration::from_secs(5)), grace, Slow::Request);
        assert!(idle.close_oldest());
        assert!(
            older.pushed_out(),
            "the request that began first goes first"
        );
        assert!(!old.pushed_out());
        assert!(idle.close_oldest());
        assert!(old.pushed_out());
        assert!(!idle.close_oldest());
        assert!(!young.pushed_out());
    }

    #[test]
    fn the_connection_waiting_longest_goes_first_a_slow_one_from_the_end_of_its_grace() {
        let idle = Rc::new(Idle::default());
        let grace = Duration::from_secs(1);
        // Idle for 30 s; a request begun 20 s ago (waiting, by this count, 19 s); a
        // connection idle for 10 s; a connection idle since just now.
        let long_idle = idle.enter_since(ago(Duration::from_secs(30)));
        let slow = idle.enter_slow(ago(Duration::from_secs(20)), grace, Slow::Request);
        let idle_10s = idle.enter_since(ago(Duration::from_secs(10)));
        let fresh = idle.enter();
        assert!(idle.close_oldest());
        assert!(long_idle.pushed_out());
        assert!(idle.close_oldest());
        assert!(slow.pushed_out(), "before connections idle for less long");
        assert!(!idle_10s.pushed_out());
        assert!(idle.close_oldest());
        assert!(idle_10s.pushed_out());
        assert!(idle.close_oldest());
        assert!(fresh.pushed_out());
        assert!(!idle.has_room());
    }

    #[test]
    fn a_request_within_its_grace_gives_no_room() {
        let idle = Rc::new(Idle::default());
        let young = idle.enter_slow(Instant::now(), Duration::from_secs(1), Slow::Request);
        assert!(!idle.has_room());
        assert!(!idle.close_oldest());
        // A connection that has just finished its handshake, or its last answer, is idle:
        // that is room, and it goes before the young request.
        let fresh = idle.enter();
        assert!(idle.has_room());
        assert!(idle.close_oldest());
        assert!(fresh.pushed_out());
        assert!(!young.pushed_out());
    }

    #[test]
    fn a_newcomer_kept_without_room_is_paid_back_at_the_next_room() {
        let idle = Rc::new(Idle::default());
        let owed = Owed::default();
        // Room was seen, then gone (the idle connection's request arrived) when the newcomer
        // was accepted: 11 open against 10.
        owed.make_room(&idle);
        assert_eq!(owed.get(), 1);
        owed.settle(&idle, 11, 10);
        assert_eq!(owed.get(), 1, "nothing to close yet");
        let waiting = idle.enter();
        owed.settle(&idle, 11, 10);
        assert!(waiting.pushed_out(), "the next room pays the debt");
        assert_eq!(owed.get(), 0);
        // A debt is forgotten once the worker is back within its limit.
        owed.make_room(&idle);
        owed.settle(&idle, 10, 10);
        assert_eq!(owed.get(), 0);
        let other = idle.enter();
        owed.settle(&idle, 11, 10);
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
        assert!(idle.close_oldest());
        assert!(again.pushed_out());
        assert!(!later.pushed_out());
        // It left the line when pushed out: dropping it later removes nothing else.
        drop(again);
        assert_eq!(idle.slow.borrow().len(), 1);
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
