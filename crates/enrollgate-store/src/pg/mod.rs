//! The PostgreSQL backend: several gateways on one database.
//!
//! The records are the embedded store's, one row each in `enrollgate_kv` (key, value,
//! version). A batch's reads are plain `SELECT`s; its write set is one call of
//! `enrollgate_commit` (see [`schema`]), which locks what the decisions read, checks it,
//! and writes, in one transaction and one round trip. Another node's commit in between is
//! a conflict, and the committer decides the batch again.
//!
//! Connections: one for the committer, a few for reads (the workers' reads run on the
//! store's reader threads, never on a worker). A connection that fails is dropped and made
//! again on next use, at most once per backoff step; meanwhile every operation fails at
//! once with [`StoreError::Unavailable`] (a `503` with `Retry-After`), never a hang.
//!
//! A commit whose connection drops before its answer has an unknown outcome: the backend
//! reconnects and looks its id up in `enrollgate_commits` before saying anything; found, it
//! landed; not found, it did not (and the committer decides the batch again). Only when
//! the database stays away does the committer get [`CommitError::Unknown`], and the device
//! is told to retry without the write being acknowledged.

mod conn;
pub mod schema;
pub mod url;

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::Client;

use conn::{connection_lost, lock, round_trip, store_error, Conn, Slot, ROUND_TRIPS};

use super::backend::{
    Backend, Change, Changed, CommitError, Expect, Source, Versioned, Visit, Watching, WriteSet,
};
use super::StoreError;
pub use url::StoreUrl;

/// How long a commit of unknown outcome waits for the database to come back and say
/// whether it landed.
pub const RESOLVE_LIMIT: Duration = Duration::from_secs(10);

/// The first wait before connecting again after a failure; it doubles up to
/// [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Connections kept for reads.
pub const READ_CONNECTIONS: usize = 4;

/// The name of the gateway whose network CA certificate is `ca_cert_pem`: the SHA-256 of
/// its DER, hex. Every node of a gateway has a copy of the same PKI, so the same name; a
/// database records the name of the gateway that made it and refuses every other.
pub fn gateway_of(ca_cert_pem: &[u8]) -> Result<String, String> {
    let block =
        ::pem::parse(ca_cert_pem).map_err(|e| format!("the network CA certificate: {e}"))?;
    Ok(hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        block.contents(),
    )))
}

/// What [`Postgres::resolve`] learned on one connection.
enum Resolution {
    /// The commit landed, or surely did not.
    Known(bool),
    /// The old session could not be ended (another server now, or it did not go): only
    /// a commit id found proves anything.
    Unsure,
}

/// The PostgreSQL backend.
pub struct Postgres {
    url: StoreUrl,
    writer: Mutex<Slot>,
    readers: Vec<Mutex<Slot>>,
    next_reader: AtomicUsize,
    /// The last commit id given (random start, then +1).
    commit_ids: AtomicI64,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL as displayed carries no password.
        f.debug_struct("Postgres")
            .field("url", &self.url.to_string())
            .finish()
    }
}

