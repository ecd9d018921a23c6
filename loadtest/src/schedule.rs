//! When each request starts, and when the run stops: shared by all worker threads.
//!
//! - **Closed loop** (no `--rate`): every worker keeps its share of `--concurrency` in
//!   flight; a request's clock starts when it starts.
//! - **Open loop** (`--rate R`): request `k` is due at `start + k/R`, whether or not the
//!   server kept up. A worker claims the next due request only when it has a free
//!   connection slot; if none is free until later, the request starts late and its latency
//!   still counts from its due time, so a slow server cannot hide its queue (no
//!   coordinated omission). `--concurrency` is then the cap on connections in flight.
//!
//! Requests are numbered from 0 across the whole run (warmup included); the number picks
//! the payload (token, CSR). Requests due before `start + warmup` are warmup: done, but
//! not measured. The run stops after `--duration` of measurement or `--count` measured
//! requests, or when the payloads run out.
//!
//! Time is an argument everywhere here, so the tests drive it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// When the measured phase ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// After this long of measurement (requests started before it are finished).
    Duration(Duration),
    /// After this many measured requests.
    Count(u64),
}

/// A request to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// Its number in the run: picks the payload.
    pub index: u64,
    /// When it was due; latency counts from here.
    pub due: Instant,
    /// False for warmup requests.
    pub measured: bool,
}

/// What a worker should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Start this request now.
    Start(Job),
    /// Nothing is due before this instant.
    Wait(Instant),
    /// No more requests.
    Done,
}

/// Why dispatching ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The duration or count was reached.
    Finished,
    /// The tokens or devices ran out first.
    Exhausted,
}

/// The shared dispatcher.
#[derive(Debug)]
pub struct Dispatcher {
    start: Instant,
    measure_from: Instant,
    stop: Stop,
    rate: Option<f64>,
    limit: Option<u64>,
    next: AtomicU64,
    measured: AtomicU64,
    stopped: AtomicBool,
    exhausted: AtomicBool,
}

impl Dispatcher {
    /// A dispatcher starting at `start`; `rate`: open loop at that many requests a second;
    /// `limit`: payloads available (tokens or single-use devices).
    pub fn new(
        start: Instant,
        warmup: Duration,
        stop: Stop,
        rate: Option<f64>,
        limit: Option<u64>,
    ) -> Self {
        Self {
            start,
            measure_from: start + warmup,
            stop,
            rate: rate.filter(|r| r.is_finite() && *r > 0.0),
            limit,
            next: AtomicU64::new(0),
            measured: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            exhausted: AtomicBool::new(false),
        }
    }

    /// When the run started.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// When measurement starts (the end of the warmup).
    pub fn measure_from(&self) -> Instant {
        self.measure_from
    }

    /// True when no more requests will start.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Why it stopped (meaningful once stopped).
    pub fn end_reason(&self) -> EndReason {
        if self.exhausted.load(Ordering::Relaxed) {
            EndReason::Exhausted
        } else {
            EndReason::Finished
        }
    }

