//! `enrollgate identity create|list|show|delete|jwt|reissue|request-extend` (and, from
//! `cli::suspend`, `disable|enable|re-enroll`): the management API, spoken with an admin
//! identity file.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};

use super::{AdminArgs, CliError};
use crate::client::{self, HttpResponse};
use crate::config::PublicUrl;
use crate::identity_file::{IdentityFile, PendingFile};

/// Identity types as the CLI spells them.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    /// A person.
    User,
    /// A device.
    Device,
    /// A service.
    Service,
}

/// `identity` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum IdentityCommand {
    /// Create an identity with a one-time enrollment token and write its JWT.
    Create {
        /// user, device or service.
        #[arg(value_enum)]
        kind: Kind,
        /// Unique name.
        name: String,
        /// Write the enrollment JWT here (mode 0600); default: standard output.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// Make the identity an administrator.
        #[arg(long)]
        admin: bool,
        /// Role attributes, comma-separated.
        #[arg(long, value_delimiter = ',')]
        role_attributes: Vec<String>,
        /// Enroll with a certificate from this third-party CA (name or id): method `ottca`.
        #[arg(long, value_name = "CA")]
        ca: Option<String>,
        #[command(flatten)]
        #[allow(missing_docs)]
        admin_args: AdminArgs,
    },
    /// List identities.
    List {
        /// OpenZiti filter: name = "x", name contains "x", name startswith "x".
        #[arg(long)]
        filter: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Page start.
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// Only identities whose certificate expires within this time (e.g. 30d, 12h),
        /// not yet expired.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        expiring: Option<std::time::Duration>,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        #[allow(missing_docs)]
        admin_args: AdminArgs,
    },
    /// Show one identity (by name or id) as JSON.
    Show {
        /// Name or id.
        #[arg(value_name = "NAME|ID")]
        target: String,
        #[command(flatten)]
        #[allow(missing_docs)]
        admin_args: AdminArgs,
    },
    /// Delete an identity (by name or id).
    Delete {
        /// Name or id.
        #[arg(value_name = "NAME|ID")]
        target: String,
        #[command(flatten)]
        #[allow(missing_docs)]
        admin_args: AdminArgs,
    },
    /// Write the JWT of an identity's pending enrollment.
    Jwt {
        /// Name or id.
        #[arg(value_name = "NAME|ID")]
        target: String,
        /// Output file (mode 0600); default: standard output.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        #[command(flatten)]
        #[allow(missing_docs)]
        admin_args: AdminArgs,
    },
    /// Ask an enrolled identity to renew its certificate (its sessions report
    /// isCertExtendRequested until a renewal is verified).
    RequestExtend {
        /// Name or id.
        #[arg(value_name = "NAME|ID")]
        target: String,
        /// Ask for a new key as well (isCertKeyRollRequested).
        #[arg(long)]
        key_roll: bool,
        #[command(flatten)]
        #[allow(missing_docs)]
        admin_args: AdminArgs,
    },
    /// Issue a new one-time token for an identity that has not enrolled (e.g. expired).
    Reissue {
        /// Name or id.
        #[arg(value_name = "NAME|ID")]
        target: String,
        /// Output file (mode 0600); default: standard output.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        #[command(flatten)]
        #[allow(missing_docs)]
        admin_args: AdminArgs,
    },
    #[command(flatten)]
    #[allow(missing_docs)]
    Suspend(super::suspend::SuspendCommand),
}

/// A management API client authenticated by an admin identity file.
pub struct Admin {
    config: Arc<rustls::ClientConfig>,
    endpoint: PublicUrl,
}

impl Admin {
    /// Loads the identity file.
    pub fn load(args: &AdminArgs) -> Result<Self, CliError> {
        let file = IdentityFile::read(&args.path()?)?;
        let config = client::config(
            &file.ca_certs()?,
            Some((file.cert_chain()?, file.private_key()?)),
        )?;
        Ok(Self {
            config,
            endpoint: file.endpoint()?,
        })
    }

    /// `https://host:port` of the gateway the identity file points at.
    pub fn origin(&self) -> String {
        self.endpoint.origin()
    }

