//! The `renew` mode: a fleet renewing its certificates as OpenZiti clients do, each step
//! on a fresh connection:
//!
//! ```text
//! prepare  POST /enroll?method=ott   (token + CSR; key kept)           timed: the ott rate
//! renew    POST /authenticate?method=cert   (the device's certificate) -> zt-session
//!          POST /current-identity/authenticators/{id}/extend   {"clientCertCsr"}
//!          POST /current-identity/authenticators/{id}/extend-verify {"clientCert"}
//! ```
//!
//! The enrollment that prepares the devices is timed too, on the same gateway, with the
//! same concurrency: the report's ratio compares one renewal (three requests, one
//! signature, two writes) with one enrollment (one request, one signature, one write).
//!
//! Unlike `run`'s event loop, each of C threads drives one device at a time with the
//! gateway's blocking client: a renewal is three dependent requests, and the figure wanted
//! is the gateway's rate, not the tool's CPU per request. Every outcome is counted by the
//! step and the gateway's code (`extend RATE_LIMITED`, ...); a 429 without `Retry-After`
//! is counted apart, as the guarantee is "success or 429 with Retry-After".

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use enrollgate::client::{self, HttpResponse};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};

use crate::plan::Target;
use crate::Error;

/// Arguments of `renew`.
#[derive(Debug, Clone, clap::Args)]
pub struct RenewArgs {
    /// The gateway: https://HOST:PORT.
    #[arg(long, value_parser = Target::parse)]
    pub target: Target,
    /// The token directory from prepare-ott (method ott): one device enrolls per token.
    #[arg(long)]
    pub tokens: std::path::PathBuf,
    /// Use at most this many tokens (default: all).
    #[arg(long)]
    pub count: Option<usize>,
    /// Devices in flight at once, in both phases.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// PEM roots to verify the gateway with (default: the token directory's server-ca.pem).
    #[arg(long)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Write the figures as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// `enrollgate-loadtest renew`: exit 0 when every device renewed, 3 otherwise.
pub fn run(a: &RenewArgs) -> Result<i32, Error> {
    let set = crate::tokens::read(&a.tokens)?;
    if set.method != "ott" {
        return Err(Error::Invalid(format!(
            "renew enrolls its devices by ott; {} holds '{}' tokens",
            a.tokens.display(),
            set.method
        )));
    }
    let roots = match &a.ca_file {
        Some(p) => crate::tokens::read_certs(p)?,
        None => set.server_ca.clone().ok_or_else(|| {
            Error::Invalid("no server-ca.pem in the token directory: pass --ca-file".into())
        })?,
    };
    let n = a.count.unwrap_or(set.tokens.len()).min(set.tokens.len());
    let opts = Options {
        target: a.target.clone(),
        roots,
        concurrency: a.concurrency.max(1),
    };
    let (enrolled, devices) = enroll(&opts, &set.tokens[..n]).map_err(Error::Invalid)?;
    let renewed = renew(&opts, &devices);
    print!(
        "{}",
        summary(&opts.target, opts.concurrency, &enrolled, &renewed)
    );
    if let Some(p) = &a.json {
        let mut j = serde_json::to_vec_pretty(&json_report(&enrolled, &renewed))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        j.push(b'\n');
        std::fs::write(p, j).map_err(|e| Error::io(p, e))?;
    }
    let all = enrolled.failures.is_empty() && renewed.failures.is_empty() && renewed.ok == n;
    Ok(if all { 0 } else { crate::EXIT_ERROR_RATE })
}

/// Where and how hard.
#[derive(Debug, Clone)]
pub struct Options {
    /// The gateway.
    pub target: Target,
    /// Roots that verify the gateway.
    pub roots: Vec<CertificateDer<'static>>,
    /// Devices in flight at once.
    pub concurrency: usize,
}

/// An enrolled device: its key and certificate.
#[derive(Clone)]
pub struct Device {
    key_der: Vec<u8>,
    key_pem: String,
    chain: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").finish_non_exhaustive()
    }
}

/// One phase's figures.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    /// Wall time of the phase.
    pub elapsed: Duration,
    /// Devices that completed every step.
    pub ok: usize,
    /// Outcomes that are not successes, by step and code.
    pub failures: BTreeMap<String, usize>,
}

impl Phase {
    /// Successes per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Every outcome by name (`ok` for successes), for the report.
    pub fn outcomes(&self) -> BTreeMap<String, usize> {
        let mut all = self.failures.clone();
        all.insert("ok".into(), self.ok);
        all
    }
}

