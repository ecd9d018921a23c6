//! The commands the committer decides ([`Command`]), and what a successful one answers
//! ([`Outcome`]). Each command is decided in `apply` and its submodules, inside one atomic
//! batch.

use crate::clock::UnixTime;
use crate::model::{Authenticator, Ca, Enrollment, Identity, Method, Renewal};

impl Command {
    /// Keys the decision of this command will read (a hint: it may read others, and
    /// need not read these). A shared backend reads a batch's hints in one round trip
    /// before deciding it, instead of one round trip per key.
    pub fn reads(&self) -> Vec<Vec<u8>> {
        use crate::keys;
        let bound = |a: &Authenticator| {
            let mut k = keys::bound(a);
            if let Some(tbs) = crate::revocation::content_of(a) {
                k.push(keys::blocked(&tbs));
            }
            k
        };
        match self {
            Command::AutoEnroll { ca_id, identity } => {
                let mut k = vec![
                    keys::ca(ca_id),
                    keys::name(&identity.name),
                    keys::identity(&identity.id),
                ];
                if let Some(a) = &identity.authenticator {
                    k.extend(bound(a));
                }
                k
            }
            Command::Redeem {
                token,
                identity_id,
                authenticator,
                ca_id,
                ..
            } => {
                let mut k = vec![
                    keys::token_hash(&crate::token::token_sha256(token)),
                    keys::identity(identity_id),
                ];
                k.extend(ca_id.iter().map(|c| keys::ca(c)));
                k.extend(bound(authenticator));
                k
            }
            Command::CreateIdentity { identity, .. } => {
                vec![keys::identity(&identity.id), keys::name(&identity.name)]
            }
            _ => Vec::new(),
        }
    }
}

/// A change to the store, decided by the committer.
#[derive(Clone)]
#[non_exhaustive]
pub enum Command {
    /// Create an identity, optionally with a pending enrollment or an already-bound
    /// authenticator (the admin made by `init`).
    CreateIdentity {
        /// The new identity.
        identity: Identity,
        /// Its pending enrollment, if any.
        enrollment: Option<Enrollment>,
    },
    /// Redeem an `ott` or `ottca` token: consume the enrollment and bind the certificate,
    /// atomically.
    Redeem {
        /// `ott` or `ottca`.
        method: Method,
        /// For `ottca`: the CA the presented chain verified against.
        ca_id: Option<String>,
        /// The token presented.
        token: String,
        /// The identity the handler signed the certificate for (read before signing; the
        /// redemption fails if the token now enrolls someone else).
        identity_id: String,
        /// The certificate to bind.
        authenticator: Authenticator,
        /// The time of the decision.
        now: UnixTime,
    },
    /// Delete an identity, its indexes and its pending enrollment; revoke its
    /// certificates (I7).
    DeleteIdentity {
        /// The identity.
        id: String,
        /// The time of the deletion (the revocation's).
        now: UnixTime,
    },
    /// Replace the pending enrollment of a not-yet-enrolled identity (token re-issue).
    ReplaceEnrollment {
        /// The identity.
        identity_id: String,
        /// The new enrollment.
        enrollment: Enrollment,
    },
    /// CA auto-enrollment: create `identity` (its name is the base; a taken name gets the
    /// smallest free `-NNNNNN` suffix) bound to its authenticator, if the CA still allows it.
    AutoEnroll {
        /// The CA the chain verified against.
        ca_id: String,
        /// The identity to create, with its authenticator.
        identity: Identity,
    },
    /// End an API session before it expires (a logout), on every node.
    EndSession {
        /// The session's id.
        session_id: String,
        /// When it would have expired: the record goes after that.
        expires_at: UnixTime,
        /// The time of the logout.
        now: UnixTime,
    },
    /// Create a third-party CA (name and fingerprint unique).
    CreateCa {
        /// The CA.
        ca: Ca,
    },
    /// Change a CA's name, flags, roles or name format.
    UpdateCa {
        /// The CA.
        id: String,
        /// The changes.
        changes: CaChanges,
        /// The time of the change.
        now: UnixTime,
    },
    /// Mark a CA verified (proof of possession checked by the handler).
    VerifyCa {
        /// The CA.
        id: String,
        /// The verification token the proof carried (must still be the CA's).
        verification_token: String,
        /// The time.
        now: UnixTime,
    },
    /// Bind a renewed certificate to an enrolled identity beside its active one, not yet
    /// active (OpenZiti's `extend`, EST's `simplereenroll`). It replaces a renewal still
    /// pending, whose certificate is unbound.
    Renew {
        /// The identity.
        identity_id: String,
        /// The fingerprint of the certificate the request presented: it must still be the
        /// active one (a renewal decided on a stale read is refused).
        current_sha256: String,
        /// The new certificate and what activates it.
        renewal: Renewal,
        /// The time of the decision.
        now: UnixTime,
    },
    /// Make the pending renewal's certificate the active one and unbind the old one, in one
    /// write; clears an admin's request to renew.
    Activate {
        /// The identity.
        identity_id: String,
        /// The renewal's certificate (SHA-256 fingerprint): a stale or replayed activation
        /// of another certificate is refused.
        fingerprint_sha256: String,
        /// The time of the decision.
        now: UnixTime,
    },
    /// An admin asks an identity to renew its certificate (`isCertExtendRequested`), with a
    /// new key (`isCertKeyRollRequested`), or withdraws the request (both false).
    RequestExtend {
        /// The identity.
        identity_id: String,
        /// Ask for a renewal.
        extend: bool,
        /// Ask for a new key (implies `extend`).
        key_roll: bool,
        /// The time of the request.
        now: UnixTime,
    },
    /// An admin disables an identity: it cannot authenticate, renew or enroll until
    /// enabled, or until `until`.
    Disable {
        /// The identity.
        identity_id: String,
        /// When the suspension ends by itself; `None`: until enabled.
        until: Option<UnixTime>,
        /// The time of the decision.
        now: UnixTime,
    },
    /// An admin ends a suspension.
    Enable {
        /// The identity.
        identity_id: String,
        /// The time of the decision.
        now: UnixTime,
    },
    /// Reset an enrolled identity's enrollment: its certificates are unbound and revoked,
    /// and `enrollment` becomes pending; id, name, roles and admin flag stay.
    ReEnroll {
        /// The identity.
        identity_id: String,
        /// The new enrollment (`ott`).
        enrollment: Enrollment,
        /// The time of the decision.
        now: UnixTime,
    },
    /// An admin lifts the block on a revoked third-party certificate: it may bind again.
    Lift {
        /// The certificate's content hash (the block's key).
        tbs_sha256: String,
    },
    /// Delete a CA. Identities bound to its certificates stay, but can no longer
    /// authenticate; pending `ottca` enrollments for it can no longer be redeemed.
    DeleteCa {
        /// The CA.
        id: String,
    },
}

