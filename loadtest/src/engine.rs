//! The timed phase: worker threads, each a mio event loop driving many non-blocking
//! connections through rustls, and a monitor that merges their counts once a second.
//!
//! One connection per request, as a device enrolls: connect, full handshake (no
//! resumption unless asked), one HTTP/1.1 request with `Connection: close`, the response,
//! `close_notify`. The request's bytes are handed to rustls before the handshake starts;
//! rustls sends them as soon as the handshake allows.
//!
//! Workers share nothing on the request path but the dispatcher's atomics and their own
//! recorder's mutex (uncontended except once a second, when the monitor reads it).

use std::io::{self, Read as _, Write as _};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::ClientConnection;

use crate::cpu::{self, CpuTimes};
use crate::plan::Plan;
use crate::schedule::{split_concurrency, Claim, Dispatcher, EndReason, Job, Stop};
use crate::stats::{self, Failure, Kind, Percentiles, Recorder};
use crate::Error;

/// Largest response the tool reads.
const MAX_RESPONSE: usize = 1 << 20;
/// How often in-flight requests are checked against the timeout.
const SWEEP: Duration = Duration::from_millis(100);

/// How hard to push.
#[derive(Debug, Clone)]
pub struct Load {
    /// Connections in flight (closed loop), or the cap on them (open loop).
    pub concurrency: usize,
    /// Open loop: requests a second.
    pub rate: Option<f64>,
    /// When to stop.
    pub stop: Stop,
    /// Unmeasured time at the start.
    pub warmup: Duration,
    /// Worker threads.
    pub threads: usize,
    /// Pin worker `i` to `cpus[i % len]`.
    pub cpus: Option<Vec<usize>>,
    /// A request not complete after this long fails as a timeout.
    pub timeout: Duration,
    /// Print a progress line every second on stderr.
    pub progress: bool,
}

/// One second of the run (by completion time).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// End of the interval, seconds since the run started.
    pub t: f64,
    /// Length of the interval, seconds.
    pub secs: f64,
    /// Successes in it.
    pub ok: u64,
    /// Failures in it.
    pub errors: u64,
    /// Latency percentiles of its successes.
    pub latency: Percentiles,
}

/// What the timed phase measured.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Requests started at or after the warmup.
    pub measured: Recorder,
    /// Warmup requests.
    pub warmup: Recorder,
    /// Per second, warmup included.
    pub timeline: Vec<Point>,
    /// From the end of the warmup to the last measured completion.
    pub elapsed: Duration,
    /// The tool's CPU time over the same window.
    pub cpu: CpuTimes,
    /// Why dispatching ended.
    pub end: EndReason,
    /// Worker threads used.
    pub threads: usize,
    /// Device certificates handed out.
    pub devices_used: usize,
}

#[derive(Default)]
struct Shard {
    measured: Recorder,
    warmup: Recorder,
    interval: Recorder,
    last_measured: Option<Instant>,
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A worker that panicked holding the lock leaves counts that are still counts.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Done {
    handshake: Option<Duration>,
    tls: Option<String>,
}

struct Conn {
    sock: TcpStream,
    tls: ClientConnection,
    job: Job,
    started: Instant,
    deadline: Instant,
    connected: bool,
    handshake_at: Option<Instant>,
    tls_label: Option<String>,
    resp: Vec<u8>,
}

impl Conn {
    fn open(plan: &Plan, job: Job, now: Instant, timeout: Duration) -> Result<Self, Failure> {
        let req = plan
            .requests
            .get(job.index)
            .ok_or_else(|| Failure::new(Kind::Protocol, "internal: no request for this number"))?;
        let mut tls = ClientConnection::new(plan.config.clone(), plan.server_name.clone())
            .map_err(|e| Failure::new(Kind::Tls, stats::tls_code(&e)))?;
        tls.writer()
            .write_all(req)
            .map_err(|e| Failure::new(Kind::Tls, stats::io_code("tls", &e)))?;
        let sock = TcpStream::connect(plan.addr)
            .map_err(|e| Failure::new(Kind::Connect, stats::io_code("connect", &e)))?;
        // Handshake flights and the request are small writes: never delay them.
        let _ = sock.set_nodelay(true);
        Ok(Self {
            sock,
            tls,
            job,
            started: now,
            deadline: now + timeout,
            connected: false,
            handshake_at: None,
            tls_label: None,
            resp: Vec::new(),
        })
    }

