//! `enrollgate identity create|list|show|delete|jwt|reissue|request-extend` (and, from
//! `cli::suspend`, `disable|enable|re-enroll`): the management API, spoken with an admin
//! identity file.

use std::path::PathBuf;

use serde_json::{json, Value};

use super::admin::{resolve_ca, text, Admin, JwtOut};
use super::{AdminArgs, CliError};

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
                    let ca = resolve_ca(&api, target)?;
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
            let note = format!(
                "new token for '{}', expires {}",
                text(&found, "name"),
                text(&e, "expiresAt")
            );
            out.write_enrollment(&e, &note)
        }
    }
}
