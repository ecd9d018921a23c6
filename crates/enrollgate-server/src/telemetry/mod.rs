//! Metrics through the `metrics` facade, exported in Prometheus text format on a separate
//! listener (`metrics.listen`, default 127.0.0.1:9464) beside `/healthz` and `/readyz`.
//!
//! Recording happens where components hand results over (the committer's group write, the
//! connection's handshake, the API's answer to an enrollment), not inside handlers. The
//! store crate records its own (`store::metrics`, `store::refusing`); their names are
//! re-exported here, and [`describe`] describes every metric, the store's included.

pub mod endpoint;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

// The store records its own (the committer's, its queues', whether it refuses writes):
// their names and the refusing state are the store crate's, described here with the rest.
pub use crate::store::metrics::{
    BATCH_SIZE, COMMIT_CONFLICTS, COMMIT_ROUND_TRIPS, COMMIT_SECONDS, QUEUE_DEPTH, RATE_LIMITED,
    STORE_REFUSING,
};
pub use crate::store::refusing::{set_store_refusing, store_refusing_for, STORE_REFUSING_LIMIT};

/// Enrollments answered, by method and result (`ok` or the error code).
pub const ENROLLMENTS: &str = "enrollgate_enrollments_total";
/// Enrollment latency, request read to answer ready.
pub const ENROLLMENT_SECONDS: &str = "enrollgate_enrollment_duration_seconds";
/// TLS handshakes, by result.
pub const HANDSHAKES: &str = "enrollgate_tls_handshakes_total";
/// TLS handshake latency.
pub const HANDSHAKE_SECONDS: &str = "enrollgate_tls_handshake_duration_seconds";
/// Open client connections.
pub const CONNECTIONS: &str = "enrollgate_open_connections";
/// Third-party CAs in the cache.
pub const CA_CACHE_SIZE: &str = "enrollgate_ca_cache_size";
/// Chain verifications, by whether a cached CA was found for the chain.
pub const CA_CACHE_LOOKUPS: &str = "enrollgate_ca_cache_lookups_total";
/// Signatures of client chains, by whether they were checked or already known.
pub const CHAIN_SIGNATURES: &str = "enrollgate_chain_signatures_total";
/// Chain verification latency.
pub const CHAIN_SECONDS: &str = "enrollgate_chain_verification_duration_seconds";
/// CSR checks and signatures per signing batch.
pub const SIGN_BATCH_SIZE: &str = "enrollgate_sign_batch_size";
/// Duration of one signing batch.
pub const SIGN_SECONDS: &str = "enrollgate_sign_batch_duration_seconds";
/// Jobs waiting for a worker's signing thread.
pub const SIGN_QUEUE_DEPTH: &str = "enrollgate_sign_queue_depth";
/// Enrollment attempts with an expired token.
pub const TOKENS_EXPIRED: &str = "enrollgate_tokens_expired_total";
/// Connections closed to make room for a new one, by what they were doing.
pub const PUSHED_OUT: &str = "enrollgate_connections_pushed_out_total";

/// Resident set size of the process.
pub const RESIDENT_MEMORY: &str = "enrollgate_resident_memory_bytes";
/// The ceiling on open connections set by `limits.max_memory` (0: none).
pub const MEMORY_CEILING: &str = "enrollgate_memory_connection_ceiling";

/// Gauge: bound certificates that expire within a window (label `within`: 7d, 30d).
pub const CERTS_EXPIRING: &str = "enrollgate_certificates_expiring";
/// Gauge: bound certificates already past their `notAfter`.
pub const CERTS_EXPIRED: &str = "enrollgate_certificates_expired";
/// Gauge: bound certificates, all told (the denominator of the two above).
pub const CERTS_BOUND: &str = "enrollgate_certificates_bound";

static READY: AtomicBool = AtomicBool::new(false);

/// Milliseconds on a monotonic clock, from the first reading in the process, plus one
/// (never 0).
pub(crate) fn monotonic_millis() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let ms = START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX - 1) + 1
}

/// Marks the gateway ready (every worker accepts) or not (starting, draining).
pub fn set_ready(ready: bool) {
    READY.store(ready, Ordering::Release);
}

/// Whether `/readyz` answers 200.
pub fn is_ready() -> bool {
    READY.load(Ordering::Acquire)
}

