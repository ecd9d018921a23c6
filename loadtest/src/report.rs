//! The figures of a run: the summary table, the JSON document, and the verdict against
//! `--max-error-rate`. Pure functions of what the engine measured.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use crate::engine::Measured;
use crate::schedule::{EndReason, Stop};
use crate::stats::{Percentiles, Recorder};

/// How the run was set up (for the report's header and the JSON).
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// `https://host:port`.
    pub target: String,
    /// The mode's name.
    pub mode: String,
    /// Connections in flight (closed loop) or their cap (open loop).
    pub concurrency: usize,
    /// Open loop: requests a second.
    pub rate: Option<f64>,
    /// Stop condition.
    pub stop: Stop,
    /// Warmup.
    pub warmup: Duration,
    /// Session resumption allowed.
    pub resume: bool,
    /// Key-exchange groups offered (empty: rustls' default).
    pub kx: Vec<String>,
    /// CPUs the tool was pinned to.
    pub cpus: Option<Vec<usize>>,
    /// CPUs the tool could use (for utilisation).
    pub cores: usize,
    /// Time spent preparing (parsing the fleet, making CSRs).
    pub prepare_time: Duration,
    /// The error rate above which the run fails.
    pub max_error_rate: f64,
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct Report {
    /// Its setup.
    pub info: RunInfo,
    /// Its measurements.
    pub measured: Measured,
}

fn percentiles_json(p: &Percentiles) -> Value {
    json!({
        "min": p.min, "mean": p.mean, "p50": p.p50, "p90": p.p90,
        "p99": p.p99, "p99_9": p.p999, "max": p.max,
    })
}

fn counts_json(r: &Recorder) -> Value {
    json!({
        "ok": r.ok,
        "errors": r.errors,
        "byCode": r.by_code,
        "byKind": r.by_kind.iter().map(|(k, v)| (k.label(), *v)).collect::<std::collections::BTreeMap<_, _>>(),
    })
}

impl Report {
    /// The measured requests.
    pub fn recorder(&self) -> &Recorder {
        &self.measured.measured
    }

    /// Successes per second over the measured window.
    pub fn throughput(&self) -> f64 {
        let secs = self.measured.elapsed.as_secs_f64();
        if secs <= 0.0 {
            return 0.0;
        }
        self.recorder().ok as f64 / secs
    }

    /// Failures over completed measured requests (0 when none completed).
    pub fn error_rate(&self) -> f64 {
        let total = self.recorder().total();
        if total == 0 {
            return 0.0;
        }
        self.recorder().errors as f64 / total as f64
    }

    /// The tool's CPU time per completed measured request.
    pub fn cpu_per_request(&self) -> Option<Duration> {
        let total = u32::try_from(self.recorder().total()).ok()?;
        (total > 0).then(|| self.measured.cpu.total() / total)
    }

    /// The tool's CPU time as a share of one core over the measured window.
    pub fn cpu_cores_busy(&self) -> f64 {
        let secs = self.measured.elapsed.as_secs_f64();
        if secs <= 0.0 {
            return 0.0;
        }
        self.measured.cpu.total().as_secs_f64() / secs
    }

    /// True when something was measured and the error rate is within the limit.
    pub fn passed(&self) -> bool {
        self.recorder().total() > 0 && self.error_rate() <= self.info.max_error_rate
    }

    fn load_text(&self) -> String {
        match self.info.rate {
            Some(r) => format!(
                "open loop at {r} requests/s (at most {} in flight)",
                self.info.concurrency
            ),
            None => format!("closed loop, {} connections", self.info.concurrency),
        }
    }

