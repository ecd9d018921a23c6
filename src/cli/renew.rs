//! `enrollgate renew --identity FILE [--daemon]`: the device side of renewal, as OpenZiti
//! clients do it (authenticate, `extend`, `extend-verify`), and `enrollgate identity
//! request-extend`, the admin's side.
//!
//! The key: kept unless an admin asked for a key roll (or `--rekey`), as `step ca renew`
//! keeps it unless told `--rekey`. A kept key cannot be lost by a crash, and a device
//! whose key lives in a file gains little from a new one unless the old one leaked, which
//! is what the admin's key roll is for.
//!
//! A crash at any instant never loses the only working credential. The old file is never
//! written; the renewed identity goes to a hidden file beside it first (`.NAME.renewing`,
//! 0600, synced) and only then is the renewal verified, after which the hidden file is
//! renamed over the old one (atomic) and the directory synced:
//!
//! ```text
//! crash before verify:          FILE works (the old certificate is still active)
//! crash after verify, before rename: FILE fails, .FILE.renewing works
//! ```
//!
//! and the next `renew` (or `renew --daemon` when it starts) finishes what it finds: it
//! verifies the hidden file's certificate if the old one still authenticates, or renames
//! the hidden file if its certificate already does.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::admin::Admin;
use super::{AdminArgs, CliError};
use crate::client::{self, HttpResponse};
use crate::clock::{rfc3339, Clock, SystemClock, UnixTime};
use crate::identity_file::{create_private, IdentityFile};

/// Arguments of `renew`.
#[derive(Debug, Clone, clap::Args)]
pub struct RenewArgs {
    /// The identity file to renew; it is replaced, atomically, by the renewed one.
    #[arg(long)]
    pub identity: PathBuf,
    /// Generate a new key even when no key roll was requested.
    #[arg(long)]
    pub rekey: bool,
    /// Keep running: renew when two thirds of the certificate's lifetime have passed (with
    /// jitter), or as soon as an admin asks; stop on SIGTERM or SIGINT.
    #[arg(long)]
    pub daemon: bool,
    /// With --daemon: how often to ask the gateway whether an admin requested a renewal
    /// (and to retry after a failure).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub check_interval: Duration,
}

/// Runs `renew`.
pub fn renew(args: RenewArgs) -> Result<(), CliError> {
    if args.daemon {
        return daemon(&args);
    }
    recover(&args.identity)?;
    let done = renew_once(&args.identity, args.rekey)?;
    eprintln!(
        "renewed {}: the new certificate is valid until {}",
        args.identity.display(),
        rfc3339(done)
    );
    Ok(())
}

/// The hidden file a renewal is written to before it is verified.
fn pending_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.renewing"))
}

/// A connection's worth of credentials of an identity file.
struct Device {
    file: IdentityFile,
    config: Arc<rustls::ClientConfig>,
    host: String,
    port: u16,
}

impl Device {
    fn open(path: &Path) -> Result<Self, CliError> {
        let file = IdentityFile::read(path)?;
        let config = client::config(
            &file.ca_certs()?,
            Some((file.cert_chain()?, file.private_key()?)),
        )?;
        let endpoint = file.endpoint()?;
        Ok(Self {
            file,
            config,
            host: endpoint.host,
            port: endpoint.port,
        })
    }

    /// One request on a fresh connection presenting this file's certificate.
    fn call(
        &self,
        method: &str,
        path: &str,
        session: Option<&str>,
        body: Option<&Value>,
    ) -> Result<HttpResponse, CliError> {
        let mut headers = vec![("Accept", "application/json")];
        if let Some(s) = session {
            headers.push(("zt-session", s));
        }
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        Ok(client::request(
            self.config.clone(),
            &self.host,
            self.port,
            method,
            &format!("{}{path}", crate::api::CLIENT_PREFIX),
            &headers,
            &bytes,
        )?)
    }

    /// Opens an API session: its token and detail (`isCertExtendRequested`, ...).
    fn authenticate(&self) -> Result<(String, Value), CliError> {
        let resp = self.call("POST", "/authenticate?method=cert", None, None)?;
        if resp.status != 200 {
            return Err(refused("authentication", &resp));
        }
        let token = resp
            .header("zt-session")
            .ok_or_else(|| CliError::new("the gateway answered no zt-session"))?
            .to_string();
        let detail = resp.json()?.get("data").cloned().unwrap_or(Value::Null);
        Ok((token, detail))
    }

    /// The authenticator id of this file's certificate (its SHA-256 fingerprint).
    fn authenticator_id(&self) -> Result<String, CliError> {
        let chain = self.file.cert_chain()?;
        let leaf = chain
            .first()
            .ok_or_else(|| CliError::new("no certificate"))?;
        Ok(crate::pki::fingerprint::sha256_hex(leaf))
    }

