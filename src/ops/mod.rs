//! Operations: invariant checking (`fsck`), configuration checking (`check`), online
//! backups and restores (`backup`), and systemd's notification protocol (`notify`).

pub mod backup;
pub mod check;
pub mod expiry;
pub mod fsck;
pub mod memory;
pub mod notify;
pub mod process;
