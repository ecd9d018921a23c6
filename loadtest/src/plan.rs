//! Everything a run prepares before its clock starts: the fleet's certificates parsed
//! into signing keys, the device keys and CSRs for `ott`, every request's bytes, the one
//! TLS client configuration. The timed phase then only connects, handshakes and sends.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls_pki_types::ServerName;

use crate::fleet::{Fleet, KeyType};
use crate::schedule::Stop;
use crate::stats::Success;
use crate::tls::{FleetCerts, TlsOptions};
use crate::Error;

/// What each request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Token + CSR (`POST /enroll?method=ott`); needs --tokens.
    Ott,
    /// Token + a fleet certificate (`POST /enroll?method=ottca`); needs --tokens, --fleet.
    Ottca,
    /// A fleet certificate alone (`POST /enroll?method=ca`); needs --fleet.
    Ca,
    /// The mutual-TLS handshake and one GET (--path), for any mTLS server.
    Handshake,
}

impl Mode {
    /// Its name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Ott => "ott",
            Self::Ottca => "ottca",
            Self::Ca => "ca",
            Self::Handshake => "handshake",
        }
    }
}

/// The server to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host as written (`[::1]` for IPv6).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl Target {
    /// Parses `https://HOST:PORT`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let u = enrollgate::config::PublicUrl::parse(s)?;
        Ok(Self {
            host: u.host,
            port: u.port,
        })
    }

    /// The host without IPv6 brackets.
    pub fn bare_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// The options of `run` that shape what is prepared.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// The server.
    pub target: Target,
    /// TLS server name to send and verify (default: the target's host).
    pub server_name: Option<String>,
    /// What each request does.
    pub mode: Mode,
    /// The fleet directory (ottca, ca; optional for handshake).
    pub fleet: Option<PathBuf>,
    /// The token directory (ott, ottca).
    pub tokens: Option<PathBuf>,
    /// The PEM roots that verify the server (default: the token directory's).
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate.
    pub insecure: bool,
    /// Path of the `handshake` GET.
    pub path: String,
    /// TLS options (roots are filled in here).
    pub tls: TlsOptions,
    /// Key type of the keys made for `ott` CSRs.
    pub csr_key_type: KeyType,
    /// Skip this many tokens.
    pub token_offset: usize,
    /// Skip this many devices.
    pub device_offset: usize,
    /// At most this many requests will be needed (count without warmup), if known.
    pub needed: Option<usize>,
    /// Threads for the preparation.
    pub threads: usize,
}

impl PlanOptions {
    /// How many payloads are needed at most, given the run's stop and warmup.
    pub fn needed_for(stop: Stop, warmup: Duration) -> Option<usize> {
        match stop {
            Stop::Count(n) if warmup.is_zero() => usize::try_from(n).ok(),
            _ => None,
        }
    }
}

/// The bytes of every request.
#[derive(Debug, Clone)]
pub enum Requests {
    /// The same request every time.
    Same(Vec<u8>),
    /// One per payload (token), by request number.
    Each(Vec<Vec<u8>>),
}

impl Requests {
    /// The bytes of request `index`.
    pub fn get(&self, index: u64) -> Option<&[u8]> {
        match self {
            Self::Same(r) => Some(r),
            Self::Each(v) => v.get(usize::try_from(index).ok()?).map(Vec::as_slice),
        }
    }
}

/// A prepared run.
pub struct Plan {
    /// What each request does.
    pub mode: Mode,
    /// Where to connect.
    pub addr: SocketAddr,
    /// The TLS server name.
    pub server_name: ServerName<'static>,
    /// The client configuration, for every connection.
    pub config: Arc<ClientConfig>,
    /// The requests.
    pub requests: Requests,
    /// Payloads available (tokens, single-use devices); `None`: unlimited.
    pub limit: Option<u64>,
    /// What counts as success.
    pub success: Success,
    /// The fleet certificates handed to handshakes.
    pub certs: Option<Arc<FleetCerts>>,
    /// Time spent preparing.
    pub prepare_time: Duration,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("mode", &self.mode)
            .field("addr", &self.addr)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// The head of a request (`Connection: close`: one request per connection).
pub fn request_bytes(
    method: &str,
    path: &str,
    target: &Target,
    content_type: Option<&str>,
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\nAccept: application/json\r\nUser-Agent: enrollgate-loadtest/{}\r\n",
        target.host,
        target.port,
        env!("CARGO_PKG_VERSION")
    );
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    if method != "GET" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

fn enroll_path(method: &str, token: Option<&str>) -> String {
    let prefix = enrollgate::api::CLIENT_PREFIX;
    match token {
        Some(t) => {
            let t: String = form_urlencoded::byte_serialize(t.as_bytes()).collect();
            format!("{prefix}/enroll?method={method}&token={t}")
        }
        None => format!("{prefix}/enroll?method={method}"),
    }
}

/// A new key and its CSR (PEM), as a device makes them before enrolling.
fn csr(kind: KeyType) -> Result<String, Error> {
    let key = crate::fleet::generate_key(kind)?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "enrollgate-loadtest device");
    Ok(params.serialize_request(&key)?.pem()?)
}

