//! Hostile clients (issue #7, item 2): each attack is cut off by a documented limit
//! (`crates/enrollgate-server/src/server/conn.rs`, README "Configuration reference"), the daemon's memory stays
//! under a stated bound, and a normal client keeps enrolling while the attack runs.
//!
//! Every test runs two small closed-loop enrollers during its attack: one on a keep-alive
//! connection opened before the attack (a client already admitted), and one that opens a
//! new connection per enrollment (a client arriving during the attack). Memory is the
//! daemon's `VmRSS`/`VmHWM` from `/proc/<pid>/status`, sampled while the attack runs.
//! Latencies and rates are printed (`--nocapture`), never asserted: the machine is shared.
//! Each test's gateway runs alone (`Gateway::start_alone_with`): its normal clients have
//! deadlines, which other tests' gateways on the same two cores would make them miss.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use enrollgate::client::{self, HttpResponse};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::bad_input::{raw_tls, read_all};
use crate::support::*;

type Tls = StreamOwned<ClientConnection, TcpStream>;

const MIB_IN_KIB: u64 = 1024;

// ---------------------------------------------------------------------------------------
// The normal clients that must keep enrolling.

/// One pending `ott` enrollment and the CSR that redeems it.
struct Job {
    token: String,
    csr: Vec<u8>,
}

/// `n` identities with `ott` tokens, made before an attack starts.
fn jobs(gw: &Gateway, label: &str, n: usize) -> Vec<Job> {
    (0..n)
        .map(|i| {
            let (_, _, token) = gw.create_identity(&format!("{label}-{i}"), "Device", false);
            Job {
                token,
                csr: new_csr_pem(),
            }
        })
        .collect()
}

fn enroll_path(token: &str) -> String {
    format!("/edge/client/v1/enroll?method=ott&token={token}")
}

/// What a closed-loop enroller saw.
#[derive(Default)]
struct Tally {
    ok: usize,
    failures: Vec<String>,
    /// Connections that were refused or dropped and tried again.
    retries: usize,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Tally {
    fn line(&self, who: &str) -> String {
        let mut l = self.latencies.clone();
        l.sort();
        let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        let busy: f64 = l.iter().map(Duration::as_secs_f64).sum();
        format!(
            "{who}: {} ok, {} failed, {} retries; latency p50 {:.1} ms, max {:.1} ms; \
             {:.1} enrollments/s of service time, {:.1}/s wall (with think time)",
            self.ok,
            self.failures.len(),
            self.retries,
            ms(l.get(l.len() / 2)),
            ms(l.last()),
            if busy > 0.0 {
                self.ok as f64 / busy
            } else {
                0.0
            },
            self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9),
        )
    }
}

fn tls_connect(port: u16, cfg: &Arc<ClientConfig>) -> std::io::Result<Tls> {
    tls_connect_sending(port, cfg, b"")
}

/// A TLS connection whose first plaintext, `first`, leaves with the handshake's last
/// flight.
fn tls_connect_sending(port: u16, cfg: &Arc<ClientConfig>, first: &[u8]) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_nodelay(true)?;
    let mut conn = ClientConnection::new(cfg.clone(), "127.0.0.1".try_into().expect("name"))
        .map_err(std::io::Error::other)?;
    conn.writer().write_all(first)?;
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() || s.conn.wants_write() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// One request on a keep-alive connection.
fn keep_alive_post(s: &mut Tls, path: &str, body: &[u8]) -> Result<HttpResponse, String> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-pem-file\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut req = head.into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req).map_err(|e| format!("write: {e}"))?;
    s.flush().map_err(|e| format!("flush: {e}"))?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return Err("closed before a response".into()),
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
        if let Some(r) = client::parse_response(&raw).map_err(|e| e.to_string())? {
            return Ok(r);
        }
    }
}

/// The two normal clients, started when the attack is on; they stop at their last job
/// or when `stop` is set.
struct Normal {
    keep_alive: JoinHandle<Tally>,
    fresh: JoinHandle<Tally>,
    stop: Arc<AtomicBool>,
}

/// Pause between a client's enrollments, so that its enrollments spread over the attack.
const THINK: Duration = Duration::from_millis(100);

/// Tokens for the clients. The keep-alive connection is opened here, before the attack.
struct Prepared {
    keep_alive_conn: Tls,
    keep_alive_jobs: Vec<Job>,
    fresh_jobs: Vec<Job>,
    cfg: Arc<ClientConfig>,
    port: u16,
}

fn prepare(gw: &Gateway, label: &str, n: usize) -> Prepared {
    let cfg = client::config(&gw.ca_certs(), None).expect("client config");
    Prepared {
        keep_alive_jobs: jobs(gw, &format!("{label}-ka"), n),
        fresh_jobs: jobs(gw, &format!("{label}-new"), n),
        keep_alive_conn: tls_connect(gw.port, &cfg).expect("keep-alive connection"),
        cfg,
        port: gw.port,
    }
}

fn run_keep_alive(
    mut s: Tls,
    jobs: Vec<Job>,
    cfg: Arc<ClientConfig>,
    port: u16,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut t = Tally::default();
    let start = Instant::now();
    for job in jobs {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let begun = Instant::now();
        match keep_alive_post(&mut s, &enroll_path(&job.token), &job.csr) {
            Ok(r) if r.status == 200 => {
                t.ok += 1;
                t.latencies.push(begun.elapsed());
            }
            Ok(r) => t.failures.push(format!("HTTP {}: {}", r.status, code(&r))),
            Err(e) => {
                t.failures.push(e);
                t.retries += 1;
                match tls_connect(port, &cfg) {
                    Ok(n) => s = n,
                    Err(e) => {
                        t.failures.push(format!("reconnect: {e}"));
                        break;
                    }
                }
            }
        }
        std::thread::sleep(THINK);
    }
    t.elapsed = start.elapsed();
    t
}

/// Each enrollment on a new connection; a connection that is refused or dropped before
/// an answer is tried again (every 20 ms, for up to 10 s per enrollment), until `stop`.
fn run_fresh(jobs: Vec<Job>, cfg: Arc<ClientConfig>, port: u16, stop: Arc<AtomicBool>) -> Tally {
    let mut t = Tally::default();
    let start = Instant::now();
    'jobs: for job in jobs {
        let begun = Instant::now();
        loop {
            if stop.load(Ordering::Relaxed) {
                break 'jobs;
            }
            let r = client::request(
                cfg.clone(),
                "127.0.0.1",
                port,
                "POST",
                &enroll_path(&job.token),
                &[("Content-Type", "application/x-pem-file")],
                &job.csr,
            );
            match r {
                Ok(r) if r.status == 200 => {
                    t.ok += 1;
                    t.latencies.push(begun.elapsed());
                }
                Ok(r) => t.failures.push(format!("HTTP {}: {}", r.status, code(&r))),
                Err(e) if begun.elapsed() < Duration::from_secs(10) => {
                    eprintln!("new-connection client: retrying after: {e}");
                    t.retries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(e) => t.failures.push(format!("gave up after 10 s: {e}")),
            }
            break;
        }
        std::thread::sleep(THINK);
    }
    t.elapsed = start.elapsed();
    t
}

impl Prepared {
    /// Starts both clients.
    fn start(self) -> Normal {
        let (cfg, port) = (self.cfg.clone(), self.port);
        let stop = Arc::new(AtomicBool::new(false));
        let keep_alive = std::thread::spawn({
            let (s, jobs, stop) = (self.keep_alive_conn, self.keep_alive_jobs, stop.clone());
            move || run_keep_alive(s, jobs, cfg, port, stop)
        });
        let fresh = std::thread::spawn({
            let (jobs, cfg, stop) = (self.fresh_jobs, self.cfg, stop.clone());
            move || run_fresh(jobs, cfg, port, stop)
        });
        Normal {
            keep_alive,
            fresh,
            stop,
        }
    }
}

impl Normal {
    fn finished(&self) -> bool {
        self.keep_alive.is_finished() && self.fresh.is_finished()
    }

