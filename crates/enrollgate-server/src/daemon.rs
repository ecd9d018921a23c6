//! The daemon assembled: from a loaded configuration and bound listeners to workers serving
//! until a shutdown signal, with the store, the committer and the background threads
//! (memory sampler, certificate-expiry counter, the CA change feed of a shared database)
//! started before and stopped after, in the order that keeps every acknowledged write.
//!
//! Two steps, so that what can refuse a configuration does before a port is bound:
//! [`Daemon::open`] (the CA key, the store, the committer), then [`Opened::start`] on the
//! bound listeners; [`Daemon::serve`] runs it, and [`run`] does all three.
//!
//! `enrollgate serve` (`cli/serve.rs` of the `enrollgate` package) wraps it in what belongs
//! to a process: signals, the umask and open-files limit, logging, the metrics endpoint,
//! systemd's notifications and watchdog, SIGHUP's reload. Tests start it in-process on port
//! 0 (`tests/it/in_process.rs`), as they start the binary.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::app::{Shared, SharedRegistry};
use crate::clock::SystemClock;
use crate::config::{Config, PublicUrl};
use crate::ops;
use crate::server::{self, worker, Shutdown, ShutdownSignal};
use crate::store::{commit, Store, StoreError};

/// Why the daemon could not start or stopped in error: one line an operator acts on.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DaemonError(String);

impl DaemonError {
    fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

macro_rules! daemon_from {
    ($($t:ty),*) => {$(
        impl From<$t> for DaemonError {
            fn from(e: $t) -> Self { Self(e.to_string()) }
        }
    )*};
}
daemon_from!(
    crate::app::SetupError,
    crate::store::StoreError,
    std::io::Error
);

/// How often a node of a shared database looks whether another changed a CA, besides the
/// notification it gets at once.
const CA_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// A daemon whose store is open and whose committer runs, before any port is bound
/// ([`Daemon::open`]); [`Opened::start`] builds the rest on the listeners.
pub struct Opened {
    config: Config,
    store: Store,
    commit: commit::CommitHandle,
    committer: CommitterGuard,
}

/// A daemon whose store is open and whose committer and background threads run, about to
/// serve its listeners ([`Daemon::serve`]).
pub struct Daemon {
    // Dropped in this order: the background threads (which hold the store) stop first,
    // then the state, then the committer commits what is queued and lets go of the store.
    background: Background,
    registry: Arc<SharedRegistry>,
    committer: CommitterGuard,
    listeners: Vec<TcpListener>,
    bound: SocketAddr,
    public_url: PublicUrl,
    heartbeats: Arc<[AtomicU64]>,
    shared_store: bool,
}

impl Daemon {
    /// What can refuse the configuration before a port is bound: checks a CA key in a
    /// PKCS#11 token, opens the store `config` names, keeps only hashes of the tokens of a
    /// store made by a version that kept them, and starts the committer.
    pub fn open(config: Config) -> Result<Opened, DaemonError> {
        // A CA key in a PKCS#11 token is checked before anything is opened or written: a
        // wrong PIN, a missing module or a removed key stops here, named.
        if let Some(uri) = crate::pki::hsm::uri_of(&config.ca_key) {
            uri.and_then(|u| crate::pki::hsm::Token::open(&u)?.key())
                .map_err(|e| DaemonError::new(format!("pki.ca_key: {e} (nothing was changed)")))?;
        }
        let store = open_store(&config, false)?;
        // Before the committer: a store of a version that kept tokens keeps only their
        // hashes from here on, and the key derives them (made now for such a directory).
        let (token_key, created) = crate::token::secret::load_or_create(&config.token_key)
            .map_err(|e| DaemonError::new(format!("pki.token_key: {e}")))?;
        if created {
            tracing::info!(path = %config.token_key.display(), "created the token key");
        }
        let (store, _) = store.hash_tokens(&token_key).map_err(|e| {
            DaemonError::new(format!("cannot hash the stored enrollment tokens: {e}"))
        })?;
        drop(token_key);
        let (commit, committer) = commit::spawn(store.clone(), config.commit)?;
        Ok(Opened {
            config,
            store,
            commit,
            committer: CommitterGuard(Some(committer)),
        })
    }

    /// [`Daemon::open`], then [`Opened::start`].
    pub fn start(
        config: Config,
        listeners: Vec<TcpListener>,
        signal: &ShutdownSignal,
    ) -> Result<Self, DaemonError> {
        Self::open(config)?.start(listeners, signal)
    }

