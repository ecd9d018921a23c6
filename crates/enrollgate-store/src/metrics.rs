//! What the store records about itself, through the `metrics` facade: each group commit
//! (its commands, its duration, its database round trips, what waits after it), the commits
//! decided again after a conflict, the commands and reads refused because a queue was full,
//! and whether it refuses writes (`refusing`).
//!
//! The daemon installs the exporter and describes every metric (`telemetry::describe`,
//! docs/metrics.md); it names these through the constants here, so a name is written once.

use std::time::Duration;

/// Commands per group commit.
pub const BATCH_SIZE: &str = "enrollgate_commit_batch_size";
/// Duration of one group commit's write (the fsync when durable).
pub const COMMIT_SECONDS: &str = "enrollgate_commit_duration_seconds";
/// Group commits decided again because another gateway wrote what they read.
pub const COMMIT_CONFLICTS: &str = "enrollgate_commit_conflicts_total";
/// Database round trips per group commit (reads and the commit; 0 for RocksDB).
pub const COMMIT_ROUND_TRIPS: &str = "enrollgate_commit_round_trips";
/// Commands waiting for the committer.
pub const QUEUE_DEPTH: &str = "enrollgate_commit_queue_depth";
/// Requests refused by a rate limit, by limit (the store's: `commit_queue`, `read_queue`;
/// the daemon records the others under the same name).
pub const RATE_LIMITED: &str = "enrollgate_rate_limited_total";
/// 1 while the store refuses writes (RocksDB stops writing after an I/O error such as a
/// full disk, until it is reopened).
pub const STORE_REFUSING: &str = "enrollgate_store_refusing_writes";

/// Records a group commit: its commands, its duration, what waits after it, and the
/// database round trips it took (`None` for an embedded store).
pub(crate) fn commit(batch: usize, elapsed: Duration, queued: usize, round_trips: Option<u64>) {
    ::metrics::histogram!(BATCH_SIZE).record(batch as f64);
    ::metrics::histogram!(COMMIT_SECONDS).record(elapsed.as_secs_f64());
    ::metrics::gauge!(QUEUE_DEPTH).set(queued as f64);
    if let Some(n) = round_trips {
        ::metrics::histogram!(COMMIT_ROUND_TRIPS).record(n as f64);
    }
}

/// Records a group commit refused by a conflict, to be decided again.
pub(crate) fn commit_conflict() {
    ::metrics::counter!(COMMIT_CONFLICTS).increment(1);
}

/// Records a command or a read refused because its queue was full (`commit_queue`,
/// `read_queue`).
pub(crate) fn rate_limited(limit: &'static str) {
    ::metrics::counter!(RATE_LIMITED, "limit" => limit).increment(1);
}
