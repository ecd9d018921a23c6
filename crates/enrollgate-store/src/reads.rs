//! The threads that run the workers' reads of a shared database, so that no monoio worker
//! waits on a database round trip: a worker sends the read and awaits its answer, as it
//! does a commit.

use super::{Store, StoreError};

type Job = Box<dyn FnOnce() + Send>;

/// Reads waiting at most; beyond, a read is answered busy.
const QUEUE: usize = 4096;

/// The reader threads (as many as the backend's read connections). They stop when the
/// last handle is dropped.
#[derive(Clone)]
pub(super) struct Readers {
    tx: flume::Sender<Job>,
}

impl Readers {
    pub(super) fn start() -> Self {
        let (tx, rx) = flume::bounded::<Job>(QUEUE);
        for i in 0..super::pg::READ_CONNECTIONS {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("enrollgate-read-{i}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a store reader thread");
            }
        }
        Self { tx }
    }

    pub(super) async fn run<T: Send + 'static>(
        &self,
        store: Store,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = flume::bounded(1);
        let job: Job = Box::new(move || {
            let _ = reply.send(f(&store));
        });
        self.tx.try_send(job).map_err(|e| match e {
            flume::TrySendError::Full(_) => {
                crate::metrics::rate_limited("read_queue");
                StoreError::Busy
            }
            flume::TrySendError::Disconnected(_) => StoreError::ShuttingDown,
        })?;
        answer
            .recv_async()
            .await
            .map_err(|_| StoreError::ShuttingDown)?
    }
}
