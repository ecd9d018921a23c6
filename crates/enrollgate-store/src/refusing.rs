//! Whether the store refuses writes, and since when: set by the committer after each write
//! (or probe) and by a shared backend while a commit's outcome is unknown; read by the
//! daemon's `/readyz` and its watchdog (through `telemetry`, which re-exports this).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// When the store began refusing writes, in milliseconds on a monotonic clock (from the
/// first reading, plus one); 0 when it accepts them.
static STORE_REFUSING_SINCE: AtomicU64 = AtomicU64::new(0);

/// How long the store may refuse writes before the watchdog is no longer fed.
pub const STORE_REFUSING_LIMIT: Duration = Duration::from_secs(30);

/// Milliseconds on a monotonic clock, from the first reading in the process, plus one
/// (never 0).
fn monotonic_millis() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let ms = START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX - 1) + 1
}

/// Records whether the store's last write (or probe) failed. While it refuses writes,
/// `/readyz` answers 503, and after [`STORE_REFUSING_LIMIT`] `serve` stops feeding
/// systemd's watchdog, which restarts the gateway (a reopened store writes again).
pub fn set_store_refusing(refusing: bool) {
    if refusing {
        let _ = STORE_REFUSING_SINCE.compare_exchange(
            0,
            monotonic_millis(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    } else {
        STORE_REFUSING_SINCE.store(0, Ordering::Release);
    }
    ::metrics::gauge!(crate::metrics::STORE_REFUSING).set(if refusing { 1.0 } else { 0.0 });
}

/// How long the store has refused writes, if it does.
pub fn store_refusing_for() -> Option<Duration> {
    match STORE_REFUSING_SINCE.load(Ordering::Acquire) {
        0 => None,
        since => Some(Duration::from_millis(
            monotonic_millis().saturating_sub(since),
        )),
    }
}
