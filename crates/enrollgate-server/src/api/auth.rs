//! Who a client is: the identity its certificate is bound to, if that binding still
//! authenticates now. The sessions it opens are `token::session`'s.
//!
//! A certificate authenticates when (1) the client proved it holds the key (TLS), (2) its
//! fingerprint is bound to an identity (I1), (3) it is within its validity, and (4) for a
//! certificate from a third-party CA, that CA still exists, is verified, has
//! `isAuthEnabled`, and the chain the client sent verifies against it now.
//!
//! A renewal EST issued (`Activation::FirstUse`) becomes the active certificate on its
//! first use: [`authenticate_now`] activates it, then authenticates with it. Until then the
//! old certificate authenticates, for at most `enrollment.reenroll_grace` after the renewal
//! was issued (a device that lost the answer re-enrolls within it; a stolen old certificate
//! does not live on beside the new one).

use super::error::ApiError;
use super::request::Peer;
use crate::app::WorkerCtx;
use crate::clock::UnixTime;
use crate::model::{Activation, Identity};

// The sessions are the core's (`token::session`); their old paths still name them.
pub use crate::token::session::{authenticator_id, Opening, Session, Sessions, SESSION_TTL_SECS};

/// Why a certificate does not authenticate (`401`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No client certificate.
    #[error("no client certificate was presented")]
    NoCertificate,
    /// Not bound to an identity.
    #[error("this certificate is not bound to any identity")]
    Unbound,
    /// A renewal's certificate, not activated yet (`extend-verify` activates it).
    #[error("this certificate renews this identity's and is not active yet: verify it first")]
    NotYetActive,
    /// A renewal's certificate that its first use activates (EST): [`authenticate_now`]
    /// does, and authenticates with it. Holds the identity's id.
    #[error("this certificate renews this identity's and becomes active by its first use")]
    FirstUse(String),
    /// The active certificate of an identity whose EST renewal has waited for its first
    /// use longer than `enrollment.reenroll_grace`: only the new certificate authenticates.
    #[error("this certificate was renewed and the grace for using it has passed: use the renewed certificate")]
    Superseded,
    /// The bootstrap certificate an identity enrolled with by EST: it asks EST for a new
    /// certificate, nothing else.
    #[error("this certificate bootstrapped its identity by EST and authenticates only EST simpleenroll; use the certificate EST issued")]
    Bootstrap,
    /// Outside its validity.
    #[error("this certificate is expired or not yet valid")]
    OutsideValidity,
    /// An admin disabled the identity (`IDENTITY_DISABLED`).
    #[error("identity '{0}' is disabled")]
    Disabled(String),
    /// Its CA no longer allows authentication, or the chain no longer verifies.
    #[error("this certificate does not authenticate through a third-party CA: {0}")]
    CaRefused(String),
    /// The store failed (or cannot be reached: a 503).
    #[error(transparent)]
    Store(crate::store::StoreError),
}

/// The identity bound to the certificate with SHA-256 fingerprint `fp`, read off the
/// worker.
async fn bound_to(w: &WorkerCtx, fp: &str) -> Result<Option<Identity>, AuthError> {
    let fp = fp.to_string();
    w.shared
        .store
        .read(move |s| s.identity_by_fingerprint(&fp))
        .await
        .map_err(AuthError::Store)
}

/// The identity `peer`'s certificate authenticates as at `now`.
pub async fn authenticate(
    w: &WorkerCtx,
    peer: &Peer,
    now: UnixTime,
) -> Result<Identity, AuthError> {
    let fp = peer
        .cert_sha256
        .as_deref()
        .ok_or(AuthError::NoCertificate)?;
    let identity = bound_to(w, fp).await?.ok_or(AuthError::Unbound)?;
    // Before anything else: a disabled identity's first-use renewal is not activated.
    if identity.is_disabled_at(now) {
        return Err(AuthError::Disabled(identity.name));
    }
    let auth = identity
        .authenticator
        .as_ref()
        .filter(|a| a.fingerprint_sha256 == fp)
        .ok_or_else(|| match &identity.lifecycle.renewal {
            Some(r) if r.authenticator.fingerprint_sha256 == fp => match r.activation {
                Activation::FirstUse if !within(&r.authenticator, now) => {
                    AuthError::OutsideValidity
                }
                Activation::FirstUse => AuthError::FirstUse(identity.id.clone()),
                Activation::Verify => AuthError::NotYetActive,
            },
            _ if identity
                .lifecycle
                .bootstrap
                .as_ref()
                .map(|a| a.fingerprint_sha256.as_str())
                == Some(fp) =>
            {
                AuthError::Bootstrap
            }
            _ => AuthError::Unbound,
        })?;
    if !within(auth, now) {
        return Err(AuthError::OutsideValidity);
    }
    if superseded(&identity, w.shared.config.reenroll_grace, now) {
        return Err(AuthError::Superseded);
    }
    if !auth.issued_by_network {
        let cas = w.cas.current(&w.shared.cas);
        cas.verify(
            &peer.chain,
            now,
            "is not verified or does not allow authentication",
            |ca| ca.is_verified && ca.is_auth_enabled,
        )
        .map_err(|e| AuthError::CaRefused(e.to_string()))?;
    }
    Ok(identity)
}

fn within(auth: &crate::model::Authenticator, now: UnixTime) -> bool {
    auth.not_before <= now && now < auth.not_after
}