/// `ott` requests, one per token, with CSRs made on `threads` threads.
fn ott_requests(
    tokens: &[String],
    target: &Target,
    kind: KeyType,
    threads: usize,
) -> Result<Vec<Vec<u8>>, Error> {
    let ranges = crate::fleet::split(tokens.len(), threads);
    let parts: Vec<Result<Vec<Vec<u8>>, Error>> = std::thread::scope(|s| {
        let hs: Vec<_> = ranges
            .into_iter()
            .map(|r| {
                let part = tokens.get(r).unwrap_or_default();
                s.spawn(move || {
                    part.iter()
                        .map(|t| {
                            Ok(request_bytes(
                                "POST",
                                &enroll_path("ott", Some(t)),
                                target,
                                Some("application/x-pem-file"),
                                csr(kind)?.as_bytes(),
                            ))
                        })
                        .collect()
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Crypto("a CSR thread panicked".into())))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(tokens.len());
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}

fn take_from<T: Clone>(
    v: &[T],
    offset: usize,
    needed: Option<usize>,
    what: &str,
) -> Result<Vec<T>, Error> {
    let rest = v.get(offset..).unwrap_or_default();
    if rest.is_empty() {
        return Err(Error::Invalid(format!(
            "no {what} left: {} in all, offset {offset}",
            v.len()
        )));
    }
    let n = needed.map_or(rest.len(), |n| n.min(rest.len()));
    Ok(rest.get(..n).unwrap_or_default().to_vec())
}

/// Prepares a run.
pub fn prepare(o: &PlanOptions) -> Result<Plan, Error> {
    let started = Instant::now();
    let need = |flag: &Option<PathBuf>, name: &str| {
        flag.clone()
            .ok_or_else(|| Error::Invalid(format!("--mode {} needs --{name}", o.mode.as_str())))
    };
    let tokens = match o.mode {
        Mode::Ott | Mode::Ottca => {
            let set = crate::tokens::read(&need(&o.tokens, "tokens")?)?;
            if set.method != o.mode.as_str() {
                return Err(Error::Invalid(format!(
                    "the tokens are '{}' tokens, not '{}'",
                    set.method,
                    o.mode.as_str()
                )));
            }
            Some(set)
        }
        Mode::Ca | Mode::Handshake => None,
    };
    let fleet_dir = match o.mode {
        Mode::Ottca | Mode::Ca => Some(need(&o.fleet, "fleet")?),
        Mode::Handshake => o.fleet.clone(),
        Mode::Ott => None,
    };

    // Server verification: explicit roots, else the tokens' bundle, else --insecure.
    let mut tls = o.tls.clone();
    tls.roots = match (
        &o.ca_file,
        tokens.as_ref().and_then(|t| t.server_ca.clone()),
        o.insecure,
    ) {
        (_, _, true) => None,
        (Some(path), _, false) => Some(crate::tokens::read_certs(path)?),
        (None, Some(bundle), false) => Some(bundle),
        (None, None, false) => {
            return Err(Error::Invalid(
                "pass --ca-file with the server's CA (the gateway's pki/ca.crt), or --insecure"
                    .into(),
            ))
        }
    };

    let certs = match &fleet_dir {
        Some(dir) => {
            let fleet = Fleet::open(dir)?;
            let records = fleet.records()?;
            let cycle = o.mode == Mode::Handshake;
            let want = if cycle {
                o.needed.map(|n| n.min(100_000))
            } else {
                o.needed
            };
            let records = take_from(&records, o.device_offset, want, "devices")?;
            let provider = crate::tls::provider(&tls.kx)?;
            let keys = crate::tls::certified_keys(
                &records,
                &fleet.intermediate_der,
                &provider,
                o.threads,
            )?;
            Some(FleetCerts::new(keys, cycle))
        }
        None => None,
    };

    let (requests, limit, success) = match o.mode {
        Mode::Ott => {
            let set = tokens
                .as_ref()
                .map(|t| t.tokens.as_slice())
                .unwrap_or_default();
            let toks = take_from(set, o.token_offset, o.needed, "tokens")?;
            let reqs = ott_requests(&toks, &o.target, o.csr_key_type, o.threads)?;
            let n = reqs.len() as u64;
            (Requests::Each(reqs), Some(n), Success::Ok200)
        }
        Mode::Ottca => {
            let set = tokens
                .as_ref()
                .map(|t| t.tokens.as_slice())
                .unwrap_or_default();
            let toks = take_from(set, o.token_offset, o.needed, "tokens")?;
            let reqs: Vec<Vec<u8>> = toks
                .iter()
                .map(|t| {
                    request_bytes("POST", &enroll_path("ottca", Some(t)), &o.target, None, b"")
                })
                .collect();
            let devices = certs.as_ref().map_or(0, |c| c.len());
            let n = reqs.len().min(devices) as u64;
            (Requests::Each(reqs), Some(n), Success::Ok200)
        }
        Mode::Ca => {
            let devices = certs.as_ref().map_or(0, |c| c.len()) as u64;
            (
                Requests::Same(request_bytes(
                    "POST",
                    &enroll_path("ca", None),
                    &o.target,
                    None,
                    b"",
                )),
                Some(devices),
                Success::Ok200,
            )
        }
        Mode::Handshake => (
            Requests::Same(request_bytes("GET", &o.path, &o.target, None, b"")),
            None,
            Success::Any2xx,
        ),
    };

    let config = crate::tls::client_config(&tls, certs.clone())?;
    let name = o
        .server_name
        .clone()
        .unwrap_or_else(|| o.target.bare_host().to_string());
    let server_name = ServerName::try_from(name.clone())
        .map_err(|_| Error::Invalid(format!("'{name}' is not a valid TLS server name")))?;
    let addr = (o.target.bare_host(), o.target.port)
        .to_socket_addrs()
        .map_err(|e| Error::Invalid(format!("resolving {}: {e}", o.target.host)))?
        .next()
        .ok_or_else(|| Error::Invalid(format!("{} has no address", o.target.host)))?;
    Ok(Plan {
        mode: o.mode,
        addr,
        server_name,
        config,
        requests,
        limit,
        success,
        certs,
        prepare_time: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_are_complete_http_with_the_token_escaped() {
        let t = Target::parse("https://127.0.0.1:8443").unwrap();
        let r = request_bytes(
            "POST",
            &enroll_path("ott", Some("a+b/c")),
            &t,
            Some("application/x-pem-file"),
            b"CSR",
        );
        let text = String::from_utf8(r).unwrap();
        assert!(
            text.starts_with("POST /edge/client/v1/enroll?method=ott&token=a%2Bb%2Fc HTTP/1.1\r\n")
        );
        assert!(text.contains("Host: 127.0.0.1:8443\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.contains("Content-Length: 3\r\n"));
        assert!(text.ends_with("\r\n\r\nCSR"));
        let g = String::from_utf8(request_bytes("GET", "/version", &t, None, b"")).unwrap();
        assert!(g.starts_with("GET /version HTTP/1.1\r\n"));
        assert!(!g.contains("Content-Length"));
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(g.as_bytes()).unwrap().is_complete());
    }

    #[test]
    fn targets_parse_and_payloads_are_taken_from_the_offset() {
        assert_eq!(
            Target::parse("https://[::1]:9000").unwrap().bare_host(),
            "::1"
        );
        assert!(Target::parse("http://x:1").is_err());
        let v: Vec<u32> = (0..10).collect();
        assert_eq!(take_from(&v, 7, None, "x").unwrap(), vec![7, 8, 9]);
        assert_eq!(take_from(&v, 2, Some(2), "x").unwrap(), vec![2, 3]);
        assert!(take_from(&v, 10, None, "tokens")
            .unwrap_err()
            .to_string()
            .contains("no tokens left"));
        assert_eq!(
            PlanOptions::needed_for(Stop::Count(5), Duration::ZERO),
            Some(5)
        );
        assert_eq!(
            PlanOptions::needed_for(Stop::Count(5), Duration::from_secs(1)),
            None
        );
    }
}
