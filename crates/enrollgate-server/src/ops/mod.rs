//! Operations: invariant checking (`fsck`, the store crate's, re-exported here),
//! configuration checking (`check`), online backups and restores (`backup`), and systemd's
//! notification protocol (`notify`).

pub mod backup;
pub mod check;
pub mod expiry;
pub use crate::store::fsck;
pub mod memory;
pub mod notify;
pub mod process;