    /// The summary table.
    pub fn table(&self) -> String {
        let r = self.recorder();
        let m = &self.measured;
        let lat = Percentiles::of(&r.latency);
        let hs = Percentiles::of(&r.handshake);
        let lag = Percentiles::of(&r.lag);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "enrollgate-loadtest: {} against {}, {}, {} worker threads{}",
            self.info.mode,
            self.info.target,
            self.load_text(),
            m.threads,
            match &self.info.cpus {
                Some(c) => format!(" pinned to CPUs {c:?}"),
                None => String::new(),
            }
        );
        let _ = writeln!(
            out,
            "  measured      {:.2} s (warmup {:.1} s: {} ok, {} errors; preparation {:.2} s){}",
            m.elapsed.as_secs_f64(),
            self.info.warmup.as_secs_f64(),
            m.warmup.ok,
            m.warmup.errors,
            self.info.prepare_time.as_secs_f64(),
            if m.end == EndReason::Exhausted {
                "; stopped early: tokens or devices ran out"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "  requests      {} ({} ok, {} errors: error rate {:.3}%)",
            r.total(),
            r.ok,
            r.errors,
            self.error_rate() * 100.0
        );
        let _ = writeln!(out, "  throughput    {:.1} successes/s", self.throughput());
        let _ = writeln!(
            out,
            "  latency (ms)  min {:.2}  mean {:.2}  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            lat.min, lat.mean, lat.p50, lat.p90, lat.p99, lat.p999, lat.max
        );
        let _ = writeln!(
            out,
            "  handshake     p50 {:.2} ms  p99 {:.2} ms  (connect + TLS, of successes)",
            hs.p50, hs.p99
        );
        if self.info.rate.is_some() {
            let _ = writeln!(
                out,
                "  start lag     p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (requests started after their due time; counted in latency)",
                lag.p50, lag.p99, lag.max
            );
        }
        let _ = writeln!(
            out,
            "  tool CPU      user {:.2} s + system {:.2} s: {} per request, {:.0}% of one core ({:.0}% of {})",
            m.cpu.user.as_secs_f64(),
            m.cpu.system.as_secs_f64(),
            self.cpu_per_request()
                .map_or("-".to_string(), |d| format!("{:.0} µs", d.as_secs_f64() * 1e6)),
            self.cpu_cores_busy() * 100.0,
            self.cpu_cores_busy() * 100.0 / self.info.cores.max(1) as f64,
            self.info.cores
        );
        for (label, n) in &r.tls {
            let _ = writeln!(out, "  TLS           {label}: {n}");
        }
        if !r.by_kind.is_empty() {
            let _ = writeln!(out, "  errors by kind");
            for (k, n) in &r.by_kind {
                let _ = writeln!(out, "    {:<40} {n}", k.label());
            }
            let _ = writeln!(out, "  errors by code");
            for (c, n) in &r.by_code {
                let _ = writeln!(out, "    {c:<40} {n}");
            }
        }
        out
    }

