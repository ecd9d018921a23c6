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
use super::backend::{Backend, CommitError, Prefetched, Source};
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
            flume::TrySendError::Full(_) => {
                crate::metrics::rate_limited("commit_queue");
                StoreError::Busy
            }
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

/// How often an idle committer whose store refused a write asks it whether it takes
/// writes again.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Times a batch is read and decided again after a conflict (another gateway wrote what
/// it read) before its commands are committed one by one.
pub const BATCH_RETRIES: usize = 3;

/// Times one command alone is read and decided again after conflicts before it is
/// answered busy (retry shortly): a record so contended that it keeps changing under it.
pub const COMMAND_RETRIES: usize = 8;

/// How long a batch may take deciding again after conflicts; past it, the commands not yet
/// committed are answered busy (retry shortly), so that one contended batch cannot keep
/// the committer from the next.
pub const RETRY_BUDGET: Duration = Duration::from_secs(5);

/// A pause before deciding again after a conflict, `attempt` (from 1) times a millisecond
/// and a random part of one, so that nodes that collided do not collide again in step.
fn back_off(attempt: usize) {
    let mut jitter = [0u8; 1];
    let _ = crate::ids::fill_random(&mut jitter);
    let micros = attempt.min(20) as u64 * 1000 + u64::from(jitter[0]) * 4;
    std::thread::sleep(Duration::from_micros(micros));
}

/// Records the outcome of a write for readiness (`/readyz`) and the watchdog, and says so
/// in the log when it changes.
fn written(ok: bool, kind: &str) {
    let was_refusing = crate::refusing::store_refusing_for().is_some();
    let Some(refusing) = change(was_refusing, ok) else {
        return;
    };
    if !refusing {
        tracing::warn!("the store accepts writes again");
    } else if kind == "rocksdb" {
        tracing::error!(
            "the store refuses writes; /readyz answers 503. RocksDB stops writing after an I/O \
             error (a full disk, a failing device) until it is reopened: once the cause is \
             fixed, restart enrollgate (under systemd, the watchdog restarts it after {} s)",
            crate::refusing::STORE_REFUSING_LIMIT.as_secs()
        );
    } else {
        tracing::error!(
            backend = kind,
            "the store refuses writes; /readyz answers 503 and enrollments 503 until the \
             database takes writes again (the gateway reconnects by itself)"
        );
    }
    crate::refusing::set_store_refusing(refusing);
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
        .spawn(move || run(store.backend().clone(), opts, rx, &flag))?;
    Ok((CommitHandle { tx }, Committer { join, stop }))
}

fn run(
    backend: Arc<dyn Backend>,
    opts: CommitOptions,
    rx: flume::Receiver<Job>,
    stop: &AtomicBool,
) {
    let durable = opts.durability == Durability::Sync;
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
                // A shared database can go away while nothing is written: asked too.
                if (crate::refusing::store_refusing_for().is_some() || backend.shared())
                    && probed.elapsed() >= PROBE_EVERY
                {
                    probed = Instant::now();
                    written(backend.probe(), backend.kind());
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
        commit_group(&*backend, durable, &mut jobs, &mut hints, queued);
    }
    tracing::debug!("committer stopped: no more submitters");
}

/// One attempt at committing `cmds` as one write set.
enum Attempt {
    /// Committed (or nothing to write): each command's outcome.
    Done(Vec<Result<Outcome, StoreError>>),
    /// Another writer changed what the decisions read: nothing was written.
    Conflict,
    /// Nothing was written, or what was is unknown (never acknowledged).
    Failed(StoreError),
}

