//! The memory cap, `limits.max_memory`: the daemon's resident memory stays under it.
//!
//! Two things grow with load. The store's memtables and block cache are bounded by
//! RocksDB itself ([`crate::store::rocks::MEMORY_BUDGET`]), and the cap keeps that much for them.
//! Nearly all the rest belongs to open connections (TLS buffers, about 35-45 KiB each once
//! a handshake has run), so the rest of the cap is kept by bounding connections.
//!
//! A sampler thread reads the resident set size (`/proc/self/statm`) and the store's
//! memory every 10 ms (every 50 ms while under half of the share). When the resident
//! memory outside the store reaches 90% of the cap less the store's budget, the number of
//! connections open at that moment becomes a
//! *ceiling* on open connections, for all workers together. At the ceiling new
//! connections wait in their worker's gate ([`crate::server::gate`]), holding only their
//! socket, and for each of them the connection idle longest is closed, as at
//! `limits.max_connections`; they enter as others close. Over the ceiling (once it was
//! lowered) workers close idle connections and admit none. Each worker still admits up to
//! [`FLOOR_PER_WORKER`] connections whatever the ceiling, so the gateway keeps serving even
//! when the memory is held by something else.
//!
//! Memory freed by glibc's allocator is kept for reuse rather than given back, so RSS
//! seldom falls after a surge. The ceiling therefore stays while that memory stays above
//! 80% of its share: it is the number of connections the cap holds. If it still grows by
//! more than 1/64 of its share while above 90% (fragmentation, larger requests), the
//! ceiling is lowered by an eighth each time. Below 80% it is raised by [`FLOOR_PER_WORKER`]
//! every 100 ms while connections wait at the gates, so that they enter gradually, and it
//! is lifted when none waits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Connections each worker admits whatever the memory ceiling.
pub const FLOOR_PER_WORKER: usize = 32;

/// How often the resident set size is read once the memory outside the store passes half
/// its share of the cap, or while a ceiling is in force.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// How often it is read otherwise (each sample wakes a thread on a busy core).
pub const SAMPLE_EVERY_AT_EASE: Duration = Duration::from_millis(50);

/// No ceiling.
const NONE: usize = usize::MAX;

/// Open connections across workers and the ceiling the memory cap puts on them; shared
/// by the workers (which count connections and read the ceiling: two relaxed atomics per
/// connection) and the sampler (which sets the ceiling).
#[derive(Debug)]
pub struct MemoryGuard {
    open: AtomicUsize,
    waiting: AtomicUsize,
    ceiling: AtomicUsize,
}

impl Default for MemoryGuard {
    fn default() -> Self {
        Self {
            open: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            ceiling: AtomicUsize::new(NONE),
        }
    }
}

impl MemoryGuard {
    /// Counts a connection admitted (its TLS state about to be allocated).
    pub fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection closed.
    pub fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a connection that starts waiting at a gate.
    pub fn wait_started(&self) {
        self.waiting.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection that no longer waits at a gate.
    pub fn wait_ended(&self) {
        self.waiting.fetch_sub(1, Ordering::Relaxed);
    }

    /// Connections waiting at the gates.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Connections open across workers.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// True while the open connections are at or over the memory ceiling.
    pub fn at_ceiling(&self) -> bool {
        self.open() >= self.ceiling.load(Ordering::Relaxed)
    }

    /// Connections open beyond the ceiling (after it was lowered).
    pub fn excess(&self) -> usize {
        self.open()
            .saturating_sub(self.ceiling.load(Ordering::Relaxed))
    }

    #[cfg(test)]
    pub(crate) fn set_ceiling_for_test(&self, ceiling: usize) {
        self.ceiling.store(ceiling, Ordering::Relaxed);
    }

    /// The ceiling in force, if any.
    pub fn ceiling(&self) -> Option<usize> {
        Some(self.ceiling.load(Ordering::Relaxed)).filter(|&c| c != NONE)
    }
}

/// A change of the ceiling, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// RSS reached 90% of the cap: the open connections became the ceiling.
    Set(usize),
    /// RSS kept growing at the ceiling: it was lowered.
    Lowered(usize),
    /// RSS is below 80% of the cap while connections wait at the gates: the ceiling was
    /// raised by [`FLOOR_PER_WORKER`] (at most every 100 ms), so that they enter gradually.
    Raised(usize),
    /// RSS is below 80% of the cap and no connection waits, or the cap was turned off.
    Lifted,
}

/// The ceiling's rule, apart from the clock and `/proc`.
#[derive(Debug, Default)]
pub struct Controller {
    ceiling: Option<usize>,
    /// RSS when the ceiling was last set or lowered.
    rss_at_change: u64,
    /// Samples since the ceiling was last raised.
    since_raise: u32,
}

/// Samples between two raises of the ceiling (100 ms).
const RAISE_EVERY: u32 = 10;

