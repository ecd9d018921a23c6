//! `enrollgate ca create|list|show|update|delete|verify|jwt`: third-party CAs, through the
//! management API with an admin identity file. A CA is named by its name or id.

use std::path::PathBuf;

use serde_json::{json, Map, Value};

use super::admin::{resolve_ca as resolve, text, Admin};
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
    /// Delete a CA. Says first which identities it touches; with any, asks for `--yes`.
    Delete {
        /// Name or id.
        #[arg(value_name = "NAME|ID")]
        target: String,
        /// Delete even though identities are bound to the CA.
        #[arg(long)]
        yes: bool,
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

fn read(path: &PathBuf) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|e| CliError::new(format!("{}: {e}", path.display())))
}

/// The fields `ca update` may change, as the API names them, and as the CLI prints them.
const UPDATABLE: [(&str, &str); 6] = [
    ("name", "name"),
    ("isAutoCaEnrollmentEnabled", "auto"),
    ("isOttCaEnrollmentEnabled", "ottca"),
    ("isAuthEnabled", "auth"),
    ("identityRoles", "role-attributes"),
    ("identityNameFormat", "name-format"),
];

/// One line per field that differs between the CA before and after an update:
/// `CA 'acme': auto false -> true`.
fn changed_fields(before: &Value, after: &Value) -> Vec<String> {
    let shown = |v: &Value| match v {
        Value::String(s) => format!("'{s}'"),
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => other.to_string(),
    };
    UPDATABLE
        .iter()
        .filter(|(key, _)| before.get(key) != after.get(key))
        .map(|(key, flag)| {
            format!(
                "CA '{}': {flag} {} -> {}",
                text(after, "name"),
                shown(before.get(key).unwrap_or(&Value::Null)),
                shown(after.get(key).unwrap_or(&Value::Null)),
            )
        })
        .collect()
}

/// What deleting the CA does to the identities bound to it (`GET /cas/{id}/bound-identities`),
/// or `None` when none are.
fn bound_notice(ca_name: &str, bound: &Value) -> Option<String> {
    let count = |k: &str| bound.get(k).and_then(Value::as_u64).unwrap_or(0);
    let names = |k: &str, total: u64| {
        let list: Vec<String> = bound
            .get(k)
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|i| text(i, "name")).collect())
            .unwrap_or_default();
        let more = total.saturating_sub(list.len() as u64);
        if more > 0 {
            format!("{} and {more} more", list.join(", "))
        } else {
            list.join(", ")
        }
    };
    let (enrolled, pending) = (count("enrolledCount"), count("pendingOttcaCount"));
    if enrolled == 0 && pending == 0 {
        return None;
    }
    let mut lines = vec![format!("CA '{ca_name}' has identities bound to it:")];
    if enrolled > 0 {
        lines.push(format!(
            "- {enrolled} enrolled through it ({}): they stay, but can no longer authenticate \
             through this CA (a device still authenticates if another registered CA with \
             auth enabled anchors its chain); delete them with 'enrollgate identity delete'",
            names("enrolled", enrolled)
        ));
    }
    if pending > 0 {
        lines.push(format!(
            "- {pending} waiting to enroll by ottca through it ({}): their tokens can no \
             longer be redeemed; delete them and create them again with another CA",
            names("pendingOttca", pending)
        ));
    }
    Some(lines.join("\n"))
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
            let changes = changed_fields(&ca, &updated);
            if changes.is_empty() {
                println!("CA '{}': nothing changed", text(&updated, "name"));
            }
            for line in changes {
                println!("{line}");
            }
            Ok(())
        }
        CaCommand::Delete {
            target,
            yes,
            admin_args,
        } => {
            let api = Admin::load(&admin_args)?;
            let ca = resolve(&api, &target)?;
            let id = text(&ca, "id");
            let bound = api.data("GET", &format!("/cas/{id}/bound-identities"), None)?;
            let notice = bound_notice(&text(&ca, "name"), &bound);
            if let Some(notice) = &notice {
                eprintln!("{notice}");
                if !yes {
                    return Err(CliError::new(format!(
                        "not deleted: run 'enrollgate ca delete {target} --yes' to delete it all the same"
                    )));
                }
            }
            api.call("DELETE", &format!("/cas/{id}"), None)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_prints_only_what_changed() {
        let before = json!({"name": "acme", "isAutoCaEnrollmentEnabled": true,
            "isAuthEnabled": true, "identityRoles": ["a"], "certPem": "PEM"});
        let after = json!({"name": "fleet", "isAutoCaEnrollmentEnabled": false,
            "isAuthEnabled": true, "identityRoles": ["a", "b"], "certPem": "PEM"});
        assert_eq!(
            changed_fields(&before, &after),
            vec![
                "CA 'fleet': name 'acme' -> 'fleet'",
                "CA 'fleet': auto true -> false",
                "CA 'fleet': role-attributes [a] -> [a,b]",
            ]
        );
        assert!(changed_fields(&after, &after).is_empty());
    }

    #[test]
    fn the_delete_notice_counts_and_names_the_bound_identities() {
        assert_eq!(
            bound_notice("x", &json!({"enrolledCount": 0, "pendingOttcaCount": 0})),
            None
        );
        let notice = bound_notice(
            "ops",
            &json!({"enrolledCount": 3, "enrolled": [{"name": "d1"}, {"name": "d2"}],
                    "pendingOttcaCount": 1, "pendingOttca": [{"name": "plc"}]}),
        )
        .unwrap();
        assert!(
            notice.starts_with("CA 'ops' has identities bound to it:"),
            "{notice}"
        );
        assert!(
            notice.contains("- 3 enrolled through it (d1, d2 and 1 more)"),
            "{notice}"
        );
        assert!(
            notice.contains("- 1 waiting to enroll by ottca through it (plc)"),
            "{notice}"
        );
    }
}
