//! `GET /crl`: the DER CRL of the internal CA (`application/pkix-crl`), no authentication.
//! Signed again only when the store's revocation generation moves or the cached one is
//! half-way to its `nextUpdate` (`pki::crl`).

use super::error::ApiError;
use crate::app::WorkerCtx;
use crate::http::Response;
use crate::pki::crl::Entry;

/// `GET /crl`.
pub(super) async fn get(w: &WorkerCtx) -> Result<Response, ApiError> {
    let shared = &w.shared;
    let now = shared.clock.unix_now();
    let generation = shared.store.read(|s| s.revocation_generation()).await?;
    if let Some(der) = shared.crl.cached(generation, now) {
        return Ok(Response::bytes(200, "application/pkix-crl", der.to_vec()));
    }
    let revoked = shared.store.read(|s| s.revoked()).await?;
    let der = shared.crl.get(generation, now, |number| {
        let mut entries = Vec::new();
        for r in revoked {
            if r.not_after <= now {
                continue;
            }
            // Written from our own certificates' serials: hex. One that is not cannot be
            // listed, and is left to fsck.
            match hex::decode(&r.serial) {
                Ok(serial) => entries.push(Entry {
                    serial,
                    revoked_at: r.revoked_at,
                    not_after: r.not_after,
                }),
                Err(_) => tracing::error!(serial = %r.serial, "a revoked serial is not hex; left off the CRL (see fsck)"),
            }
        }
        let der = shared
            .sign_crl(&entries, now, number)
            .map_err(|e| ApiError::Unhandled(format!("signing the CRL: {e}")))?;
        tracing::info!(entries = entries.len(), number, "CRL signed");
        Ok::<_, ApiError>(der)
    })?;
    Ok(Response::bytes(200, "application/pkix-crl", der.to_vec()))
}
