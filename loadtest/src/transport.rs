//! The transport floor: what moving an enrollment's bytes over loopback TCP costs a
//! server, with no TLS and no work in between.
//!
//! A plain server runs in this process on the gateway's own runtime (monoio over io_uring,
//! built by [`enrollgate::server::worker::runtime`] with the same ring flags) and its own
//! listening socket ([`enrollgate::server::listener::bind`]: backlog, `TCP_NODELAY`). A
//! client, on another thread and CPU, keeps `concurrency` connections in flight, each a
//! fresh TCP connection that replays the segments of one TLS 1.3 enrollment as captured on
//! loopback: the ClientHello, the server's flight, the client's flight with its request,
//! the server's answer with its close_notify and FIN, the client's close_notify and FIN.
//! The sizes are those of the flights (see [`Exchange`]); the bytes are zeros.
//!
//! Only the server thread's CPU is reported (utime + stime from
//! `/proc/self/task/TID/stat`, as `per-core.sh` reads the daemon's), per connection. On
//! loopback the kernel runs the receive processing of every segment the server sends in the
//! sender's context; on kernels without `CONFIG_IRQ_TIME_ACCOUNTING` (this project's VMs)
//! that time is the sender's, with it the kernel accounts softirqs apart, for the daemon as
//! for this floor. Either way the two are counted alike. What
//! the daemon spends beyond this plus its crypto floor is its own: rustls' records, HTTP,
//! the store, allocation, bookkeeping.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncReadRentExt, AsyncWriteRent, AsyncWriteRentExt};

use crate::Error;

/// The byte counts of one exchange: what the client sends first (its ClientHello), what the
/// server answers (its handshake flight), what the client sends then (its certificate,
/// CertificateVerify and Finished, with the HTTP request), and the server's answer (the
/// HTTP response and its close_notify).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exchange {
    /// The ClientHello.
    pub hello: usize,
    /// The server's flight, ServerHello to Finished.
    pub flight: usize,
    /// The client's flight and its request.
    pub request: usize,
    /// The response and close_notify.
    pub response: usize,
}

/// The close_notify alert a client sends before its FIN (TLS 1.3, encrypted: 24 bytes).
const CLOSE_NOTIFY: usize = 24;

impl Exchange {
    /// A mutual-TLS handshake and `GET /version`, as the load tool's `handshake` mode sends
    /// it to the gateway (captured on loopback, TLS 1.3, X25519MLKEM768, P-256).
    pub const HANDSHAKE: Exchange = Exchange {
        hello: 1444,
        flight: 1931,
        request: 1262,
        response: 466,
    };

