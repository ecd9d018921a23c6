//! `enrollgate ca create|list|show|update|delete|verify|jwt`: third-party CAs, through the
//! management API with an admin identity file. A CA is named by its name or id.

use std::path::PathBuf;

use serde_json::{json, Map, Value};

use super::identity::{text, Admin};
use super::{AdminArgs, CliError};
use crate::identity_file::write_private;

/// `ca` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CaCommand {
    /// Upload a CA certificate; it starts unverified (see `ca verify`).
    Create {
        /// Unique name.
        name: String,
        /// The CA certificate (PEM, basicConstraints CA=true).
        #[arg(long)]
        cert: PathBuf,
        /// Allow CA auto-enrollment (method `ca`).
        #[arg(long)]
        auto: bool,
        /// Allow `ottca` enrollment.
        #[arg(long)]
        ottca: bool,
        /// Allow identities with this CA's certificates to authenticate.
        #[arg(long)]
        auth: bool,
        /// Role attributes of auto-enrolled identities, comma-separated.
        #[arg(long, value_delimiter = ',')]
        role_attributes: Vec<String>,
        /// Name template of auto-enrolled identities (default `[caName]-[commonName]`).
        #[arg(long)]
        name_format: Option<String>,
        #[command(flatten)]
        #[allow(missing_docs)]
        admin_args: AdminArgs,
    },
    /// List CAs.
    List {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        #[allow(missing_docs)]
        admin_args: AdminArgs,
    },
    /// Show a CA as JSON (with its verification token while unverified).
    Show {
        /// Name or id.
        #[arg(value_name = "NAME|ID")]
        target: String,
        #[command(flatten)]
        #[allow(missing_docs)]
        admin_args: AdminArgs,
    },
    /// Change a CA's name, flags, roles or name format.
    Update {
        /// Name or id.
        #[arg(value_name = "NAME|ID")]
        target: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// Allow or forbid auto-enrollment.
        #[arg(long)]
        auto: Option<bool>,
        /// Allow or forbid ottca enrollment.
        #[arg(long)]
        ottca: Option<bool>,
        /// Allow or forbid authentication.
        #[arg(long)]
        auth: Option<bool>,
        /// Role attributes of auto-enrolled identities, comma-separated.
        #[arg(long, value_delimiter = ',')]
        role_attributes: Option<Vec<String>>,
        /// Name template of auto-enrolled identities.
        #[arg(long)]
        name_format: Option<String>,
        #[command(flatten)]
        #[allow(missing_docs)]
        admin_args: AdminArgs,
    },
    /// Delete a CA.
    Delete {
        /// Name or id.
        #[arg(value_name = "NAME|ID")]
        target: String,
        #[command(flatten)]
        #[allow(missing_docs)]
        admin_args: AdminArgs,
    },
    /// Prove possession of the CA key with a certificate whose CN is the verification token.
    Verify {
        /// Name or id.
        #[arg(value_name = "NAME|ID")]
        target: String,
        /// The proof certificate (PEM), signed by the CA.
        #[arg(long)]
        cert: PathBuf,
        #[command(flatten)]
        #[allow(missing_docs)]
        admin_args: AdminArgs,
    },
    /// Write the CA's reusable enrollment JWT (for auto-enrolling devices).
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
}

/// Finds a CA by id, else by name.
pub fn resolve(api: &Admin, name_or_id: &str) -> Result<Value, CliError> {
    let all = api.data("GET", "/cas", None)?;
    let list = all.as_array().cloned().unwrap_or_default();
    // The id first, as for identities: it never changes.
    list.iter()
        .find(|c| c["id"] == name_or_id)
        .or_else(|| list.iter().find(|c| c["name"] == name_or_id))
        .cloned()
        .ok_or_else(|| CliError::new(format!("no CA named or with id '{name_or_id}'")))
}

fn read(path: &PathBuf) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|e| CliError::new(format!("{}: {e}", path.display())))
}

