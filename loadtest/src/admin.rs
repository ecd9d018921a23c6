//! The management side of a load test, through the gateway's management API with an admin
//! identity file: register the fleet's CA (with proof of possession) and prepare one-time
//! tokens. Uses enrollgate's own blocking client; none of this is timed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use enrollgate::client::{self, HttpResponse};
use enrollgate::identity_file::IdentityFile;
use rustls::ClientConfig;
use serde_json::{json, Value};

use crate::fleet::Fleet;
use crate::Error;

/// A management API session as an admin.
pub struct Admin {
    host: String,
    port: u16,
    config: Arc<ClientConfig>,
    /// The gateway's CA bundle (PEM), from the identity file.
    pub ca_pem: String,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// `HTTP 409 NAME_IN_USE: message`, or the status alone.
pub fn describe(resp: &HttpResponse) -> String {
    match resp.api_error() {
        Some((code, message)) => format!("HTTP {} {code}: {message}", resp.status),
        None => format!(
            "HTTP {}: {}",
            resp.status,
            String::from_utf8_lossy(&resp.body)
                .chars()
                .take(200)
                .collect::<String>()
        ),
    }
}

fn api(what: &str, detail: impl Into<String>) -> Error {
    Error::Api {
        what: what.to_string(),
        detail: detail.into(),
    }
}

impl Admin {
    /// Opens an admin identity file (`enrollgate init` writes `DATA/admin.json`).
    pub fn open(identity: &Path) -> Result<Self, Error> {
        let f = IdentityFile::read(identity)?;
        let ep = f.endpoint()?;
        let config = client::config(&f.ca_certs()?, Some((f.cert_chain()?, f.private_key()?)))
            .map_err(|e| Error::Invalid(format!("{}: {e}", identity.display())))?;
        Ok(Self {
            host: ep.host,
            port: ep.port,
            config,
            ca_pem: f.id.ca.strip_prefix("pem:").unwrap_or(&f.id.ca).to_string(),
        })
    }

    /// `https://host:port` of the gateway.
    pub fn origin(&self) -> String {
        format!("https://{}:{}", self.host, self.port)
    }