impl From<crate::enroll::plan::Redemption> for Command {
    fn from(r: crate::enroll::plan::Redemption) -> Self {
        Command::Redeem {
            method: r.method,
            ca_id: r.ca_id,
            token: r.token,
            identity_id: r.identity_id,
            authenticator: r.authenticator,
            now: r.now,
        }
    }
}

impl std::fmt::Debug for Command {
    // Tokens and verification tokens are secrets: only the kind and the ids are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::CreateIdentity { identity, .. } => write!(f, "CreateIdentity({})", identity.id),
            Self::Redeem {
                method,
                identity_id,
                ..
            } => {
                write!(f, "Redeem({}, {identity_id})", method.as_str())
            }
            Self::DeleteIdentity { id, .. } => write!(f, "DeleteIdentity({id})"),
            Self::Disable { identity_id, .. } => write!(f, "Disable({identity_id})"),
            Self::Enable { identity_id, .. } => write!(f, "Enable({identity_id})"),
            Self::ReEnroll { identity_id, .. } => write!(f, "ReEnroll({identity_id})"),
            Self::Lift { tbs_sha256 } => write!(f, "Lift({tbs_sha256})"),
            Self::ReplaceEnrollment { identity_id, .. } => {
                write!(f, "ReplaceEnrollment({identity_id})")
            }
            Self::AutoEnroll { ca_id, identity } => {
                write!(f, "AutoEnroll({ca_id}, {})", identity.id)
            }
            Self::EndSession { session_id, .. } => write!(f, "EndSession({session_id})"),
            Self::CreateCa { ca } => write!(f, "CreateCa({})", ca.id),
            Self::UpdateCa { id, .. } => write!(f, "UpdateCa({id})"),
            Self::VerifyCa { id, .. } => write!(f, "VerifyCa({id})"),
            Self::DeleteCa { id } => write!(f, "DeleteCa({id})"),
            Self::Renew { identity_id, .. } => write!(f, "Renew({identity_id})"),
            Self::Activate { identity_id, .. } => write!(f, "Activate({identity_id})"),
            Self::RequestExtend { identity_id, .. } => write!(f, "RequestExtend({identity_id})"),
        }
    }
}

/// Fields of a CA an update may change (`None`: unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaChanges {
    /// New name.
    pub name: Option<String>,
    /// `isAutoCaEnrollmentEnabled`.
    pub auto: Option<bool>,
    /// `isOttCaEnrollmentEnabled`.
    pub ottca: Option<bool>,
    /// `isAuthEnabled`.
    pub auth: Option<bool>,
    /// `identityRoles`.
    pub identity_roles: Option<Vec<String>>,
    /// `identityNameFormat`.
    pub identity_name_format: Option<String>,
}

/// The result of a successful command.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Outcome {
    /// The identity as it is after the command.
    Identity(Box<Identity>),
    /// The record was deleted.
    Deleted,
    /// The CA as it is after the command.
    Ca(Box<Ca>),
}
