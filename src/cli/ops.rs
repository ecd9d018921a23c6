//! `enrollgate check-config`, `fsck`, `backup`, `restore`.

use std::path::PathBuf;

use super::CliError;
use crate::config::Config;
use crate::ops::{backup, check, fsck};

/// `--config FILE`
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// Configuration file.
    #[arg(long)]
    pub config: PathBuf,
}

/// Arguments of `backup`.
#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    /// Configuration file (names the store).
    #[arg(long)]
    pub config: PathBuf,
    /// New directory for the copy.
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `restore`.
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// Configuration file (names the store to replace).
    #[arg(long)]
    pub config: PathBuf,
    /// The backup directory.
    #[arg(long)]
    pub from: PathBuf,
}

/// `check-config`: prints every problem with its key path; exit 1 if there is any.
pub fn check_config(a: ConfigArg) -> Result<(), CliError> {
    let problems = check::check_config(&a.config);
    if problems.is_empty() {
        println!("{}: ok", a.config.display());
        return Ok(());
    }
    for p in &problems {
        println!("{}: {p}", a.config.display());
    }
    Err(CliError::new(format!(
        "{} problem(s) in {}",
        problems.len(),
        a.config.display()
    )))
}

fn store_of(config: &std::path::Path) -> Result<PathBuf, CliError> {
    Ok(Config::load(config)?.store_path)
}

/// `fsck`: checks I1-I5 (also beside a running daemon); exit 1 on any violation.
pub fn fsck(a: ConfigArg) -> Result<(), CliError> {
    let records =
        backup::read_all(&store_of(&a.config)?).map_err(|e| CliError::new(e.to_string()))?;
    let report = fsck::check(records);
    println!(
        "{} identities, {} pending enrollments, {} bound certificates, {} CAs",
        report.identities, report.enrollments, report.certificates, report.cas
    );
    for n in &report.notes {
        println!("note: {n}");
    }
    for v in &report.violations {
        println!("{v}");
    }
    if report.violations.is_empty() {
        println!("no violations");
        Ok(())
    } else {
        Err(CliError::new(format!(
            "{} violation(s)",
            report.violations.len()
        )))
    }
}

/// `backup`.
pub fn backup(a: BackupArgs) -> Result<(), CliError> {
    let summary =
        backup::backup(&store_of(&a.config)?, &a.out).map_err(|e| CliError::new(e.to_string()))?;
    println!(
        "backed up {} records ({} identities) to {}",
        summary.records,
        summary.report.identities,
        a.out.display()
    );
    if !summary.report.violations.is_empty() {
        return Err(CliError::new(format!(
            "the copy was made, but the store has {} violation(s): run enrollgate fsck",
            summary.report.violations.len()
        )));
    }
    Ok(())
}

/// `restore`.
pub fn restore(a: RestoreArgs) -> Result<(), CliError> {
    let store = store_of(&a.config)?;
    let moved = backup::restore(&a.from, &store).map_err(|e| CliError::new(e.to_string()))?;
    match moved {
        Some(old) => println!(
            "restored {} into {} (the previous store is at {})",
            a.from.display(),
            store.display(),
            old.display()
        ),
        None => println!("restored {} into {}", a.from.display(), store.display()),
    }
    Ok(())
}
