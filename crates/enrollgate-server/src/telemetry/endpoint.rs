//! The metrics listener: plain HTTP/1.1 on its own thread (default loopback only),
//! `GET /metrics` (Prometheus text), `/healthz` (the process answers), `/readyz` (every
//! worker accepts, the gateway is not draining and its store accepts writes).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the Prometheus recorder and serves the endpoints on `addr`. Returns the bound
/// address.
pub fn start(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let buckets = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ];
    // The two batch sizes are counts, not seconds (the sign batch had the seconds'
    // buckets until 2026-11-29: every batch of 6 or more fell in +Inf).
    let counts = [
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets(&buckets)
        .and_then(|b| {
            b.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(super::BATCH_SIZE.into()),
                &counts,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(super::SIGN_BATCH_SIZE.into()),
                &counts,
            )
        })
        .and_then(|b| b.install_recorder())
        .map_err(|e| std::io::Error::other(format!("metrics recorder: {e}")))?;
    super::describe();
    let _ = HANDLE.set(handle.clone());
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("enrollgate-metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(5));
            upkeep.run_upkeep();
        })?;
    std::thread::Builder::new()
        .name("enrollgate-metrics".into())
        .spawn(move || accept_loop(&listener, &handle))?;
    Ok(bound)
}

/// The recorder's handle, for readers inside the process (the console's live view).
static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();

/// The Prometheus text `/metrics` serves, or `None` when no recorder runs
/// (`metrics.listen` unset).
pub fn render() -> Option<String> {
    HANDLE.get().map(PrometheusHandle::render)
}

/// Scrapes answered at once at most; beyond, a new connection is closed unanswered.
const MAX_CONCURRENT: usize = 8;
/// A scrape's request must arrive, and its answer be taken, within this.
const DEADLINE: Duration = Duration::from_secs(2);

/// Each connection is answered on its own short-lived thread, so a client that connects
/// and says nothing cannot hold up `/healthz` for the others.
fn accept_loop(listener: &TcpListener, handle: &PrometheusHandle) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(_) => {
                // Out of descriptors, or the peer left before accept: do not spin.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONCURRENT {
            active.fetch_sub(1, Ordering::AcqRel);
            continue;
        }
        let (handle, done) = (handle.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("enrollgate-scrape".into())
            .spawn(move || {
                let _ = answer(stream, &handle);
                done.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn answer(mut s: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    s.set_write_timeout(Some(DEADLINE))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let path = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        s.set_read_timeout(Some(left))?;
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => break req.path.unwrap_or("/").to_string(),
            Ok(httparse::Status::Partial) if buf.len() < 8192 => continue,
            _ => return reply(&mut s, 400, "text/plain", b"bad request\n"),
        }
    };
    match path.split('?').next().unwrap_or("/") {
        "/metrics" => reply(
            &mut s,
            200,
            "text/plain; version=0.0.4",
            handle.render().as_bytes(),
        ),
        "/healthz" => reply(&mut s, 200, "text/plain", b"ok\n"),
        "/readyz" if super::store_refusing_for().is_some() => reply(
            &mut s,
            503,
            "text/plain",
            b"not ready: the store refuses writes\n",
        ),
        "/readyz" if super::is_ready() => reply(&mut s, 200, "text/plain", b"ready\n"),
        "/readyz" => reply(&mut s, 503, "text/plain", b"not ready\n"),
        _ => reply(&mut s, 404, "text/plain", b"not found\n"),
    }
}

fn reply(s: &mut TcpStream, status: u16, content_type: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        crate::http::response::reason(status),
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    s.flush()
}