    fn io_failure(&self, e: &io::Error) -> Failure {
        if self.tls.is_handshaking() {
            Failure::new(Kind::Tls, stats::io_code("tls", e))
        } else {
            Failure::new(Kind::Io, stats::io_code("io", e))
        }
    }

    fn timeout_failure(&self) -> Failure {
        let what = if !self.connected {
            "timeout: connecting"
        } else if self.tls.is_handshaking() {
            "timeout: in the handshake"
        } else {
            "timeout: waiting for the response"
        };
        Failure::new(Kind::Timeout, what)
    }

    fn on_event(&mut self, ev: &Event, plan: &Plan) -> Option<Result<Done, Failure>> {
        if !self.connected {
            match self.sock.take_error() {
                Ok(Some(e)) | Err(e) => {
                    return Some(Err(Failure::new(
                        Kind::Connect,
                        stats::io_code("connect", &e),
                    )))
                }
                Ok(None) => {}
            }
            match self.sock.peer_addr() {
                Ok(_) => self.connected = true,
                Err(e) if e.kind() == io::ErrorKind::NotConnected && !ev.is_error() => return None,
                Err(e) => {
                    return Some(Err(Failure::new(
                        Kind::Connect,
                        stats::io_code("connect", &e),
                    )))
                }
            }
        }
        self.drive(plan)
    }

    /// Moves bytes until the socket would block; the outcome once the response is in.
    fn drive(&mut self, plan: &Plan) -> Option<Result<Done, Failure>> {
        loop {
            while self.tls.wants_write() {
                match self.tls.write_tls(&mut self.sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Some(Err(self.io_failure(&e))),
                }
            }
            let eof = match self.tls.read_tls(&mut self.sock) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Some(Err(self.io_failure(&e))),
            };
            let state = match self.tls.process_new_packets() {
                Ok(s) => s,
                Err(e) => {
                    // Tell the server why (the alert rustls queued), then give up.
                    let _ = self.tls.write_tls(&mut self.sock);
                    return Some(Err(Failure::new(Kind::Tls, stats::tls_code(&e))));
                }
            };
            if self.handshake_at.is_none() && !self.tls.is_handshaking() {
                self.handshake_at = Some(Instant::now());
                self.tls_label = Some(format!(
                    "{:?} {:?}",
                    self.tls
                        .protocol_version()
                        .unwrap_or(rustls::ProtocolVersion::Unknown(0)),
                    self.tls
                        .negotiated_key_exchange_group()
                        .map(|g| g.name())
                        .unwrap_or(rustls::NamedGroup::Unknown(0))
                ));
            }
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                let at = self.resp.len();
                self.resp.resize(at + n, 0);
                if let Err(e) = self.tls.reader().read_exact(&mut self.resp[at..]) {
                    return Some(Err(self.io_failure(&e)));
                }
                if self.resp.len() > MAX_RESPONSE {
                    return Some(Err(Failure::new(
                        Kind::Protocol,
                        "protocol: response too large",
                    )));
                }
                match enrollgate::client::parse_response(&self.resp) {
                    Ok(Some(resp)) => {
                        self.tls.send_close_notify();
                        let _ = self.tls.write_tls(&mut self.sock);
                        return Some(stats::classify(&resp, plan.success).map(|()| Done {
                            handshake: self.handshake_at.map(|h| h - self.started),
                            tls: self.tls_label.take(),
                        }));
                    }
                    Ok(None) => {}
                    Err(_) => {
                        return Some(Err(Failure::new(
                            Kind::Protocol,
                            "protocol: invalid HTTP response",
                        )))
                    }
                }
            }
            if eof || state.peer_has_closed() {
                return Some(Err(if self.tls.is_handshaking() {
                    Failure::new(Kind::Tls, "tls: closed during the handshake")
                } else {
                    Failure::new(
                        Kind::Protocol,
                        "protocol: closed before a complete response",
                    )
                }));
            }
        }
    }
}