    /// `notBefore` and `notAfter` of this file's certificate.
    fn validity(&self) -> Result<(UnixTime, UnixTime), CliError> {
        use x509_parser::prelude::FromDer as _;
        let chain = self.file.cert_chain()?;
        let leaf = chain
            .first()
            .ok_or_else(|| CliError::new("no certificate"))?;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf)
            .map_err(|_| CliError::new("the identity file's certificate does not parse"))?;
        let v = cert.validity();
        Ok((v.not_before.timestamp(), v.not_after.timestamp()))
    }

    fn verify(&self, session: &str, id: &str, cert_pem: &str) -> Result<HttpResponse, CliError> {
        self.call(
            "POST",
            &format!("/current-identity/authenticators/{id}/extend-verify"),
            Some(session),
            Some(&json!({ "clientCert": cert_pem })),
        )
    }
}

fn refused(step: &str, resp: &HttpResponse) -> CliError {
    match resp.api_error() {
        Some((code, message)) => CliError::new(format!("{step} refused: {code}: {message}")),
        None => CliError::new(format!("{step} refused: HTTP {}", resp.status)),
    }
}

fn strip_pem(s: &str) -> &str {
    s.strip_prefix("pem:").unwrap_or(s)
}

/// The key of the renewed certificate: the current one, or a new one of the same type.
fn renewal_key(file: &IdentityFile, new_key: bool) -> Result<rcgen::KeyPair, CliError> {
    use super::enroll::ClientKey;
    let current = rcgen::KeyPair::from_pem(strip_pem(&file.id.key)).ok();
    if let (false, Some(k)) = (new_key, &current) {
        return Ok(rcgen::KeyPair::from_pem(&k.serialize_pem())?);
    }
    let kind = match current.as_ref().map(|k| k.algorithm()) {
        Some(a) if a == &rcgen::PKCS_ECDSA_P384_SHA384 => ClientKey::P384,
        Some(a) if a == &rcgen::PKCS_ED25519 => ClientKey::Ed25519,
        Some(a) if a == &rcgen::PKCS_RSA_SHA256 => ClientKey::Rsa,
        _ => ClientKey::Ec,
    };
    Ok(super::enroll::generate(kind)?)
}

/// Writes `data` to `path` (which must not exist) with mode 0600, synced.
fn write_synced(path: &Path, data: &[u8]) -> Result<(), CliError> {
    use std::io::Write as _;
    let mut f = create_private(path)?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| CliError::new(format!("{}: {e}", path.display())))
}

/// Renames the verified renewal over the identity file and syncs the directory.
fn install(pending: &Path, path: &Path) -> Result<(), CliError> {
    std::fs::rename(pending, path).map_err(|e| {
        CliError::new(format!(
            "the renewal is verified and in {}, but it could not replace {}: {e}; rename it \
             by hand (the old file no longer authenticates)",
            pending.display(),
            path.display()
        ))
    })?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// One renewal: authenticate, extend, write the renewal aside, verify, install. Returns
/// the new certificate's `notAfter`.
fn renew_once(path: &Path, rekey: bool) -> Result<UnixTime, CliError> {
    let device = Device::open(path)?;
    let (session, detail) = device.authenticate()?;
    let id = device.authenticator_id()?;
    let key_roll = detail["isCertKeyRollRequested"].as_bool().unwrap_or(false);
    let key = renewal_key(&device.file, rekey || key_roll)?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)?
        .pem()?;
    let resp = device.call(
        "POST",
        &format!("/current-identity/authenticators/{id}/extend"),
        Some(&session),
        Some(&json!({ "clientCertCsr": csr })),
    )?;
    if resp.status != 200 {
        return Err(refused("extend", &resp));
    }
    let body = resp.json()?;
    let cert = body["data"]["clientCert"]
        .as_str()
        .ok_or_else(|| CliError::new("the gateway's extend answer has no clientCert"))?
        .to_string();
    let ca = body["data"]["ca"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| strip_pem(&device.file.id.ca).to_string());
    let mut renewed = device.file.clone();
    renewed.id.key = format!("pem:{}", key.serialize_pem());
    renewed.id.cert = format!("pem:{cert}");
    renewed.id.ca = format!("pem:{ca}");
    let mut json = serde_json::to_vec_pretty(&renewed).map_err(|e| CliError::new(e.to_string()))?;
    json.push(b'\n');

    // Aside first: once verified, the old certificate is retired; the new one must be on
    // disk before that can happen.
    let pending = pending_path(path);
    write_synced(&pending, &json)?;
    let resp = device.verify(&session, &id, &cert)?;
    if resp.status != 200 {
        let _ = std::fs::remove_file(&pending);
        return Err(refused("extend-verify", &resp));
    }
    install(&pending, path)?;
    Device::open(path)?
        .validity()
        .map(|(_, not_after)| not_after)
}

