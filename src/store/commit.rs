//! Group commit: one thread owns every write to the store.
//!
//! Workers submit [`Command`]s through a bounded queue and await the reply. The committer
//! takes the first waiting command, then whatever else is already queued (up to
//! `max_batch`), decides them all in one [`Batch`], writes the batch as one RocksDB
//! `WriteBatch` (synced unless durability is relaxed), and only then replies. So whatever
//! queued while the previous write was syncing shares the next fsync: a surge costs one
//! fsync per batch, not per enrollment, with no timer and no added latency when idle.
//!
//! ```text
//!  worker 0 ──┐                                  ┌── reply (after fsync)
//!  worker 1 ──┼─ bounded queue ─▶ committer ─▶ WriteBatch ─▶ WAL fsync
//!  worker N ──┘   (full: 429)      decide all      one write
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::apply::{Batch, Command, Outcome, SuffixHints};
use super::{Store, StoreError};

/// Whether a reply waits for the WAL to reach the disk (I4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync the WAL before replying (default).
    Sync,
    /// Reply once RocksDB has the write in its WAL buffer; a power loss may lose the last
    /// moments of enrollments (the operator's explicit choice).
    Relaxed,
}

/// Tuning of the committer.
#[derive(Debug, Clone, Copy)]
pub struct CommitOptions {
    /// fsync or not.
    pub durability: Durability,
    /// Commands waiting at most; beyond, submitters get [`StoreError::Busy`].
    pub queue_capacity: usize,
    /// Commands in one write at most.
    pub max_batch: usize,
}

impl Default for CommitOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Sync,
            queue_capacity: 4096,
            max_batch: 1024,
        }
    }
}

type Reply = flume::Sender<Result<Outcome, StoreError>>;

struct Job {
    cmd: Command,
    reply: Reply,
}

/// Submits commands to the committer. Cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct CommitHandle {
    tx: flume::Sender<Job>,
}

impl std::fmt::Debug for CommitHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitHandle")
            .field("queued", &self.tx.len())
            .finish()
    }
}

impl CommitHandle {
    fn enqueue(
        &self,
        cmd: Command,
    ) -> Result<flume::Receiver<Result<Outcome, StoreError>>, StoreError> {
        let (reply, rx) = flume::bounded(1);
        self.tx.try_send(Job { cmd, reply }).map_err(|e| match e {
            flume::TrySendError::Full(_) => StoreError::Busy,
            flume::TrySendError::Disconnected(_) => StoreError::ShuttingDown,
        })?;
        Ok(rx)
    }

    /// Submits `cmd` and waits (asynchronously) until it is decided and durable.
    pub async fn submit(&self, cmd: Command) -> Result<Outcome, StoreError> {
        let rx = self.enqueue(cmd)?;
        rx.recv_async()
            .await
            .map_err(|_| StoreError::ShuttingDown)?
    }

    /// Submits `cmd` and blocks the calling thread until it is decided and durable.
    pub fn submit_blocking(&self, cmd: Command) -> Result<Outcome, StoreError> {
        let rx = self.enqueue(cmd)?;
        rx.recv().map_err(|_| StoreError::ShuttingDown)?
    }

    /// Commands waiting now.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }
}

