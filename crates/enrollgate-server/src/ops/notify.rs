//! systemd's notification protocol (`sd_notify`): `READY=1`, `STOPPING=1`, `STATUS=...`,
//! `WATCHDOG=1`, sent as datagrams to `$NOTIFY_SOCKET` (a path, or `@` for the abstract
//! namespace). Without `$NOTIFY_SOCKET` every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// A connection to the service manager, if there is one.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, String)>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`.
    pub fn from_env() -> Self {
        let socket = std::env::var("NOTIFY_SOCKET")
            .ok()
            .and_then(|path| UnixDatagram::unbound().ok().map(|s| (s, path)));
        Self { socket }
    }

    /// True when a service manager listens.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends `state` (e.g. `READY=1\nSTATUS=serving`); errors are logged, never fatal.
    pub fn send(&self, state: &str) {
        let Some((socket, path)) = &self.socket else {
            return;
        };
        let result = if let Some(name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt as _;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
        } else {
            socket.send_to(state.as_bytes(), path)
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not notify the service manager");
        }
    }
}

/// The watchdog interval systemd asked for (`$WATCHDOG_USEC`, for this process), if any.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}