    /// The state the workers share, swapped by a reload.
    pub fn registry(&self) -> &Arc<SharedRegistry> {
        &self.registry
    }

    /// The address the first listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.bound
    }

    /// The URL clients are told to enroll at (`server.public_url`, else the bound
    /// address).
    pub fn public_url(&self) -> &PublicUrl {
        &self.public_url
    }

    /// Each worker's heartbeat, which advances while its runtime turns (for a watchdog).
    pub fn heartbeats(&self) -> Arc<[AtomicU64]> {
        self.heartbeats.clone()
    }

    /// True when other gateways share the store (a database): a store refusing writes is
    /// then reconnected to by the gateway itself, and a restart would not help.
    pub fn store_is_shared(&self) -> bool {
        self.shared_store
    }

    /// Serves until `signal` fires, then drains open requests, stops the background
    /// threads, commits what is queued and stops the committer. `on_ready` is called once
    /// every worker accepts (and `/readyz` says so from then on).
    pub fn serve(
        mut self,
        shutdown: &Shutdown,
        signal: ShutdownSignal,
        on_ready: impl FnOnce(&[worker::Started]),
    ) -> Result<(), DaemonError> {
        let listeners = std::mem::take(&mut self.listeners);
        let result = server::run(
            listeners,
            self.registry.clone(),
            shutdown,
            signal,
            |started| {
                crate::telemetry::set_ready(true);
                on_ready(started);
            },
        );
        crate::telemetry::set_ready(false);
        // The background threads hold the store: gone before it closes (see Background).
        shutdown.trigger();
        self.background.stop();
        // Commit what is queued, then stop, whether or not every handle was dropped.
        drop(self.registry);
        if !self.committer.stop() {
            tracing::warn!("the committer did not stop within 10 s");
        }
        result.map_err(|e| DaemonError::new(format!("server failed: {e}")))
    }
}

impl Opened {
    /// Builds the state the workers of `listeners` (one each) will share, subscribes to the
    /// CA change feed and starts the background threads (memory sampler, expiry counter),
    /// which stop when `signal` fires or the daemon is dropped. `config.listen` is not
    /// read: the listeners are bound already.
    pub fn start(
        self,
        listeners: Vec<TcpListener>,
        signal: &ShutdownSignal,
    ) -> Result<Daemon, DaemonError> {
        let Opened {
            config,
            store,
            commit,
            committer,
        } = self;
        let first = listeners
            .first()
            .ok_or_else(|| DaemonError::new("the daemon needs at least one listener"))?;
        let bound = first.local_addr()?;
        let public_url = config
            .public_url
            .clone()
            .unwrap_or_else(|| PublicUrl::for_bound(bound));
        let shared = Arc::new(Shared::new(
            config,
            store,
            commit,
            Arc::new(SystemClock),
            public_url.clone(),
            listeners.len(),
        )?);
        warn_if_near_memory_cap(&shared);
        let heartbeats = shared.heartbeats.clone();
        let shared_store = shared.store.backend().shared();
        // Only the registry keeps the state alive, so a reload can retire it (old keys).
        let registry = Arc::new(SharedRegistry::new(shared.clone()));
        // Several gateways on one database: a CA changed by another node reaches this
        // node's cache through the database's notifications, or its generation polled
        // every second (a notification is lost while the listener reconnects).
        let watched = Arc::downgrade(&registry);
        shared.store.backend().watch_cas(
            CA_POLL,
            Box::new(move || {
                let Some(registry) = watched.upgrade() else {
                    return false;
                };
                let (_, current) = registry.current();
                if let Err(e) = current.cas.reload(&current.store) {
                    tracing::warn!(error = %e, "CA cache refresh after another node's change failed");
                }
                true
            }),
        )?;
        let memory = shared.memory.clone();
        drop(shared);

        // Joined when the daemon stops or is dropped, whatever fails below.
        let mut background = Background::new(signal.clone());
        // limits.max_memory: the sampler sets the connection ceiling the workers keep to.
        let memory_registry = registry.clone();
        let stop = background.stop_when();
        background.threads.push(ops::memory::spawn_sampler(
            memory,
            move || {
                let (_, shared) = memory_registry.current();
                ops::memory::Inputs {
                    cap: shared.config.limits.max_memory,
                    store_bytes: shared.store.memory_bytes(),
                }
            },
            stop,
        )?);
        // Certificate expiry gauges: counted now, before the gateway is ready, then every
        // few minutes.
        let expiry_registry = registry.clone();
        let count_expiry = move || {
            let (_, shared) = expiry_registry.current();
            ops::expiry::scan(&shared.store, shared.clock.unix_now())
        };
        if let Err(e) = ops::expiry::count_now(&count_expiry) {
            tracing::warn!(error = %e, "cannot count expiring certificates; the expiry gauges wait for the next count");
        }
        let stop = background.stop_when();
        background
            .threads
            .push(ops::expiry::spawn_scanner(count_expiry, stop)?);

        Ok(Daemon {
            background,
            registry,
            committer,
            listeners,
            bound,
            public_url,
            heartbeats,
            shared_store,
        })
    }
}