/// The committer thread.
#[derive(Debug)]
pub struct Committer {
    join: JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

impl Committer {
    /// Stops the committer once what is queued now is committed, waiting at most `limit`.
    /// Returns false if it did not stop in time (the process is exiting anyway; every
    /// acknowledged write is already durable).
    pub fn stop(self, limit: Duration) -> bool {
        self.stop.store(true, Ordering::Release);
        let deadline = Instant::now() + limit;
        while !self.join.is_finished() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.join.join().is_ok()
    }
}

/// How often an idle committer looks at its stop flag.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// How often an idle committer whose store refused a write tries a write that changes
/// nothing.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// A write that leaves nothing behind (a key put and deleted in one batch), to learn
/// whether the store accepts writes again.
fn probe(store: &Store, write_opts: &rocksdb::WriteOptions) -> bool {
    let mut wb = rocksdb::WriteBatch::default();
    wb.put(PROBE_KEY, b"");
    wb.delete(PROBE_KEY);
    store.db().write_opt(wb, write_opts).is_ok()
}

/// The key [`probe`] writes and deletes at once.
const PROBE_KEY: &[u8] = b"m:probe";

/// Records the outcome of a write for readiness (`/readyz`) and the watchdog, and says so
/// in the log when it changes.
fn written(ok: bool) {
    let was_refusing = crate::telemetry::store_refusing_for().is_some();
    let Some(refusing) = change(was_refusing, ok) else {
        return;
    };
    if !refusing {
        tracing::warn!("the store accepts writes again");
    } else {
        tracing::error!(
            "the store refuses writes; /readyz answers 503. RocksDB stops writing after an I/O \
             error (a full disk, a failing device) until it is reopened: once the cause is \
             fixed, restart enrollgate (under systemd, the watchdog restarts it after {} s)",
            crate::telemetry::STORE_REFUSING_LIMIT.as_secs()
        );
    }
    crate::telemetry::set_store_refusing(refusing);
}

/// The store's new state after a write, if it changes: refusing after a failure, accepting
/// after a success.
fn change(was_refusing: bool, ok: bool) -> Option<bool> {
    (ok == was_refusing).then_some(!ok)
}

/// Starts the committer thread. It runs until [`Committer::stop`] (or until every
/// [`CommitHandle`] is dropped), committing what is queued before it returns.
pub fn spawn(store: Store, opts: CommitOptions) -> std::io::Result<(CommitHandle, Committer)> {
    let (tx, rx) = flume::bounded::<Job>(opts.queue_capacity.max(1));
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let join = std::thread::Builder::new()
        .name("enrollgate-commit".into())
        .spawn(move || run(store, opts, rx, &flag))?;
    Ok((CommitHandle { tx }, Committer { join, stop }))
}

fn run(store: Store, opts: CommitOptions, rx: flume::Receiver<Job>, stop: &AtomicBool) {
    let durable = opts.durability == Durability::Sync;
    let mut write_opts = rocksdb::WriteOptions::default();
    write_opts.set_sync(durable);
    let max_batch = opts.max_batch.max(1);
    let mut jobs: Vec<Job> = Vec::with_capacity(max_batch);
    let mut hints = SuffixHints::new();
    let mut probed = Instant::now();
    loop {
        let first = match rx.recv_timeout(IDLE_POLL) {
            Ok(job) => job,
            Err(flume::RecvTimeoutError::Timeout) if stop.load(Ordering::Acquire) => break,
            Err(flume::RecvTimeoutError::Timeout) => {
                // Refusing writes, with none to try: see, once a second, whether it would
                // take one now, so that readiness follows the store and not the traffic.
                if crate::telemetry::store_refusing_for().is_some()
                    && probed.elapsed() >= PROBE_EVERY
                {
                    probed = Instant::now();
                    written(probe(&store, &write_opts));
                }
                continue;
            }
            Err(flume::RecvTimeoutError::Disconnected) => break,
        };
        jobs.push(first);
        if durable {
            // Woken by the first submitter, this thread may have taken the CPU from a
            // worker that was about to submit more (they share cores): let it finish
            // before taking the batch, so that one fsync covers them all. Not a sleep:
            // with nobody else runnable on this CPU it returns at once. Without an fsync
            // to share, the extra switch costs more than it saves (measured), so relaxed
            // durability skips it.
            std::thread::yield_now();
        }
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let queued = rx.len();
        commit_group(&store, &write_opts, &mut jobs, &mut hints, queued);
    }
    tracing::debug!("committer stopped: no more submitters");
}

fn commit_group(
    store: &Store,
    write_opts: &rocksdb::WriteOptions,
    jobs: &mut Vec<Job>,
    hints: &mut SuffixHints,
    queued: usize,
) {
    let db = store.db();
    let mut batch = Batch::with_hints(db, hints);
    let mut results: Vec<(Reply, Result<Outcome, StoreError>)> = Vec::with_capacity(jobs.len());
    for job in jobs.drain(..) {
        let result = batch.apply(job.cmd);
        results.push((job.reply, result));
    }
    let n = results.len();
    let started = Instant::now();
    if !batch.is_empty() {
        let wb = batch.into_write_batch();
        let outcome = db.write_opt(wb, write_opts);
        crate::telemetry::commit(n, started.elapsed(), queued);
        let refusing = crate::telemetry::store_refusing_for().is_some();
        written(outcome.is_ok());
        if let Err(e) = outcome {
            let err = StoreError::from(e);
            // Once the store refuses writes, each request's own line says so: one line per
            // refused batch as well would double a flood.
            if refusing {
                tracing::debug!(error = %err, commands = n, "store write failed; the batch is refused");
            } else {
                tracing::error!(error = %err, commands = n, "store write failed; the batch is refused");
            }
            // The hints may describe names that were never written.
            hints.clear();
            // Every command was decided against writes that never happened: all get the
            // store error (a refusal decided in the batch may not hold against the store).
            for (reply, _) in results {
                let _ = reply.send(Err(err.clone()));
            }
            return;
        }
    }
    tracing::trace!(commands = n, "group committed");
    for (reply, result) in results {
        // The requester may have gone away (connection closed); the write stands.
        let _ = reply.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Identity, IdentityType};

    #[test]
    fn a_refused_write_marks_the_store_refusing_until_one_succeeds() {
        // The transitions (the state itself is the process's, shared with the other tests).
        assert_eq!(change(false, false), Some(true));
        assert_eq!(change(true, false), None);
        assert_eq!(change(true, true), Some(false));
        assert_eq!(change(false, true), None);
        // A probe is a write that succeeds on a healthy store and leaves nothing behind.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), true).unwrap();
        assert!(probe(&store, &rocksdb::WriteOptions::default()));
        assert_eq!(store.db().get(PROBE_KEY).unwrap(), None);
    }

    #[test]
    fn stop_ends_an_idle_committer_even_with_handles_alive() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), true).unwrap();
        let (handle, committer) = spawn(store, CommitOptions::default()).unwrap();
        assert!(committer.stop(Duration::from_secs(5)));
        assert_eq!(
            handle
                .submit_blocking(Command::DeleteIdentity {
                    id: "x".into(),
                    now: 0
                })
                .unwrap_err(),
            StoreError::ShuttingDown
        );
    }

    fn identity(i: usize, name: &str) -> Identity {
        Identity {
            id: format!("id{i}"),
            name: name.into(),
            kind: IdentityType::Service,
            is_admin: false,
            role_attributes: vec![],
            created_at: 0,
            updated_at: 0,
            enrollment_id: None,
            lifecycle: Default::default(),
            authenticator: None,
        }
    }

    #[test]
    fn concurrent_submitters_get_exactly_one_winner_per_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), true).unwrap();
        let (handle, join) = spawn(store.clone(), CommitOptions::default()).unwrap();
        let threads: Vec<_> = (0..64)
            .map(|i| {
                let h = handle.clone();
                std::thread::spawn(move || {
                    h.submit_blocking(Command::CreateIdentity {
                        identity: identity(i, "contended"),
                        enrollment: None,
                    })
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let wins = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1);
        assert!(results
            .iter()
            .filter(|r| r.is_err())
            .all(|r| matches!(r, Err(StoreError::NameInUse(_)))));
        drop(handle);
        assert!(join.stop(Duration::from_secs(5)));
        let page = store.list_identities(0, 100, &|_| true).unwrap();
        assert_eq!(page.total, 1);
    }

    #[test]
    fn a_full_queue_answers_busy() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), true).unwrap();
        // A queue nobody drains: build the handle without a committer thread.
        let (tx, _rx) = flume::bounded::<Job>(1);
        let handle = CommitHandle { tx };
        let cmd = || Command::DeleteIdentity {
            id: "x".into(),
            now: 0,
        };
        let _first = handle.enqueue(cmd()).unwrap();
        assert_eq!(handle.enqueue(cmd()).unwrap_err(), StoreError::Busy);
        drop(store);
    }

    #[test]
    fn writes_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let store = Store::open(&path, true).unwrap();
            let (handle, join) = spawn(store, CommitOptions::default()).unwrap();
            handle
                .submit_blocking(Command::CreateIdentity {
                    identity: identity(1, "kept"),
                    enrollment: None,
                })
                .unwrap();
            drop(handle);
            assert!(join.stop(Duration::from_secs(5)));
        }
        let store = Store::open(&path, false).unwrap();
        assert_eq!(store.identity_by_name("kept").unwrap().unwrap().id, "id1");
    }
}
