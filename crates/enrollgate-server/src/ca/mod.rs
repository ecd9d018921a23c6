//! Third-party CAs in the daemon: the checks and the chain verifier are the protocol
//! crate's ([`enrollgate_proto::ca`], re-exported here); this module adds what needs the
//! store or the metrics: the shared CA set, reloaded from the store when a CA changes
//! (`registry`), and each worker's view of it, with every verification recorded
//! (`metered`).

pub use enrollgate_proto::ca::*;

pub mod metered;
pub mod registry;