    /// Stops the clients after their current enrollment and collects what they saw.
    fn stop(self) -> (Tally, Tally) {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    fn join(self) -> (Tally, Tally) {
        (
            self.keep_alive.join().expect("keep-alive client"),
            self.fresh.join().expect("fresh client"),
        )
    }
}

/// The same clients without an attack, for comparison (printed).
fn baseline(gw: &Gateway, label: &str, n: usize) {
    let p = prepare(gw, &format!("{label}-base"), n);
    let (ka, fresh) = p.start().join();
    eprintln!("[{label}] baseline, no attack: {}", ka.line("keep-alive"));
    eprintln!(
        "[{label}] baseline, no attack: {}",
        fresh.line("new connection")
    );
    assert_eq!(ka.ok + fresh.ok, 2 * n, "baseline enrollments must succeed");
}

/// Connections a new-connection client may lose to a flood and make again, of its 25.
const FRESH_RETRIES: usize = 2;

/// The normal clients must all have enrolled during the attack: the keep-alive client
/// without a retry. With `fresh_must_pass`, the new-connection client must have enrolled
/// every time too, retrying at most [`FRESH_RETRIES`] times: under a flood that replaces a
/// worker's 64 handshake slots every ~15 ms, a client whose thread the two saturated cores
/// do not run for that long between two flights of its handshake is pushed out (by
/// design: docs/security-review.md, the handshake table) and connects again.
fn assert_kept_serving(label: &str, ka: &Tally, fresh: &Tally, n: usize, fresh_must_pass: bool) {
    eprintln!("[{label}] during the attack: {}", ka.line("keep-alive"));
    eprintln!(
        "[{label}] during the attack: {}",
        fresh.line("new connection")
    );
    assert_eq!(
        (ka.ok, ka.retries),
        (n, 0),
        "[{label}] the keep-alive client: {:?}",
        ka.failures
    );
    if fresh_must_pass {
        assert_eq!(
            fresh.ok, n,
            "[{label}] the new-connection client: {:?}",
            fresh.failures
        );
        assert!(
            fresh.retries <= FRESH_RETRIES,
            "[{label}] the new-connection client retried {} times: {:?}",
            fresh.retries,
            fresh.failures
        );
    }
}

// ---------------------------------------------------------------------------------------
// Memory and descriptors of the daemon.

struct Sampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(u64, usize)>,
}

/// Samples the daemon's RSS (KiB) and open descriptors until stopped; returns the maxima.
fn sample(pid: u32, every: Duration) -> Sampler {
    let stop = Arc::new(AtomicBool::new(false));
    let handle = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let (mut rss, mut fds) = (0, 0);
            loop {
                rss = rss.max(memory_kib(pid).0);
                fds = fds.max(open_fds(pid));
                if stop.load(Ordering::Relaxed) {
                    return (rss, fds);
                }
                std::thread::sleep(every);
            }
        }
    });
    Sampler { stop, handle }
}

impl Sampler {
    fn finish(self) -> (u64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("sampler")
    }
}

/// Prints before/peak/after and asserts the peak stays within `allowance` of `before`.
fn assert_memory(label: &str, pid: u32, before: u64, peak: u64, allowance: u64, why: &str) {
    let (after, hwm) = memory_kib(pid);
    let peak = peak.max(after);
    eprintln!(
        "[{label}] daemon RSS: before {} KiB, peak {} KiB (VmHWM {} KiB), after {} KiB; \
         growth {} KiB, bound {} KiB ({why})",
        before,
        peak,
        hwm,
        after,
        peak.saturating_sub(before),
        allowance
    );
    assert!(
        peak <= before + allowance,
        "[{label}] RSS grew by {} KiB, over the bound of {} KiB ({why})",
        peak - before,
        allowance
    );
}

// ---------------------------------------------------------------------------------------
// Attack tools.

/// A TCP connection from `source` (another loopback address, so that thousands of
/// attack connections do not use up the ports the normal clients need).
fn connect_from(source: [u8; 4], port: u16) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())?;
    Ok(socket.into())
}

