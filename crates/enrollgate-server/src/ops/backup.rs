//! Online backups and restores of the store.
//!
//! `backup` runs beside a serving daemon: it opens the store as a RocksDB *secondary*
//! instance (made for reading while the primary writes; it takes no lock), catches up with
//! the primary's WAL, and copies one consistent snapshot of every record into a new store
//! at the destination, synced, then checks it with `fsck`. (A RocksDB checkpoint can only
//! be made by the process that holds the store open.) `restore` puts a backup in place of a
//! store that no daemon has open, keeping the old one beside it.

use std::path::{Path, PathBuf};

use super::fsck;

/// One stored key and its value.
pub use crate::store::Record;

/// A backup or restore failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BackupError(pub String);

/// What a backup holds.
#[derive(Debug, Clone)]
pub struct BackupSummary {
    /// Records copied.
    pub records: usize,
    /// Its fsck report.
    pub report: fsck::Report,
}

/// Every record of the store at `path`, read consistently beside a running daemon (a
/// RocksDB secondary instance: `store::rocks::read_all_beside`).
pub fn read_all(path: &Path) -> Result<Vec<Record>, BackupError> {
    if crate::store::rocks::absent(path) {
        return Err(BackupError(format!(
            "{} is not a store, nor a backup made by `enrollgate backup` (no RocksDB CURRENT \
             file in it)",
            path.display()
        )));
    }
    crate::store::rocks::read_all_beside(path).map_err(|e| BackupError(e.to_string()))
}

/// Copies the store at `store` to a new store at `out`, which must not exist or be an empty
/// directory (a mount point or a directory made for it beforehand).
pub fn backup(store: &Path, out: &Path) -> Result<BackupSummary, BackupError> {
    let existed = match std::fs::symlink_metadata(out) {
        Ok(meta) => {
            check_given_directory(out, &meta)?;
            let mut entries = std::fs::read_dir(out)
                .map_err(|e| BackupError(format!("{}: {e}", out.display())))?;
            if entries.next().is_some() {
                return Err(BackupError(format!(
                    "{} is not empty; choose a new or an empty directory",
                    out.display()
                )));
            }
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(BackupError(format!("{}: {e}", out.display()))),
    };
    let records = read_all(store)?;
    let report = fsck::check(records.clone());
    // The copy holds live tokens: private from the first byte, and gone if it fails.
    if existed {
        restrict(out)?;
    } else {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(out)
            .map_err(|e| BackupError(format!("{}: {e}", out.display())))?;
    }
    let result = write_copy(out, &records);
    if result.is_err() {
        if existed {
            // Leave the directory the operator made, empty as it was.
            if let Ok(entries) = std::fs::read_dir(out) {
                for entry in entries.flatten() {
                    let _ = std::fs::remove_dir_all(entry.path())
                        .or_else(|_| std::fs::remove_file(entry.path()));
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(out);
        }
    }
    result?;
    Ok(BackupSummary {
        records: records.len(),
        report,
    })
}

fn write_copy(out: &Path, records: &[Record]) -> Result<(), BackupError> {
    crate::store::rocks::write_new(out, records).map_err(|e| BackupError(e.to_string()))?;
    restrict(out)
}

/// An existing directory given for a backup must be one that only the user running the
/// backup controls: a directory, not a symbolic link, owned by this user and not writable by
/// group or others. Otherwise its owner (another user who made it in advance under /tmp,
/// say) could read the copy, or plant a link in it, once the store is written there.
fn check_given_directory(out: &Path, meta: &std::fs::Metadata) -> Result<(), BackupError> {
    use std::os::unix::fs::MetadataExt as _;
    let refuse = |why: &str| {
        Err(BackupError(format!(
            "{} {why}; choose a new directory, or an empty one of your own",
            out.display()
        )))
    };
    if meta.file_type().is_symlink() {
        return refuse("is a symbolic link");
    }
    if !meta.is_dir() {
        return refuse("is a file");
    }
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return refuse("belongs to another user");
    }
    if meta.mode() & 0o022 != 0 {
        return refuse("is writable by group or others");
    }
    Ok(())
}

/// Makes the backup directory private (mode 0700): it holds live tokens.
fn restrict(dir: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
        BackupError(format!(
            "{}: cannot make it private (mode 0700): {e}",
            dir.display()
        ))
    })
}

/// Puts the backup at `from` in place of the store at `store`. Refuses while a daemon has
/// the store open. The backup is copied (and synced) beside the store first, then renamed
/// into place, so the store path always holds either the old store or the whole backup.
/// Returns where the previous store was moved.
pub fn restore(from: &Path, store: &Path) -> Result<Option<PathBuf>, BackupError> {
    // The backup must be a store that passes fsck.
    let records = read_all(from)?;
    let report = fsck::check(records);
    if !report.violations.is_empty() {
        return Err(BackupError(format!(
            "{} fails fsck ({} violations); not restoring it",
            from.display(),
            report.violations.len()
        )));
    }
    // Copy first, beside the store, every file synced: a crash or a full disk during the
    // copy leaves the current store untouched and only a stray `.restoring-*` directory.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let base = store
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "store".into());
    let staging = unused(store.with_file_name(format!("{base}.restoring-{stamp}")));
    if let Err(e) = copy_dir(from, &staging) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(BackupError(format!("copying the backup: {e}")));
    }
    if let Err(e) = restrict(&staging) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    if let Err(e) = give_to_owner(&staging, store) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(BackupError(format!(
            "giving the restored store to its owner: {e}"
        )));
    }
    let swapped = swap_in(&staging, store, &base, stamp);
    if swapped.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    swapped
}