/// Why one device's step failed: `step CODE`.
fn outcome(
    step: &str,
    r: Result<HttpResponse, client::ClientError>,
) -> Result<HttpResponse, String> {
    match r {
        Ok(resp) if resp.status == 200 => Ok(resp),
        Ok(resp) => {
            let code = resp
                .api_error()
                .map(|(c, _)| c)
                .unwrap_or_else(|| format!("HTTP {}", resp.status));
            if resp.status == 429 && resp.header("retry-after").is_none() {
                return Err(format!("{step} {code} without Retry-After"));
            }
            Err(format!("{step} {code}"))
        }
        Err(e) => Err(format!("{step} {}", kind(&e))),
    }
}

fn kind(e: &client::ClientError) -> String {
    match e {
        client::ClientError::Connect { source, .. } => format!("connect: {:?}", source.kind()),
        client::ClientError::Io(io) => format!("io: {:?}", io.kind()),
        client::ClientError::Tls(t) => format!("tls: {t}"),
        other => format!("protocol: {other}"),
    }
}

fn call(
    opts: &Options,
    config: Arc<rustls::ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse, client::ClientError> {
    client::request(
        config,
        &opts.target.host,
        opts.target.port,
        "POST",
        path,
        headers,
        body,
    )
}

/// Runs `work(i)` for i in 0..n on `opts.concurrency` threads; counts the outcomes.
fn drive<T: Send>(
    opts: &Options,
    n: usize,
    work: impl Fn(usize) -> Result<T, String> + Sync,
) -> (Phase, Vec<Option<T>>) {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<T>>> = Mutex::new((0..n).map(|_| None).collect());
    let failures: Mutex<BTreeMap<String, usize>> = Mutex::default();
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..opts.concurrency.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                match work(i) {
                    Ok(v) => {
                        if let Ok(mut r) = results.lock() {
                            r[i] = Some(v);
                        }
                    }
                    Err(code) => {
                        if let Ok(mut f) = failures.lock() {
                            *f.entry(code).or_default() += 1;
                        }
                    }
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let results = results.into_inner().unwrap_or_default();
    let phase = Phase {
        elapsed,
        ok: results.iter().filter(|r| r.is_some()).count(),
        failures: failures.into_inner().unwrap_or_default(),
    };
    (phase, results)
}

fn new_key() -> Result<rcgen::KeyPair, String> {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())
}

fn csr(key: &rcgen::KeyPair) -> Result<String, String> {
    rcgen::CertificateParams::default()
        .serialize_request(key)
        .and_then(|c| c.pem())
        .map_err(|e| e.to_string())
}

fn certs_of(pem_text: &str) -> Vec<CertificateDer<'static>> {
    pem::parse_many(pem_text)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect()
}

/// Enrolls one device per `ott` token (keys and CSRs made before the clock starts).
pub fn enroll(opts: &Options, tokens: &[String]) -> Result<(Phase, Vec<Device>), String> {
    let anonymous = client::config(&opts.roots, None).map_err(|e| e.to_string())?;
    let keys: Vec<(rcgen::KeyPair, String)> = tokens
        .iter()
        .map(|_| {
            let k = new_key()?;
            let c = csr(&k)?;
            Ok((k, c))
        })
        .collect::<Result<_, String>>()?;
    let (phase, devices) = drive(opts, tokens.len(), |i| {
        let (key, csr) = &keys[i];
        let path = format!("/edge/client/v1/enroll?method=ott&token={}", tokens[i]);
        let r = call(
            opts,
            anonymous.clone(),
            &path,
            &[("Content-Type", "application/x-pem-file")],
            csr.as_bytes(),
        );
        let resp = outcome("enroll", r)?;
        let v = resp
            .json()
            .map_err(|_| "enroll protocol: not JSON".to_string())?;
        let chain = certs_of(v["data"]["cert"].as_str().unwrap_or_default());
        if chain.is_empty() {
            return Err("enroll protocol: no certificate".into());
        }
        Ok(Device {
            key_der: key.serialize_der(),
            key_pem: key.serialize_pem(),
            chain,
        })
    });
    Ok((phase, devices.into_iter().flatten().collect()))
}

/// Renews every device: authenticate, extend (same key), extend-verify, each on a fresh
/// connection presenting the device's certificate.
pub fn renew(opts: &Options, devices: &[Device]) -> Phase {
    drive(opts, devices.len(), |i| renew_one(opts, &devices[i])).0
}