    /// Every figure, as JSON (times in milliseconds unless named otherwise).
    pub fn json(&self) -> Value {
        let r = self.recorder();
        let m = &self.measured;
        json!({
            "tool": format!("enrollgate-loadtest {}", env!("CARGO_PKG_VERSION")),
            "config": {
                "target": self.info.target,
                "mode": self.info.mode,
                "loop": if self.info.rate.is_some() { "open" } else { "closed" },
                "concurrency": self.info.concurrency,
                "rate": self.info.rate,
                "duration_s": match self.info.stop { Stop::Duration(d) => Some(d.as_secs_f64()), Stop::Count(_) => None },
                "count": match self.info.stop { Stop::Count(n) => Some(n), Stop::Duration(_) => None },
                "warmup_s": self.info.warmup.as_secs_f64(),
                "resume": self.info.resume,
                "kx": self.info.kx,
                "cpus": self.info.cpus,
                "threads": m.threads,
                "cores": self.info.cores,
                "maxErrorRate": self.info.max_error_rate,
            },
            "prepare_s": self.info.prepare_time.as_secs_f64(),
            "elapsed_s": m.elapsed.as_secs_f64(),
            "stoppedEarly": m.end == EndReason::Exhausted,
            "requests": r.total(),
            "ok": r.ok,
            "errors": r.errors,
            "errorRate": self.error_rate(),
            "passed": self.passed(),
            "throughput_per_s": self.throughput(),
            "latency_ms": percentiles_json(&Percentiles::of(&r.latency)),
            "handshake_ms": percentiles_json(&Percentiles::of(&r.handshake)),
            "startLag_ms": percentiles_json(&Percentiles::of(&r.lag)),
            "errorsByCode": r.by_code,
            "errorsByKind": counts_json(r)["byKind"],
            "tls": r.tls,
            "cpu": {
                "user_s": m.cpu.user.as_secs_f64(),
                "system_s": m.cpu.system.as_secs_f64(),
                "perRequest_us": self.cpu_per_request().map(|d| d.as_secs_f64() * 1e6),
                "coresBusy": self.cpu_cores_busy(),
            },
            "devicesUsed": m.devices_used,
            "warmup": counts_json(&m.warmup),
            "timeline": m.timeline.iter().map(|p| json!({
                "t_s": p.t, "interval_s": p.secs, "ok": p.ok, "errors": p.errors,
                "p50_ms": p.latency.p50, "p99_ms": p.latency.p99, "max_ms": p.latency.max,
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cpu::CpuTimes;
    use crate::stats::{Failure, Kind};

    fn report(ok: u64, errors: u64, max: f64) -> Report {
        let mut r = Recorder::default();
        for i in 0..ok {
            r.success(
                Duration::from_millis(10 + i % 10),
                Some(Duration::from_millis(1)),
            );
        }
        for _ in 0..errors {
            r.failure(&Failure::new(Kind::Http(409), "CERT_IN_USE"));
        }
        Report {
            info: RunInfo {
                target: "https://127.0.0.1:8443".into(),
                mode: "ca".into(),
                concurrency: 8,
                rate: None,
                stop: Stop::Count(ok + errors),
                warmup: Duration::ZERO,
                resume: false,
                kx: vec![],
                cpus: None,
                cores: 2,
                prepare_time: Duration::from_millis(5),
                max_error_rate: max,
            },
            measured: Measured {
                measured: r,
                warmup: Recorder::default(),
                timeline: vec![],
                elapsed: Duration::from_secs(2),
                cpu: CpuTimes {
                    user: Duration::from_millis(150),
                    system: Duration::from_millis(50),
                },
                end: EndReason::Finished,
                threads: 2,
                devices_used: 0,
            },
        }
    }

    #[test]
    fn figures_follow_from_the_counts() {
        let r = report(100, 0, 0.0);
        assert_eq!(r.throughput(), 50.0);
        assert_eq!(r.error_rate(), 0.0);
        assert_eq!(r.cpu_per_request(), Some(Duration::from_millis(2)));
        assert!((r.cpu_cores_busy() - 0.1).abs() < 1e-9);
        assert!(r.passed());
        let t = r.table();
        assert!(t.contains("100 ok, 0 errors"), "{t}");
        assert!(t.contains("2000 µs per request"), "{t}");
        let j = r.json();
        assert_eq!(j["ok"], 100);
        assert_eq!(j["passed"], true);
        assert_eq!(j["config"]["count"], 100);
        assert_eq!(j["cpu"]["perRequest_us"], 2000.0);
    }

    #[test]
    fn the_error_rate_decides_the_verdict_and_errors_are_listed() {
        let r = report(99, 1, 0.0);
        assert!(!r.passed());
        assert!((r.error_rate() - 0.01).abs() < 1e-12);
        let t = r.table();
        assert!(t.contains("CERT_IN_USE"), "{t}");
        assert!(t.contains("http 409"), "{t}");
        assert_eq!(r.json()["errorsByCode"]["CERT_IN_USE"], 1);
        assert_eq!(r.json()["errorsByKind"]["http 409"], 1);
        assert!(report(99, 1, 0.01).passed());
        assert!(!report(98, 2, 0.01).passed());
        // Nothing measured is never a pass.
        assert!(!report(0, 0, 1.0).passed());
    }
}