impl Controller {
    /// Takes one sample: `rss` bytes resident with `open` connections admitted and
    /// `waiting` at the gates, under `cap`.
    pub fn observe(
        &mut self,
        rss: u64,
        open: usize,
        waiting: usize,
        cap: Option<u64>,
    ) -> Option<Change> {
        self.since_raise = self.since_raise.saturating_add(1);
        let Some(cap) = cap else {
            return self.ceiling.take().map(|_| Change::Lifted);
        };
        let high = cap / 10 * 9;
        let low = cap / 10 * 8;
        match self.ceiling {
            None if rss >= high => {
                let c = open.max(1);
                self.ceiling = Some(c);
                self.rss_at_change = rss;
                Some(Change::Set(c))
            }
            Some(_) if rss < low && waiting == 0 => {
                self.ceiling = None;
                Some(Change::Lifted)
            }
            Some(c) if rss < low && self.since_raise >= RAISE_EVERY => {
                let raised = c.saturating_add(FLOOR_PER_WORKER);
                self.ceiling = Some(raised);
                self.rss_at_change = rss;
                self.since_raise = 0;
                Some(Change::Raised(raised))
            }
            Some(c) if rss >= high && rss > self.rss_at_change.saturating_add(cap / 64) => {
                let lowered = (c - c / 8).max(1);
                self.ceiling = Some(lowered);
                self.rss_at_change = rss;
                Some(Change::Lowered(lowered))
            }
            _ => None,
        }
    }

    /// The ceiling in force.
    pub fn ceiling(&self) -> Option<usize> {
        self.ceiling
    }
}

/// The resident set size of this process, in bytes.
pub fn resident_bytes() -> std::io::Result<u64> {
    let text = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = text
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| std::io::Error::other("unexpected /proc/self/statm"))?;
    Ok(pages * rustix::param::page_size() as u64)
}

/// What a sample needs besides the resident set size.
#[derive(Debug, Clone, Copy)]
pub struct Inputs {
    /// `limits.max_memory` (a reload changes it).
    pub cap: Option<u64>,
    /// Bytes the store's memtables and block cache hold now.
    pub store_bytes: u64,
}

/// The share of the cap left to everything but the store, and the resident memory that
/// counts against it.
pub fn outside_store(rss: u64, inputs: Inputs) -> (u64, Option<u64>) {
    let rest = rss.saturating_sub(inputs.store_bytes);
    let share = inputs
        .cap
        .map(|cap| cap.saturating_sub(crate::store::rocks::MEMORY_BUDGET));
    (rest, share)
}