/// Registers the help text of every metric.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(ENROLLMENTS, "Enrollment requests answered, by method (ott, ottca, ca) and result (ok, or the error code returned).");
    describe_histogram!(
        ENROLLMENT_SECONDS,
        Unit::Seconds,
        "Time from a complete enrollment request to its answer, including the durable commit."
    );
    describe_counter!(
        HANDSHAKES,
        "TLS handshakes on the enrollment listener, by result (ok, failed, timeout, evicted: pushed out by a newer connection over limits.max_handshakes or limits.max_handshakes_per_source, refused: closed before TLS, because its source was at limits.max_handshakes_per_source with every handshake busy, or it waited limits.idle_timeout in vain for a handshake slot or below the memory ceiling)."
    );
    describe_histogram!(
        HANDSHAKE_SECONDS,
        Unit::Seconds,
        "Duration of completed TLS handshakes on the enrollment listener."
    );
    describe_gauge!(
        CONNECTIONS,
        "Client connections currently open on the enrollment listener."
    );
    describe_histogram!(
        BATCH_SIZE,
        "Commands decided and written together in one group commit."
    );
    describe_histogram!(
        COMMIT_SECONDS,
        Unit::Seconds,
        "Duration of one group commit: its decisions and its write (the WAL fsync, or the database's commit, when durable), retries after conflicts included."
    );
    describe_counter!(
        COMMIT_CONFLICTS,
        "Group commits refused because another gateway changed a record they read (a shared database); each is read and decided again."
    );
    describe_histogram!(
        COMMIT_ROUND_TRIPS,
        "Database round trips of one group commit (its reads and its commit); RocksDB, embedded, has none."
    );
    describe_gauge!(QUEUE_DEPTH, "Commands waiting for the committer after it took a batch (bounded by store.queue_capacity).");
    describe_gauge!(
        CA_CACHE_SIZE,
        "Third-party CAs parsed into the chain-verification cache."
    );
    describe_counter!(
        CA_CACHE_LOOKUPS,
        "Client chains looked up in the CA cache, by result: hit (a cached CA named as issuer in the chain) or miss (no cached CA issued it)."
    );
    describe_counter!(
        CHAIN_SIGNATURES,
        "Signatures on client chain paths, by result: checked (verified now) or remembered (this worker verified the same signature before, e.g. a fleet's shared intermediate)."
    );
    describe_histogram!(
        CHAIN_SECONDS,
        Unit::Seconds,
        "Duration of one client chain verification against the cached CAs."
    );
    describe_histogram!(
        SIGN_BATCH_SIZE,
        "CSR checks and certificate signatures done together in one batch on a worker's signing thread."
    );
    describe_histogram!(
        SIGN_SECONDS,
        Unit::Seconds,
        "Duration of one signing batch (CSR signature checks and certificate signatures)."
    );
    describe_gauge!(
        SIGN_QUEUE_DEPTH,
        "Jobs left waiting for a signing thread after it took a batch (bounded by limits.sign_queue per worker)."
    );
    describe_counter!(
        RATE_LIMITED,
        "Enrollment requests answered 429 by a rate limit, by limit: source (limits.per_source_rate), ca (limits.per_ca_rate), sign_queue, commit_queue."
    );
    describe_counter!(
        PUSHED_OUT,
        "Connections closed to admit a new one, by state: handshake (the handshake waiting longest for its client, over limits.max_handshakes or limits.max_handshakes_per_source); over limits.max_connections or the memory ceiling of limits.max_memory, the connection waiting longest for its client: idle (between requests), slow_request (a request still arriving past limits.slow_request_grace) or slow_reader (answers not read past the grace)."
    );
    describe_gauge!(
        RESIDENT_MEMORY,
        Unit::Bytes,
        "Resident set size of the gateway process, sampled every 10 ms, or 50 ms while well under limits.max_memory (which caps it)."
    );
    describe_gauge!(
        MEMORY_CEILING,
        "Open connections allowed across workers since resident memory reached 90% of limits.max_memory; 0 when there is no ceiling."
    );
    describe_counter!(
        TOKENS_EXPIRED,
        "Enrollment attempts whose one-time token had expired, by method."
    );
    describe_gauge!(
        STORE_REFUSING,
        "1 while the store refuses writes (RocksDB stops writing after an I/O error such as a full disk, until the gateway restarts); /readyz answers 503 meanwhile."
    );
    describe_gauge!(
        CERTS_EXPIRING,
        "Bound certificates that have not expired and expire within the window of label within (7d, 30d; 30d includes 7d). Counted at start and every 5 minutes."
    );
    describe_gauge!(
        CERTS_EXPIRED,
        "Bound certificates past their notAfter: their identities can no longer authenticate. Counted at start and every 5 minutes."
    );
    describe_gauge!(
        CERTS_BOUND,
        "Certificates bound to identities. Counted at start and every 5 minutes."
    );
    // Set only when the ceiling changes: exported from the start at its resting value.
    metrics::gauge!(MEMORY_CEILING).set(0.0);
    metrics::gauge!(STORE_REFUSING).set(0.0);
    // Every counter series whose labels are known in advance is exported from the start,
    // at 0: a series that first appears with its first event hides that event from
    // rate() and increase(), and an alert on it cannot fire until then.
    for method in ["ott", "ottca", "ca", "est", "est_reenroll"] {
        metrics::counter!(ENROLLMENTS, "method" => method, "result" => "ok").increment(0);
    }
    for method in ["ott", "ottca", "est"] {
        metrics::counter!(TOKENS_EXPIRED, "method" => method).increment(0);
    }
    for result in ["ok", "failed", "timeout", "evicted", "refused"] {
        metrics::counter!(HANDSHAKES, "result" => result).increment(0);
    }
    for limit in ["source", "ca", "sign_queue", "commit_queue"] {
        metrics::counter!(RATE_LIMITED, "limit" => limit).increment(0);
    }
    for state in ["handshake", "idle", "slow_request", "slow_reader"] {
        metrics::counter!(PUSHED_OUT, "state" => state).increment(0);
    }
    for result in ["hit", "miss"] {
        metrics::counter!(CA_CACHE_LOOKUPS, "result" => result).increment(0);
    }
    for result in ["checked", "remembered"] {
        metrics::counter!(CHAIN_SIGNATURES, "result" => result).increment(0);
    }
    for gauge in [CONNECTIONS, QUEUE_DEPTH, SIGN_QUEUE_DEPTH] {
        metrics::gauge!(gauge).increment(0.0);
    }
}

