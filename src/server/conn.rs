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
//! | `max_handshakes` / `max_handshakes_per_source` (per worker) | a new connection is closed at once |

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

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
    /// Answer this error and close.
    Refuse(ApiError),
}

fn request_id() -> String {
    crate::ids::new_id().unwrap_or_else(|_| "-".into())
}

/// A worker's handshakes in progress: in all, and per source address (IPv6: per /64).
#[derive(Debug, Default)]
pub struct Handshakes {
    total: Cell<usize>,
    by_source: RefCell<HashMap<IpAddr, usize>>,
}

/// Counts one handshake in progress while alive.
struct Handshaking {
    counts: Rc<Handshakes>,
    source: IpAddr,
}

impl Handshakes {
    /// Admits a handshake from `source`, or says which limit refuses it.
    fn admit(
        self: &Rc<Self>,
        source: IpAddr,
        limits: &Limits,
    ) -> Result<Handshaking, &'static str> {
        if self.total.get() >= limits.max_handshakes {
            return Err("limits.max_handshakes");
        }
        let source = crate::admission::source_key(source);
        let mut by_source = self.by_source.borrow_mut();
        let n = by_source.entry(source).or_insert(0);
        if *n >= limits.max_handshakes_per_source {
            return Err("limits.max_handshakes_per_source");
        }
        *n += 1;
        self.total.set(self.total.get() + 1);
        Ok(Handshaking {
            counts: self.clone(),
            source,
        })
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        let c = &self.counts;
        c.total.set(c.total.get().saturating_sub(1));
        let mut by_source = c.by_source.borrow_mut();
        if let Some(n) = by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                by_source.remove(&self.source);
            }
        }
    }
}