/// The first key after every key under `prefix`, if there is one (a prefix of `0xff`
/// bytes has none).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl Postgres {
    /// Connects to the database at `url`, checks its schema (bringing an older one up to
    /// date) and that it belongs to `gateway` (see [`schema`]). `create`: the database
    /// must hold no enrollgate store, and one is made for `gateway`.
    pub fn open(url: StoreUrl, gateway: &str, create: bool) -> Result<Self, StoreError> {
        let mut client = url.connect()?;
        schema::prepare(&mut client, gateway, create)?;
        drop(client);
        let mut first = [0u8; 8];
        crate::ids::fill_random(&mut first)
            .map_err(|_| StoreError::Db("no randomness for commit ids".into()))?;
        // Positive, with room to count up for the life of the process.
        let start = i64::from_le_bytes(first) >> 2 & i64::MAX >> 2;
        let backend = Self {
            url,
            writer: Mutex::new(Slot::default()),
            readers: (0..READ_CONNECTIONS)
                .map(|_| Mutex::new(Slot::default()))
                .collect(),
            next_reader: AtomicUsize::new(0),
            commit_ids: AtomicI64::new(start),
        };
        // Fail now, not at the first request, if the statements do not prepare.
        backend.with_writer(|_| Ok(()))?;
        Ok(backend)
    }

    /// The URL, without its password.
    pub fn url(&self) -> &StoreUrl {
        &self.url
    }

    /// Runs `f` on the connection of `slot`, connecting first if needed (at most once per
    /// backoff step: in between, [`StoreError::Unavailable`] at once). A lost connection
    /// is dropped.
    fn on<T>(
        &self,
        slot: &Mutex<Slot>,
        f: impl FnOnce(&mut Conn) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut slot = lock(slot);
        let conn = self.connected(&mut slot)?;
        round_trip();
        match f(conn) {
            Ok(v) => Ok(v),
            Err(e) => {
                if connection_lost(&e) {
                    slot.conn = None;
                }
                Err(store_error(&e))
            }
        }
    }

    fn connected<'s>(&self, slot: &'s mut Slot) -> Result<&'s mut Conn, StoreError> {
        if slot.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            slot.conn = None;
        }
        if slot.conn.is_none() {
            if let Some(at) = slot.retry_at {
                if Instant::now() < at {
                    return Err(StoreError::Unavailable(
                        "PostgreSQL is unreachable; reconnecting".into(),
                    ));
                }
            }
            match Conn::open(&self.url) {
                Ok(conn) => {
                    if slot.retry_at.take().is_some() {
                        tracing::warn!(url = %self.url, "connected to PostgreSQL again");
                    }
                    slot.backoff = Duration::ZERO;
                    slot.conn = Some(conn);
                }
                Err(e) => {
                    slot.backoff = (slot.backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                    slot.retry_at = Some(Instant::now() + slot.backoff);
                    return Err(match e {
                        StoreError::Db(text) => StoreError::Unavailable(text),
                        other => other,
                    });
                }
            }
        }
        slot.conn
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("no connection".into()))
    }

    fn with_writer<T>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        self.on(&self.writer, f)
    }

    fn with_reader<T>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        // A free connection if there is one; else wait for the next in turn.
        for slot in &self.readers {
            if let Ok(mut guard) = slot.try_lock() {
                let conn = self.connected(&mut guard)?;
                round_trip();
                return match f(conn) {
                    Ok(v) => Ok(v),
                    Err(e) => {
                        if connection_lost(&e) {
                            guard.conn = None;
                        }
                        Err(store_error(&e))
                    }
                };
            }
        }
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        self.on(&self.readers[i], f)
    }

    /// Whether the commit `id`, sent on the session `backend` of `server` whose connection
    /// dropped before the answer, landed; waits up to [`RESOLVE_LIMIT`] for the database.
    /// The old session may still be running the commit (waiting for a lock, or for the
    /// standby): on the same server, it is ended first (`pg_terminate_backend`, then
    /// waited for), and only then does a missing commit id mean "not landed". On another
    /// server (a failover) or a standby, only a commit id found proves anything.
    fn resolve(&self, id: i64, backend: &(i32, String), server: &str) -> Result<bool, StoreError> {
        let deadline = Instant::now() + RESOLVE_LIMIT;
        loop {
            let asked = self.with_writer(|c| {
                let found = |c: &mut Conn| {
                    c.client
                        .query_opt("SELECT 1 FROM enrollgate_commits WHERE id = $1", &[&id])
                        .map(|r| r.is_some())
                };
                let standby: bool = c.client.query_one("SELECT pg_is_in_recovery()", &[])?.try_get(0)?;
                if c.server != server || standby {
                    return Ok(match found(c)? {
                        true => Resolution::Known(true),
                        false => Resolution::Unsure,
                    });
                }
                c.client.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE pid = $1 AND backend_start::text = $2",
                    &[&backend.0, &backend.1],
                )?;
                for _ in 0..100 {
                    let alive = c.client.query_opt(
                        "SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND backend_start::text = $2",
                        &[&backend.0, &backend.1],
                    )?;
                    if alive.is_none() {
                        return found(c).map(Resolution::Known);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(match found(c)? {
                    true => Resolution::Known(true),
                    false => Resolution::Unsure,
                })
            });
            match asked {
                Ok(Resolution::Known(landed)) => return Ok(landed),
                Ok(Resolution::Unsure) => {
                    return Err(StoreError::Unavailable(
                        "a commit's outcome cannot be learned (the database failed over, or \
                         its session did not end)"
                            .into(),
                    ))
                }
                Err(StoreError::Unavailable(text)) => {
                    if Instant::now() >= deadline {
                        return Err(StoreError::Unavailable(text));
                    }
                    std::thread::sleep(BACKOFF_MIN);
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// Forgets the commit ids older than an hour (a commit is resolved within
    /// [`RESOLVE_LIMIT`]); called now and then by the committer.
    fn prune_commits(&self) {
        let _ = self.with_writer(|c| {
            c.client.execute(
                "DELETE FROM enrollgate_commits WHERE at < now() - interval '1 hour'",
                &[],
            )
        });
    }
}

/// The CA generation on `client`'s database: moves whenever a CA record or index changes on
/// any node.
fn ca_generation(client: &mut Client) -> Option<i64> {
    client
        .query_one(
            "SELECT value::bigint FROM enrollgate_meta WHERE key = 'cas'",
            &[],
        )
        .and_then(|r| r.try_get(0))
        .ok()
}

impl Postgres {
    /// Every record, as of one moment (a repeatable-read transaction of its own): for
    /// `fsck` beside running gateways.
    pub fn read_all(&self) -> Result<Vec<crate::Record>, StoreError> {
        let mut client = self.url.connect()?;
        let mut tx = client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(|e| store_error(&e))?;
        let rows = tx
            .query("SELECT key, value FROM enrollgate_kv ORDER BY key", &[])
            .map_err(|e| store_error(&e))?;
        let out = rows
            .into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<Vec<_>, postgres::Error>>()
            .map_err(|e| store_error(&e))?;
        tx.commit().map_err(|e| store_error(&e))?;
        Ok(out)
    }

    /// Writes `records` into this (new, empty) store, in commits of `chunk` inserts: for
    /// `migrate`. An existing key is a conflict, never overwritten.
    pub fn load(&self, records: &[crate::Record], chunk: usize) -> Result<(), StoreError> {
        for part in records.chunks(chunk.max(1)) {
            let set = WriteSet {
                expect: Vec::new(),
                changes: part
                    .iter()
                    .map(|(k, v)| Change::Insert(k.clone(), v.clone()))
                    .collect(),
            };
            self.commit(&set, true).map_err(StoreError::from)?;
        }
        Ok(())
    }
}

impl Source for Postgres {
    fn read(&self, key: &[u8]) -> Result<Option<Versioned>, StoreError> {
        self.with_reader(|c| {
            let row = c.client.query_opt(&c.read, &[&key])?;
            row.map(|r| {
                Ok(Versioned {
                    value: r.try_get(0)?,
                    version: r.try_get(1)?,
                })
            })
            .transpose()
        })
    }

    fn read_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Versioned>>, StoreError> {
        let rows = self.with_reader(|c| c.client.query(&c.read_many, &[&keys]))?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for r in rows {
            let key: Vec<u8> = r.try_get(0).map_err(|e| store_error(&e))?;
            let v = Versioned {
                value: r.try_get(1).map_err(|e| store_error(&e))?,
                version: r.try_get(2).map_err(|e| store_error(&e))?,
            };
            found.insert(key, v);
        }
        Ok(keys.iter().map(|k| found.remove(k)).collect())
    }

    fn scan(&self, prefix: &[u8], f: &mut Visit<'_>) -> Result<(), StoreError> {
        let end = prefix_end(prefix);
        // In pages, each read on a connection that is given back before `f` runs: `f` may
        // read again (a decision that scans reads each record's neighbour), and a long
        // scan for an admin listing does not hold a connection the committer needs.
        let mut from = prefix.to_vec();
        loop {
            let page: Vec<(Vec<u8>, Vec<u8>, i64)> = self.with_reader(|c| {
                let rows = c.client.query(&c.scan, &[&from, &end, &SCAN_PAGE])?;
                rows.iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                    .collect()
            })?;
            let full = page.len() as i64 == SCAN_PAGE;
            for (k, v, version) in &page {
                if !f(k, v, *version) {
                    return Ok(());
                }
            }
            match page.into_iter().next_back() {
                // The next key after the last one read: the last one and a zero byte.
                Some((mut last, _, _)) if full => {
                    last.push(0);
                    from = last;
                }
                _ => return Ok(()),
            }
        }
    }
}

/// Records per page of a scan.
const SCAN_PAGE: i64 = 512;

/// The parameters of one `enrollgate_commit` call.
#[derive(Default)]
struct Call<'a> {
    lock_keys: Vec<&'a [u8]>,
    lock_versions: Vec<i64>,
    ins_keys: Vec<&'a [u8]>,
    ins_values: Vec<Option<&'a [u8]>>,
    upd_keys: Vec<&'a [u8]>,
    upd_values: Vec<&'a [u8]>,
    del_keys: Vec<&'a [u8]>,
}

impl<'a> Call<'a> {
    fn of(set: &'a WriteSet) -> Self {
        let mut call = Call::default();
        let mut locks: Vec<(&[u8], i64)> = Vec::new();
        let mut inserts: Vec<(&[u8], Option<&[u8]>)> = Vec::new();
        for e in &set.expect {
            match e {
                Expect::Absent(k) => inserts.push((k, None)),
                Expect::At(k, v) => locks.push((k, *v)),
            }
        }
        for c in &set.changes {
            match c {
                Change::Insert(k, v) => inserts.push((k, Some(v))),
                Change::Update(k, v, at) => {
                    locks.push((k, *at));
                    call.upd_keys.push(k);
                    call.upd_values.push(v);
                }
                Change::Delete(k, at) => {
                    locks.push((k, *at));
                    call.del_keys.push(k);
                }
            }
        }
        locks.sort_unstable();
        inserts.sort_unstable_by(|a, b| a.0.cmp(b.0));
        (call.lock_keys, call.lock_versions) = locks.into_iter().unzip();
        (call.ins_keys, call.ins_values) = inserts.into_iter().unzip();
        call
    }
}

/// The keys named in the DETAIL of an `EGCON` error (hex, comma-separated).
fn conflicting_keys(e: &postgres::Error) -> Vec<Vec<u8>> {
    e.as_db_error()
        .and_then(|db| db.detail())
        .map(|d| {
            d.split(',')
                .filter_map(|h| hex::decode(h.trim()).ok())
                .collect()
        })
        .unwrap_or_default()
}

impl Backend for Postgres {
    fn commit(&self, set: &WriteSet, durable: bool) -> Result<(), CommitError> {
        let id = self.commit_ids.fetch_add(1, Ordering::Relaxed) + 1;
        if id % 4096 == 0 {
            self.prune_commits();
        }
        let call = Call::of(set);
        let mut slot = lock(&self.writer);
        let conn = self.connected(&mut slot).map_err(CommitError::Failed)?;
        if conn.synchronous != durable {
            let sql = if durable {
                "SET synchronous_commit = on"
            } else {
                "SET synchronous_commit = off"
            };
            conn.client
                .batch_execute(sql)
                .map_err(|e| CommitError::Failed(store_error(&e)))?;
            conn.synchronous = durable;
        }
        round_trip();
        let session = (conn.backend.clone(), conn.server.clone());
        let outcome = conn.client.query(
            &conn.commit,
            &[
                &id,
                &call.lock_keys,
                &call.lock_versions,
                &call.ins_keys,
                &call.ins_values,
                &call.upd_keys,
                &call.upd_values,
                &call.del_keys,
            ],
        );
        let e = match outcome {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if let Some(code) = e.code() {
            if code.code() == "EGCON" {
                return Err(CommitError::Conflict(conflicting_keys(&e)));
            }
            if matches!(
                code,
                &SqlState::T_R_DEADLOCK_DETECTED
                    | &SqlState::T_R_SERIALIZATION_FAILURE
                    | &SqlState::UNIQUE_VIOLATION
                    | &SqlState::LOCK_NOT_AVAILABLE
            ) {
                return Err(CommitError::Conflict(
                    set.keys().into_iter().map(<[u8]>::to_vec).collect(),
                ));
            }
        }
        if !connection_lost(&e) {
            return Err(CommitError::Failed(store_error(&e)));
        }
        // The connection went during the commit: it may have landed. Ask, on a new one;
        // meanwhile the gateway is not ready (a load balancer sends elsewhere).
        slot.conn = None;
        drop(slot);
        if crate::refusing::store_refusing_for().is_none() {
            crate::refusing::set_store_refusing(true);
        }
        tracing::warn!(error = %store_error(&e), "the connection to PostgreSQL dropped during a commit; asking whether it landed");
        match self.resolve(id, &session.0, &session.1) {
            Ok(true) => Ok(()),
            // Not written: decide again (on what is there now).
            Ok(false) => Err(CommitError::Conflict(Vec::new())),
            Err(e) => Err(CommitError::Unknown(e)),
        }
    }

    fn shared(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "postgresql"
    }

    fn probe(&self) -> bool {
        self.with_writer(|c| c.client.simple_query("SELECT 1").map(|_| ()))
            .is_ok()
    }

    fn round_trips(&self) -> u64 {
        ROUND_TRIPS.with(std::cell::Cell::get)
    }

    /// Listens on a connection of its own for CA changes any node commits (`NOTIFY
    /// enrollgate_cas`), and polls the CA generation every `poll` as well: a notification
    /// is lost while the listener reconnects.
    fn watch_cas(&self, poll: Duration, mut changed: Box<Changed>) -> std::io::Result<Watching> {
        let url = self.url.clone();
        let handle = std::thread::Builder::new()
            .name("enrollgate-pg-listen".into())
            .spawn(move || {
                let mut seen = None;
                let mut listener: Option<Client> = None;
                loop {
                    if listener.as_ref().is_none_or(Client::is_closed) {
                        listener = url.connect().ok().and_then(|mut c| {
                            c.batch_execute("LISTEN enrollgate_cas").ok().map(|_| c)
                        });
                        if let Some(c) = listener.as_mut() {
                            seen = seen.or(ca_generation(c));
                        }
                    }
                    let Some(c) = listener.as_mut() else {
                        std::thread::sleep(poll);
                        continue;
                    };
                    let heard = {
                        use postgres::fallible_iterator::FallibleIterator;
                        let mut n = c.notifications();
                        let mut it = n.timeout_iter(poll);
                        it.next()
                    };
                    let heard = match heard {
                        Ok(n) => n.is_some(),
                        Err(_) => {
                            listener = None;
                            continue;
                        }
                    };
                    let now = ca_generation(c);
                    let moved = now.is_some() && now != seen;
                    if heard || moved {
                        seen = now.or(seen);
                        if !changed() {
                            return;
                        }
                    }
                }
            })?;
        Ok(Some(handle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_at_the_next_key_that_does_not_start_with_it() {
        assert_eq!(prefix_end(b"i:"), Some(b"i;".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn a_write_set_becomes_locks_then_inserts_each_in_key_order() {
        let set = WriteSet {
            expect: vec![
                Expect::At(b"c:1".to_vec(), 4),
                Expect::Absent(b"x:9".to_vec()),
            ],
            changes: vec![
                Change::Insert(b"n:b".to_vec(), b"1".to_vec()),
                Change::Update(b"a:1".to_vec(), b"2".to_vec(), 7),
                Change::Delete(b"z:1".to_vec(), 3),
                Change::Insert(b"f:a".to_vec(), b"1".to_vec()),
            ],
        };
        let call = Call::of(&set);
        assert_eq!(call.lock_keys, vec![&b"a:1"[..], b"c:1", b"z:1"]);
        assert_eq!(call.lock_versions, vec![7, 4, 3]);
        assert_eq!(call.ins_keys, vec![&b"f:a"[..], b"n:b", b"x:9"]);
        assert_eq!(call.ins_values, vec![Some(&b"1"[..]), Some(b"1"), None]);
        assert_eq!(call.upd_keys, vec![&b"a:1"[..]]);
        assert_eq!(call.del_keys, vec![&b"z:1"[..]]);
    }
}