    /// Parses `hello,flight,request,response`.
    pub fn parse(text: &str) -> Result<Exchange, String> {
        let n: Vec<usize> = text
            .split(',')
            .map(|s| {
                s.trim()
                    .parse::<usize>()
                    .map_err(|_| format!("'{}' is not a byte count", s.trim()))
            })
            .collect::<Result<_, _>>()?;
        match n[..] {
            [hello, flight, request, response] if n.iter().all(|&b| (1..=1 << 20).contains(&b)) => {
                Ok(Exchange {
                    hello,
                    flight,
                    request,
                    response,
                })
            }
            [_, _, _, _] => Err("each byte count must be from 1 to 1048576".into()),
            _ => Err(format!(
                "expected four byte counts (hello,flight,request,response), got {}",
                n.len()
            )),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The bytes of each connection.
    pub exchange: Exchange,
    /// Connections measured.
    pub count: usize,
    /// Connections run before measuring (the accept queue, caches and allocator settle).
    pub warmup: usize,
    /// Connections in flight.
    pub concurrency: usize,
    /// The server thread's CPU.
    pub server_cpu: Option<usize>,
    /// The client thread's CPU.
    pub client_cpu: Option<usize>,
}

/// What a run measured.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Connections completed in the measured phase.
    pub connections: usize,
    /// The server thread's CPU over the measured phase.
    pub server_cpu: Duration,
    /// Wall time of the measured phase.
    pub elapsed: Duration,
}

impl Measured {
    /// Server CPU per connection.
    pub fn per_connection(&self) -> Duration {
        self.server_cpu / u32::try_from(self.connections.max(1)).unwrap_or(u32::MAX)
    }
}

/// Runs the server and the client and measures the server's CPU per connection.
pub fn run(spec: &Spec) -> Result<Measured, Error> {
    if spec.count == 0 || spec.concurrency == 0 {
        return Err(Error::Invalid(
            "--count and --concurrency must be at least 1".into(),
        ));
    }
    let (listeners, _lock) =
        enrollgate::server::listener::bind("127.0.0.1:0".parse().expect("address"), 1)
            .map_err(|e| Error::Invalid(format!("bind 127.0.0.1: {e}")))?;
    let listener = listeners.into_iter().next().expect("one listener");
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Invalid(format!("listener address: {e}")))?;
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let exchange = spec.exchange;
    let server_cpu = spec.server_cpu;
    // Detached: it serves until the process ends.
    std::thread::Builder::new()
        .name("transport-server".into())
        .spawn(move || {
            let started = (|| {
                if let Some(c) = server_cpu {
                    crate::cpu::pin_current_thread(&[c])?;
                }
                thread_id()
            })();
            let failed = started.is_err();
            let _ = tid_tx.send(started);
            if failed {
                return;
            }
            let rt = enrollgate::server::worker::runtime(true)
                .or_else(|_| enrollgate::server::worker::runtime(false));
            let Ok(mut rt) = rt else { return };
            rt.block_on(async move {
                let Ok(listener) = monoio::net::TcpListener::from_std(listener) else {
                    return;
                };
                loop {
                    match listener.accept().await {
                        Ok((tcp, _)) => drop(monoio::spawn(serve(tcp, exchange))),
                        // Out of descriptors: the client's connections fail and report it.
                        Err(_) => monoio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            });
        })
        .map_err(|e| Error::Invalid(format!("server thread: {e}")))?;
    let tid = tid_rx
        .recv()
        .map_err(|_| Error::Invalid("the server thread did not start".into()))??;

    if let Some(c) = spec.client_cpu {
        crate::cpu::pin_current_thread(&[c])?;
    }
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .build()
        .map_err(|e| Error::Invalid(format!("client runtime: {e}")))?;
    rt.block_on(clients(addr, exchange, spec.warmup, spec.concurrency))
        .all_ok("warm-up ")?;
    let cpu0 = thread_cpu(tid)?;
    let t0 = Instant::now();
    let done = rt.block_on(clients(addr, exchange, spec.count, spec.concurrency));
    let elapsed = t0.elapsed();
    let cpu1 = thread_cpu(tid)?;
    let done = done.all_ok("")?;
    Ok(Measured {
        connections: done.ok,
        server_cpu: cpu1.saturating_sub(cpu0),
        elapsed,
    })
}

/// The server's side of one connection: what the gateway's worker does at the socket for
/// an enrollment (reads the ClientHello, writes its flight, reads the client's flight and
/// request, writes the answer, shuts down its side and closes), nothing else.
async fn serve(mut tcp: monoio::net::TcpStream, ex: Exchange) {
    let buf = Vec::with_capacity(ex.hello.max(ex.request));
    let Ok(buf) = read_n(&mut tcp, buf, ex.hello).await else {
        return;
    };
    let (res, _) = tcp.write_all(vec![0u8; ex.flight]).await;
    if res.is_err() {
        return;
    }
    let Ok(_) = read_n(&mut tcp, buf, ex.request).await else {
        return;
    };
    let (res, _) = tcp.write_all(vec![0u8; ex.response]).await;
    if res.is_err() {
        return;
    }
    let _ = tcp.shutdown().await;
}

/// Reads exactly `n` bytes into the front of `buf` (whose capacity is at least `n`).
async fn read_n(
    tcp: &mut monoio::net::TcpStream,
    mut buf: Vec<u8>,
    n: usize,
) -> std::io::Result<Vec<u8>> {
    buf.clear();
    let (res, slice) = tcp.read_exact(buf.slice_mut(0..n)).await;
    res.map(|_| slice.into_inner())
}

#[derive(Default)]
struct Done {
    ok: usize,
    failed: usize,
    first_error: Option<String>,
}

impl Done {
    /// `self` when every connection succeeded; otherwise an error naming the first failure.
    fn all_ok(self, what: &str) -> Result<Done, Error> {
        if self.failed == 0 {
            return Ok(self);
        }
        Err(Error::Invalid(format!(
            "{} of {} {what}connections failed: {}",
            self.failed,
            self.ok + self.failed,
            self.first_error.unwrap_or_default()
        )))
    }
}

/// Runs `total` connections, `concurrency` at a time.
async fn clients(addr: SocketAddr, ex: Exchange, total: usize, concurrency: usize) -> Done {
    let next = Rc::new(Cell::new(0usize));
    let done = Rc::new(std::cell::RefCell::new(Done::default()));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.min(total) {
        let (next, done) = (next.clone(), done.clone());
        tasks.push(monoio::spawn(async move {
            while next.get() < total {
                next.set(next.get() + 1);
                let r = client(addr, ex).await;
                let mut d = done.borrow_mut();
                match r {
                    Ok(()) => d.ok += 1,
                    Err(e) => {
                        d.failed += 1;
                        d.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await;
    }
    Rc::try_unwrap(done).map_or_else(|_| Done::default(), std::cell::RefCell::into_inner)
}

/// The client's side of one connection, as the load tool's TLS client drives it.
async fn client(addr: SocketAddr, ex: Exchange) -> std::io::Result<()> {
    let mut tcp = monoio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (res, _) = tcp.write_all(vec![0u8; ex.hello]).await;
    res?;
    let buf = read_n(
        &mut tcp,
        Vec::with_capacity(ex.flight.max(ex.response)),
        ex.flight,
    )
    .await?;
    let (res, _) = tcp.write_all(vec![0u8; ex.request]).await;
    res?;
    let mut buf = read_n(&mut tcp, buf, ex.response).await?;
    // Its close_notify (the server may have closed already: then the kernel resets, as it
    // does for the gateway), then the end of the stream.
    let (_, _) = tcp.write_all(vec![0u8; CLOSE_NOTIFY]).await;
    let _ = tcp.shutdown().await;
    loop {
        buf.clear();
        buf.reserve(64);
        match tcp.read(buf).await {
            (Ok(n), b) if n > 0 => buf = b,
            _ => return Ok(()),
        }
    }
}

/// This thread's id, from `/proc/thread-self` (`PID/task/TID`).
fn thread_id() -> Result<u32, Error> {
    let link = std::fs::read_link("/proc/thread-self")
        .map_err(|e| Error::Invalid(format!("/proc/thread-self: {e}")))?;
    link.file_name()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Invalid(format!("/proc/thread-self: {}", link.display())))
}

/// utime + stime of thread `tid` of this process.
fn thread_cpu(tid: u32) -> Result<Duration, Error> {
    let path = format!("/proc/self/task/{tid}/stat");
    let text =
        std::fs::read_to_string(&path).map_err(|e| Error::Invalid(format!("{path}: {e}")))?;
    let ticks = stat_ticks(&text).ok_or_else(|| Error::Invalid(format!("{path}: unreadable")))?;
    // /proc reports these in USER_HZ, which Linux fixes at 100 on x86 and arm64.
    Ok(Duration::from_millis(ticks.saturating_mul(10)))
}

/// utime + stime (fields 14 and 15) of a `/proc/.../stat` line. The command name (field
/// 2) is in parentheses and may hold spaces, so fields are counted after its last `)`.
fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn exchanges_parse() {
        assert_eq!(
            Exchange::parse("1444, 1931,1262,466").unwrap(),
            Exchange::HANDSHAKE
        );
        assert!(Exchange::parse("1,2,3").unwrap_err().contains("four"));
        assert!(Exchange::parse("1,2,3,0").unwrap_err().contains("from 1"));
        assert!(Exchange::parse("1,2,x,4").unwrap_err().contains("'x'"));
    }

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "42 (transport (x) 1) S 1 2 3 4 5 6 7 8 9 10 700 300 0 0 20 0 1 0";
        assert_eq!(stat_ticks(line), Some(1000));
        assert_eq!(stat_ticks("42 (x) S 1"), None);
    }

    #[test]
    fn a_short_run_completes_every_connection() {
        let m = run(&Spec {
            exchange: Exchange::HANDSHAKE,
            count: 300,
            warmup: 20,
            concurrency: 8,
            server_cpu: None,
            client_cpu: None,
        })
        .unwrap();
        assert_eq!(m.connections, 300);
        assert!(m.elapsed > Duration::ZERO);
    }
}