    /// A management call (`path` under `/edge/management/v1`) with a raw body.
    pub fn raw(
        &self,
        what: &str,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<HttpResponse, Error> {
        let mut headers = vec![("Accept", "application/json")];
        if !body.is_empty() {
            headers.push(("Content-Type", content_type));
        }
        client::request(
            self.config.clone(),
            &self.host,
            self.port,
            method,
            &format!("{}{path}", enrollgate::api::MANAGEMENT_PREFIX),
            &headers,
            body,
        )
        .map_err(|e| api(what, e.to_string()))
    }

    /// A management call with an optional JSON body.
    pub fn call(
        &self,
        what: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<HttpResponse, Error> {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        self.raw(what, method, path, "application/json", &bytes)
    }

    /// A call that must answer `status`; its JSON body.
    fn expect(
        &self,
        what: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
        status: u16,
    ) -> Result<Value, Error> {
        let r = self.call(what, method, path, body)?;
        if r.status != status {
            return Err(api(what, describe(&r)));
        }
        r.json().map_err(|e| api(what, e.to_string()))
    }
}

/// How `register-ca` creates the fleet's CA.
#[derive(Debug, Clone, Default)]
pub struct RegisterCa {
    /// The CA's name in the gateway.
    pub name: String,
    /// `isAutoCaEnrollmentEnabled` (method `ca`).
    pub auto: bool,
    /// `isOttCaEnrollmentEnabled` (method `ottca`).
    pub ottca: bool,
    /// `isAuthEnabled`.
    pub auth: bool,
    /// `identityNameFormat` (default: the gateway's `[caName]-[commonName]`).
    pub template: Option<String>,
    /// `identityRoles`.
    pub roles: Vec<String>,
}

/// Every CA the gateway has.
fn list_cas(admin: &Admin) -> Result<Vec<Value>, Error> {
    let v = admin.expect("listing CAs", "GET", "/cas", None, 200)?;
    Ok(v["data"].as_array().cloned().unwrap_or_default())
}

/// The id of the CA named (or with id) `name_or_id`.
pub fn find_ca(admin: &Admin, name_or_id: &str) -> Result<String, Error> {
    list_cas(admin)?
        .iter()
        .find(|c| c["id"] == name_or_id || c["name"] == name_or_id)
        .and_then(|c| c["id"].as_str().map(str::to_string))
        .ok_or_else(|| Error::Invalid(format!("the gateway has no CA named '{name_or_id}'")))
}

/// Creates the fleet's root as a CA (or finds it, if a previous run created it), sets its
/// flags and completes proof-of-possession verification. Returns the CA id.
pub fn register_ca(admin: &Admin, fleet: &Fleet, opts: &RegisterCa) -> Result<String, Error> {
    let mut flags = json!({
        "isAutoCaEnrollmentEnabled": opts.auto,
        "isOttCaEnrollmentEnabled": opts.ottca,
        "isAuthEnabled": opts.auth,
        "identityRoles": opts.roles,
    });
    if let Some(t) = &opts.template {
        flags["identityNameFormat"] = Value::String(t.clone());
    }
    let mut body = flags.clone();
    body["name"] = Value::String(opts.name.clone());
    body["certPem"] = Value::String(fleet.root_pem.clone());
    let created = admin.call("creating the CA", "POST", "/cas", Some(&body))?;
    let id = match created.status {
        201 => created
            .json()
            .map_err(|e| api("creating the CA", e.to_string()))?["data"]["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| api("creating the CA", "the answer has no CA id"))?,
        409 => {
            // Registered by an earlier run (CA_EXISTS, or NAME_IN_USE when the name is
            // checked first): use it if it is this fleet's certificate.
            let existing = list_cas(admin)?
                .into_iter()
                .find(|c| c["certPem"].as_str().map(str::trim) == Some(fleet.root_pem.trim()))
                .ok_or_else(|| api("creating the CA", describe(&created)))?;
            let id = existing["id"]
                .as_str()
                .ok_or_else(|| api("finding the existing CA", "no id"))?
                .to_string();
            let name = existing["name"].as_str().unwrap_or_default();
            eprintln!(
                "the fleet's root is already registered as CA '{name}': using it, with the \
                 flags given here (auto {}, ottca {}, auth {})",
                opts.auto, opts.ottca, opts.auth
            );
            admin.expect(
                "updating the existing CA's flags",
                "PATCH",
                &format!("/cas/{id}"),
                Some(&flags),
                200,
            )?;
            id
        }
        _ => return Err(api("creating the CA", describe(&created))),
    };
    let shown = admin.expect(
        "reading the CA's verification token",
        "GET",
        &format!("/cas/{id}"),
        None,
        200,
    )?;
    if shown["data"]["isVerified"] == true {
        return Ok(id);
    }
    let token = shown["data"]["verificationToken"]
        .as_str()
        .ok_or_else(|| api("reading the CA's verification token", "none in the answer"))?;
    let proof = fleet.proof(token)?;
    let r = admin.raw(
        "verifying the CA",
        "POST",
        &format!("/cas/{id}/verify"),
        "text/plain",
        proof.as_bytes(),
    )?;
    if r.status != 200 {
        return Err(api("verifying the CA", describe(&r)));
    }
    Ok(id)
}

/// Which one-time tokens `prepare-ott` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenMethod {
    /// Token + CSR: the gateway signs the device's certificate.
    Ott,
    /// Token + a certificate from a registered CA.
    Ottca,
}

/// What `prepare-ott` does.
#[derive(Debug, Clone)]
pub struct PrepareOtt {
    /// Identities to create.
    pub count: usize,
    /// Where to store the tokens (new or empty directory).
    pub out: PathBuf,
    /// Their method.
    pub method: TokenMethod,
    /// The CA (name or id) for `ottca`.
    pub ca: Option<String>,
    /// Requests in flight.
    pub concurrency: usize,
    /// Identity names are PREFIX000001, PREFIX000002, ...
    pub prefix: String,
    /// Print progress on stderr.
    pub progress: bool,
}

/// What `prepare-ott` made.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Identities created (their tokens are stored).
    pub created: usize,
    /// Creations that failed.
    pub failed: usize,
    /// The first failure, to show.
    pub first_error: Option<String>,
    /// Wall time.
    pub elapsed: Duration,
}

/// A random default identity-name prefix, so runs do not collide: `lt-k3J9x-`.
pub fn default_prefix() -> String {
    let id = enrollgate::ids::new_id().unwrap_or_else(|_| "run".into());
    format!(
        "lt-{}-",
        id.chars()
            .filter(char::is_ascii_alphanumeric)
            .take(6)
            .collect::<String>()
    )
}

/// Creates `count` identities with one-time tokens, `concurrency` at a time, and stores
/// the tokens. Failures are counted and the successes kept.
pub fn prepare_ott(admin: &Admin, opts: &PrepareOtt) -> Result<Prepared, Error> {
    let started = Instant::now();
    let enrollment = match (opts.method, &opts.ca) {
        (TokenMethod::Ott, None) => json!({ "ott": true }),
        (TokenMethod::Ott, Some(_)) => {
            return Err(Error::Invalid("--ca is for --method ottca".into()))
        }
        (TokenMethod::Ottca, Some(ca)) => json!({ "ottca": find_ca(admin, ca)? }),
        (TokenMethod::Ottca, None) => {
            return Err(Error::Invalid(
                "--method ottca needs --ca NAME (a CA registered with --ottca)".into(),
            ))
        }
    };
    let field = match opts.method {
        TokenMethod::Ott => "ott",
        TokenMethod::Ottca => "ottca",
    };
    let next = AtomicUsize::new(0);
    let made: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::with_capacity(opts.count));
    let failed = AtomicUsize::new(0);
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    let create_one = |i: usize| -> Result<String, String> {
        let body = json!({
            "name": format!("{}{:06}", opts.prefix, i + 1),
            "type": "Device",
            "enrollment": enrollment,
        });
        let r = admin
            .call("creating an identity", "POST", "/identities", Some(&body))
            .map_err(|e| e.to_string())?;
        if r.status != 201 {
            return Err(describe(&r));
        }
        let v = r.json().map_err(|e| e.to_string())?;
        v["data"]["enrollment"][field]["jwt"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| "the answer has no enrollment JWT".to_string())
    };
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..opts.concurrency.clamp(1, 256))
            .map(|_| {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= opts.count {
                        break;
                    }
                    match create_one(i) {
                        Ok(jwt) => {
                            if let Ok(mut m) = made.lock() {
                                m.push((i, jwt));
                            }
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut f) = first_error.lock() {
                                f.get_or_insert(e);
                            }
                        }
                    }
                })
            })
            .collect();
        let mut last = Instant::now();
        while !workers.iter().all(|w| w.is_finished()) {
            std::thread::sleep(Duration::from_millis(100));
            if opts.progress && last.elapsed() >= Duration::from_secs(1) {
                last = Instant::now();
                let ok = made.lock().map(|m| m.len()).unwrap_or(0);
                let secs = started.elapsed().as_secs_f64().max(0.001);
                eprintln!(
                    "prepare-ott: {ok}/{} created, {} failed, {:.0}/s",
                    opts.count,
                    failed.load(Ordering::Relaxed),
                    ok as f64 / secs
                );
            }
        }
    });
    let mut made = made.into_inner().unwrap_or_default();
    made.sort_unstable_by_key(|(i, _)| *i);
    let jwts: Vec<String> = made.into_iter().map(|(_, j)| j).collect();
    let meta = json!({
        "method": field,
        "ca": opts.ca,
        "count": jwts.len(),
        "gateway": admin.origin(),
        "namePrefix": opts.prefix,
        "createdAt": crate::unix_now(),
    });
    if !jwts.is_empty() {
        crate::tokens::write(&opts.out, &jwts, &admin.ca_pem, &meta)?;
    }
    Ok(Prepared {
        created: jwts.len(),
        failed: failed.load(Ordering::Relaxed),
        first_error: first_error.into_inner().unwrap_or_default(),
        elapsed: started.elapsed(),
    })
}
