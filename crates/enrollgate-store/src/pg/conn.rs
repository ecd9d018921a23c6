//! One connection to the database and what it knows of itself (its prepared statements,
//! its server process, its server), a slot that holds one and remembers when to try again,
//! and how a client error is read: the connection lost, or a statement refused.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::{Client, Statement};

use super::url::StoreUrl;
use crate::StoreError;

thread_local! {
    /// Round trips this thread made to the database: the committer reports its own per
    /// batch, apart from the workers' reads on the reader threads.
    pub(super) static ROUND_TRIPS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

pub(super) fn round_trip() {
    ROUND_TRIPS.with(|n| n.set(n.get() + 1));
}

/// One connection and its prepared statements.
pub(super) struct Conn {
    pub(super) client: Client,
    pub(super) read: Statement,
    pub(super) read_many: Statement,
    pub(super) scan: Statement,
    pub(super) commit: Statement,
    /// Whether `synchronous_commit` is on for this session.
    pub(super) synchronous: bool,
    /// This session's server process and when it started: what `resolve` ends before it
    /// trusts the absence of a commit id.
    pub(super) backend: (i32, String),
    /// The server: its address and when its postmaster started (a restart or a failover
    /// makes another).
    pub(super) server: String,
}

/// How long a commit waits for a row another node's commit holds: past it, the commit is
/// a conflict, decided again (a node stuck with its locks does not stop the others).
pub(super) const LOCK_TIMEOUT: &str = "SET lock_timeout = '10s'";

/// The server a session is on (see `Conn::server`).
pub(super) const SERVER: &str = "SELECT coalesce(host(inet_server_addr()), 'local') || ':' || \
    coalesce(inet_server_port()::text, '') || '@' || pg_postmaster_start_time()::text";

/// A connection slot: the connection if there is one, and when to try again if not.
#[derive(Default)]
pub(super) struct Slot {
    pub(super) conn: Option<Conn>,
    pub(super) retry_at: Option<Instant>,
    pub(super) backoff: Duration,
}

/// Whether `e` says the connection (or the server behind it) is gone, as opposed to a
/// refusal of the statement: the connection is then dropped and made again.
pub(super) fn connection_lost(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        None => true,
        Some(code) => {
            // 08: connection exception; 57P0x: shutdown, crash, cannot connect now;
            // 25006: a read-only transaction (a standby, or a primary demoted by failover).
            code.code().get(..2) == Some("08")
                || matches!(
                    code,
                    &SqlState::ADMIN_SHUTDOWN
                        | &SqlState::CRASH_SHUTDOWN
                        | &SqlState::CANNOT_CONNECT_NOW
                        | &SqlState::READ_ONLY_SQL_TRANSACTION
                )
        }
    }
}

/// The error a failed statement becomes. Never the URL or a value: a message of the
/// server's, or of the client's.
pub(super) fn store_error(e: &postgres::Error) -> StoreError {
    let text = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    };
    if connection_lost(e) {
        StoreError::Unavailable(format!("PostgreSQL: {text}"))
    } else {
        StoreError::Db(format!("PostgreSQL: {text}"))
    }
}

impl Conn {
    pub(super) fn open(url: &StoreUrl) -> Result<Self, StoreError> {
        let mut client = url.connect()?;
        let prepare =
            |client: &mut Client, sql: &str| client.prepare(sql).map_err(|e| store_error(&e));
        let read = prepare(
            &mut client,
            "SELECT value, version FROM enrollgate_kv WHERE key = $1",
        )?;
        let read_many = prepare(
            &mut client,
            "SELECT key, value, version FROM enrollgate_kv WHERE key = ANY($1)",
        )?;
        let scan = prepare(
            &mut client,
            "SELECT key, value, version FROM enrollgate_kv \
             WHERE key >= $1 AND ($2::bytea IS NULL OR key < $2) ORDER BY key LIMIT $3",
        )?;
        let commit = prepare(
            &mut client,
            "SELECT enrollgate_commit($1, $2, $3, $4, $5, $6, $7, $8)",
        )?;
        client
            .batch_execute(LOCK_TIMEOUT)
            .map_err(|e| store_error(&e))?;
        let me = client
            .query_one(
                "SELECT pid, backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()",
                &[],
            )
            .map_err(|e| store_error(&e))?;
        let backend = (
            me.try_get(0).map_err(|e| store_error(&e))?,
            me.try_get(1).map_err(|e| store_error(&e))?,
        );
        let server = client
            .query_one(SERVER, &[])
            .and_then(|r| r.try_get(0))
            .map_err(|e| store_error(&e))?;
        Ok(Self {
            client,
            read,
            read_many,
            scan,
            commit,
            synchronous: true,
            backend,
            server,
        })
    }
}

pub(super) fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    // A panic while a slot was held leaves at worst a connection in an unknown state:
    // drop it.
    slot.lock().unwrap_or_else(|p| {
        let mut guard = p.into_inner();
        guard.conn = None;
        guard
    })
}