fn renew_one(opts: &Options, d: &Device) -> Result<(), String> {
    let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(d.key_der.clone()));
    let config = client::config(&opts.roots, Some((d.chain.clone(), key)))
        .map_err(|e| format!("tls: {e}"))?;
    let resp = outcome(
        "authenticate",
        call(
            opts,
            config.clone(),
            "/edge/client/v1/authenticate?method=cert",
            &[],
            b"",
        ),
    )?;
    let token = resp
        .header("zt-session")
        .ok_or("authenticate protocol: no zt-session")?
        .to_string();
    let id = enrollgate::pki::fingerprint::sha256_hex(&d.chain[0]);
    let keypair = rcgen::KeyPair::from_pem(&d.key_pem).map_err(|e| e.to_string())?;
    let body = json!({ "clientCertCsr": csr(&keypair)? }).to_string();
    let headers = [
        ("zt-session", token.as_str()),
        ("Content-Type", "application/json"),
    ];
    let base = format!("/edge/client/v1/current-identity/authenticators/{id}");
    let resp = outcome(
        "extend",
        call(
            opts,
            config.clone(),
            &format!("{base}/extend"),
            &headers,
            body.as_bytes(),
        ),
    )?;
    let v: Value = resp
        .json()
        .map_err(|_| "extend protocol: not JSON".to_string())?;
    let cert = v["data"]["clientCert"]
        .as_str()
        .ok_or("extend protocol: no clientCert")?;
    let body = json!({ "clientCert": cert }).to_string();
    outcome(
        "extend-verify",
        call(
            opts,
            config,
            &format!("{base}/extend-verify"),
            &headers,
            body.as_bytes(),
        ),
    )?;
    Ok(())
}

/// The figures of a renew run, as text.
pub fn summary(target: &Target, concurrency: usize, enrolled: &Phase, renewed: &Phase) -> String {
    let mut s = format!(
        "enrollgate-loadtest: renew against https://{}:{}, {} devices at a time\n",
        target.host, target.port, concurrency
    );
    for (name, p) in [("ott enroll", enrolled), ("renew", renewed)] {
        s.push_str(&format!(
            "  {name:<11} {:>6} ok in {:.2} s: {:.1}/s; outcomes {:?}\n",
            p.ok,
            p.elapsed.as_secs_f64(),
            p.rate(),
            p.outcomes()
        ));
    }
    s.push_str(&format!(
        "  ratio       renewals/s over enrollments/s = {:.2}\n",
        renewed.rate() / enrolled.rate().max(1e-9)
    ));
    s
}

/// The figures of a renew run, as JSON.
pub fn json_report(enrolled: &Phase, renewed: &Phase) -> Value {
    let phase = |p: &Phase| {
        json!({
            "ok": p.ok,
            "seconds": p.elapsed.as_secs_f64(),
            "perSecond": p.rate(),
            "outcomes": p.outcomes(),
        })
    };
    json!({
        "mode": "renew",
        "enroll": phase(enrolled),
        "renew": phase(renewed),
        "ratio": renewed.rate() / enrolled.rate().max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_name_the_step_and_the_code() {
        let resp = |status: u16, headers: Vec<(String, String)>, body: &str| HttpResponse {
            status,
            headers,
            body: body.as_bytes().to_vec(),
        };
        let limited = r#"{"error":{"code":"RATE_LIMITED","message":"slow down"}}"#;
        assert_eq!(
            outcome("extend", Ok(resp(429, vec![], limited))).unwrap_err(),
            "extend RATE_LIMITED without Retry-After"
        );
        let with = vec![("retry-after".to_string(), "1".to_string())];
        assert_eq!(
            outcome("extend", Ok(resp(429, with, limited))).unwrap_err(),
            "extend RATE_LIMITED"
        );
        assert_eq!(
            outcome("x", Ok(resp(502, vec![], ""))).unwrap_err(),
            "x HTTP 502"
        );
        assert!(outcome("x", Ok(resp(200, vec![], "{}"))).is_ok());
    }

    #[test]
    fn the_rate_and_the_outcomes() {
        let p = Phase {
            elapsed: Duration::from_secs(2),
            ok: 10,
            failures: BTreeMap::from([("extend RATE_LIMITED".to_string(), 3)]),
        };
        assert_eq!(p.rate(), 5.0);
        assert_eq!(p.outcomes()["ok"], 10);
        assert_eq!(p.outcomes()["extend RATE_LIMITED"], 3);
    }
}