/// Whether `identity`'s active certificate no longer authenticates because its first-use
/// renewal was issued more than `grace` ago. Read from the record alone: nothing is written
/// when the grace ends, so there is no state to race on.
pub fn superseded(identity: &Identity, grace: std::time::Duration, now: UnixTime) -> bool {
    identity.lifecycle.renewal.as_ref().is_some_and(|r| {
        r.activation == Activation::FirstUse
            && now.saturating_sub(r.authenticator.created_at)
                >= i64::try_from(grace.as_secs()).unwrap_or(i64::MAX)
    })
}

/// [`authenticate`], where a first-use renewal's certificate is activated (one atomic
/// write that unbinds the old certificate) and then authenticates. The outer error is the
/// activation's failure to commit (a full queue, shutdown, the disk); the inner one, why
/// the certificate does not authenticate.
pub async fn authenticate_now(
    w: &WorkerCtx,
    peer: &Peer,
    now: UnixTime,
) -> Result<Result<Identity, AuthError>, ApiError> {
    let identity_id = match authenticate(w, peer, now).await {
        Err(AuthError::FirstUse(identity_id)) => identity_id,
        other => return Ok(other),
    };
    let fp = peer.cert_sha256.as_deref().unwrap_or_default();
    match super::renew::activate(w, &identity_id, fp, now).await {
        // A first use racing this one activated it, or a newer renewal replaced it: the
        // certificate is judged as the store holds it now.
        Ok(_) | Err(ApiError::InvalidState(_)) => Ok(authenticate(w, peer, now).await),
        Err(e) => Err(e),
    }
}

/// The identity a client certificate authenticates as, for opening a session and for
/// renewing: as [`authenticate`] decides, except that an enrollgate-issued
/// certificate that expired less than `renewal.expired_grace` ago still counts (so that a
/// device that was off past its certificate's expiry can renew; zero by default: it
/// cannot, and an admin re-enrolls it). Management never accepts such a certificate.
pub async fn authenticate_renewable(
    w: &WorkerCtx,
    peer: &Peer,
    now: UnixTime,
) -> Result<Identity, AuthError> {
    match authenticate(w, peer, now).await {
        Err(AuthError::OutsideValidity) => {}
        other => return other,
    }
    let grace = i64::try_from(w.shared.config.renewal_expired_grace.as_secs()).unwrap_or(0);
    let refused = Err(AuthError::OutsideValidity);
    let Some(fp) = peer.cert_sha256.as_deref() else {
        return refused;
    };
    let Some(identity) = bound_to(w, fp).await? else {
        return refused;
    };
    // Only expiry is forgiven: every other refusal of `authenticate` must hold here
    // too (a suspended identity stays refused).
    if identity.is_disabled_at(now) {
        return refused;
    }
    let in_grace = identity.authenticator.as_ref().is_some_and(|a| {
        a.fingerprint_sha256 == fp
            && a.issued_by_network
            && now >= a.not_after
            && now < a.not_after.saturating_add(grace)
    });
    if in_grace {
        Ok(identity)
    } else {
        refused
    }
}

/// The identity of an admin, or `401 UNAUTHORIZED`.
pub async fn require_admin(w: &WorkerCtx, peer: &Peer) -> Result<Identity, ApiError> {
    let now = w.shared.clock.unix_now();
    let why = |m: String| {
        ApiError::Unauthorized(format!(
            "the management API needs the client certificate of an admin identity: {m}"
        ))
    };
    match authenticate_now(w, peer, now).await? {
        Ok(identity) if identity.is_admin => Ok(identity),
        Ok(_) => Err(why("this identity is not an admin".into())),
        Err(AuthError::Store(e)) => Err(e.into()),
        Err(e @ AuthError::Disabled(_)) => Err(ApiError::IdentityDisabled(e.to_string())),
        Err(e) => Err(why(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_use_renewal_supersedes_the_old_certificate_after_the_grace() {
        use crate::model::{Authenticator, Lifecycle, Method, Renewal};
        let renewal = |activation| Renewal {
            authenticator: Authenticator {
                fingerprint_sha256: "new".into(),
                fingerprint_sha1: String::new(),
                tbs_sha256: String::new(),
                cert_pem: String::new(),
                issued_by_network: true,
                not_before: 0,
                not_after: 10_000,
                method: Method::Ott,
                ca_id: None,
                created_at: 1_000,
            },
            activation,
        };
        let identity = |renewal| Identity {
            id: "i1".into(),
            name: "dev".into(),
            kind: crate::model::IdentityType::Device,
            is_admin: false,
            role_attributes: vec![],
            created_at: 0,
            updated_at: 0,
            enrollment_id: None,
            authenticator: None,
            lifecycle: Lifecycle {
                renewal,
                ..Default::default()
            },
        };
        let grace = std::time::Duration::from_secs(60);
        let est = identity(Some(renewal(Activation::FirstUse)));
        assert!(!superseded(&est, grace, 1_059));
        assert!(superseded(&est, grace, 1_060));
        // OpenZiti's extend has no grace: its client verifies the new certificate.
        let extend = identity(Some(renewal(Activation::Verify)));
        assert!(!superseded(&extend, grace, 9_999));
        assert!(!superseded(&identity(None), grace, 9_999));
    }
}
