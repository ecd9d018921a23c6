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
    let config = Config::load(config)?;
    if let Some(url) = &config.store_url {
        return Err(CliError::new(format!(
            "the store is the PostgreSQL database {url}: back it up and restore it with the \
             database's own tools (pg_dump and pg_restore, or a base backup with WAL \
             archiving), then run `enrollgate fsck` (docs/scale-out.md)"
        )));
    }
    Ok(config.store_path)
}

/// Every record of the store `config` names, as of one moment.
fn records_of(config: &std::path::Path) -> Result<Vec<backup::Record>, CliError> {
    let config = Config::load(config)?;
    match &config.store_url {
        None => backup::read_all(&config.store_path).map_err(|e| CliError::new(e.to_string())),
        Some(_) => {
            let store = crate::daemon::open_store(&config, false)?;
            let pg = store
                .postgres()
                .ok_or_else(|| CliError::new("the store is not a PostgreSQL database"))?;
            pg.read_all().map_err(|e| CliError::new(e.to_string()))
        }
    }
}

/// Arguments of `migrate`.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    /// Configuration file (names the RocksDB store to copy, and the PKI).
    #[arg(long)]
    pub config: PathBuf,
    /// The PostgreSQL database to copy it into: it must hold no enrollgate store. The
    /// password: in the URL, or in $ENROLLGATE_STORE_PASSWORD.
    #[arg(long, value_name = "URL")]
    pub to: String,
}

/// Records per commit when migrating.
const MIGRATE_CHUNK: usize = 1000;

/// `migrate`: copies the RocksDB store into an empty PostgreSQL database (the daemon
/// stopped: RocksDB's lock says so), checks both, and says what to change.
pub fn migrate(a: MigrateArgs) -> Result<(), CliError> {
    let config = Config::load(&a.config)?;
    if config.store_url.is_some() {
        return Err(CliError::new(
            "the configuration's store is already a database (store.url): migrate copies a \
             RocksDB store (store.path)",
        ));
    }
    // Opened, not read as a secondary: a running daemon holds the lock and is refused.
    let rocks = crate::store::Store::open(&config.store_path, false).map_err(|e| {
        CliError::new(format!(
            "cannot open the store at {}: {e} (stop the daemon first)",
            config.store_path.display()
        ))
    })?;
    drop(rocks);
    let records = backup::read_all(&config.store_path).map_err(|e| CliError::new(e.to_string()))?;
    let before = fsck::check(records.clone());
    if !before.violations.is_empty() {
        return Err(CliError::new(format!(
            "the RocksDB store has {} violation(s): run enrollgate fsck, and migrate a \
             sound store (nothing was copied)",
            before.violations.len()
        )));
    }
    let password = std::env::var(crate::store::pg::url::PASSWORD_ENV).ok();
    let url = crate::store::pg::StoreUrl::parse(&a.to, password)
        .map_err(|e| CliError::new(format!("--to: {e}")))?;
    let mut target = config.clone();
    target.store_url = Some(url.clone());
    let store = crate::daemon::open_store(&target, true)?;
    let pg = store
        .postgres()
        .ok_or_else(|| CliError::new("the target is not a PostgreSQL database"))?;
    pg.load(&records, MIGRATE_CHUNK)
        .map_err(|e| CliError::new(format!("copying into {url}: {e}")))?;
    let after = fsck::check(pg.read_all().map_err(|e| CliError::new(e.to_string()))?);
    if !after.violations.is_empty() || after.identities != before.identities {
        return Err(CliError::new(format!(
            "the copy in {url} does not check out ({} violation(s), {} of {} identities): \
             drop the database's enrollgate tables before trying again",
            after.violations.len(),
            after.identities,
            before.identities
        )));
    }
    println!(
        "copied {} records ({} identities, {} pending enrollments, {} CAs) into {url}; both \
         pass fsck. Set store.url in {} (and remove store.path), then start the gateway.",
        records.len(),
        after.identities,
        after.enrollments,
        after.cas,
        a.config.display()
    );
    Ok(())
}

/// `fsck`: checks I1-I5 (also beside a running daemon); exit 1 on any violation.
pub fn fsck(a: ConfigArg) -> Result<(), CliError> {
    let records = records_of(&a.config)?;
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