fn attempt(
    backend: &dyn Backend,
    durable: bool,
    hints: &mut SuffixHints,
    cmds: impl Iterator<Item = Command>,
) -> Attempt {
    if backend.shared() {
        // Each read is a round trip: what the commands will surely read, in one.
        let cmds: Vec<Command> = cmds.collect();
        let reads = cmds.iter().flat_map(Command::reads).collect();
        let source = match Prefetched::read(backend, reads) {
            Ok(source) => source,
            Err(e) => {
                written(false, backend.kind());
                return Attempt::Failed(e);
            }
        };
        return decide_and_commit(backend, &source, durable, hints, cmds.into_iter());
    }
    decide_and_commit(backend, backend, durable, hints, cmds)
}

fn decide_and_commit<S: Source + ?Sized>(
    backend: &dyn Backend,
    source: &S,
    durable: bool,
    hints: &mut SuffixHints,
    cmds: impl Iterator<Item = Command>,
) -> Attempt {
    let mut batch = Batch::with_hints(source, hints);
    let results: Vec<_> = cmds.map(|cmd| batch.apply(cmd)).collect();
    if batch.is_empty() {
        return Attempt::Done(results);
    }
    let set = match batch.into_write_set() {
        Ok(set) => set,
        Err(e) => return Attempt::Failed(e),
    };
    let outcome = backend.commit(&set, durable);
    written(
        !matches!(
            outcome,
            Err(CommitError::Failed(_) | CommitError::Unknown(_))
        ),
        backend.kind(),
    );
    match outcome {
        Ok(()) => Attempt::Done(results),
        Err(e) => {
            // The hints may describe names that were never written.
            hints.clear();
            match e {
                CommitError::Conflict(keys) => {
                    crate::metrics::commit_conflict();
                    tracing::debug!(keys = keys.len(), "commit conflict; deciding again");
                    Attempt::Conflict
                }
                other => Attempt::Failed(other.into()),
            }
        }
    }
}

/// Commits `cmds` one by one, each decided again after a conflict up to
/// [`COMMAND_RETRIES`] times.
fn one_by_one(
    backend: &dyn Backend,
    durable: bool,
    hints: &mut SuffixHints,
    cmds: Vec<Command>,
) -> Vec<Result<Outcome, StoreError>> {
    let deadline = Instant::now() + RETRY_BUDGET;
    cmds.into_iter()
        .map(|cmd| {
            for tries in 0..=COMMAND_RETRIES {
                if Instant::now() >= deadline {
                    break;
                }
                if tries > 0 {
                    back_off(tries);
                }
                match attempt(backend, durable, hints, std::iter::once(cmd.clone())) {
                    Attempt::Done(mut r) => return r.pop().unwrap_or(Err(StoreError::Busy)),
                    Attempt::Conflict => continue,
                    Attempt::Failed(e) => return Err(e),
                }
            }
            Err(StoreError::Busy)
        })
        .collect()
}

