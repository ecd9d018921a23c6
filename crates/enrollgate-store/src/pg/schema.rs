//! The PostgreSQL schema, in versioned migrations checked at every start.
//!
//! `enrollgate_meta` holds the schema version and the gateway the database belongs to
//! (the SHA-256 of the network CA certificate: every node of one gateway has the same PKI).
//! A database of another gateway, or of a newer schema than this binary knows, is refused;
//! an older one is brought up to date, under a lock, by the first node that starts.

/// The migrations, in order: the schema version is how many have run.
pub const MIGRATIONS: &[&str] = &[
    // 1: records, their versions, the commit log, and the one-round-trip commit.
    r#"
CREATE SEQUENCE enrollgate_version;

-- Every record: the same prefixed keys and JSON values as the embedded store. `version`
-- comes from one sequence: a key deleted and created again never gets an old version back.
CREATE TABLE enrollgate_kv (
    key bytea PRIMARY KEY,
    value bytea NOT NULL,
    version bigint NOT NULL
);

-- The commits of the last hour, by id: after a connection dropped during a commit, the
-- gateway learns here whether it landed before answering the device.
CREATE TABLE enrollgate_commits (
    id bigint PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now()
);

-- One write set, all or nothing, in one statement (one round trip, one transaction, one
-- WAL flush). Under READ COMMITTED:
-- 1. the rows the decisions read or change are locked in key order (FOR UPDATE) and
--    their versions compared;
-- 2. the keys created, and the keys read as absent (`ins_values` NULL: a placeholder,
--    deleted again below), are inserted in key order; ON CONFLICT DO NOTHING waits for a
--    concurrent inserter of the same key and reports the key if it committed, so two
--    nodes never both create one index key, and a key read as absent is absent at commit;
-- 3. the changes are written, the placeholders removed, the commit id logged.
-- Locks are taken in that order by every commit, rows before inserts and each in key
-- order, so commits of several nodes do not deadlock. A failed expectation raises EGCON
-- with every key found changed (hex) in DETAIL, and nothing is written.
CREATE FUNCTION enrollgate_commit(
    commit_id bigint,
    lock_keys bytea[], lock_versions bigint[],
    ins_keys bytea[], ins_values bytea[],
    upd_keys bytea[], upd_values bytea[],
    del_keys bytea[]
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    bad bytea[];
BEGIN
    SELECT coalesce(array_agg(w.k ORDER BY w.k), '{}') INTO bad
    FROM unnest(lock_keys, lock_versions) AS w(k, v)
    LEFT JOIN (
        SELECT key, version FROM enrollgate_kv
        WHERE key = ANY(lock_keys) ORDER BY key FOR UPDATE
    ) AS r ON r.key = w.k
    WHERE r.version IS DISTINCT FROM w.v;

    WITH made AS (
        INSERT INTO enrollgate_kv (key, value, version)
        SELECT k, coalesce(v, ''::bytea), nextval('enrollgate_version')
        FROM unnest(ins_keys, ins_values) AS t(k, v) ORDER BY k
        ON CONFLICT DO NOTHING
        RETURNING key
    )
    SELECT bad || coalesce(array_agg(k ORDER BY k), '{}') INTO bad
    FROM unnest(ins_keys) AS k WHERE k NOT IN (SELECT key FROM made);
    IF cardinality(bad) > 0 THEN
        RAISE EXCEPTION 'enrollgate: conflict' USING ERRCODE = 'EGCON',
            DETAIL = array_to_string(ARRAY(SELECT encode(b, 'hex') FROM unnest(bad) AS b), ',');
    END IF;

    UPDATE enrollgate_kv AS kv SET value = u.v, version = nextval('enrollgate_version')
    FROM unnest(upd_keys, upd_values) AS u(k, v) WHERE kv.key = u.k;
    DELETE FROM enrollgate_kv WHERE key = ANY(del_keys);
    DELETE FROM enrollgate_kv
    WHERE key IN (SELECT k FROM unnest(ins_keys, ins_values) AS t(k, v) WHERE v IS NULL);
    INSERT INTO enrollgate_commits (id) VALUES (commit_id);
    -- Other nodes drop their CA cache: a CA record or index changed.
    IF EXISTS (
        SELECT 1 FROM unnest(ins_keys || upd_keys || del_keys) AS c(k)
        WHERE substring(c.k from 1 for 1) = 'c'::bytea
    ) THEN
        UPDATE enrollgate_meta SET value = (value::bigint + 1)::text WHERE key = 'cas';
        PERFORM pg_notify('enrollgate_cas', '');
    END IF;
END
$$;

INSERT INTO enrollgate_meta (key, value) VALUES ('cas', '0');
"#,
];

/// Creates the meta table if it is not there (the first statement of every start; a no-op
/// on a database that has it).
pub const META: &str =
    "CREATE TABLE IF NOT EXISTS enrollgate_meta (key text PRIMARY KEY, value text NOT NULL)";

/// The advisory lock that serialises schema changes of nodes starting together.
pub const MIGRATION_LOCK: i64 = 0x656e_726f_6c6c_6761; // "enrollga"

use postgres::Client;

use crate::StoreError;

fn db(e: postgres::Error) -> StoreError {
    super::store_error(&e)
}

/// Checks, and if need be makes or updates, the schema of the database `client` is on, for
/// the gateway `gateway` (the SHA-256 of its network CA certificate). `create`: the
/// database must hold no enrollgate store yet.
pub fn prepare(client: &mut Client, gateway: &str, create: bool) -> Result<(), StoreError> {
    client.batch_execute(META).map_err(db)?;
    let mut tx = client.transaction().map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(db)?;
    let meta =
        |tx: &mut postgres::Transaction<'_>, key: &str| -> Result<Option<String>, StoreError> {
            let row = tx
                .query_opt("SELECT value FROM enrollgate_meta WHERE key = $1", &[&key])
                .map_err(db)?;
            row.map(|r| r.try_get::<_, String>(0))
                .transpose()
                .map_err(db)
        };
    let known = MIGRATIONS.len();
    let version = meta(&mut tx, "schema")?;
    let owner = meta(&mut tx, "gateway")?;
    let from = match (create, version) {
        (true, Some(v)) => {
            return Err(StoreError::InvalidState(format!(
                "the database already holds an enrollgate store (schema {v}); `init` makes a \
                 store only in a database without one. Another node joins with a copy of the \
                 first node's data directory, not with `init`"
            )))
        }
        (true, None) => {
            tx.execute(
                "INSERT INTO enrollgate_meta (key, value) VALUES ('gateway', $1)",
                &[&gateway],
            )
            .map_err(db)?;
            0
        }
        (false, None) => {
            return Err(StoreError::InvalidState(
                "the database holds no enrollgate store: make one with `enrollgate init \
                 --store-url URL`"
                    .into(),
            ))
        }
        (false, Some(v)) => {
            let v: usize = v.parse().map_err(|_| {
                StoreError::Corrupt(format!("enrollgate_meta's schema version '{v}'"))
            })?;
            if v > known {
                return Err(StoreError::InvalidState(format!(
                    "the database's schema is version {v}, newer than this enrollgate \
                     knows ({known}): run the newer enrollgate, or restore a backup taken \
                     before the upgrade"
                )));
            }
            if owner.as_deref() != Some(gateway) {
                return Err(StoreError::InvalidState(format!(
                    "the database belongs to another gateway (its network CA is {}; this \
                     data directory's is {gateway}): every node needs a copy of the first \
                     node's data directory",
                    owner.as_deref().unwrap_or("not recorded")
                )));
            }
            v
        }
    };
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(from) {
        tx.batch_execute(sql).map_err(db)?;
        tracing::info!(
            version = i + 1,
            "applied a migration of the PostgreSQL schema"
        );
    }
    if from < known {
        tx.execute(
            "INSERT INTO enrollgate_meta (key, value) VALUES ('schema', $1) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&known.to_string()],
        )
        .map_err(db)?;
    }
    tx.commit().map_err(db)
}
