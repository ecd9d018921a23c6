//! What the unit tests of command decisions share: a store as a map, a command committed to
//! it as the committer would (one batch), and a stand-in authenticator.

use std::collections::BTreeMap;

use super::{Batch, Command, Outcome};
use crate::model::{Authenticator, Method};
use crate::StoreError;

/// A store: every key and value.
pub(crate) type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// Decides `cmd` alone in one batch over `map`, and applies its writes.
pub(crate) fn commit_one(map: &mut Map, cmd: Command) -> Result<Outcome, StoreError> {
    let snapshot = map.clone();
    let mut b = Batch::new(&snapshot);
    let r = b.apply(cmd);
    for (k, v) in b.into_map_changes() {
        match v {
            Some(v) => map.insert(k, v),
            None => map.remove(&k),
        };
    }
    r
}

/// An enrollgate-issued authenticator whose certificate content is the fingerprint's
/// (`c-<fp>`); its PEM is not a certificate.
pub(crate) fn auth(fp: &str) -> Authenticator {
    Authenticator {
        fingerprint_sha256: fp.into(),
        fingerprint_sha1: "s1".into(),
        tbs_sha256: format!("c-{fp}"),
        cert_pem: "pem".into(),
        issued_by_network: true,
        not_before: 0,
        not_after: 10,
        method: Method::Ott,
        ca_id: None,
        created_at: 200,
    }
}