/// Starts the sampler thread. `inputs` is called at every sample; the thread ends when
/// `stop` returns true.
pub fn spawn_sampler(
    guard: Arc<MemoryGuard>,
    inputs: impl Fn() -> Inputs + Send + 'static,
    stop: impl Fn() -> bool + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("enrollgate-memory".into())
        .spawn(move || {
            let mut controller = Controller::default();
            let mut warned = false;
            while !stop() {
                let mut pause = SAMPLE_EVERY_AT_EASE;
                match resident_bytes() {
                    Ok(rss) => {
                        crate::telemetry::resident_memory(rss);
                        let inputs = inputs();
                        let (rest, share) = outside_store(rss, inputs);
                        let open = guard.open();
                        let waiting = guard.waiting();
                        if controller.ceiling().is_some() || share.is_some_and(|s| rest >= s / 2) {
                            pause = SAMPLE_EVERY;
                        }
                        if let Some(change) = controller.observe(rest, open, waiting, share) {
                            let ceiling = controller.ceiling().unwrap_or(NONE);
                            guard.ceiling.store(ceiling, Ordering::Relaxed);
                            crate::telemetry::memory_ceiling(controller.ceiling());
                            let mib = |b: u64| b >> 20;
                            let (cap, store) = (inputs.cap.map(mib), mib(inputs.store_bytes));
                            let rss = mib(rss);
                            match change {
                                Change::Set(c) => tracing::warn!(rss_mib = rss, store_mib = store, cap_mib = cap, open, ceiling = c, "resident memory near limits.max_memory: no more connections than are open now"),
                                Change::Lowered(c) => tracing::warn!(rss_mib = rss, store_mib = store, cap_mib = cap, open, ceiling = c, "resident memory still growing at the connection ceiling: ceiling lowered"),
                                Change::Raised(c) => tracing::debug!(rss_mib = rss, store_mib = store, cap_mib = cap, open, ceiling = c, "connection ceiling raised"),
                                Change::Lifted => tracing::info!(rss_mib = rss, store_mib = store, cap_mib = cap, "resident memory well under limits.max_memory: connection ceiling lifted"),
                            }
                        }
                    }
                    Err(e) => {
                        if !warned {
                            tracing::warn!(error = %e, "cannot read the resident memory; limits.max_memory is not enforced");
                            warned = true;
                        }
                    }
                }
                std::thread::sleep(pause);
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_connections_open_at_ninety_percent_become_the_ceiling() {
        let mut c = Controller::default();
        let cap = Some(100 * MIB);
        assert_eq!(c.observe(50 * MIB, 100, 0, cap), None);
        assert_eq!(c.observe(89 * MIB, 700, 0, cap), None);
        assert_eq!(c.observe(90 * MIB, 800, 0, cap), Some(Change::Set(800)));
        assert_eq!(c.ceiling(), Some(800));
        // Steady at the ceiling (the allocator reuses what closed connections freed).
        assert_eq!(c.observe(91 * MIB, 800, 0, cap), None);
        assert_eq!(c.observe(85 * MIB, 300, 0, cap), None);
        assert_eq!(c.ceiling(), Some(800));
    }

    #[test]
    fn growth_at_the_ceiling_lowers_it_and_a_fall_below_eighty_percent_lifts_it() {
        let mut c = Controller::default();
        let cap = Some(64 * MIB);
        assert_eq!(c.observe(58 * MIB, 1000, 0, cap), Some(Change::Set(1000)));
        // Growth of less than 1/64 of the cap is tolerated.
        assert_eq!(c.observe(58 * MIB + MIB / 2, 1000, 0, cap), None);
        assert_eq!(
            c.observe(59 * MIB + MIB / 2, 1000, 0, cap),
            Some(Change::Lowered(875))
        );
        // Lowered from the ceiling, whatever is open (clients may have left).
        assert_eq!(c.observe(61 * MIB, 400, 0, cap), Some(Change::Lowered(766)));
        // 80% of 64 MiB is 51.2 MiB.
        assert_eq!(c.observe(52 * MIB, 10, 0, cap), None);
        assert_eq!(c.observe(51 * MIB, 10, 0, cap), Some(Change::Lifted));
        assert_eq!(c.ceiling(), None);
    }

    #[test]
    fn under_eighty_percent_the_ceiling_rises_slowly_while_connections_wait() {
        let mut c = Controller::default();
        let cap = Some(100 * MIB);
        assert_eq!(c.observe(95 * MIB, 100, 0, cap), Some(Change::Set(100)));
        // Memory fell (the store flushed) while thousands wait: 32 more every 10 samples.
        let mut changes = Vec::new();
        for _ in 0..30 {
            changes.extend(c.observe(70 * MIB, 100, 5000, cap));
        }
        let step = FLOOR_PER_WORKER;
        assert_eq!(
            changes,
            vec![
                Change::Raised(100 + step),
                Change::Raised(100 + 2 * step),
                Change::Raised(100 + 3 * step)
            ]
        );
        // Holding between 80% and 90%.
        assert_eq!(c.observe(85 * MIB, 148, 5000, cap), None);
        // Once nobody waits, it goes.
        assert_eq!(c.observe(70 * MIB, 148, 0, cap), Some(Change::Lifted));
        assert_eq!(c.ceiling(), None);
    }

    #[test]
    fn the_ceiling_is_never_zero_and_turning_the_cap_off_lifts_it() {
        let mut c = Controller::default();
        assert_eq!(c.observe(u64::MAX, 0, 0, None), None);
        assert_eq!(
            c.observe(40 * MIB, 0, 0, Some(32 * MIB)),
            Some(Change::Set(1))
        );
        assert_eq!(
            c.observe(60 * MIB, 0, 0, Some(32 * MIB)),
            Some(Change::Lowered(1))
        );
        assert_eq!(c.observe(60 * MIB, 0, 0, None), Some(Change::Lifted));
    }

    #[test]
    fn the_guard_counts_connections_against_the_ceiling() {
        let g = MemoryGuard::default();
        assert!(!g.at_ceiling());
        g.ceiling.store(2, Ordering::Relaxed);
        g.opened();
        assert!(!g.at_ceiling());
        g.opened();
        assert!(g.at_ceiling());
        assert_eq!(g.excess(), 0);
        g.opened();
        assert_eq!(g.excess(), 1);
        g.closed();
        g.closed();
        assert!(!g.at_ceiling());
        assert_eq!(g.ceiling(), Some(2));
    }

    #[test]
    fn the_store_keeps_its_budget_and_its_memory_does_not_count_against_connections() {
        let budget = crate::store::rocks::MEMORY_BUDGET;
        let inputs = Inputs {
            cap: Some(budget + 100 * MIB),
            store_bytes: 40 * MIB,
        };
        assert_eq!(outside_store(90 * MIB, inputs), (50 * MIB, Some(100 * MIB)));
        let off = Inputs {
            cap: None,
            store_bytes: 200 * MIB,
        };
        assert_eq!(outside_store(90 * MIB, off), (0, None));
    }

    #[test]
    fn this_process_has_a_resident_size() {
        let rss = resident_bytes().expect("statm");
        assert!(rss > MIB, "{rss}");
    }
}