/// The daemon's background threads, stopped and joined when dropped: a thread holding the
/// store must be gone before the store closes and the process exits (a RocksDB call racing
/// the exit's static destructors aborts the process: 'pthread lock: Invalid argument').
struct Background {
    signal: ShutdownSignal,
    stopped: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Background {
    fn new(signal: ShutdownSignal) -> Self {
        Self {
            signal,
            stopped: Arc::default(),
            threads: Vec::new(),
        }
    }

    /// What a background thread polls: the shutdown signal, or the daemon stopping.
    fn stop_when(&self) -> impl Fn() -> bool + Send + 'static {
        let signal = self.signal.clone();
        let stopped = self.stopped.clone();
        move || signal.is_set() || stopped.load(Ordering::Relaxed)
    }

    fn stop(&mut self) {
        self.stopped.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the daemon on `listeners` and serves until `signal` fires (see [`Daemon`]).
pub fn run(
    config: Config,
    listeners: Vec<TcpListener>,
    shutdown: &Shutdown,
    signal: ShutdownSignal,
) -> Result<(), DaemonError> {
    Daemon::start(config, listeners, &signal)?.serve(shutdown, signal, |_| {})
}

/// Opens the store `config` names (`create`: makes it), with the error an operator acts on.
pub fn open_store(config: &Config, create: bool) -> Result<Store, DaemonError> {
    let gateway = match &config.store_url {
        None => String::new(),
        Some(_) => {
            let pem = std::fs::read(&config.ca_cert).map_err(|e| {
                DaemonError::new(format!("pki.ca_cert {}: {e}", config.ca_cert.display()))
            })?;
            crate::store::pg::gateway_of(&pem).map_err(DaemonError::new)?
        }
    };
    Store::open_configured(
        &config.store_path,
        config.store_url.as_ref(),
        &gateway,
        create,
    )
    .map_err(|e| {
        let hint = match e {
            StoreError::Locked(_) => {
                " (another process holds it: is enrollgate already serving it?)"
            }
            StoreError::Absent => {
                " (no store there: make one with `enrollgate init`, or set store.path to it)"
            }
            _ => "",
        };
        let at = match &config.store_url {
            Some(url) => url.to_string(),
            None => config.store_path.display().to_string(),
        };
        DaemonError::new(format!("cannot open the store at {at}{hint}: {e}"))
    })
}

/// Warns when the process is already near `limits.max_memory` at start.
fn warn_if_near_memory_cap(shared: &Shared) {
    let Ok(rss) = ops::memory::resident_bytes() else {
        return;
    };
    let inputs = ops::memory::Inputs {
        cap: shared.config.limits.max_memory,
        store_bytes: shared.store.memory_bytes(),
    };
    if let (rest, Some(share)) = ops::memory::outside_store(rss, inputs) {
        if rest >= share / 10 * 8 {
            tracing::warn!(
                rss_mib = rss >> 20,
                cap_mib = inputs.cap.map(|c| c >> 20),
                "resident memory is already near limits.max_memory; connections will be few"
            );
        }
    }
}

/// Stops the committer when the daemon stops, on an early error too (a certificate
/// refused, a background thread that could not start): a commit thread still holding the store while the process exits
/// aborts it, RocksDB racing the exit's static destructors ('pthread lock: Invalid
/// argument', exit 134 instead of 1).
struct CommitterGuard(Option<commit::Committer>);

impl CommitterGuard {
    /// Commits what is queued and stops; false if that took over 10 s.
    fn stop(&mut self) -> bool {
        self.0
            .take()
            .is_none_or(|c| c.stop(std::time::Duration::from_secs(10)))
    }
}

impl Drop for CommitterGuard {
    fn drop(&mut self) {
        self.stop();
    }
}