    /// Stops dispatching (Ctrl-C, a fatal error).
    pub fn stop_now(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    fn done(&self) -> Claim {
        self.stopped.store(true, Ordering::Relaxed);
        Claim::Done
    }

    /// The due time of request `k` in open loop.
    fn due(&self, k: u64, rate: f64) -> Instant {
        self.start + Duration::from_secs_f64(k as f64 / rate)
    }

    /// The next request for a worker with a free slot. `pending` is the worker's claimed
    /// but not yet due request (open loop), kept between calls.
    pub fn claim(&self, now: Instant, pending: &mut Option<Job>) -> Claim {
        if let Some(job) = *pending {
            if job.due <= now {
                *pending = None;
                return Claim::Start(job);
            }
            return Claim::Wait(job.due);
        }
        if self.is_stopped() {
            return Claim::Done;
        }
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        let due = match self.rate {
            Some(r) => self.due(k, r),
            None => now,
        };
        if let Stop::Duration(d) = self.stop {
            if due >= self.measure_from + d {
                return self.done();
            }
        }
        let measured = due >= self.measure_from;
        if let (true, Stop::Count(n)) = (measured, self.stop) {
            if self.measured.fetch_add(1, Ordering::Relaxed) >= n {
                return self.done();
            }
        }
        if self.limit.is_some_and(|l| k >= l) {
            self.exhausted.store(true, Ordering::Relaxed);
            return self.done();
        }
        let job = Job {
            index: k,
            due,
            measured,
        };
        if due <= now {
            Claim::Start(job)
        } else {
            *pending = Some(job);
            Claim::Wait(due)
        }
    }
}

/// Splits `total` connections over at most `workers` workers, none with zero.
pub fn split_concurrency(total: usize, workers: usize) -> Vec<usize> {
    crate::fleet::split(total.max(1), workers.max(1).min(total.max(1)))
        .into_iter()
        .map(|r| r.len())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn starts(d: &Dispatcher, now: Instant, n: usize) -> Vec<Job> {
        let mut pending = None;
        let mut out = vec![];
        for _ in 0..n {
            match d.claim(now, &mut pending) {
                Claim::Start(j) => out.push(j),
                _ => break,
            }
        }
        out
    }

    #[test]
    fn closed_loop_counts_measured_requests_after_the_warmup() {
        let t0 = Instant::now();
        let d = Dispatcher::new(t0, Duration::from_secs(1), Stop::Count(3), None, None);
        let warm = starts(&d, t0, 2);
        assert_eq!(warm.len(), 2);
        assert!(warm.iter().all(|j| !j.measured && j.due == t0));
        let later = t0 + Duration::from_secs(2);
        let measured = starts(&d, later, 10);
        assert_eq!(measured.len(), 3);
        assert!(measured.iter().all(|j| j.measured));
        assert_eq!(
            measured.iter().map(|j| j.index).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert!(d.is_stopped());
        assert_eq!(d.end_reason(), EndReason::Finished);
        assert_eq!(d.claim(later, &mut None), Claim::Done);
    }

    #[test]
    fn closed_loop_stops_after_the_duration_and_when_payloads_run_out() {
        let t0 = Instant::now();
        let d = Dispatcher::new(
            t0,
            Duration::ZERO,
            Stop::Duration(Duration::from_secs(5)),
            None,
            None,
        );
        assert_eq!(starts(&d, t0 + Duration::from_secs(4), 100).len(), 100);
        assert_eq!(d.claim(t0 + Duration::from_secs(5), &mut None), Claim::Done);
        let d = Dispatcher::new(t0, Duration::ZERO, Stop::Count(100), None, Some(7));
        assert_eq!(starts(&d, t0, 100).len(), 7);
        assert_eq!(d.end_reason(), EndReason::Exhausted);
        // Exactly as many payloads as the count: finished, not exhausted.
        let d = Dispatcher::new(t0, Duration::ZERO, Stop::Count(7), None, Some(7));
        assert_eq!(starts(&d, t0, 100).len(), 7);
        assert_eq!(d.end_reason(), EndReason::Finished);
    }

    #[test]
    fn open_loop_due_times_follow_the_rate_not_the_server() {
        let t0 = Instant::now();
        let d = Dispatcher::new(
            t0,
            Duration::ZERO,
            Stop::Duration(Duration::from_secs(1)),
            Some(10.0),
            None,
        );
        // A worker that comes back late (the server was slow) gets the backlog at once,
        // each request with its original due time.
        let late = t0 + Duration::from_millis(350);
        let mut pending = None;
        let mut jobs = vec![];
        while let Claim::Start(j) = d.claim(late, &mut pending) {
            jobs.push(j);
        }
        assert_eq!(jobs.len(), 4);
        for (k, j) in jobs.iter().enumerate() {
            assert_eq!(j.due, t0 + Duration::from_millis(100 * k as u64));
        }
        // The next one is in the future: held, then started when due.
        assert_eq!(
            d.claim(late, &mut pending),
            Claim::Wait(t0 + Duration::from_millis(400))
        );
        assert!(matches!(
            d.claim(t0 + Duration::from_millis(400), &mut pending),
            Claim::Start(Job { index: 4, .. })
        ));
        // Due times at or past the end are not dispatched: 10 in all.
        let rest = starts(&d, t0 + Duration::from_secs(3), 100);
        assert_eq!(rest.len(), 5);
        assert!(d.is_stopped());
    }

    #[test]
    fn open_loop_warmup_is_by_due_time() {
        let t0 = Instant::now();
        let d = Dispatcher::new(
            t0,
            Duration::from_millis(500),
            Stop::Count(2),
            Some(4.0),
            None,
        );
        let jobs = starts(&d, t0 + Duration::from_secs(10), 100);
        // Due at 0, 250 ms (warmup), 500, 750 ms (measured), then the count is reached.
        assert_eq!(
            jobs.iter().map(|j| j.measured).collect::<Vec<_>>(),
            vec![false, false, true, true]
        );
    }

    #[test]
    fn concurrency_is_shared_without_idle_workers() {
        assert_eq!(split_concurrency(32, 2), vec![16, 16]);
        assert_eq!(split_concurrency(5, 2), vec![3, 2]);
        assert_eq!(split_concurrency(1, 4), vec![1]);
        assert_eq!(split_concurrency(0, 2), vec![1]);
    }
}