/// Finishes a renewal a crash interrupted (see the module docs); nothing to do without a
/// hidden renewal file.
fn recover(path: &Path) -> Result<(), CliError> {
    let pending = pending_path(path);
    if !pending.exists() {
        return Ok(());
    }
    // Written in full and synced before its verify was sent: one that does not read was
    // never verified.
    let Ok(next) = Device::open(&pending) else {
        let _ = std::fs::remove_file(&pending);
        return Ok(());
    };
    if let Ok(current) = Device::open(path) {
        if let Ok((session, _)) = current.authenticate() {
            let cert = strip_pem(&next.file.id.cert).to_string();
            let resp = current.verify(&session, &current.authenticator_id()?, &cert)?;
            if resp.status == 200 {
                eprintln!("finished an interrupted renewal of {}", path.display());
                return install(&pending, path);
            }
            // Replaced or never issued: the old certificate stays; renew anew.
            let _ = std::fs::remove_file(&pending);
            return Ok(());
        }
    }
    if next.authenticate().is_ok() {
        eprintln!(
            "installed a renewal verified before an interruption: {}",
            path.display()
        );
        return install(&pending, path);
    }
    Err(CliError::new(format!(
        "neither {} nor the interrupted renewal {} authenticates; both are kept",
        path.display(),
        pending.display()
    )))
}

/// When to renew a certificate valid from `not_before` to `not_after`: once two thirds of
/// its lifetime have passed, earlier by `jitter` (in [0, 1)) times a twentieth of the
/// lifetime, so that a fleet enrolled together does not renew in the same second.
pub fn renew_at(not_before: UnixTime, not_after: UnixTime, jitter: f64) -> UnixTime {
    let lifetime = not_after.saturating_sub(not_before).max(0);
    let spread = (lifetime as f64 / 20.0 * jitter.clamp(0.0, 1.0)) as i64;
    not_before + lifetime * 2 / 3 - spread
}

fn random_fraction() -> f64 {
    let mut b = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut b);
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

/// Sleeps up to `d`, waking early when `stop` is set.
fn nap(d: Duration, stop: &AtomicBool) {
    let until = std::time::Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(200)));
    }
}

/// `renew --daemon`.
fn daemon(args: &RenewArgs) -> Result<(), CliError> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let path = &args.identity;
    let clock = SystemClock;
    let mut planned: Option<UnixTime> = None;
    let jitter = random_fraction();
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = recover(path) {
            eprintln!(
                "renewal recovery failed: {e}; retrying in {:?}",
                args.check_interval
            );
            nap(args.check_interval, &stop);
            continue;
        }
        let device = Device::open(path)?;
        let (not_before, not_after) = device.validity()?;
        let due = renew_at(not_before, not_after, jitter);
        let now = clock.unix_now();
        let asked = now < due
            && match device.authenticate() {
                Ok((_, detail)) => detail["isCertExtendRequested"].as_bool().unwrap_or(false),
                Err(e) => {
                    eprintln!("could not ask the gateway for a renewal request: {e}");
                    false
                }
            };
        if now >= due || asked {
            let why = if asked { "an admin asked" } else { "due" };
            match renew_once(path, args.rekey) {
                Ok(until) => {
                    eprintln!(
                        "renewed {} ({why}): valid until {}",
                        path.display(),
                        rfc3339(until)
                    );
                    planned = None;
                    continue;
                }
                Err(e) => {
                    eprintln!(
                        "renewal failed ({why}): {e}; retrying in {:?}",
                        args.check_interval
                    );
                    nap(args.check_interval, &stop);
                    continue;
                }
            }
        }
        if planned != Some(due) {
            eprintln!("next renewal of {} at {}", path.display(), rfc3339(due));
            planned = Some(due);
        }
        let until_due = Duration::from_secs(u64::try_from(due - now).unwrap_or(0));
        nap(until_due.min(args.check_interval), &stop);
    }
    eprintln!("stopping");
    Ok(())
}

/// `identity request-extend NAME [--key-roll]`.
pub fn request_extend(
    target: &str,
    key_roll: bool,
    admin_args: &AdminArgs,
) -> Result<(), CliError> {
    let api = Admin::load(admin_args)?;
    let found = api.resolve(target)?;
    let id = super::admin::text(&found, "id");
    api.call(
        "POST",
        &format!("/identities/{id}/request-extend"),
        Some(&json!({ "rollKeys": key_roll })),
    )?;
    eprintln!(
        "asked '{}' ({id}) to renew its certificate{}",
        super::admin::text(&found, "name"),
        if key_roll { " with a new key" } else { "" }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_after_two_thirds_of_the_lifetime_less_the_jitter() {
        assert_eq!(renew_at(0, 300, 0.0), 200);
        assert_eq!(renew_at(1000, 1000 + 3000, 0.0), 3000);
        // At most a twentieth earlier.
        assert_eq!(renew_at(0, 3000, 0.999_999), 2000 - 149);
        assert!(renew_at(0, 3000, 0.5) > 2000 - 150);
        // A certificate whose dates are inverted is due at once, not in the future.
        assert_eq!(renew_at(500, 100, 0.0), 500);
    }

    #[test]
    fn the_renewal_is_written_beside_the_file_hidden() {
        assert_eq!(
            pending_path(Path::new("/etc/dev/id.json")),
            PathBuf::from("/etc/dev/.id.json.renewing")
        );
        assert_eq!(
            pending_path(Path::new("id.json")),
            PathBuf::from(".id.json.renewing")
        );
    }
}