/// Sets the certificate expiry gauges from a scan: `within` holds, for each window in
/// days, the count of certificates expiring within it.
pub fn certificate_expiry(within: &[(u64, u64)], expired: u64, bound: u64) {
    for &(days, count) in within {
        let within = match days {
            7 => "7d",
            30 => "30d",
            _ => "other",
        };
        metrics::gauge!(CERTS_EXPIRING, "within" => within).set(count as f64);
    }
    metrics::gauge!(CERTS_EXPIRED).set(expired as f64);
    metrics::gauge!(CERTS_BOUND).set(bound as f64);
}

/// Records one enrollment answer.
pub fn enrollment(method: &'static str, result: &'static str, elapsed: Duration) {
    metrics::counter!(ENROLLMENTS, "method" => method, "result" => result).increment(1);
    metrics::histogram!(ENROLLMENT_SECONDS, "method" => method).record(elapsed.as_secs_f64());
}

/// Records a handshake outcome.
pub fn handshake(result: &'static str, elapsed: Option<Duration>) {
    metrics::counter!(HANDSHAKES, "result" => result).increment(1);
    if let Some(e) = elapsed {
        metrics::histogram!(HANDSHAKE_SECONDS).record(e.as_secs_f64());
    }
}

/// Records a connection closed to make room for a new one (`state`: handshake, idle).
pub fn pushed_out(state: &'static str) {
    metrics::counter!(PUSHED_OUT, "state" => state).increment(1);
}

/// Records a change in open connections.
pub fn connections(delta: f64) {
    metrics::gauge!(CONNECTIONS).increment(delta);
}

/// Records the CA cache size.
pub fn ca_cache(size: usize) {
    metrics::gauge!(CA_CACHE_SIZE).set(size as f64);
}

/// Records a signing batch.
pub fn sign_batch(size: usize, elapsed: Duration, queued: usize) {
    metrics::histogram!(SIGN_BATCH_SIZE).record(size as f64);
    metrics::histogram!(SIGN_SECONDS).record(elapsed.as_secs_f64());
    metrics::gauge!(SIGN_QUEUE_DEPTH).set(queued as f64);
}

/// Records a chain lookup in the CA cache (`cache_hit`), how many of its signatures were
/// checked and how many found already checked, and its verification time.
pub fn chain_verification(cache_hit: bool, checked: u32, remembered: u32, elapsed: Duration) {
    let result = if cache_hit { "hit" } else { "miss" };
    metrics::counter!(CA_CACHE_LOOKUPS, "result" => result).increment(1);
    if checked > 0 {
        metrics::counter!(CHAIN_SIGNATURES, "result" => "checked").increment(u64::from(checked));
    }
    if remembered > 0 {
        metrics::counter!(CHAIN_SIGNATURES, "result" => "remembered")
            .increment(u64::from(remembered));
    }
    metrics::histogram!(CHAIN_SECONDS).record(elapsed.as_secs_f64());
}

/// Records a refusal by a rate limit.
pub fn rate_limited(limit: &'static str) {
    metrics::counter!(RATE_LIMITED, "limit" => limit).increment(1);
}

/// Records an enrollment attempt with an expired token.
pub fn token_expired(method: &'static str) {
    metrics::counter!(TOKENS_EXPIRED, "method" => method).increment(1);
}

/// Records the resident set size.
pub fn resident_memory(bytes: u64) {
    metrics::gauge!(RESIDENT_MEMORY).set(bytes as f64);
}

/// Records the memory cap's connection ceiling (`None`: no ceiling).
pub fn memory_ceiling(ceiling: Option<usize>) {
    metrics::gauge!(MEMORY_CEILING).set(ceiling.map_or(0.0, |c| c as f64));
}