fn commit_group(
    backend: &dyn Backend,
    durable: bool,
    jobs: &mut Vec<Job>,
    hints: &mut SuffixHints,
    queued: usize,
) {
    let n = jobs.len();
    let started = Instant::now();
    let was_refusing = crate::refusing::store_refusing_for().is_some();
    let trips_before = backend.round_trips();
    let (cmds, replies): (Vec<Command>, Vec<Reply>) =
        jobs.drain(..).map(|job| (job.cmd, job.reply)).unzip();
    let results = if backend.shared() {
        // Others write too: keep the commands to decide them again after a conflict.
        let mut retries = 0;
        loop {
            match attempt(backend, durable, hints, cmds.iter().cloned()) {
                Attempt::Done(results) => break Ok(results),
                Attempt::Conflict if retries < BATCH_RETRIES => {
                    retries += 1;
                    back_off(retries);
                }
                Attempt::Conflict => break Ok(one_by_one(backend, durable, hints, cmds)),
                Attempt::Failed(e) => break Err(e),
            }
        }
    } else {
        // The only writer: every expectation holds, one attempt.
        match attempt(backend, durable, hints, cmds.into_iter()) {
            Attempt::Done(results) => Ok(results),
            Attempt::Conflict => Err(StoreError::Busy),
            Attempt::Failed(e) => Err(e),
        }
    };
    let round_trips = backend
        .shared()
        .then(|| backend.round_trips() - trips_before);
    crate::metrics::commit(n, started.elapsed(), queued, round_trips);
    match results {
        Ok(results) => {
            tracing::trace!(commands = n, "group committed");
            for (reply, result) in replies.into_iter().zip(results) {
                // The requester may have gone away (connection closed); the write stands.
                let _ = reply.send(result);
            }
        }
        Err(err) => {
            // Once the store refuses writes, each request's own line says so: one line per
            // refused batch as well would double a flood.
            if was_refusing {
                tracing::debug!(error = %err, commands = n, "store write failed; the batch is refused");
            } else {
                tracing::error!(error = %err, commands = n, "store write failed; the batch is refused");
            }
            // Every command was decided against writes that never happened: all get the
            // store error (a refusal decided in the batch may not hold against the store).
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
        }
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
        assert!(store.backend().probe());
        assert_eq!(store.get(crate::rocks::PROBE_KEY).unwrap(), None);
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

    fn on_memory() -> (Arc<crate::memory::Memory>, Store, CommitHandle, Committer) {
        let memory = Arc::new(crate::memory::Memory::new());
        let store = Store::on(memory.clone());
        let (handle, committer) = spawn(store.clone(), CommitOptions::default()).unwrap();
        (memory, store, handle, committer)
    }

    fn create(i: usize, name: &str) -> Command {
        Command::CreateIdentity {
            identity: identity(i, name),
            enrollment: None,
        }
    }

    #[test]
    fn a_batch_another_writer_overtook_is_decided_again() {
        use crate::memory::Fault;
        let (memory, store, handle, committer) = on_memory();
        // Another gateway takes the name between this batch's read and its commit.
        memory.inject(Fault::Behind(
            crate::keys::name("contended"),
            Some(b"elsewhere".to_vec()),
        ));
        assert_eq!(
            handle.submit_blocking(create(1, "contended")).unwrap_err(),
            StoreError::NameInUse("contended".into())
        );
        assert_eq!(store.identity("id1").unwrap(), None, "nothing half-made");
        // Decided again on what the other writer left, the next name is free.
        handle.submit_blocking(create(2, "free")).unwrap();
        assert_eq!(store.identity_by_name("free").unwrap().unwrap().id, "id2");
        assert!(committer.stop(Duration::from_secs(5)));
    }

    #[test]
    fn a_command_that_keeps_conflicting_is_answered_busy_and_writes_nothing() {
        use crate::memory::Fault;
        let (memory, store, handle, committer) = on_memory();
        for _ in 0..(BATCH_RETRIES + 1 + COMMAND_RETRIES + 1) {
            memory.inject(Fault::Conflict);
        }
        assert_eq!(
            handle.submit_blocking(create(1, "hot")).unwrap_err(),
            StoreError::Busy
        );
        assert_eq!(store.identity_by_name("hot").unwrap(), None);
        // One conflict fewer, and it would have gone through: the next one does.
        handle.submit_blocking(create(2, "hot")).unwrap();
        assert!(committer.stop(Duration::from_secs(5)));
    }

    #[test]
    fn a_commit_of_unknown_outcome_is_never_acknowledged() {
        use crate::memory::Fault;
        let (memory, _store, handle, committer) = on_memory();
        for landed in [true, false] {
            memory.inject(Fault::Unknown { landed });
            let name = format!("maybe-{landed}");
            let err = handle
                .submit_blocking(create(usize::from(landed), &name))
                .unwrap_err();
            assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        }
        memory.inject(Fault::Fail);
        assert!(matches!(
            handle.submit_blocking(create(9, "down")).unwrap_err(),
            StoreError::Unavailable(_)
        ));
        assert!(committer.stop(Duration::from_secs(5)));
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
