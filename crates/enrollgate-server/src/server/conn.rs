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

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use super::gate::Gate;
use super::handshakes::{Full, Handshakes, Handshaking};
use super::idle::{Idle, Slow, Waiting};
use super::tls::TlsStream;
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
            let waiting = idle.enter(Instant::now());
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
