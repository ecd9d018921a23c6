//! `enrollgate console login-url`: a one-time link that opens a console session in a
//! browser, asked for with the admin identity file (docs/console.md).

use serde_json::json;

use super::admin::Admin;
use super::{AdminArgs, CliError};

/// `console` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ConsoleCommand {
    /// Print a one-time link that signs a browser in to the console as this admin.
    LoginUrl {
        /// How long the link can be used (at most 15m); it works once.
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
        valid_for: std::time::Duration,
        #[command(flatten)]
        #[allow(missing_docs)]
        admin_args: AdminArgs,
    },
}

/// Runs a `console` subcommand.
pub fn run(cmd: ConsoleCommand) -> Result<(), CliError> {
    match cmd {
        ConsoleCommand::LoginUrl {
            valid_for,
            admin_args,
        } => {
            let secs = valid_for.as_secs();
            if !(1..=900).contains(&secs) {
                return Err(CliError::new(
                    "--valid-for must be from 1s to 15m: the link is a password until used",
                ));
            }
            let api = Admin::load(&admin_args)?;
            let data = api.data(
                "POST",
                "/console/login-links",
                Some(&json!({ "ttlSeconds": secs })),
            )?;
            let path = data
                .get("path")
                .and_then(|v| v.as_str())
                .ok_or_else(|| CliError::new("the gateway's answer has no login path"))?;
            let expires = data
                .get("expiresAt")
                .and_then(|v| v.as_str())
                .unwrap_or("soon");
            // The link on stdout (for a script or a copy), what it is on stderr.
            println!("{}{path}", api.origin());
            eprintln!("open it in a browser before {expires}; it signs in once");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn login_url_takes_a_lifetime_and_the_admin_file() {
        let cli = crate::cli::Cli::try_parse_from([
            "enrollgate",
            "console",
            "login-url",
            "--valid-for",
            "30s",
            "--identity",
            "admin.json",
        ])
        .unwrap();
        match cli.command {
            crate::cli::Command::Console(ConsoleCommand::LoginUrl {
                valid_for,
                admin_args,
            }) => {
                assert_eq!(valid_for, std::time::Duration::from_secs(30));
                assert_eq!(
                    admin_args.identity.unwrap(),
                    std::path::PathBuf::from("admin.json")
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
