//! What a request came to, and the recorders that add it up.
//!
//! Every request ends as a success or a [`Failure`] with a kind (connect, TLS, HTTP
//! status, protocol, timeout, IO) and a code: the gateway's JSON error code for an HTTP
//! error (`CERT_IN_USE`), a short label otherwise (`connect: ConnectionRefused`).
//! Latencies are microseconds in HDR histograms (3 significant digits).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Largest latency a histogram holds exactly (longer ones are clamped to it): 10 minutes.
pub const MAX_MICROS: u64 = 600_000_000;

/// The kind of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// The TCP connection could not be made.
    Connect,
    /// The TLS handshake failed (alert, bad certificate, reset or close during it).
    Tls,
    /// The server answered with this HTTP status, not a success.
    Http(u16),
    /// The response was not valid HTTP, or the connection closed before it was complete.
    Protocol,
    /// No complete response within the request timeout.
    Timeout,
    /// A socket error after the handshake.
    Io,
}

impl Kind {
    /// The label in reports: `connect`, `tls`, `http 409`, ...
    pub fn label(&self) -> String {
        match self {
            Self::Connect => "connect".into(),
            Self::Tls => "tls".into(),
            Self::Http(s) => format!("http {s}"),
            Self::Protocol => "protocol".into(),
            Self::Timeout => "timeout".into(),
            Self::Io => "io".into(),
        }
    }
}

/// A failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Its kind.
    pub kind: Kind,
    /// Its code: the gateway's error code, or a short label.
    pub code: String,
}

impl Failure {
    /// A failure of `kind` with `code`.
    pub fn new(kind: Kind, code: impl Into<String>) -> Self {
        Self {
            kind,
            code: code.into(),
        }
    }
}

/// A short, stable label for a TLS error (variant names, never free text from the peer).
pub fn tls_code(e: &rustls::Error) -> String {
    use rustls::Error as E;
    match e {
        E::AlertReceived(a) => format!("tls: alert {a:?}"),
        E::InvalidCertificate(c) => format!("tls: server certificate {c:?}"),
        E::PeerMisbehaved(p) => format!("tls: peer misbehaved {p:?}"),
        E::PeerIncompatible(p) => format!("tls: peer incompatible {p:?}"),
        E::NoCertificatesPresented => "tls: no server certificate".into(),
        E::DecryptError => "tls: decrypt error".into(),
        E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
            "tls: unexpected message".into()
        }
        E::InvalidMessage(m) => format!("tls: invalid message {m:?}"),
        _ => "tls: other".into(),
    }
}

/// A short label for a socket error: its kind.
pub fn io_code(prefix: &str, e: &std::io::Error) -> String {
    match e.raw_os_error() {
        // EADDRNOTAVAIL: the client ran out of ephemeral ports (TIME_WAIT), worth naming.
        Some(99) => format!("{prefix}: address not available (ephemeral ports exhausted?)"),
        _ => format!("{prefix}: {:?}", e.kind()),
    }
}

/// What counts as success for a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Success {
    /// HTTP 200 exactly (enrollments).
    Ok200,
    /// Any 2xx (`handshake` mode against any server).
    Any2xx,
}

/// Classifies a complete response.
pub fn classify(resp: &enrollgate::client::HttpResponse, success: Success) -> Result<(), Failure> {
    let ok = match success {
        Success::Ok200 => resp.status == 200,
        Success::Any2xx => (200..300).contains(&resp.status),
    };
    if ok {
        return Ok(());
    }
    let code = resp
        .api_error()
        .map(|(c, _)| c)
        .unwrap_or_else(|| format!("HTTP {}", resp.status));
    Err(Failure::new(Kind::Http(resp.status), code))
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3)
        .expect("invariant: 1..MAX_MICROS at 3 significant digits are valid bounds")
}

/// Microseconds of `d`, at least 1.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Counts and histograms of a set of requests.
#[derive(Clone)]
pub struct Recorder {
    /// Successes.
    pub ok: u64,
    /// Failures.
    pub errors: u64,
    /// Latency of successes, µs, from the intended start (open loop) or the start.
    pub latency: Histogram<u64>,
    /// Connect + TLS handshake time of successes, µs.
    pub handshake: Histogram<u64>,
    /// How late each request started after its intended time, µs (open loop: the
    /// generator's own backlog; closed loop: 0).
    pub lag: Histogram<u64>,
    /// Failures by code.
    pub by_code: BTreeMap<String, u64>,
    /// Failures by kind.
    pub by_kind: BTreeMap<Kind, u64>,
    /// Negotiated TLS version and key exchange of completed handshakes.
    pub tls: BTreeMap<String, u64>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("ok", &self.ok)
            .field("errors", &self.errors)
            .field("by_code", &self.by_code)
            .finish_non_exhaustive()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            ok: 0,
            errors: 0,
            latency: histogram(),
            handshake: histogram(),
            lag: histogram(),
            by_code: BTreeMap::new(),
            by_kind: BTreeMap::new(),
            tls: BTreeMap::new(),
        }
    }
}