/// Runs a `ca` subcommand.
pub fn run(cmd: CaCommand) -> Result<(), CliError> {
    match cmd {
        CaCommand::Create {
            name,
            cert,
            auto,
            ottca,
            auth,
            role_attributes,
            name_format,
            admin_args,
        } => {
            let api = Admin::load(&admin_args)?;
            let mut body = json!({
                "name": name,
                "certPem": read(&cert)?,
                "isAutoCaEnrollmentEnabled": auto,
                "isOttCaEnrollmentEnabled": ottca,
                "isAuthEnabled": auth,
                "identityRoles": role_attributes,
            });
            if let Some(f) = name_format {
                body["identityNameFormat"] = Value::String(f);
            }
            let ca = api.data("POST", "/cas", Some(&body))?;
            eprintln!(
                "created CA '{}' with id {} (unverified)",
                text(&ca, "name"),
                text(&ca, "id")
            );
            eprintln!("verification token: {}", text(&ca, "verificationToken"));
            println!("{}", text(&ca, "id"));
            Ok(())
        }
        CaCommand::List { json, admin_args } => {
            let api = Admin::load(&admin_args)?;
            let data = api.data("GET", "/cas", None)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&data).unwrap_or_default()
                );
                return Ok(());
            }
            println!(
                "{:<18} {:<24} {:<9} {:<5} {:<6} {:<5} EXPIRES",
                "ID", "NAME", "VERIFIED", "AUTO", "OTTCA", "AUTH"
            );
            for c in data.as_array().map(Vec::as_slice).unwrap_or_default() {
                println!(
                    "{:<18} {:<24} {:<9} {:<5} {:<6} {:<5} {}",
                    text(c, "id"),
                    text(c, "name"),
                    text(c, "isVerified"),
                    text(c, "isAutoCaEnrollmentEnabled"),
                    text(c, "isOttCaEnrollmentEnabled"),
                    text(c, "isAuthEnabled"),
                    text(c, "notAfter"),
                );
            }
            Ok(())
        }
        CaCommand::Show { target, admin_args } => {
            let api = Admin::load(&admin_args)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&resolve(&api, &target)?).unwrap_or_default()
            );
            Ok(())
        }
        CaCommand::Update {
            target,
            name,
            auto,
            ottca,
            auth,
            role_attributes,
            name_format,
            admin_args,
        } => {
            let api = Admin::load(&admin_args)?;
            let ca = resolve(&api, &target)?;
            let mut body = Map::new();
            if let Some(v) = name {
                body.insert("name".into(), json!(v));
            }
            if let Some(v) = auto {
                body.insert("isAutoCaEnrollmentEnabled".into(), json!(v));
            }
            if let Some(v) = ottca {
                body.insert("isOttCaEnrollmentEnabled".into(), json!(v));
            }
            if let Some(v) = auth {
                body.insert("isAuthEnabled".into(), json!(v));
            }
            if let Some(v) = role_attributes {
                body.insert("identityRoles".into(), json!(v));
            }
            if let Some(v) = name_format {
                body.insert("identityNameFormat".into(), json!(v));
            }
            let updated = api.data(
                "PATCH",
                &format!("/cas/{}", text(&ca, "id")),
                Some(&Value::Object(body)),
            )?;
            println!(
                "{}",
                serde_json::to_string_pretty(&updated).unwrap_or_default()
            );
            Ok(())
        }
        CaCommand::Delete { target, admin_args } => {
            let api = Admin::load(&admin_args)?;
            let ca = resolve(&api, &target)?;
            api.call("DELETE", &format!("/cas/{}", text(&ca, "id")), None)?;
            eprintln!("deleted CA '{}'", text(&ca, "name"));
            Ok(())
        }
        CaCommand::Verify {
            target,
            cert,
            admin_args,
        } => {
            let api = Admin::load(&admin_args)?;
            let ca = resolve(&api, &target)?;
            let pem_text = read(&cert)?;
            api.call_raw(
                "POST",
                &format!("/cas/{}/verify", text(&ca, "id")),
                "text/plain",
                pem_text.as_bytes(),
            )?;
            eprintln!("CA '{}' is verified", text(&ca, "name"));
            Ok(())
        }
        CaCommand::Jwt {
            target,
            output,
            admin_args,
        } => {
            let api = Admin::load(&admin_args)?;
            let ca = resolve(&api, &target)?;
            let resp = api.call("GET", &format!("/cas/{}/jwt", text(&ca, "id")), None)?;
            let jwt = String::from_utf8_lossy(&resp.body).trim().to_string();
            match output {
                Some(path) => {
                    write_private(&path, format!("{jwt}\n").as_bytes())?;
                    eprintln!("wrote {}", path.display());
                }
                None => println!("{jwt}"),
            }
            Ok(())
        }
    }
}