fn record(shard: &Mutex<Shard>, job: &Job, at: Instant, outcome: &Result<Done, Failure>) {
    let mut s = lock(shard);
    let s = &mut *s;
    let rec = if job.measured {
        s.last_measured = Some(s.last_measured.map_or(at, |l| l.max(at)));
        &mut s.measured
    } else {
        &mut s.warmup
    };
    let latency = at.saturating_duration_since(job.due);
    match outcome {
        Ok(done) => {
            rec.success(latency, done.handshake);
            s.interval.success(latency, None);
            if let Some(label) = &done.tls {
                rec.tls_params(label);
            }
        }
        Err(f) => {
            rec.failure(f);
            s.interval.failure(f);
        }
    }
}

fn record_lag(shard: &Mutex<Shard>, job: &Job, started: Instant) {
    let mut s = lock(shard);
    let lag = started.saturating_duration_since(job.due);
    if job.measured {
        s.measured.start_lag(lag);
    } else {
        s.warmup.start_lag(lag);
    }
}

fn worker(
    plan: &Plan,
    load: &Load,
    dispatcher: &Dispatcher,
    shard: &Mutex<Shard>,
    cap: usize,
    cpu: Option<usize>,
) -> Result<(), Error> {
    if let Some(c) = cpu {
        cpu::pin_current_thread(&[c])?;
    }
    let io_err = |e: io::Error| Error::Invalid(format!("event loop: {e}"));
    let mut poll = Poll::new().map_err(io_err)?;
    let mut events = Events::with_capacity(cap.clamp(16, 1024));
    let mut slots: Vec<Option<Conn>> = (0..cap).map(|_| None).collect();
    let mut free: Vec<usize> = (0..cap).rev().collect();
    let mut pending: Option<Job> = None;
    let mut dispatching = true;
    let mut next_sweep = Instant::now() + SWEEP;
    loop {
        let mut wake = next_sweep;
        while dispatching && !free.is_empty() {
            let now = Instant::now();
            match dispatcher.claim(now, &mut pending) {
                Claim::Start(job) => {
                    record_lag(shard, &job, now);
                    let opened = Conn::open(plan, job, now, load.timeout).and_then(|mut c| {
                        let slot = free.last().copied().unwrap_or(0);
                        poll.registry()
                            .register(
                                &mut c.sock,
                                Token(slot),
                                Interest::READABLE | Interest::WRITABLE,
                            )
                            .map(|()| (slot, c))
                            .map_err(|e| Failure::new(Kind::Connect, stats::io_code("connect", &e)))
                    });
                    match opened {
                        Ok((slot, c)) => {
                            free.pop();
                            if let Some(s) = slots.get_mut(slot) {
                                *s = Some(c);
                            }
                        }
                        Err(f) => record(shard, &job, Instant::now(), &Err(f)),
                    }
                }
                Claim::Wait(t) => {
                    wake = wake.min(t);
                    break;
                }
                Claim::Done => dispatching = false,
            }
        }
        if !dispatching && free.len() == cap {
            return Ok(());
        }
        let timeout = wake.saturating_duration_since(Instant::now());
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(io_err(e));
            }
        }
        for ev in events.iter() {
            let slot = ev.token().0;
            let Some(conn) = slots.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            if let Some(outcome) = conn.on_event(ev, plan) {
                let at = Instant::now();
                if let Some(c) = slots.get_mut(slot).and_then(Option::take) {
                    record(shard, &c.job, at, &outcome);
                }
                free.push(slot);
            }
        }
        let now = Instant::now();
        if now >= next_sweep {
            next_sweep = now + SWEEP;
            for (slot, s) in slots.iter_mut().enumerate() {
                if s.as_ref().is_some_and(|c| c.deadline <= now) {
                    if let Some(c) = s.take() {
                        record(shard, &c.job, now, &Err(c.timeout_failure()));
                        free.push(slot);
                    }
                }
            }
        }
    }
}