/// Whether the daemon closed this socket: `Some(bytes read)` once closed, `None` while
/// open. The socket must be non-blocking; bytes the daemon sends are read and counted.
fn closed_by_peer(s: &mut TcpStream, received: &mut usize) -> bool {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => *received += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// The first flight of a real TLS client: a ClientHello record.
fn client_hello(gw: &Gateway) -> Vec<u8> {
    let cfg = client::config(&gw.ca_certs(), None).expect("config");
    let mut conn = ClientConnection::new(cfg, "127.0.0.1".try_into().expect("name")).expect("conn");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write_tls");
    }
    out
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// Min, median, max of some durations, as text.
fn spread(v: &mut [Duration]) -> String {
    v.sort();
    match (v.first(), v.get(v.len() / 2), v.last()) {
        (Some(a), Some(m), Some(z)) => {
            format!("min {} / median {} / max {}", secs(*a), secs(*m), secs(*z))
        }
        _ => "none".into(),
    }
}

// ---------------------------------------------------------------------------------------
// Slowloris on request bodies.

/// Headers complete, body trickled (1 byte / 100 ms) or stalled one byte short: the
/// body timeout closes the connection without an answer, whatever the trickle. Bodies
/// never grow past `max_body_bytes` (a larger Content-Length is refused before reading).
#[test]
fn slow_bodies_are_cut_off_by_the_body_timeout() {
    const BODY_TIMEOUT: Duration = Duration::from_secs(2);
    const CONNS: usize = 200;
    const N: usize = 25;
    let gw = Gateway::start_alone_with(
        set_limits(&[
            ("body_timeout", "\"2s\""),
            ("header_timeout", "\"2s\""),
            ("handshake_timeout", "\"5s\""),
            ("idle_timeout", "\"10s\""),
            ("write_timeout", "\"5s\""),
        ]),
        &[],
    );
    let label = "slow bodies";
    baseline(&gw, label, 10);
    let pid = gw.pid();
    let prepared = prepare(&gw, "slowbody", N);
    let before = memory_kib(pid).0;
    let sampler = sample(pid, Duration::from_millis(25));
    let cfg = client::config(&gw.ca_certs(), None).unwrap();
    let max_body = 65_536usize;
    let head = format!(
        "POST /edge/client/v1/enroll?method=ott&token=slow HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {max_body}\r\n\r\n"
    );

    struct Slow {
        s: Tls,
        trickle: bool,
        since: Instant,
        received: usize,
    }
    let open = |trickle: bool| -> Slow {
        let mut s = tls_connect(gw.port, &cfg).expect("attack connection");
        // Before the head: the daemon cannot start the body's clock earlier, so a lifetime
        // measured from here is never shorter than the daemon's (a loaded machine may take
        // a while to write the 64 KiB below).
        let since = Instant::now();
        s.write_all(head.as_bytes()).unwrap();
        if !trickle {
            s.write_all(&vec![b'A'; max_body - 1]).unwrap();
        }
        s.flush().unwrap();
        s.sock.set_nonblocking(true).unwrap();
        Slow {
            s,
            trickle,
            since,
            received: 0,
        }
    };
    let mut live: Vec<Slow> = (0..CONNS).map(|i| open(i % 2 == 0)).collect();
    let normal = prepared.start();
    let mut cut: Vec<(bool, Duration, usize)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last_trickle = Instant::now();
    while !live.is_empty() && Instant::now() < deadline {
        let trickle_now = last_trickle.elapsed() >= Duration::from_millis(100);
        if trickle_now {
            last_trickle = Instant::now();
        }
        let mut i = 0;
        while i < live.len() {
            let c = &mut live[i];
            let mut closed = false;
            if c.trickle && trickle_now {
                let wrote = c.s.write(b"A").and_then(|_| c.s.flush());
                closed = matches!(wrote, Err(ref e) if e.kind() != ErrorKind::WouldBlock);
            }
            let mut buf = [0u8; 4096];
            loop {
                match c.s.read(&mut buf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => c.received += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            if closed {
                let c = live.swap_remove(i);
                cut.push((c.trickle, c.since.elapsed(), c.received));
                // Sustained: a cut connection is replaced while the clients enroll.
                if !normal.finished() {
                    live.push(open(c.trickle));
                }
            } else {
                i += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (ka, fresh) = normal.join();
    let (peak, peak_fds) = sampler.finish();
    std::thread::sleep(Duration::from_millis(300));

    let mut trickled: Vec<Duration> = cut.iter().filter(|c| c.0).map(|c| c.1).collect();
    let mut stalled: Vec<Duration> = cut.iter().filter(|c| !c.0).map(|c| c.1).collect();
    eprintln!(
        "[{label}] {} attack connections cut ({} trickling: {}; {} stalled 1 byte short: {}); \
         {} still open at the 60 s deadline; peak daemon descriptors {}",
        cut.len(),
        trickled.len(),
        spread(&mut trickled),
        stalled.len(),
        spread(&mut stalled),
        live.len(),
        peak_fds
    );
    assert!(live.is_empty(), "every slow body is cut off");
    assert!(cut.len() >= CONNS);
    assert!(
        cut.iter().all(|c| c.2 == 0),
        "the body timeout closes without an answer"
    );
    // A lower bound is not a timing assertion: no other limit cut these off early.
    let early = cut.iter().filter(|c| c.1 < BODY_TIMEOUT).count();
    assert_eq!(early, 0, "no slow body was cut before body_timeout");
    assert_kept_serving(label, &ka, &fresh, N, true);
    // Per connection: the head (<= max_header_bytes), the body buffer (< 2 x
    // max_body_bytes, with Vec growth) and rustls' buffers (~64 KiB): 256 KiB, for the
    // CONNS connections open at once, plus 32 MiB for the enrollments' own work.
    assert_memory(
        label,
        pid,
        before,
        peak,
        CONNS as u64 * 256 + 32 * MIB_IN_KIB,
        "200 connections x 256 KiB + 32 MiB",
    );
    assert!(!gw.log().contains("panicked"));
}

// ---------------------------------------------------------------------------------------
// Slow requests holding every connection place.

/// An attack connection: a request that never ends, a byte every 100 ms.
struct Trickle {
    s: Tls,
    /// Before the request's first byte: the daemon's clock cannot start earlier.
    since: Instant,
    received: usize,
}

/// Opens a connection and starts a request that never ends: half a head (`body` false) or a
/// whole head and part of a body, sent with the handshake's last flight, so that the
/// connection is never idle (waiting for a request). `None` when the daemon gave it no place
/// in time.
fn start_trickle(port: u16, cfg: &Arc<ClientConfig>, body: bool) -> Option<Trickle> {
    let start: &[u8] = if body {
        b"POST /edge/client/v1/enroll?method=ott&token=slow HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 4096\r\n\r\nAAAA"
    } else {
        b"POST /edge/client/v1/enroll?method=ott&token=slow HTTP/1.1\r\nHost: x\r\nX-Pad: "
    };
    // Before connecting: the daemon cannot start the request's clock earlier.
    let since = Instant::now();
    let s = tls_connect_sending(port, cfg, start).ok()?;
    s.sock.set_nonblocking(true).ok()?;
    Some(Trickle {
        s,
        since,
        received: 0,
    })
}

/// The daemon's count of connections pushed out in `state`.
fn pushed_out(gw: &Gateway, state: &str) -> usize {
    metric(
        &gw.metrics_text(),
        &format!("enrollgate_connections_pushed_out_total{{state=\"{state}\"}}"),
    ) as usize
}

/// A client opening a new connection per enrollment enrolled `n` of `n`, none of them
/// waiting for an attack connection's 60 s timeouts. Not a timing assertion: the bound is
/// 100 times the grace the attacks are given, and half those timeouts.
fn assert_new_clients_got_in(label: &str, fresh: &Tally, n: usize) {
    assert_eq!(
        fresh.ok, n,
        "[{label}] the new-connection client: {:?}",
        fresh.failures
    );
    let slowest = fresh.latencies.iter().max().copied().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(30),
        "[{label}] a new client waited {slowest:?}: for the attack's timeouts, not for its grace"
    );
}

/// Every connection place of both workers held by requests that trickle a byte every
/// 100 ms (half in their head, half in their body), each one the daemon closes opened
/// again. `header_timeout` and `body_timeout` (60 s here) would let them hold their places
/// for a minute while new clients wait in the accept queue; instead each new connection,
/// once accepted, closes the connection that has waited longest for its client, a slow
/// request counting from the end of its `slow_request_grace` (300 ms here). A client opening
/// a new connection per enrollment enrolls 10 of 10; every attack connection closed was
/// closed without an answer, and none before its grace. Then the attack stops opening
/// connections and keeps trickling: with no newcomer, nothing is closed.
#[test]
fn slow_requests_give_their_places_to_new_clients() {
    const WORKERS: usize = 2;
    const MAX_CONNECTIONS: usize = 8;
    const GRACE: Duration = Duration::from_millis(300);
    const N: usize = 10;
    let gw = Gateway::start_alone_with(
        set_limits(&[
            ("max_connections", "8"),
            ("max_handshakes", "4"),
            ("slow_request_grace", "\"300ms\""),
            ("header_timeout", "\"60s\""),
            ("body_timeout", "\"60s\""),
        ]),
        &[],
    );
    let label = "slow requests";
    let jobs = jobs(&gw, "slowreq", N);
    let cfg = client::config(&gw.ca_certs(), None).unwrap();
    // More than both workers hold, so that each worker is full whatever the kernel's
    // spread: the extra ones take places only by pushing out older ones.
    let attackers = WORKERS * MAX_CONNECTIONS + 8;
    let stop = Arc::new(AtomicBool::new(false));
    // Cleared for the last phase: the attack keeps trickling but opens nothing new.
    let opening = Arc::new(AtomicBool::new(true));
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let attack = std::thread::spawn({
        let (cfg, port) = (cfg.clone(), gw.port);
        let (stop, opening, started) = (stop.clone(), opening.clone(), started.clone());
        move || {
            let mut live: Vec<Trickle> = Vec::new();
            let mut cut: Vec<(Duration, usize)> = Vec::new();
            let mut opened = 0usize;
            while !stop.load(Ordering::Relaxed) {
                while live.len() < attackers
                    && opening.load(Ordering::Relaxed)
                    && !stop.load(Ordering::Relaxed)
                {
                    if let Some(t) = start_trickle(port, &cfg, opened % 2 == 0) {
                        live.push(t);
                        started.fetch_add(1, Ordering::Relaxed);
                    }
                    opened += 1;
                }
                let mut i = 0;
                while i < live.len() {
                    let t = &mut live[i];
                    let wrote = t.s.write(b"A").and_then(|_| t.s.flush());
                    let mut closed =
                        matches!(wrote, Err(ref e) if e.kind() != ErrorKind::WouldBlock);
                    let mut buf = [0u8; 1024];
                    loop {
                        match t.s.read(&mut buf) {
                            Ok(0) => closed = true,
                            Ok(n) => {
                                t.received += n;
                                continue;
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                            Err(_) => closed = true,
                        }
                        break;
                    }
                    if closed {
                        let t = live.swap_remove(i);
                        cut.push((t.since.elapsed(), t.received));
                    } else {
                        i += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (cut, opened, live.len())
        }
    });
    let pushed = |state: &str| pushed_out(&gw, state);
    // Let the attack take every place and pass its grace.
    std::thread::sleep(Duration::from_secs(2));
    let fresh = run_fresh(jobs, cfg, gw.port, Arc::new(AtomicBool::new(false)));
    // With no newcomer, nothing is closed, however long the requests are past their grace:
    // from here each connection pushed out (the daemon's count; the attack notices a close
    // only between its opens) is the place of one the attack was opening when it stopped.
    opening.store(false, Ordering::Relaxed);
    let quiet = |started: usize| (pushed("idle") + pushed("slow_request"), started);
    let (pushed_0, started_0) = quiet(started.load(Ordering::Relaxed));
    std::thread::sleep(Duration::from_secs(2));
    let (pushed_1, started_1) = quiet(started.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    let (cut, opened, still) = attack.join().unwrap();
    let slow_pushed = pushed("slow_request");
    let mut lifetimes: Vec<Duration> = cut.iter().map(|c| c.0).collect();
    eprintln!(
        "[{label}] {opened} attack connections opened, {} closed by the daemon (after {}), \
         {still} open at the end; {slow_pushed} slow requests and {} idle connections \
         pushed out; after the attack stopped opening: {} opened, {} pushed out",
        cut.len(),
        spread(&mut lifetimes),
        pushed("idle"),
        started_1 - started_0,
        pushed_1 - pushed_0,
    );
    eprintln!(
        "[{label}] during the attack: {}",
        fresh.line("new connection")
    );
    // A retry is possible, not a failure of the rule: a new client's connection is idle
    // between its handshake and its request, and when no slow request is past its grace,
    // the next newcomer may take that place.
    assert_new_clients_got_in(label, &fresh, N);
    assert!(
        slow_pushed >= N,
        "each new client took the place of a slow request: {slow_pushed}"
    );
    assert!(
        cut.len() >= N,
        "the attack saw its connections closed: {}",
        cut.len()
    );
    assert!(
        cut.iter().all(|c| c.1 == 0),
        "a slow request pushed out gets no answer"
    );
    // A lower bound is not a timing assertion: no slow request lost its place early.
    let early = cut.iter().filter(|c| c.0 < GRACE).count();
    assert_eq!(early, 0, "no slow request was pushed out within its grace");
    assert!(
        pushed_1 - pushed_0 <= started_1 - started_0,
        "connections were pushed out with no newcomer to take their place: {} for {} opened",
        pushed_1 - pushed_0,
        started_1 - started_0
    );
    assert!(!gw.log().contains("panicked"));
}

/// Every connection place of both workers held by clients that pipeline requests
/// (`GET /.well-known/est/cacerts`, about 1 KB answered for 50 bytes asked) and never read
/// the answers: the connection is neither idle nor receiving a request, but blocked writing,
/// which `write_timeout` (60 s here) would let last a minute while new clients wait in the
/// accept queue. A connection waiting for its client to read is slow from the start of its
/// run of answers, and gives its place after `slow_request_grace` (300 ms here) to a new
/// connection: a client opening one per enrollment enrolls 10 of 10.
#[test]
fn slow_readers_give_their_places_to_new_clients() {
    const WORKERS: usize = 2;
    const MAX_CONNECTIONS: usize = 4;
    const N: usize = 10;
    let gw = Gateway::start_alone_with(
        set_limits(&[
            ("max_connections", "4"),
            ("max_handshakes", "2"),
            ("slow_request_grace", "\"300ms\""),
            ("write_timeout", "\"60s\""),
            ("idle_timeout", "\"60s\""),
        ]),
        &[],
    );
    let label = "slow readers";
    let jobs = jobs(&gw, "slowread", N);
    let cfg = client::config(&gw.ca_certs(), None).unwrap();
    let attackers = WORKERS * MAX_CONNECTIONS + 4;
    let stop = Arc::new(AtomicBool::new(false));
    let attack = std::thread::spawn({
        let (cfg, port, stop) = (cfg.clone(), gw.port, stop.clone());
        move || {
            let request: &[u8] = b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: x\r\n\r\n";
            let burst: Vec<u8> = request.repeat(1000);
            let mut live: Vec<Tls> = Vec::new();
            let (mut opened, mut closed) = (0usize, 0usize);
            while !stop.load(Ordering::Relaxed) {
                while live.len() < attackers && !stop.load(Ordering::Relaxed) {
                    opened += 1;
                    if let Ok(s) = tls_connect_sending(port, &cfg, b"") {
                        if s.sock.set_nonblocking(true).is_ok() {
                            live.push(s);
                        }
                    }
                }
                // Pipeline more requests, as far as the daemon takes them; read nothing.
                let mut i = 0;
                while i < live.len() {
                    let s = &mut live[i];
                    let mut gone = false;
                    for _ in 0..8 {
                        if s.conn.writer().write(&burst).is_err() {
                            gone = true;
                            break;
                        }
                        match s.conn.write_tls(&mut s.sock) {
                            Ok(_) => {}
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(_) => {
                                gone = true;
                                break;
                            }
                        }
                    }
                    if gone {
                        live.swap_remove(i);
                        closed += 1;
                    } else {
                        i += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (opened, closed)
        }
    });
    let pushed = |state: &str| pushed_out(&gw, state);
    // Let the attack fill the daemon's send buffers and pass its grace.
    std::thread::sleep(Duration::from_secs(3));
    let fresh = run_fresh(jobs, cfg, gw.port, Arc::new(AtomicBool::new(false)));
    stop.store(true, Ordering::Relaxed);
    let (opened, closed) = attack.join().unwrap();
    let readers = pushed("slow_reader");
    eprintln!(
        "[{label}] {opened} attack connections opened, {closed} seen closed; {readers} slow \
         readers, {} idle connections pushed out; {}",
        pushed("idle"),
        fresh.line("new connection")
    );
    assert_new_clients_got_in(label, &fresh, N);
    assert!(
        readers >= N,
        "each new client took the place of a slow reader: {readers}"
    );
    assert!(!gw.log().contains("panicked"));
}

// ---------------------------------------------------------------------------------------
// Handshakes that never finish.

/// A sustained flood of TLS handshakes that never finish, from 8 addresses: half send
/// part of a ClientHello, half a whole ClientHello and then nothing, and every connection
/// the daemon closes is opened again (every 50 ms): some 10,000 connections a second.
/// `max_handshakes` (per worker) bounds how many the daemon holds: a new connection takes
/// the slot of the oldest handshake, which is closed; `handshake_timeout` closes any left.
/// A client already admitted (keep-alive) keeps enrolling, and so does a client that opens
/// a new connection for each enrollment: its handshake finishes long before 64 newer
/// connections push it out.
#[test]
fn unfinished_handshakes_are_cut_off_and_bounded_per_worker() {
    let sources: Vec<[u8; 4]> = (2..10).map(|i| [127, 0, 0, i]).collect();
    handshake_flood("unfinished handshakes, 8 sources", &sources, 64);
}

/// The same flood from one address: `max_handshakes_per_source` (32 here, of 64 slots per
/// worker) makes each new attack connection push out the oldest of its own source, so the
/// flood holds at most half of the slots.
#[test]
fn new_clients_keep_enrolling_during_a_single_source_handshake_flood() {
    handshake_flood("unfinished handshakes, 1 source", &[[127, 0, 0, 2]], 32);
}

/// `held_per_worker`: the most handshakes the flood can hold in one worker (64 slots, at
/// most 32 from one source).
fn handshake_flood(label: &str, sources: &[[u8; 4]], held_per_worker: usize) {
    const N: usize = 25;
    const PER_KIND: usize = 300;
    const MAX_HANDSHAKES: usize = 64;
    const ATTACK: Duration = Duration::from_secs(6);
    let timeout = Duration::from_secs(2);
    let gw = Gateway::start_alone_with(
        set_limits(&[
            ("max_handshakes", "64"),
            ("max_handshakes_per_source", "32"),
            ("handshake_timeout", "\"2s\""),
            ("idle_timeout", "\"30s\""),
        ]),
        &[],
    );
    baseline(&gw, label, 10);
    let pid = gw.pid();
    let hello = client_hello(&gw);
    let prepared = prepare(&gw, "hsflood", N);
    let fds_before = open_fds(pid);
    let before = memory_kib(pid).0;
    let sampler = sample(pid, Duration::from_millis(10));

    struct Half {
        s: TcpStream,
        whole_hello: bool,
        since: Instant,
        received: usize,
    }
    let port = gw.port;
    let next = std::cell::Cell::new(0usize);
    let open = |whole_hello: bool| -> Option<Half> {
        let source = sources[next.get() % sources.len()];
        next.set(next.get() + 1);
        let mut s = connect_from(source, port).ok()?;
        let part = if whole_hello {
            &hello[..]
        } else {
            &hello[..60.min(hello.len())]
        };
        // The daemon may already have closed it (over max_handshakes).
        let _ = s.write_all(part);
        s.set_nonblocking(true).ok()?;
        Some(Half {
            s,
            whole_hello,
            since: Instant::now(),
            received: 0,
        })
    };
    let mut live: Vec<Half> = (0..2 * PER_KIND).filter_map(|i| open(i % 2 == 0)).collect();
    let mut opened = live.len();
    let started = Instant::now();
    let normal = prepared.start();
    let mut lifetimes: Vec<(bool, Duration)> = Vec::new();
    let mut to_reopen: Vec<bool> = Vec::new();
    let mut last_refill = Instant::now();
    let deadline = started + Duration::from_secs(40);
    let mut normal = Some(normal);
    let mut clients = None;
    while (!live.is_empty() || normal.is_some()) && Instant::now() < deadline {
        let attacking = started.elapsed() < ATTACK
            || normal.as_ref().is_some_and(|n| !n.keep_alive.is_finished());
        if !attacking {
            if let Some(n) = normal.take() {
                clients = Some(n.stop());
                to_reopen.clear();
            }
        }
        let mut i = 0;
        while i < live.len() {
            let h = &mut live[i];
            if closed_by_peer(&mut h.s, &mut h.received) {
                let h = live.swap_remove(i);
                lifetimes.push((h.whole_hello, h.since.elapsed()));
                if attacking {
                    to_reopen.push(h.whole_hello);
                }
            } else {
                i += 1;
            }
        }
        if attacking && last_refill.elapsed() >= Duration::from_millis(50) {
            last_refill = Instant::now();
            for whole in to_reopen.drain(..) {
                if let Some(h) = open(whole) {
                    live.push(h);
                    opened += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (ka, fresh) = match (clients, normal) {
        (Some(c), _) => c,
        (None, Some(n)) => n.stop(),
        (None, None) => unreachable!(),
    };
    let (peak, peak_fds) = sampler.finish();
    std::thread::sleep(Duration::from_millis(300));
    let metrics = gw.metrics_text();
    let evicted = metric(
        &metrics,
        "enrollgate_tls_handshakes_total{result=\"evicted\"}",
    );
    let timed_out = metric(
        &metrics,
        "enrollgate_tls_handshakes_total{result=\"timeout\"}",
    );
    let failed = metric(
        &metrics,
        "enrollgate_tls_handshakes_total{result=\"failed\"}",
    );

    let fast = lifetimes.iter().filter(|l| l.1 < timeout / 2).count();
    let mut held: Vec<Duration> = lifetimes
        .iter()
        .filter(|l| l.1 >= timeout / 2)
        .map(|l| l.1)
        .collect();
    let longest = held.iter().max().copied().unwrap_or_default();
    eprintln!(
        "[{label}] {opened} attack connections over {} ({} with a partial ClientHello, the \
         rest a whole one); {fast} closed within {} (pushed out by newer ones), {} held \
         then closed: {}; {} still open at the deadline",
        secs(ATTACK),
        lifetimes.iter().filter(|l| !l.0).count(),
        secs(timeout / 2),
        held.len(),
        spread(&mut held),
        live.len()
    );
    eprintln!(
        "[{label}] daemon: handshakes evicted {evicted}, timed out {timed_out}, failed \
         {failed}; descriptors before {fds_before}, peak {peak_fds} (at most 2 workers x \
         {held_per_worker} over the baseline, plus the clients; max_handshakes \
         {MAX_HANDSHAKES}, max_handshakes_per_source 32)"
    );
    assert!(live.is_empty(), "every unfinished handshake is closed");
    assert!(evicted > 0.0, "the flood exceeded max_handshakes");
    assert!(
        longest <= timeout + Duration::from_millis(500),
        "no handshake outlives handshake_timeout ({} held)",
        secs(longest)
    );
    // Two workers, each holding at most max_handshakes handshakes, plus the clients'
    // own connections and sockets accepted only to be closed at once.
    assert!(
        peak_fds <= fds_before + 2 * held_per_worker + 16,
        "the daemon held {} descriptors over its baseline",
        peak_fds - fds_before
    );
    assert_kept_serving(label, &ka, &fresh, N, true);
    // Per held handshake: rustls' state and buffers plus our 16.5 KiB read buffer
    // (~64 KiB); 2 x max_handshakes of them, plus 32 MiB.
    assert_memory(
        label,
        pid,
        before,
        peak,
        2 * MAX_HANDSHAKES as u64 * 64 + 32 * MIB_IN_KIB,
        "2 x max_handshakes x 64 KiB + 32 MiB",
    );
    assert!(!gw.log().contains("panicked"));
}

// ---------------------------------------------------------------------------------------
// 10,000 idle connections.

/// A TLS client that is cheap to run by the thousand: TLS 1.3 with X25519 only.
fn cheap_client_config(gw: &Gateway) -> Arc<ClientConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let mut roots = rustls::RootCertStore::empty();
    for c in gw.ca_certs() {
        roots.add(c).unwrap();
    }
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn handshake_over(tcp: TcpStream, cfg: &Arc<ClientConfig>) -> std::io::Result<Tls> {
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(20)))?;
    let conn = ClientConnection::new(cfg.clone(), "127.0.0.1".try_into().expect("name"))
        .map_err(std::io::Error::other)?;
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// Whether the daemon closed a (non-blocking) TLS stream.
/// Idle TLS connections, each with when it was made, and how many were refused.
type Held = (Vec<(Tls, Instant)>, usize);

/// Opens `n` TLS connections from `source` over 4 threads and holds them idle
/// (non-blocking, no request).
fn hold_idle_tls(port: u16, cfg: &Arc<ClientConfig>, source: [u8; 4], n: usize) -> Held {
    let threads = 4;
    let parts: Vec<JoinHandle<Held>> = (0..threads)
        .map(|t| {
            let cfg = cfg.clone();
            let count = n / threads + usize::from(t < n % threads);
            std::thread::spawn(move || {
                let mut held = Vec::with_capacity(count);
                let mut refused = 0;
                for _ in 0..count {
                    match connect_from(source, port).and_then(|tcp| handshake_over(tcp, &cfg)) {
                        Ok(s) => {
                            s.sock.set_nonblocking(true).unwrap();
                            held.push((s, Instant::now()));
                        }
                        Err(e) => {
                            // Shown with a failure: why a connection was refused, when
                            // one was (a reset by the daemon, a timeout of a slow machine).
                            if refused == 0 {
                                eprintln!("[idle tls] first refusal of this thread: {e}");
                            }
                            refused += 1;
                        }
                    }
                }
                (held, refused)
            })
        })
        .collect();
    let mut held = Vec::with_capacity(n);
    let mut refused = 0;
    for p in parts {
        let (h, r) = p.join().unwrap();
        held.extend(h);
        refused += r;
    }
    (held, refused)
}

fn tls_closed(s: &mut Tls) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// 10,000 connections that send nothing, then 10,000 that finish TLS and send no request.
/// Silent TCP connections are bounded by `max_handshakes` (each new one pushes out the
/// oldest) and closed by `handshake_timeout`; idle TLS connections are bounded by
/// `max_connections` (per worker; each new one pushes out the one idle longest) and closed
/// by `idle_timeout`. Clients that open a new connection per enrollment keep enrolling
/// throughout. The test raises its soft `RLIMIT_NOFILE` to the hard limit; the daemon
/// inherits it (it does not raise its own: under systemd, `LimitNOFILE=1048576`).
#[test]
fn ten_thousand_idle_connections_are_bounded() {
    const N: usize = 25;
    const MAX_HANDSHAKES: usize = 1024; // the default
    const MAX_CONNECTIONS: usize = 4000;
    const WORKERS: usize = 2;
    let handshake_timeout = Duration::from_secs(3);
    let idle_timeout = Duration::from_secs(20);
    let (soft, hard) = raise_nofile_limit();
    let want = 10_000usize;
    let n = want.min(
        usize::try_from(hard)
            .unwrap_or(usize::MAX)
            .saturating_sub(500),
    );
    if n < want {
        eprintln!("RLIMIT_NOFILE hard limit {hard}: {n} connections instead of {want}");
    }
    let gw = Gateway::start_alone_with(
        set_limits(&[
            ("max_connections", "4000"),
            ("handshake_timeout", "\"3s\""),
            ("idle_timeout", "\"20s\""),
        ]),
        &[],
    );
    let pid = gw.pid();
    let (dsoft, dhard) = nofile_of(pid);
    eprintln!(
        "RLIMIT_NOFILE: test process {soft}/{hard}, daemon {dsoft}/{dhard} (soft/hard); \
         {n} connections per phase, max_handshakes {MAX_HANDSHAKES} and max_connections \
         {MAX_CONNECTIONS} per worker, {WORKERS} workers"
    );
    // The daemon raises its own soft limit to the hard one (crates/enrollgate-server/src/ops/process.rs); here it
    // inherits ours anyway. Either way it must hold the connections this test opens.
    let daemon_soft: usize = dsoft.parse().unwrap_or(usize::MAX);
    assert!(
        daemon_soft >= WORKERS * MAX_CONNECTIONS + 100,
        "the daemon's open-files limit {dsoft} is below max_connections x workers"
    );
    baseline(&gw, "idle", 10);

    // Phase 1: TCP connected, nothing sent.
    let label = "10k silent TCP";
    let prepared = prepare(&gw, "silent", N);
    let m0 = gw.metrics_text();
    let fds_before = open_fds(pid);
    let before = memory_kib(pid).0;
    let sampler = sample(pid, Duration::from_millis(50));
    let started = Instant::now();
    let mut socks: Vec<(TcpStream, Instant)> = Vec::with_capacity(n);
    let mut connect_failed = 0usize;
    // From 16 addresses, so that the per-source bound (256 per worker) does not bind
    // before max_handshakes does.
    for i in 0..n {
        match connect_from([127, 0, 1, 1 + (i % 16) as u8], gw.port) {
            Ok(s) => {
                s.set_nonblocking(true).unwrap();
                socks.push((s, Instant::now()));
            }
            Err(_) => connect_failed += 1,
        }
    }
    let connected = socks.len();
    let connect_time = started.elapsed();
    let normal = prepared.start();
    let mut lifetimes = Vec::new();
    let deadline = Instant::now() + handshake_timeout + Duration::from_secs(20);
    while !socks.is_empty() && Instant::now() < deadline {
        let mut i = 0;
        while i < socks.len() {
            let mut got = 0;
            if closed_by_peer(&mut socks[i].0, &mut got) {
                lifetimes.push(socks.swap_remove(i).1.elapsed());
            } else {
                i += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    while !normal.finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (ka, fresh) = normal.stop();
    let (peak, peak_fds) = sampler.finish();
    let m1 = gw.metrics_text();
    let delta = |series: &str| metric(&m1, series) - metric(&m0, series);
    let evicted = delta("enrollgate_tls_handshakes_total{result=\"evicted\"}");
    let timed_out = delta("enrollgate_tls_handshakes_total{result=\"timeout\"}");
    let failed = delta("enrollgate_tls_handshakes_total{result=\"failed\"}");
    let fast = lifetimes
        .iter()
        .filter(|d| **d < handshake_timeout / 2)
        .count();
    let mut held: Vec<Duration> = lifetimes
        .iter()
        .copied()
        .filter(|d| *d >= handshake_timeout / 2)
        .collect();
    eprintln!(
        "[{label}] {connected} connected in {} ({connect_failed} connects failed); {fast} \
         closed soon (pushed out by newer ones), {} held then closed ({}); {} still open; \
         daemon: evicted {evicted}, timed out {timed_out}, failed {failed}; descriptors \
         {fds_before} -> \
         peak {peak_fds}",
        secs(connect_time),
        held.len(),
        spread(&mut held),
        socks.len()
    );
    assert!(socks.is_empty(), "every silent connection is closed");
    assert_eq!(connect_failed, 0);
    // Each silent connection ends evicted (pushed out by a newer one over max_handshakes)
    // or timed out; beyond those, only the clients' own retried attempts.
    let attempts = connected + fresh.retries + ka.retries;
    assert!(
        evicted + timed_out >= connected as f64 && evicted + timed_out <= attempts as f64,
        "evicted {evicted} + timed out {timed_out}: {connected} silent connections, {} \
         client retries",
        fresh.retries + ka.retries
    );
    assert!(
        held.len() >= MAX_HANDSHAKES,
        "the handshake slots were used"
    );
    // A held connection is closed by the handshake timeout, or pushed out by one of the
    // clients' own new connections.
    let pushed_out = held
        .iter()
        .filter(|d| **d < handshake_timeout - Duration::from_millis(50))
        .count();
    assert!(
        pushed_out <= N + fresh.retries + ka.retries,
        "{pushed_out} held connections were closed before the handshake timeout"
    );
    assert!(
        peak_fds <= fds_before + WORKERS * MAX_HANDSHAKES + 16,
        "the daemon held {} descriptors over its baseline",
        peak_fds - fds_before
    );
    assert_kept_serving(label, &ka, &fresh, N, true);
    // A silent connection holds rustls' server state and our 16.5 KiB read buffer.
    assert_memory(
        label,
        pid,
        before,
        peak,
        (WORKERS * MAX_HANDSHAKES) as u64 * 64 + 32 * MIB_IN_KIB,
        "2 x max_handshakes x 64 KiB + 32 MiB",
    );

    // Phase 2: TLS done, no request.
    let label = "10k idle TLS";
    let mut prepared = prepare(&gw, "idle", N);
    let log_before = gw.log().matches("connection limit reached").count();
    let fds_before = open_fds(pid);
    let before = memory_kib(pid).0;
    let sampler = sample(pid, Duration::from_millis(100));
    let cfg = cheap_client_config(&gw);
    let started = Instant::now();
    let (mut idle, refused_at_accept) = hold_idle_tls(gw.port, &cfg, [127, 0, 0, 3], n);
    let established = idle.len();
    let setup = started.elapsed();
    let fds_held = open_fds(pid);
    let (rss_held, _) = memory_kib(pid);
    let open_gauge = metric(&gw.metrics_text(), "enrollgate_open_connections");
    // The keep-alive client connects once the idle connections are in place: a connection
    // idle since before them is, rightly, the first one pushed out.
    prepared.keep_alive_conn = tls_connect(gw.port, &prepared.cfg).expect("keep-alive connection");
    let normal = prepared.start();
    while !normal.finished() && started.elapsed() < idle_timeout {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (ka, fresh) = normal.stop();
    let mut lifetimes = Vec::new();
    let deadline = Instant::now() + idle_timeout + Duration::from_secs(20);
    while !idle.is_empty() && Instant::now() < deadline {
        let mut i = 0;
        while i < idle.len() {
            if tls_closed(&mut idle[i].0) {
                lifetimes.push(idle.swap_remove(i).1.elapsed());
            } else {
                i += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (peak, peak_fds) = sampler.finish();
    let limit_logged = gw.log().matches("connection limit reached").count() - log_before;
    let m2 = gw.metrics_text();
    let idle_pushed = metric(
        &m2,
        "enrollgate_connections_pushed_out_total{state=\"idle\"}",
    );
    let (mut pushed, mut timed_out): (Vec<Duration>, Vec<Duration>) = lifetimes
        .iter()
        .partition(|d| **d < idle_timeout - Duration::from_millis(50));
    eprintln!(
        "[{label}] {established} TLS connections established and {refused_at_accept} \
         refused in {}; with them held: daemon descriptors {fds_before} -> {fds_held} (peak \
         {peak_fds}), enrollgate_open_connections {open_gauge}, RSS {rss_held} KiB ({:.1} \
         KiB per open connection); 'connection limit reached' logged {limit_logged} times; \
         pushed out by newer connections: {} ({}; daemon counted {idle_pushed}); closed by \
         the idle timeout: {} ({}); {} still open",
        secs(setup),
        rss_held.saturating_sub(before) as f64 / open_gauge.max(1.0),
        pushed.len(),
        spread(&mut pushed),
        timed_out.len(),
        spread(&mut timed_out),
        idle.len()
    );
    assert!(idle.is_empty(), "every idle connection is closed");
    assert_eq!(
        refused_at_accept, 0,
        "a new connection pushes out an idle one"
    );
    assert_eq!(
        limit_logged, 0,
        "an idle connection was always there to make room"
    );
    assert!(
        open_gauge <= (WORKERS * MAX_CONNECTIONS) as f64,
        "max_connections bounds the connections held"
    );
    // Each connection over max_connections pushed out an idle one, and so may each of the
    // clients' own connections.
    let excess = n.saturating_sub(WORKERS * MAX_CONNECTIONS);
    let client_conns = N + fresh.retries + ka.retries + 1;
    assert!(
        pushed.len() >= excess && pushed.len() <= excess + client_conns,
        "{} idle connections pushed out; {excess} connections over max_connections",
        pushed.len()
    );
    assert!(
        idle_pushed >= pushed.len() as f64,
        "the daemon counts what it pushed out"
    );
    assert!(
        peak_fds <= fds_before + WORKERS * MAX_CONNECTIONS + 16,
        "the daemon held {} descriptors over its baseline",
        peak_fds - fds_before
    );
    assert_kept_serving(label, &ka, &fresh, N, true);
    assert_memory(
        label,
        pid,
        before,
        peak,
        (WORKERS * MAX_CONNECTIONS) as u64 * 64 + 32 * MIB_IN_KIB,
        "2 x max_connections x 64 KiB + 32 MiB",
    );
    assert!(!gw.log().contains("panicked"));
}

// ---------------------------------------------------------------------------------------
// The memory cap.

/// `limits.max_memory = "200MiB"`: the store keeps its budget (about 131 MiB) and the
/// rest, 68.8 MiB, is for the process and its connections. 3,000 idle TLS connections
/// would take about 130 MiB; at 90% of the share the connections open become a ceiling,
/// and every connection past it pushes out an idle one (crates/enrollgate-server/src/ops/memory.rs). Resident
/// memory stays within the share, a client that opens a new connection per enrollment
/// keeps enrolling, and the daemon reports the ceiling.
#[test]
fn the_memory_cap_holds_against_thousands_of_idle_connections() {
    const N: usize = 25;
    const FLOOD: usize = 3000;
    const CAP_MIB: u64 = 200;
    const {
        assert!(
            enrollgate::config::MIN_MAX_MEMORY <= CAP_MIB << 20,
            "the test's cap is under the smallest accepted"
        )
    };
    let share_kib = (CAP_MIB << 10) - enrollgate::store::rocks::MEMORY_BUDGET / 1024;
    raise_nofile_limit();
    let gw = Gateway::start_alone_with(set_limits(&[("max_memory", "\"200MiB\"")]), &[]);
    let pid = gw.pid();
    let before = memory_kib(pid).0;
    let prepared = prepare(&gw, "mem", N);
    let sampler = sample(pid, Duration::from_millis(5));
    let cfg = cheap_client_config(&gw);
    let started = Instant::now();
    let (held, refused) = hold_idle_tls(gw.port, &cfg, [127, 0, 0, 4], FLOOD);
    let mut idle: Vec<Tls> = held.into_iter().map(|(s, _)| s).collect();
    let setup = started.elapsed();
    let normal = prepared.start();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !normal.finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (ka, fresh) = normal.stop();
    let held_open = idle
        .iter_mut()
        .map(|s| !tls_closed(s))
        .filter(|open| *open)
        .count();
    let (peak, _) = sampler.finish();
    let m = gw.metrics_text();
    let ceiling = metric(&m, "enrollgate_memory_connection_ceiling");
    let open = metric(&m, "enrollgate_open_connections");
    let pushed = metric(
        &m,
        "enrollgate_connections_pushed_out_total{state=\"idle\"}",
    );
    let resident = metric(&m, "enrollgate_resident_memory_bytes");
    eprintln!(
        "[memory cap] {FLOOD} idle TLS connections in {} ({refused} refused); still open \
         {held_open}; daemon: ceiling {ceiling}, open {open}, pushed out {pushed}, resident \
         {:.1} MiB; RSS before {before} KiB, peak {peak} KiB, share {share_kib} KiB",
        secs(setup),
        resident / 1048576.0
    );
    eprintln!("[memory cap] {}", ka.line("keep-alive"));
    eprintln!("[memory cap] {}", fresh.line("new connection"));
    assert!(gw.log().contains("resident memory near limits.max_memory"));
    assert!(ceiling >= 1.0, "the daemon reports its connection ceiling");
    assert_eq!(
        refused, 0,
        "each newcomer made room by pushing out an idle connection"
    );
    // The flood's connections past the ceiling pushed out idle ones (and the clients'
    // own connections may have).
    let floor = (enrollgate::ops::memory::FLOOR_PER_WORKER * 2) as f64;
    assert!(
        open <= ceiling + floor + 2.0,
        "{open} connections open over a ceiling of {ceiling}"
    );
    assert!(
        pushed >= (FLOOD as f64) - ceiling - floor,
        "{pushed} idle connections pushed out"
    );
    assert!(
        held_open as f64 <= open,
        "the client holds {held_open} live connections"
    );
    // The memory: under the cap, and within the connections' share (the store holds
    // almost nothing here) give or take the growth before the ceiling is lowered.
    assert!(
        peak <= CAP_MIB << 10,
        "RSS peaked at {peak} KiB, over the cap"
    );
    assert!(
        peak <= share_kib + 16 * MIB_IN_KIB,
        "RSS peaked at {peak} KiB; the connections' share is {share_kib} KiB"
    );
    // At the ceiling keep-alive is off (each answer says Connection: close), so the
    // keep-alive client reconnects; every answer it got was a success.
    assert_eq!((fresh.ok, fresh.retries), (N, 0), "{:?}", fresh.failures);
    assert!(ka.ok >= 1, "{:?}", ka.failures);
    assert!(
        ka.failures.iter().all(|f| !f.starts_with("HTTP")),
        "{:?}",
        ka.failures
    );
    drop(idle);
    baseline(&gw, "after the flood", 5);
    assert!(!gw.log().contains("panicked"));
}

// ---------------------------------------------------------------------------------------
// Client certificates of several megabytes.

/// A self-signed certificate carrying an opaque, non-critical extension of `extra` bytes.
fn padded_cert(
    cn: &str,
    extra: usize,
) -> (rustls_pki_types::CertificateDer<'static>, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    if extra > 0 {
        p.custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 4, 1, 55555, 7],
                vec![0x5a; extra],
            ));
    }
    let cert = p.self_signed(&key).unwrap();
    (cert.der().clone(), key)
}

fn client_auth_config(
    gw: &Gateway,
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: &rcgen::KeyPair,
    tls12: bool,
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in gw.ca_certs() {
        roots.add(c).unwrap();
    }
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signer = provider.key_provider.load_private_key(key).unwrap();
    // Not `with_client_auth_cert`: it parses the leaf, and a multi-MB certificate does
    // not parse on the client side either. The resolver sends the chain as it is.
    let resolver = SendAnyway(Arc::new(rustls::sign::CertifiedKey::new(chain, signer)));
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_client_cert_resolver(Arc::new(resolver)),
    )
}

/// Offers one certificate chain, unchecked, whatever the server asks for.
#[derive(Debug)]
struct SendAnyway(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for SendAnyway {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Handshake with `cfg`, then `GET /version`: the HTTP response, or the error that ended
/// the exchange. (In TLS 1.3 the client's certificate travels after the server's
/// Finished, so the client may think the handshake done before the server refused it.)
fn try_with_certificate(
    port: u16,
    cfg: &Arc<ClientConfig>,
    path: &str,
) -> Result<HttpResponse, String> {
    let mut s = tls_connect(port, cfg).map_err(|e| format!("handshake: {e}"))?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let _ = s.flush();
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if raw.is_empty() => return Err(format!("read: {e}")),
            Err(_) => break,
        }
    }
    client::parse_response(&raw)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "closed without a response".to_string())
}

/// rustls refuses a handshake message over 64 KiB (`MAX_HANDSHAKE_SIZE` = 0xffff in its
/// deframer: "message buffer full", `HandshakePayloadTooLarge`), so a Certificate message
/// of several MB — a chain of hundreds of certificates, or one huge certificate — ends
/// the handshake after at most 64 KiB is buffered, in TLS 1.2 and 1.3 alike. A chain just
/// under the limit is accepted by the handshake and refused per request with its code.
#[test]
fn client_certificates_of_several_megabytes_are_refused() {
    const N: usize = 25;
    const ATTACKERS: usize = 8;
    let gw = Gateway::start_alone_with(set_limits(&[("handshake_timeout", "\"5s\"")]), &[]);
    let label = "multi-MB client certificates";
    baseline(&gw, label, 10);
    let pid = gw.pid();

    let (leaf, key) = padded_cert("leaf", 0);
    let (filler, _) = padded_cert("filler", 8 * 1024);
    let mut long_chain = vec![leaf.clone()];
    long_chain.extend(std::iter::repeat_n(filler.clone(), 400));
    let (huge, huge_key) = padded_cert("huge", 3 << 20);
    let size =
        |c: &[rustls_pki_types::CertificateDer<'_>]| c.iter().map(|c| c.len()).sum::<usize>();
    let variants = [
        (
            "401-certificate chain, TLS 1.3",
            client_auth_config(&gw, long_chain.clone(), &key, false),
            size(&long_chain),
        ),
        (
            "401-certificate chain, TLS 1.2",
            client_auth_config(&gw, long_chain.clone(), &key, true),
            size(&long_chain),
        ),
        (
            "one huge certificate, TLS 1.3",
            client_auth_config(&gw, vec![huge.clone()], &huge_key, false),
            huge.len(),
        ),
        (
            "one huge certificate, TLS 1.2",
            client_auth_config(&gw, vec![huge.clone()], &huge_key, true),
            huge.len(),
        ),
    ];

    // Just under the limit: 6 fillers (~50 KiB) pass the handshake; the request is
    // answered with its documented code.
    let mut short_chain = vec![leaf.clone()];
    short_chain.extend(std::iter::repeat_n(filler.clone(), 6));
    for tls12 in [false, true] {
        let cfg = client_auth_config(&gw, short_chain.clone(), &key, tls12);
        let r = try_with_certificate(gw.port, &cfg, "/edge/client/v1/enroll?method=ca").unwrap();
        assert_eq!(
            (r.status, code(&r).as_str()),
            (400, "CERT_FAILED_VALIDATION")
        );
        let r = try_with_certificate(gw.port, &cfg, "/edge/management/v1/identities").unwrap();
        assert_eq!((r.status, code(&r).as_str()), (401, "UNAUTHORIZED"));
    }
    eprintln!(
        "[{label}] a {}-byte chain (7 certificates) passes the handshake and gets \
         CERT_FAILED_VALIDATION / UNAUTHORIZED",
        size(&short_chain)
    );

    let m0 = gw.metrics_text();
    let prepared = prepare(&gw, "bigcert", N);
    let before = memory_kib(pid).0;
    let sampler = sample(pid, Duration::from_millis(10));
    let done = Arc::new(AtomicBool::new(false));
    let variants = Arc::new(variants);
    // Per attempt: which variant, and what the client got.
    type Attempts = Vec<(usize, Result<HttpResponse, String>)>;
    let attackers: Vec<JoinHandle<Attempts>> = (0..ATTACKERS)
        .map(|t| {
            let (done, variants, port) = (done.clone(), variants.clone(), gw.port);
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let mut i = t;
                // At least one round of every variant per attacker, then until the
                // clients are done.
                while i < t + variants.len() || !done.load(Ordering::Relaxed) {
                    let v = i % variants.len();
                    out.push((v, try_with_certificate(port, &variants[v].1, "/version")));
                    i += 1;
                }
                out
            })
        })
        .collect();
    let normal = prepared.start();
    let (ka, fresh) = normal.join();
    done.store(true, Ordering::Relaxed);
    let results: Vec<_> = attackers
        .into_iter()
        .flat_map(|a| a.join().unwrap())
        .collect();
    let (peak, _) = sampler.finish();
    std::thread::sleep(Duration::from_millis(300));
    let m1 = gw.metrics_text();
    let failed = metric(&m1, "enrollgate_tls_handshakes_total{result=\"failed\"}")
        - metric(&m0, "enrollgate_tls_handshakes_total{result=\"failed\"}");
    for (v, (name, _, bytes)) in variants.iter().enumerate() {
        let mine: Vec<_> = results.iter().filter(|r| r.0 == v).collect();
        let mut errors: Vec<String> = mine
            .iter()
            .filter_map(|r| r.1.as_ref().err().cloned())
            .collect();
        errors.sort();
        errors.dedup();
        eprintln!(
            "[{label}] {name} ({bytes} bytes): {} attempts, {} answered; client saw: {errors:?}",
            mine.len(),
            mine.iter().filter(|r| r.1.is_ok()).count()
        );
    }
    eprintln!(
        "[{label}] daemon: {failed} failed handshakes for {} attempts",
        results.len()
    );
    assert!(
        results.iter().all(|r| r.1.is_err()),
        "no handshake with a multi-MB certificate message is served"
    );
    assert!(
        failed >= results.len() as f64,
        "the daemon ended every one of them as a failed handshake"
    );
    assert_kept_serving(label, &ka, &fresh, N, true);
    // rustls buffers at most 64 KiB of a handshake message: per attacker connection
    // 64 KiB plus its other buffers (256 KiB in all), plus 32 MiB.
    assert_memory(
        label,
        pid,
        before,
        peak,
        ATTACKERS as u64 * 256 + 32 * MIB_IN_KIB,
        "8 concurrent attackers x 256 KiB + 32 MiB",
    );
    assert!(!gw.log().contains("panicked"));
}

// ---------------------------------------------------------------------------------------
// Renegotiation.

/// `openssl s_client` over TLS 1.2, `R` (renegotiate), then a request; returns its output.
fn openssl_renegotiate(gw: &Gateway, tls: &str, commands: &str) -> String {
    let mut child = std::process::Command::new("openssl")
        .args(["s_client", tls, "-connect"])
        .arg(format!("127.0.0.1:{}", gw.port))
        .arg("-CAfile")
        .arg(gw.ca_file())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for line in commands.lines() {
        let _ = stdin.write_all(format!("{line}\n").as_bytes());
        let _ = stdin.flush();
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = stdin.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let _ = stdin.flush();
    std::thread::sleep(Duration::from_millis(500));
    drop(stdin);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// TLS 1.2 renegotiation: rustls answers a ClientHello after the handshake with a
/// `no_renegotiation` warning (a second one is fatal: `TooManyRenegotiationRequests`);
/// OpenSSL's client then gives up and the connection ends with no request served. In
/// TLS 1.3, a flood of KeyUpdates without application data ends the connection after 32
/// (rustls' `TooManyKeyUpdateRequests`). Neither disturbs other clients.
#[test]
fn renegotiation_and_key_update_floods_are_refused() {
    const N: usize = 25;
    let gw = Gateway::start_alone();
    let label = "renegotiation";
    baseline(&gw, label, 10);
    let pid = gw.pid();
    let prepared = prepare(&gw, "reneg", N);
    let before = memory_kib(pid).0;
    let sampler = sample(pid, Duration::from_millis(25));
    let normal = prepared.start();
    let mut renegotiations = Vec::new();
    let mut key_updates = Vec::new();
    let mut few_key_updates = Vec::new();
    while !normal.finished() || renegotiations.is_empty() {
        renegotiations.push(openssl_renegotiate(&gw, "-tls1_2", "R"));
        key_updates.push(openssl_renegotiate(&gw, "-tls1_3", &"k\n".repeat(40)));
        few_key_updates.push(openssl_renegotiate(&gw, "-tls1_3", &"k\n".repeat(8)));
    }
    let (ka, fresh) = normal.join();
    let (peak, _) = sampler.finish();
    let served = |outs: &[String]| outs.iter().filter(|o| o.contains("HTTP/1.1 200")).count();
    eprintln!(
        "[{label}] {} TLS 1.2 renegotiations: {} refused by 'no renegotiation', {} served \
         a request after; {} TLS 1.3 sessions with 40 KeyUpdates each: {} served a request \
         after",
        renegotiations.len(),
        renegotiations
            .iter()
            .filter(|o| o.contains("RENEGOTIATING") && o.contains("no renegotiation"))
            .count(),
        served(&renegotiations),
        key_updates.len(),
        served(&key_updates)
    );
    for o in &renegotiations {
        assert!(o.contains("RENEGOTIATING"), "{o}");
        assert!(o.contains("no renegotiation"), "{o}");
    }
    assert_eq!(served(&renegotiations), 0);
    assert_eq!(served(&key_updates), 0, "{}", key_updates[0]);
    // The limit is rustls' (32 without application data in between), not a broken
    // client: 8 KeyUpdates and the request is served.
    assert_eq!(
        served(&few_key_updates),
        few_key_updates.len(),
        "{}",
        few_key_updates[0]
    );
    assert_kept_serving(label, &ka, &fresh, N, true);
    assert_memory(label, pid, before, peak, 32 * MIB_IN_KIB, "32 MiB");
    assert_eq!(gw.request("GET", "/version", &[], b"").status, 200);
    assert!(!gw.log().contains("panicked"));
}

// ---------------------------------------------------------------------------------------
// Pipelined junk after valid requests.

/// Writes `bytes` on a new connection (ignoring a write cut short by the daemon closing),
/// reads to the end, and returns the responses.
fn pipeline(gw: &Gateway, bytes: &[u8]) -> Vec<HttpResponse> {
    let mut s = raw_tls(gw);
    for chunk in bytes.chunks(64 * 1024) {
        if s.write_all(chunk).and_then(|_| s.flush()).is_err() {
            break;
        }
    }
    let raw = read_all(&mut s);
    let (responses, trailing) = split_responses(&raw, |_| false).unwrap();
    assert_eq!(trailing, 0, "a response was cut short");
    responses
}

fn statuses(rs: &[HttpResponse]) -> Vec<(u16, String)> {
    rs.iter()
        .map(|r| {
            let c = if r.status == 200 {
                String::new()
            } else {
                code(r)
            };
            (r.status, c)
        })
        .collect()
}

/// Junk pipelined after valid requests: every valid request before it is answered (and
/// an enrollment in the pipeline is committed), the junk gets its error code, and the
/// connection is closed; the junk never reaches another request. 40 clients doing this
/// with 256 KiB of junk each keep the daemon's memory bounded.
#[test]
fn pipelined_junk_after_valid_requests() {
    const N: usize = 25;
    const JUNKERS: usize = 40;
    let gw = Gateway::start_alone_with(
        set_limits(&[
            ("header_timeout", "\"2s\""),
            ("idle_timeout", "\"5s\""),
            ("write_timeout", "\"5s\""),
        ]),
        &[],
    );
    let label = "pipelined junk";
    baseline(&gw, label, 10);
    let pid = gw.pid();
    let version = b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let cat = |parts: &[&[u8]]| parts.concat();

    let r = pipeline(&gw, &cat(&[&version, b"\x00\x01\x02 garbage\r\n\r\n"]));
    assert_eq!(
        statuses(&r),
        [(200, "".into()), (400, "MALFORMED_REQUEST".into())]
    );

    let r = pipeline(
        &gw,
        &cat(&[&version.repeat(100), b"BREW /coffee HTCPCP/1.0\r\n\r\n"]),
    );
    assert_eq!(r.len(), 101);
    assert!(r[..100].iter().all(|r| r.status == 200));
    assert_eq!(
        (r[100].status, code(&r[100]).as_str()),
        (400, "MALFORMED_REQUEST")
    );

    // A head that never ends, past max_header_bytes: 431 after the valid answer.
    let endless = cat(&[b"GET /", &vec![b'a'; 256 * 1024]]);
    let r = pipeline(&gw, &cat(&[&version, &endless]));
    assert_eq!(
        statuses(&r),
        [(200, "".into()), (431, "HEADERS_TOO_LARGE".into())]
    );

    // A body over max_body_bytes announced after a valid request: 413 before reading it.
    let r = pipeline(
        &gw,
        &cat(&[
            &version,
            b"POST /enroll?method=ott&token=x HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n",
            &[b'x'; 4096],
        ]),
    );
    assert_eq!(
        statuses(&r),
        [(200, "".into()), (413, "REQUEST_TOO_LARGE".into())]
    );

    // A chunked request after a valid one: 411.
    let r = pipeline(
        &gw,
        &cat(&[
            &version,
            b"POST /enroll HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ]),
    );
    assert_eq!(
        statuses(&r),
        [(200, "".into()), (411, "LENGTH_REQUIRED".into())]
    );

    // A real enrollment followed by junk: enrolled, and the junk is refused.
    let (id, _, token) = gw.create_identity("pipelined", "Device", false);
    let csr = new_csr_pem();
    let enroll = cat(&[
        format!(
            "POST /enroll?method=ott&token={token} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            csr.len()
        )
        .as_bytes(),
        &csr,
    ]);
    let r = pipeline(&gw, &cat(&[&enroll, b"\r\n\r\n\xff\xfe junk \x00\r\n\r\n"]));
    assert_eq!(
        statuses(&r),
        [(200, "".into()), (400, "MALFORMED_REQUEST".into())]
    );
    let shown = gw
        .mgmt("GET", &format!("/identities/{id}"), None)
        .json()
        .unwrap();
    assert_eq!(
        shown["data"]["hasEnrolled"], true,
        "the pipelined enrollment was committed: {shown}"
    );

    // 40 clients pipelining 256 KiB of junk after a valid request, while others enroll.
    let prepared = prepare(&gw, "junk", N);
    let before = memory_kib(pid).0;
    let sampler = sample(pid, Duration::from_millis(10));
    let done = Arc::new(AtomicBool::new(false));
    let payload = Arc::new(cat(&[&version, &endless]));
    let gw = Arc::new(gw);
    let junkers: Vec<JoinHandle<(usize, usize)>> = (0..JUNKERS)
        .map(|_| {
            let (done, payload, gw) = (done.clone(), payload.clone(), gw.clone());
            std::thread::spawn(move || {
                let (mut rounds, mut as_expected) = (0, 0);
                while rounds == 0 || !done.load(Ordering::Relaxed) {
                    let r = pipeline(&gw, &payload);
                    rounds += 1;
                    if statuses(&r) == [(200, "".into()), (431, "HEADERS_TOO_LARGE".into())] {
                        as_expected += 1;
                    }
                }
                (rounds, as_expected)
            })
        })
        .collect();
    let normal = prepared.start();
    let (ka, fresh) = normal.join();
    done.store(true, Ordering::Relaxed);
    let (rounds, as_expected) = junkers
        .into_iter()
        .map(|j| j.join().unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let (peak, peak_fds) = sampler.finish();
    std::thread::sleep(Duration::from_millis(300));
    eprintln!(
        "[{label}] {JUNKERS} clients sent {rounds} pipelines of a valid request + 256 KiB of \
         junk: {as_expected} answered 200 then 431; peak daemon descriptors {peak_fds}"
    );
    assert_eq!(rounds, as_expected);
    assert_kept_serving(label, &ka, &fresh, N, true);
    // Per junk connection: the head buffer (max_header_bytes + one 16.5 KiB read), rustls'
    // buffers and the discard buffer while lingering: 256 KiB, plus 32 MiB.
    assert_memory(
        label,
        pid,
        before,
        peak,
        JUNKERS as u64 * 256 + 32 * MIB_IN_KIB,
        "40 connections x 256 KiB + 32 MiB",
    );
    assert!(!gw.log().contains("panicked"));
}