/// Moves the current store aside (if any) and renames `staging` into its place, then
/// syncs the parent directory so both renames survive a crash.
fn swap_in(
    staging: &Path,
    store: &Path,
    base: &str,
    stamp: u64,
) -> Result<Option<PathBuf>, BackupError> {
    let mut moved = None;
    // Held until the old store is aside: no gateway can open it meanwhile.
    let _lock;
    if store.exists() {
        _lock = take_lock(store)?;
        let aside = unused(store.with_file_name(format!("{base}.before-restore-{stamp}")));
        std::fs::rename(store, &aside)
            .map_err(|e| BackupError(format!("moving the old store aside: {e}")))?;
        moved = Some(aside);
    }
    std::fs::rename(staging, store)
        .map_err(|e| BackupError(format!("moving the restored store into place: {e}")))?;
    if let Some(parent) = store.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| BackupError(format!("syncing {}: {e}", parent.display())))?;
    }
    Ok(moved)
}

/// Run as root (the usual way to run a restore) for a store that belongs to the service
/// user, the copy would be root's, and the gateway could not open it: the copy is given
/// the owner of the store it replaces (or, with none, of the directory it goes in).
fn give_to_owner(copy: &Path, store: &Path) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    use std::os::unix::fs::MetadataExt as _;
    let me = rustix::process::geteuid();
    if !me.is_root() {
        return Ok(());
    }
    let owner = match std::fs::metadata(store) {
        Ok(m) => m,
        Err(_) => match store.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) => std::fs::metadata(parent)?,
            None => return Ok(()),
        },
    };
    let (uid, gid) = (
        rustix::fs::Uid::from_raw(owner.uid()),
        rustix::fs::Gid::from_raw(owner.gid()),
    );
    let dir = rustix::fs::open(
        copy,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // The copy this process just made, still its own: nobody else could have put
    // anything in it.
    if rustix::fs::fstat(&dir)?.st_uid != me.as_raw() {
        return Err(std::io::Error::other(
            "the restored copy changed owner before it was handed over",
        ));
    }
    chown_tree(&dir, uid, gid)
}

/// Gives everything under the directory `dir`, then `dir` itself, to `uid`:`gid`, through
/// descriptors and never following a symbolic link. The copy sits in the store's parent,
/// which the new owner can write: a path walk could be sent elsewhere by a name swapped
/// meanwhile (a directory replaced with a link to `/etc`), a descriptor cannot. Each
/// directory is handed over only after its content, so none is the new owner's while it
/// is walked.
fn chown_tree(
    dir: &rustix::fd::OwnedFd,
    uid: rustix::fs::Uid,
    gid: rustix::fs::Gid,
) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let is_dir = match entry.file_type() {
            FileType::Directory => true,
            FileType::Unknown => {
                let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
                FileType::from_raw_mode(st.st_mode) == FileType::Directory
            }
            _ => false,
        };
        if is_dir {
            let sub = rustix::fs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            chown_tree(&sub, uid, gid)?;
        } else {
            rustix::fs::chownat(dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)?;
        }
    }
    Ok(rustix::fs::fchown(dir, Some(uid), Some(gid))?)
}

/// `path`, or `path-2`, `path-3`, ... if it is taken (two restores within a second).
fn unused(path: PathBuf) -> PathBuf {
    let mut candidate = path.clone();
    let mut n = 1;
    while candidate.exists() {
        n += 1;
        let mut name = path.clone().into_os_string();
        name.push(format!("-{n}"));
        candidate = PathBuf::from(name);
    }
    candidate
}

/// Takes the lock RocksDB takes on `store/LOCK` (a POSIX record lock), without opening the
/// store: it fails while a gateway serves the store, and a store too damaged to open
/// (which is what a restore is for) can still be replaced.
fn take_lock(store: &Path) -> Result<Option<std::fs::File>, BackupError> {
    let path = store.join("LOCK");
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(BackupError(format!("{}: {e}", path.display()))),
    };
    match rustix::fs::fcntl_lock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(file)),
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::ACCESS) => Err(BackupError(format!(
            "the store at {} is in use (is enrollgate serving it? stop it first)",
            store.display()
        ))),
        Err(e) => Err(BackupError(format!("locking {}: {e}", path.display()))),
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), &target)?;
            std::fs::File::open(&target)?.sync_all()?;
        }
    }
    std::fs::File::open(to)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn a_restored_copy_goes_to_the_owner_of_the_store_it_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let (store, copy) = (dir.path().join("store"), dir.path().join("copy"));
        std::fs::create_dir_all(copy.join("sub")).unwrap();
        std::fs::write(copy.join("sub").join("000001.sst"), b"x").unwrap();
        std::fs::create_dir(&store).unwrap();
        let me = std::fs::metadata(&copy).unwrap().uid();
        if rustix::process::geteuid().is_root() {
            // The service user's store (nobody's, here).
            std::os::unix::fs::chown(&store, Some(65534), Some(65534)).unwrap();
            give_to_owner(&copy, &store).unwrap();
            for p in [
                copy.clone(),
                copy.join("sub"),
                copy.join("sub").join("000001.sst"),
            ] {
                let m = std::fs::metadata(&p).unwrap();
                assert_eq!((m.uid(), m.gid()), (65534, 65534), "{}", p.display());
            }
        } else {
            // Not root: nothing to give, and nothing changes.
            give_to_owner(&copy, &store).unwrap();
            assert_eq!(std::fs::metadata(copy.join("sub")).unwrap().uid(), me);
        }
    }
}
