//! Process settings a daemon applies to itself at start, so running it outside systemd is
//! as safe as running it under the unit: files it creates are private, and it may hold as
//! many connections as its limits allow.

/// Files and directories the process creates are readable by their owner only (the
/// store's files would otherwise follow the caller's umask, often 0644).
pub fn private_umask() {
    rustix::process::umask(rustix::fs::Mode::from_bits_truncate(0o077));
}

/// Raises the soft limit on open files to the hard limit (each connection is one
/// descriptor; the common default soft limit of 1024 would refuse connections long
/// before `limits.max_connections`). Returns the soft limit in force afterwards.
pub fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let current = getrlimit(Resource::Nofile);
    let target = Rlimit {
        current: current.maximum,
        maximum: current.maximum,
    };
    if current.current != current.maximum && setrlimit(Resource::Nofile, target).is_ok() {
        return current.maximum;
    }
    current.current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_ends_at_the_hard_limit() {
        let after = raise_open_files_limit();
        let now = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(after, now.current);
        assert_eq!(now.current, now.maximum);
    }
}