    /// Calls the management API; returns the response if it is a success.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<HttpResponse, CliError> {
        match body {
            Some(b) => self.call_raw(method, path, "application/json", b.to_string().as_bytes()),
            None => self.call_raw(method, path, "", b""),
        }
    }

    /// Calls the management API with a body of any type (`content_type` empty: none).
    pub fn call_raw(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        bytes: &[u8],
    ) -> Result<HttpResponse, CliError> {
        let resp = self.send(method, path, content_type, bytes)?;
        if (200..300).contains(&resp.status) {
            return Ok(resp);
        }
        Err(refused(&resp))
    }

    /// Calls the management API; any status is returned.
    fn send(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        bytes: &[u8],
    ) -> Result<HttpResponse, CliError> {
        let mut headers = vec![("Accept", "application/json")];
        if !content_type.is_empty() {
            headers.push(("Content-Type", content_type));
        }
        Ok(client::request(
            self.config.clone(),
            &self.endpoint.host,
            self.endpoint.port,
            method,
            &format!("{}{path}", crate::api::MANAGEMENT_PREFIX),
            &headers,
            bytes,
        )?)
    }

    /// `data` of a JSON success.
    pub fn data(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, CliError> {
        let v = self.call(method, path, body)?.json()?;
        Ok(v.get("data").cloned().unwrap_or(Value::Null))
    }

    /// Finds an identity by id, else by name. The id goes first: it is assigned by the
    /// gateway and never changes, while an auto-enrolled device may ask for a name, and
    /// a name equal to another identity's id must not redirect a command meant for that
    /// identity (a `delete` would remove the wrong one).
    pub fn resolve(&self, name_or_id: &str) -> Result<Value, CliError> {
        let id_shaped = crate::ids::is_well_formed(name_or_id);
        if id_shaped {
            // Only "no such id" falls back to names: any other failure is reported.
            let resp = self.send("GET", &format!("/identities/{name_or_id}"), "", b"")?;
            match resp.status {
                200 => return Ok(resp.json()?.get("data").cloned().unwrap_or(Value::Null)),
                404 => {}
                _ => return Err(refused(&resp)),
            }
        }
        let escaped = name_or_id.replace('\\', "\\\\").replace('"', "\\\"");
        let filter = format!("name = \"{escaped}\"");
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("filter", &filter)
            .finish();
        let list = self.data("GET", &format!("/identities?{q}"), None)?;
        if let Some(found) = list.as_array().and_then(|a| a.first()) {
            if id_shaped {
                eprintln!(
                    "note: no identity has the id '{name_or_id}'; using the identity named so ({})",
                    text(found, "id")
                );
            }
            return Ok(found.clone());
        }
        // The gateway knows no such identity: its answer, not a local failure.
        Err(CliError::refused(format!(
            "no identity named or with id '{name_or_id}'"
        )))
    }
}

/// The error for a management API answer that is not a success.
fn refused(resp: &HttpResponse) -> CliError {
    match resp.api_error() {
        Some((code, message)) => {
            CliError::refused(format!("the server refused: {code}: {message}"))
        }
        None => CliError::refused(format!("the server answered HTTP {}", resp.status)),
    }
}

/// Where an enrollment JWT goes: the `-o` file, its room taken (0600, refused if the file
/// exists) before anything changes on the server, so that a token is never made only to
/// be lost to a file that was already there, and removed if never written (the server
/// refused); or standard output.
pub(super) struct JwtOut(Option<PendingFile>);

impl JwtOut {
    pub(super) fn open(output: Option<&PathBuf>) -> Result<Self, CliError> {
        Ok(Self(output.map(|p| PendingFile::create(p)).transpose()?))
    }

    pub(super) fn write(self, jwt: &str) -> Result<(), CliError> {
        match self.0 {
            Some(file) => {
                let path = file.path().display().to_string();
                file.write_bytes(format!("{jwt}\n").as_bytes())
                    .map_err(|e| {
                        CliError::new(format!(
                            "{e}; the token was made: write it again with `enrollgate identity jwt NAME -o FILE`"
                        ))
                    })?;
                eprintln!("wrote {path}");
            }
            None => println!("{jwt}"),
        }
        Ok(())
    }
}