fn progress_line(t: f64, measuring: bool, point: &Point, total: &Recorder) -> String {
    let mut codes: Vec<(&String, &u64)> = total.by_code.iter().collect();
    codes.sort_by(|a, b| b.1.cmp(a.1));
    let codes: Vec<String> = codes
        .iter()
        .take(3)
        .map(|(c, n)| format!("{c} {n}"))
        .collect();
    let all = Percentiles::of(&total.latency);
    format!(
        "[{t:>6.1}s{}] {:>8.0}/s  ok {}  errors {}{}  p50 {:.2} ms  p99 {:.2} ms",
        if measuring { "" } else { " warmup" },
        (point.ok + point.errors) as f64 / point.secs.max(1e-9),
        total.ok,
        total.errors,
        if codes.is_empty() {
            String::new()
        } else {
            format!(" ({})", codes.join(", "))
        },
        all.p50,
        all.p99,
    )
}

/// Runs the timed phase of `plan` under `load`.
pub fn run(plan: &Plan, load: &Load) -> Result<Measured, Error> {
    let caps = split_concurrency(load.concurrency, load.threads);
    let threads = caps.len();
    let shards: Vec<Mutex<Shard>> = (0..threads).map(|_| Mutex::default()).collect();
    let before = cpu::process_times()?;
    let start = Instant::now();
    let dispatcher = Dispatcher::new(start, load.warmup, load.stop, load.rate, plan.limit);
    let mut cpu_at_measure = if load.warmup.is_zero() {
        Some(before)
    } else {
        None
    };
    let mut timeline = Vec::new();
    let mut total = Recorder::default();
    let mut tick = Recorder::default();
    let results: Vec<Result<(), Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = caps
            .iter()
            .enumerate()
            .map(|(i, &cap)| {
                let (dispatcher, shard) = (&dispatcher, &shards[i]);
                let cpu = load
                    .cpus
                    .as_ref()
                    .and_then(|c| c.get(i % c.len().max(1)).copied());
                s.spawn(move || {
                    let r = worker(plan, load, dispatcher, shard, cap, cpu);
                    if r.is_err() {
                        dispatcher.stop_now();
                    }
                    r
                })
            })
            .collect();
        let mut last_tick = start;
        let mut next_tick = start + Duration::from_secs(1);
        loop {
            let finished = handles.iter().all(|h| h.is_finished());
            let now = Instant::now();
            if cpu_at_measure.is_none() && now >= dispatcher.measure_from() {
                cpu_at_measure = cpu::process_times().ok();
            }
            if now >= next_tick || finished {
                for sh in &shards {
                    let mut g = lock(sh);
                    tick.merge(&g.interval);
                    g.interval.clear();
                }
                let point = Point {
                    t: (now - start).as_secs_f64(),
                    secs: (now - last_tick).as_secs_f64(),
                    ok: tick.ok,
                    errors: tick.errors,
                    latency: Percentiles::of(&tick.latency),
                };
                total.merge(&tick);
                tick.clear();
                if point.secs > 0.05 || point.ok + point.errors > 0 {
                    timeline.push(point);
                    if load.progress {
                        let measuring = now >= dispatcher.measure_from();
                        eprintln!("{}", progress_line(point.t, measuring, &point, &total));
                    }
                }
                last_tick = now;
                next_tick = now + Duration::from_secs(1);
            }
            if finished {
                break;
            }
            let until = next_tick.min(if cpu_at_measure.is_none() {
                dispatcher.measure_from()
            } else {
                next_tick
            });
            std::thread::sleep(
                until
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(50)),
            );
        }
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Invalid("a worker thread panicked".into())))
            })
            .collect()
    });
    let after = cpu::process_times()?;
    for r in results {
        r?;
    }
    let mut measured = Recorder::default();
    let mut warmup = Recorder::default();
    let mut last = None::<Instant>;
    for sh in &shards {
        let g = lock(sh);
        measured.merge(&g.measured);
        warmup.merge(&g.warmup);
        last = match (last, g.last_measured) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    let elapsed = last.map_or(Duration::ZERO, |l| {
        l.saturating_duration_since(dispatcher.measure_from())
    });
    Ok(Measured {
        measured,
        warmup,
        timeline,
        elapsed,
        cpu: after.since(&cpu_at_measure.unwrap_or(after)),
        end: dispatcher.end_reason(),
        threads,
        devices_used: plan.certs.as_ref().map_or(0, |c| c.used()),
    })
}