/// Serves one connection to its end. `handshakes` counts this worker's handshakes in
/// progress; beyond `limits.max_handshakes` in all, or
/// `limits.max_handshakes_per_source` from one address, a new connection is closed at once.
pub async fn serve(
    ctx: &WorkerCtx,
    tcp: TcpStream,
    addr: SocketAddr,
    signal: &ShutdownSignal,
    handshakes: &Rc<Handshakes>,
) {
    let limits = ctx.shared.config.limits;
    let in_progress = match handshakes.admit(addr.ip(), &limits) {
        Ok(h) => h,
        Err(limit) => {
            telemetry::handshake("refused", None);
            tracing::debug!(%addr, limit, "too many handshakes in progress; connection closed");
            return;
        }
    };
    let started = Instant::now();
    let handshake = TlsStream::accept(tcp, ctx.shared.tls.clone());
    let mut tls = match monoio::time::timeout(limits.handshake_timeout, handshake).await {
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
    loop {
        let (head, head_len) = match read_head(&mut tls, &mut buf, &limits, signal).await {
            Next::Head(h, n) => (h, n),
            Next::Close => return close(tls, wt).await,
            Next::Refuse(err) => return refuse(tls, err, wt).await,
        };
        buf.drain(..head_len);
        let body = match head.body {
            BodyKind::None => Vec::new(),
            BodyKind::Chunked => {
                let err = ApiError::LengthRequired(
                    "chunked request bodies are not accepted; send Content-Length".into(),
                );
                return refuse(tls, err, wt).await;
            }
            BodyKind::Length(n) if n > limits.max_body_bytes => {
                let err = ApiError::RequestTooLarge(format!(
                    "the body is {n} bytes; at most {} are accepted",
                    limits.max_body_bytes
                ));
                return refuse(tls, err, wt).await;
            }
            BodyKind::Length(n) => {
                if head.expect_continue
                    && buf.len() < n
                    && !write(&mut tls, b"HTTP/1.1 100 Continue\r\n\r\n", wt).await
                {
                    return;
                }
                if !read_body(&mut tls, &mut buf, n, limits.body_timeout).await {
                    return close(tls, wt).await;
                }
                buf.drain(..n).collect()
            }
        };
        let req = Request { head, body };
        let id = request_id();
        let resp = api::handle(ctx, &req, &peer, &id).await;
        // After a reload, a connection does not keep serving with the old keys and limits.
        let keep_alive = req.head.keep_alive && !signal.is_set() && !ctx.shared.is_superseded();
        let bytes = resp.serialize(keep_alive, req.head.method == "HEAD");
        if !write(&mut tls, &bytes, wt).await {
            return;
        }
        if !keep_alive {
            return close(tls, wt).await;
        }
        // An idle keep-alive connection holds a small buffer, whatever its last request was.
        if buf.is_empty() && buf.capacity() > 16 * 1024 {
            buf = Vec::with_capacity(4096);
        }
    }
}

/// Writes `bytes` within `limit`; false when the client did not take them in time (the
/// caller then drops the connection).
async fn write(tls: &mut TlsStream, bytes: &[u8], limit: Duration) -> bool {
    matches!(
        monoio::time::timeout(limit, tls.write_all_plain(bytes)).await,
        Ok(Ok(()))
    )
}

/// Closes cleanly, within `limit`.
async fn close(tls: TlsStream, limit: Duration) {
    let _ = monoio::time::timeout(limit, tls.close()).await;
}

async fn refuse(mut tls: TlsStream, err: ApiError, limit: Duration) {
    let (status, _) = err.status_and_code();
    let resp = Response::json(status, &err.envelope(&request_id()));
    if write(&mut tls, &resp.serialize(false, false), limit).await {
        let linger = Duration::from_millis(500);
        let _ = monoio::time::timeout(limit + linger, tls.close_lingering(linger)).await;
    }
}

async fn read_head(
    tls: &mut TlsStream,
    buf: &mut Vec<u8>,
    limits: &Limits,
    signal: &ShutdownSignal,
) -> Next {
    let mut deadline: Option<Instant> = None;
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
            // Between requests: wait up to the idle timeout, or until shutdown.
            monoio::select! {
                r = monoio::time::timeout(limits.idle_timeout, tls.read_plain(buf, room)) => match r {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return Next::Close,
                },
                _ = signal.wait() => return Next::Close,
            }
        } else {
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + limits.header_timeout);
            let left = deadline.saturating_duration_since(Instant::now());
            match monoio::time::timeout(left, tls.read_plain(buf, room)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return Next::Close,
            }
        }
    }
}

/// Reads until `buf` holds at least `n` bytes; false on timeout or end of stream.
async fn read_body(tls: &mut TlsStream, buf: &mut Vec<u8>, n: usize, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while buf.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(left, tls.read_plain(buf, n - buf.len())).await {
            Ok(Ok(m)) if m > 0 => {}
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn one_source_cannot_take_every_handshake_slot() {
        let limits = Limits {
            max_handshakes: 5,
            max_handshakes_per_source: 2,
            ..Limits::default()
        };
        let hs = Rc::new(Handshakes::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let held: Vec<_> = (0..2).map(|_| hs.admit(a, &limits).unwrap()).collect();
        assert_eq!(
            hs.admit(a, &limits).err(),
            Some("limits.max_handshakes_per_source")
        );
        // An IPv6 host cannot escape by changing the low 64 bits.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let _x = hs.admit(v6("2001:db8::1"), &limits).unwrap();
        let _y = hs.admit(v6("2001:db8::2"), &limits).unwrap();
        assert!(hs.admit(v6("2001:db8::3"), &limits).is_err());
        // Others still get in, up to the worker's total.
        let _b = hs.admit("192.0.2.2".parse().unwrap(), &limits).unwrap();
        assert_eq!(
            hs.admit("192.0.2.3".parse().unwrap(), &limits).err(),
            Some("limits.max_handshakes")
        );
        // Finished handshakes give their slots back, and the table forgets the source.
        drop(held);
        assert!(hs.admit(a, &limits).is_ok());
        assert_eq!(hs.by_source.borrow().get(&a), None);
    }
}
