//! The tool's own CPU time (getrusage) and pinning to chosen cores (sched_setaffinity),
//! through `nix`'s safe wrappers.
//!
//! A device's side of a mutual-TLS handshake costs about as much CPU as the server's, so
//! a run on one machine is only readable with the client's share printed beside it.

use std::time::Duration;

use nix::sys::resource::{getrusage, UsageWho};

use crate::Error;

/// CPU time of this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTimes {
    /// User time.
    pub user: Duration,
    /// System (kernel) time.
    pub system: Duration,
}

impl CpuTimes {
    /// User plus system.
    pub fn total(&self) -> Duration {
        self.user + self.system
    }

    /// The time spent between `earlier` and `self`.
    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

fn duration(tv: nix::sys::time::TimeVal) -> Duration {
    let secs = u64::try_from(tv.tv_sec()).unwrap_or(0);
    let micros = u32::try_from(tv.tv_usec()).unwrap_or(0);
    Duration::from_secs(secs) + Duration::from_micros(u64::from(micros))
}

/// CPU time used by this process so far (all threads).
pub fn process_times() -> Result<CpuTimes, Error> {
    let u =
        getrusage(UsageWho::RUSAGE_SELF).map_err(|e| Error::Invalid(format!("getrusage: {e}")))?;
    Ok(CpuTimes {
        user: duration(u.user_time()),
        system: duration(u.system_time()),
    })
}

/// A list of CPU numbers (`--cpus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

/// Parses a CPU list: `0,2,4-7`.
pub fn parse_cpu_list(text: &str) -> Result<CpuList, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("'{s}' is not a CPU number (expected e.g. 0,2-3)"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b || b - a > 4096 {
                    return Err(format!("'{part}' is not a CPU range"));
                }
                out.extend(a..=b);
            }
            None => out.push(num(part)?),
        }
    }
    if out.is_empty() {
        return Err("the CPU list is empty".into());
    }
    out.sort_unstable();
    out.dedup();
    Ok(CpuList(out))
}

/// Restricts the calling thread (and the threads it starts afterwards) to `cpus`.
pub fn pin_current_thread(cpus: &[usize]) -> Result<(), Error> {
    let mut set = nix::sched::CpuSet::new();
    for &c in cpus {
        set.set(c)
            .map_err(|e| Error::Invalid(format!("--cpus: CPU {c}: {e}")))?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| Error::Invalid(format!("--cpus {cpus:?}: sched_setaffinity: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0").unwrap().0, vec![0]);
        assert_eq!(parse_cpu_list("3,0-2, 2").unwrap().0, vec![0, 1, 2, 3]);
        assert!(parse_cpu_list("").is_err());
        assert!(parse_cpu_list("2-1").is_err());
        assert!(parse_cpu_list("a").is_err());
    }

    #[test]
    fn cpu_time_grows_with_work() {
        let a = process_times().unwrap();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = process_times().unwrap();
        assert!(b.total() >= a.total());
        assert_eq!(b.since(&b), CpuTimes::default());
    }
}