impl Recorder {
    /// A success.
    pub fn success(&mut self, latency: Duration, handshake: Option<Duration>) {
        self.ok += 1;
        self.latency.saturating_record(micros(latency));
        if let Some(h) = handshake {
            self.handshake.saturating_record(micros(h));
        }
    }

    /// A failure.
    pub fn failure(&mut self, f: &Failure) {
        self.errors += 1;
        match self.by_code.get_mut(&f.code) {
            Some(n) => *n += 1,
            None => {
                self.by_code.insert(f.code.clone(), 1);
            }
        }
        *self.by_kind.entry(f.kind).or_insert(0) += 1;
    }

    /// A request's start delay.
    pub fn start_lag(&mut self, lag: Duration) {
        self.lag.saturating_record(micros(lag));
    }

    /// A completed handshake's parameters (`TLSv1_3 X25519MLKEM768`).
    pub fn tls_params(&mut self, label: &str) {
        match self.tls.get_mut(label) {
            Some(n) => *n += 1,
            None => {
                self.tls.insert(label.to_string(), 1);
            }
        }
    }

    /// Completed requests.
    pub fn total(&self) -> u64 {
        self.ok + self.errors
    }

    /// Adds `other` in.
    pub fn merge(&mut self, other: &Recorder) {
        self.ok += other.ok;
        self.errors += other.errors;
        // Same bounds on both sides: `add` cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.handshake.add(&other.handshake);
        let _ = self.lag.add(&other.lag);
        for (k, v) in &other.by_code {
            *self.by_code.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &other.by_kind {
            *self.by_kind.entry(*k).or_insert(0) += v;
        }
        for (k, v) in &other.tls {
            *self.tls.entry(k.clone()).or_insert(0) += v;
        }
    }

    /// Empties it.
    pub fn clear(&mut self) {
        self.ok = 0;
        self.errors = 0;
        self.latency.reset();
        self.handshake.reset();
        self.lag.reset();
        self.by_code.clear();
        self.by_kind.clear();
        self.tls.clear();
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Percentiles {
    /// Fastest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
}

impl Percentiles {
    /// The percentiles of a µs histogram, in ms (all zero when it is empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            min: ms(h.min()),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use enrollgate::client::HttpResponse;

    fn resp(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            status,
            headers: vec![],
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn responses_are_classified_by_the_gateways_code() {
        assert_eq!(classify(&resp(200, "{}"), Success::Ok200), Ok(()));
        assert_eq!(
            classify(
                &resp(
                    409,
                    r#"{"error":{"code":"CERT_IN_USE","message":"x"},"meta":{}}"#
                ),
                Success::Ok200
            ),
            Err(Failure::new(Kind::Http(409), "CERT_IN_USE"))
        );
        assert_eq!(
            classify(&resp(502, "<html>bad gateway</html>"), Success::Ok200),
            Err(Failure::new(Kind::Http(502), "HTTP 502"))
        );
        assert_eq!(classify(&resp(204, ""), Success::Any2xx), Ok(()));
        assert!(classify(&resp(204, ""), Success::Ok200).is_err());
    }

    #[test]
    fn recorders_count_merge_and_give_percentiles() {
        let mut a = Recorder::default();
        for ms in 1..=100u64 {
            a.success(Duration::from_millis(ms), Some(Duration::from_micros(300)));
        }
        a.failure(&Failure::new(Kind::Http(409), "CERT_IN_USE"));
        let mut b = Recorder::default();
        b.failure(&Failure::new(Kind::Http(409), "CERT_IN_USE"));
        b.failure(&Failure::new(Kind::Connect, "connect: ConnectionRefused"));
        b.success(Duration::from_secs(5000), None); // clamped, not lost
        a.merge(&b);
        assert_eq!((a.ok, a.errors, a.total()), (101, 3, 104));
        assert_eq!(a.by_code["CERT_IN_USE"], 2);
        assert_eq!(a.by_kind[&Kind::Http(409)], 2);
        assert_eq!(a.by_kind[&Kind::Connect], 1);
        let p = Percentiles::of(&a.latency);
        assert!((p.p50 - 51.0).abs() < 0.1, "{p:?}");
        assert!((p.p90 - 91.0).abs() < 0.1, "{p:?}");
        assert!(p.max >= 599_000.0, "{p:?}");
        assert!(p.min >= 0.99 && p.min <= 1.01);
        assert_eq!(Percentiles::of(&a.handshake).p99, 0.3);
        a.clear();
        assert_eq!(a.total(), 0);
        assert_eq!(Percentiles::of(&a.latency), Percentiles::default());
    }

    #[test]
    fn labels_are_short_and_stable() {
        assert_eq!(Kind::Http(429).label(), "http 429");
        let e = std::io::Error::from_raw_os_error(99);
        assert!(io_code("connect", &e).contains("ephemeral"));
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(io_code("connect", &e), "connect: ConnectionRefused");
        assert_eq!(
            tls_code(&rustls::Error::AlertReceived(
                rustls::AlertDescription::BadCertificate
            )),
            "tls: alert BadCertificate"
        );
    }
}