/// A JSON field as display text (strings unquoted).
pub(super) fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// Runs an `identity` subcommand.
pub fn run(cmd: IdentityCommand) -> Result<(), CliError> {
    match cmd {
        IdentityCommand::Suspend(c) => super::suspend::run(c),
        IdentityCommand::Create {
            kind,
            name,
            output,
            admin,
            role_attributes,
            ca,
            admin_args,
        } => {
            let api = Admin::load(&admin_args)?;
            let out = JwtOut::open(output.as_ref())?;
            let (method, enrollment) = match &ca {
                Some(target) => {
                    let ca = super::ca::resolve(&api, target)?;
                    // The token is made either way (the CA may be verified later), but
                    // a device could not redeem it yet, and would see only a 400.
                    let missing: Vec<&str> = [
                        ("isVerified", "it is not verified (ca verify)"),
                        (
                            "isOttCaEnrollmentEnabled",
                            "it does not allow ottca (ca update --ottca true)",
                        ),
                    ]
                    .into_iter()
                    .filter(|(flag, _)| ca[*flag] != Value::Bool(true))
                    .map(|(_, what)| what)
                    .collect();
                    if !missing.is_empty() {
                        eprintln!(
                            "note: CA '{}': {}; its certificates cannot redeem this token until then",
                            text(&ca, "name"),
                            missing.join(", and ")
                        );
                    }
                    ("ottca", json!({ "ottca": ca["id"] }))
                }
                None => ("ott", json!({ "ott": true })),
            };
            let kind = match kind {
                Kind::User => "User",
                Kind::Device => "Device",
                Kind::Service => "Service",
            };
            let body = json!({
                "name": name,
                "type": kind,
                "isAdmin": admin,
                "roleAttributes": role_attributes,
                "enrollment": enrollment,
            });
            let created = api.data("POST", "/identities", Some(&body))?;
            eprintln!("created {kind} '{name}' with id {}", text(&created, "id"));
            let jwt = created["enrollment"][method]["jwt"]
                .as_str()
                .ok_or_else(|| CliError::new("the server returned no enrollment JWT"))?;
            out.write(jwt)
        }
        IdentityCommand::List {
            filter,
            limit,
            offset,
            expiring,
            json,
            admin_args,
        } => {
            let api = Admin::load(&admin_args)?;
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("limit", &limit.to_string());
            q.append_pair("offset", &offset.to_string());
            if let Some(f) = &filter {
                q.append_pair("filter", f);
            }
            if let Some(within) = expiring {
                q.append_pair("certExpiringWithin", &format!("{}s", within.as_secs()));
            }
            let v = api
                .call("GET", &format!("/identities?{}", q.finish()), None)?
                .json()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return Ok(());
            }
            println!(
                "{:<18} {:<32} {:<8} {:<6} {:<8} {:<8} CERT EXPIRES",
                "ID", "NAME", "TYPE", "ADMIN", "ENROLLED", "DISABLED"
            );
            for i in v["data"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let expires = i["authenticators"]["cert"]["notAfter"]
                    .as_str()
                    .unwrap_or("-");
                println!(
                    "{:<18} {:<32} {:<8} {:<6} {:<8} {:<8} {expires}",
                    text(i, "id"),
                    text(i, "name"),
                    text(i, "type"),
                    text(i, "isAdmin"),
                    text(i, "hasEnrolled"),
                    text(i, "disabled"),
                );
            }
            let p = &v["meta"]["pagination"];
            eprintln!(
                "{} of {} identities",
                v["data"].as_array().map_or(0, Vec::len),
                p["totalCount"]
            );
            Ok(())
        }
        IdentityCommand::Show { target, admin_args } => {
            let api = Admin::load(&admin_args)?;
            let found = api.resolve(&target)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&found).unwrap_or_default()
            );
            Ok(())
        }
        IdentityCommand::Delete { target, admin_args } => {
            let api = Admin::load(&admin_args)?;
            let found = api.resolve(&target)?;
            let id = text(&found, "id");
            api.call("DELETE", &format!("/identities/{id}"), None)?;
            eprintln!("deleted '{}' ({id})", text(&found, "name"));
            Ok(())
        }
        IdentityCommand::Jwt {
            target,
            output,
            admin_args,
        } => {
            let api = Admin::load(&admin_args)?;
            let found = api.resolve(&target)?;
            let pending = &found["enrollment"];
            let jwt = pending["ott"]["jwt"]
                .as_str()
                .or_else(|| pending["ottca"]["jwt"].as_str())
                .ok_or_else(|| {
                    CliError::new(format!(
                        "'{}' has no pending enrollment (already enrolled, or none was created)",
                        text(&found, "name")
                    ))
                })?;
            JwtOut::open(output.as_ref())?.write(jwt)
        }
        IdentityCommand::RequestExtend {
            target,
            key_roll,
            admin_args,
        } => super::renew::request_extend(&target, key_roll, &admin_args),
        IdentityCommand::Reissue {
            target,
            output,
            admin_args,
        } => {
            let api = Admin::load(&admin_args)?;
            let found = api.resolve(&target)?;
            let out = JwtOut::open(output.as_ref())?;
            // A pending (e.g. expired) enrollment is refreshed with its own method and CA;
            // an identity without one gets an ott token.
            let pending = &found["enrollment"];
            let eid = pending["ott"]["id"]
                .as_str()
                .or_else(|| pending["ottca"]["id"].as_str());
            let e = match eid {
                Some(eid) => api.data(
                    "POST",
                    &format!("/enrollments/{eid}/refresh"),
                    Some(&json!({})),
                )?,
                None => {
                    let body = json!({ "identityId": text(&found, "id"), "method": "ott" });
                    api.data("POST", "/enrollments", Some(&body))?
                }
            };
            let jwt = e["jwt"]
                .as_str()
                .ok_or_else(|| CliError::new("the server returned no enrollment JWT"))?;
            eprintln!(
                "new token for '{}', expires {}",
                text(&found, "name"),
                text(&e, "expiresAt")
            );
            out.write(jwt)
        }
    }
}
