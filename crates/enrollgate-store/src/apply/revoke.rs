//! Deciding the commands that take a certificate out of service: disabling an identity,
//! enabling it again, re-enrolling it (its certificates unbound and revoked, a new token
//! pending), and lifting the block on a revoked third-party certificate.
//!
//! Revocation itself is a set of writes ([`Batch::revocation_writes`]) that joins the
//! batch unbinding the certificates (`DeleteIdentity`, `ReEnroll`), so no instant exists
//! at which a certificate is unbound but not yet revoked (I7).

use super::{admin_index, keys, to_json, Batch, Outcome, Snapshot, StoreError, Write};
use crate::clock::UnixTime;
use crate::get_json;
use crate::model::{Authenticator, Enrollment, Identity, Suspension};
use crate::revocation::{self, Reason};

/// `Err(Disabled)` when an admin's suspension of `identity` holds at `now`.
pub(super) fn refuse_disabled(identity: &Identity, now: UnixTime) -> Result<(), StoreError> {
    if identity.is_disabled_at(now) {
        return Err(StoreError::Disabled(format!(
            "identity '{}' is disabled",
            identity.name
        )));
    }
    Ok(())
}

impl<S: super::Source + ?Sized> Batch<'_, S> {
    fn existing(&self, identity_id: &str) -> Result<Identity, StoreError> {
        get_json(self, &keys::identity(identity_id))?
            .ok_or_else(|| StoreError::NotFound(format!("no identity with id '{identity_id}'")))
    }

    /// Refuses what would leave no admin able to manage the gateway (`what` names it).
    fn keep_an_admin(
        &self,
        identity: &Identity,
        now: UnixTime,
        what: &str,
    ) -> Result<(), StoreError> {
        if identity.manages() && !self.another_admin(&identity.id, now)? {
            return Err(StoreError::InvalidState(format!(
                "'{}' is the only usable admin identity: {what} it would lock every admin \
                 out; create another one (identity create ... --admin) and enroll it first",
                identity.name
            )));
        }
        Ok(())
    }

    /// `Err(CertRevoked)` when `auth`'s content was blocked by a deletion or re-enrollment.
    pub(super) fn refuse_blocked(&self, auth: &Authenticator) -> Result<(), StoreError> {
        if let Some(tbs) = revocation::content_of(auth) {
            if self.get(&keys::blocked(&tbs))?.is_some() {
                return Err(StoreError::CertRevoked(revocation::REVOKED_MESSAGE.into()));
            }
        }
        Ok(())
    }

    /// The writes that revoke every certificate of `identity`, and bump the revocation
    /// generation when a serial goes on the CRL.
    pub(super) fn revocation_writes(
        &self,
        identity: &Identity,
        reason: Reason,
        now: UnixTime,
    ) -> Result<Vec<Write>, StoreError> {
        let (records, serials) = revocation::records(identity, reason, now);
        let mut writes: Vec<Write> = records.into_iter().map(|(k, v)| Write::Put(k, v)).collect();
        if serials {
            let generation = revocation::generation(self.get(keys::REVOCATIONS)?.as_deref());
            writes.push(Write::Put(
                keys::REVOCATIONS.to_vec(),
                (generation + 1).to_string().into_bytes(),
            ));
        }
        Ok(writes)
    }

    pub(super) fn disable(
        &mut self,
        identity_id: &str,
        until: Option<UnixTime>,
        now: UnixTime,
    ) -> Result<Outcome, StoreError> {
        let mut identity = self.existing(identity_id)?;
        if until.is_some_and(|u| u <= now) {
            return Err(StoreError::InvalidState(
                "a suspension must end in the future".into(),
            ));
        }
        self.keep_an_admin(&identity, now, "disabling")?;
        identity.lifecycle.disabled = Some(Suspension { since: now, until });
        // Its sessions end now, on every node, and stay ended after it is enabled.
        identity.lifecycle.sessions_after = Some(now);
        identity.updated_at = now;
        self.commit_writes(vec![Write::Put(
            keys::identity(&identity.id),
            to_json(&identity),
        )]);
        Ok(Outcome::Identity(Box::new(identity)))
    }

    pub(super) fn enable(
        &mut self,
        identity_id: &str,
        now: UnixTime,
    ) -> Result<Outcome, StoreError> {
        let mut identity = self.existing(identity_id)?;
        // Enabling an identity that is not disabled changes nothing, and says so by its
        // unchanged record.
        if identity.lifecycle.disabled.take().is_some() {
            identity.updated_at = now;
            self.commit_writes(vec![Write::Put(
                keys::identity(&identity.id),
                to_json(&identity),
            )]);
        }
        Ok(Outcome::Identity(Box::new(identity)))
    }

    pub(super) fn re_enroll(
        &mut self,
        identity_id: &str,
        enrollment: Enrollment,
        now: UnixTime,
    ) -> Result<Outcome, StoreError> {
        let mut identity = self.existing(identity_id)?;
        if identity.authenticator.is_none() {
            return Err(StoreError::InvalidState(format!(
                "identity '{}' has not enrolled: issue a new token with `identity reissue`",
                identity.name
            )));
        }
        if enrollment.identity_id != identity.id {
            return Err(StoreError::InvalidState(
                "the enrollment is for another identity".into(),
            ));
        }
        self.keep_an_admin(&identity, now, "re-enrolling")?;
        let mut writes = Vec::new();
        for auth in identity.certificates() {
            writes.extend(keys::bound(auth).into_iter().map(Write::Delete));
        }
        writes.extend(self.revocation_writes(&identity, Reason::ReEnrolled, now)?);
        writes.extend(self.retire_pending(&identity)?);
        writes.extend(self.pending_writes(&enrollment)?);
        if admin_index(&identity).is_some() {
            writes.push(Write::Delete(keys::admin(&identity.id)));
        }
        identity.authenticator = None;
        identity.lifecycle.renewal = None;
        identity.lifecycle.extend_requested = false;
        identity.lifecycle.key_roll_requested = false;
        identity.lifecycle.sessions_after = Some(now);
        identity.enrollment_id = Some(enrollment.id.clone());
        identity.updated_at = now;
        writes.push(Write::Put(keys::identity(&identity.id), to_json(&identity)));
        self.commit_writes(writes);
        Ok(Outcome::Identity(Box::new(identity)))
    }

    pub(super) fn lift(&mut self, tbs_sha256: &str) -> Result<Outcome, StoreError> {
        if self.get(&keys::blocked(tbs_sha256))?.is_none() {
            if self.get(&keys::revoked(tbs_sha256))?.is_some() {
                return Err(StoreError::InvalidState(
                    "a certificate enrollgate issued stays revoked: enroll the identity again \
                     for a new one"
                        .into(),
                ));
            }
            return Err(StoreError::NotFound(format!(
                "no blocked certificate '{}'",
                tbs_sha256.chars().take(64).collect::<String>()
            )));
        }
        self.commit_writes(vec![Write::Delete(keys::blocked(tbs_sha256))]);
        Ok(Outcome::Deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{commit_one, Map};
    use super::super::Command;
    use super::*;
    use crate::model::{IdentityType, Method};

    fn commit(map: &mut Map, cmd: Command) -> Result<Outcome, StoreError> {
        commit_one(map, cmd)
    }

    /// A real certificate (the serial is read from its PEM).
    fn cert_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec!["dev".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem()
    }

    fn auth(fp: &str, issued: bool) -> Authenticator {
        Authenticator {
            fingerprint_sha256: fp.into(),
            fingerprint_sha1: "s1".into(),
            tbs_sha256: format!("c-{fp}"),
            cert_pem: cert_pem(),
            issued_by_network: issued,
            not_before: 0,
            not_after: 10_000,
            method: if issued { Method::Ott } else { Method::Ca },
            ca_id: None,
            created_at: 1,
        }
    }

    fn identity(id: &str, admin: bool, a: Option<Authenticator>) -> Identity {
        Identity {
            id: id.into(),
            name: format!("n-{id}"),
            kind: IdentityType::Device,
            is_admin: admin,
            role_attributes: vec!["r".into()],
            created_at: 1,
            updated_at: 1,
            enrollment_id: None,
            lifecycle: Default::default(),
            authenticator: a,
        }
    }

    fn create(map: &mut Map, i: Identity) {
        let r = commit(
            map,
            Command::CreateIdentity {
                identity: i,
                enrollment: None,
            },
        );
        assert!(r.is_ok(), "{r:?}");
    }

    fn enrollment(id: &str, identity_id: &str) -> Enrollment {
        Enrollment {
            id: id.into(),
            token: String::new(),
            method: Method::Ott,
            identity_id: identity_id.into(),
            ca_id: None,
            created_at: 100,
            expires_at: 10_000,
            jwt: String::new(),
            token_sha256: vec![format!("h-{id}")],
        }
    }

    fn stored(map: &Map, id: &str) -> Identity {
        get_json(map, &keys::identity(id)).unwrap().unwrap()
    }

    #[test]
    fn the_last_usable_admin_cannot_be_disabled_deleted_or_re_enrolled() {
        let mut map = Map::new();
        create(&mut map, identity("a1", true, Some(auth("fa1", true))));
        create(&mut map, identity("a2", true, Some(auth("fa2", true))));
        let disable = |id: &str| Command::Disable {
            identity_id: id.into(),
            until: None,
            now: 100,
        };
        assert!(commit(&mut map, disable("a1")).is_ok());
        let before = map.clone();
        // a1 is disabled: a2 is the only admin that can manage.
        for cmd in [
            disable("a2"),
            Command::DeleteIdentity {
                id: "a2".into(),
                now: 100,
            },
            Command::ReEnroll {
                identity_id: "a2".into(),
                enrollment: enrollment("e1", "a2"),
                now: 100,
            },
        ] {
            let r = commit(&mut map, cmd);
            assert!(matches!(r, Err(StoreError::InvalidState(_))), "{r:?}");
            assert_eq!(map, before);
        }
        let r = commit(
            &mut map,
            Command::Enable {
                identity_id: "a1".into(),
                now: 101,
            },
        );
        assert!(r.is_ok());
        assert!(commit(&mut map, disable("a2")).is_ok());
    }

    #[test]
    fn a_suspension_ends_by_itself_and_must_end_in_the_future() {
        let mut map = Map::new();
        create(&mut map, identity("i1", false, Some(auth("f1", true))));
        let r = commit(
            &mut map,
            Command::Disable {
                identity_id: "i1".into(),
                until: Some(100),
                now: 100,
            },
        );
        assert!(matches!(r, Err(StoreError::InvalidState(_))));
        let r = commit(
            &mut map,
            Command::Disable {
                identity_id: "i1".into(),
                until: Some(200),
                now: 100,
            },
        );
        assert!(r.is_ok());
        let i = stored(&map, "i1");
        assert!(i.is_disabled_at(199));
        assert!(!i.is_disabled_at(200));
    }

    #[test]
    fn a_disabled_identity_cannot_redeem_its_token_until_enabled() {
        let mut map = Map::new();
        let mut e = enrollment("e1", "i1");
        e.token_sha256 = vec![crate::token::token_sha256("tok")];
        let r = commit(
            &mut map,
            Command::CreateIdentity {
                identity: identity("i1", false, None),
                enrollment: Some(e),
            },
        );
        assert!(r.is_ok());
        let disable = Command::Disable {
            identity_id: "i1".into(),
            until: None,
            now: 100,
        };
        assert!(commit(&mut map, disable).is_ok());
        let redeem = || Command::Redeem {
            method: Method::Ott,
            ca_id: None,
            token: "tok".into(),
            identity_id: "i1".into(),
            authenticator: auth("new", true),
            now: 150,
        };
        let before = map.clone();
        let r = commit(&mut map, redeem());
        assert!(matches!(r, Err(StoreError::Disabled(_))), "{r:?}");
        assert_eq!(map, before);
        let enable = Command::Enable {
            identity_id: "i1".into(),
            now: 160,
        };
        assert!(commit(&mut map, enable).is_ok());
        assert!(commit(&mut map, redeem()).is_ok());
    }

    #[test]
    fn re_enrolling_unbinds_revokes_and_keeps_the_identity() {
        let mut map = Map::new();
        let issued = auth("f1", true);
        let serial = revocation::serial_hex(&issued.cert_pem).unwrap();
        create(&mut map, identity("i1", false, Some(issued)));
        let r = commit(
            &mut map,
            Command::ReEnroll {
                identity_id: "i1".into(),
                enrollment: enrollment("e1", "i1"),
                now: 300,
            },
        );
        assert!(r.is_ok(), "{r:?}");
        let i = stored(&map, "i1");
        assert_eq!(i.name, "n-i1");
        assert_eq!(i.role_attributes, ["r"]);
        assert!(i.authenticator.is_none());
        assert_eq!(i.enrollment_id.as_deref(), Some("e1"));
        assert!(!map.contains_key(&keys::fingerprint("f1")));
        assert!(!map.contains_key(&keys::content("c-f1")));
        assert!(map.contains_key(&keys::token_hash("h-e1")));
        let r: revocation::Revoked = get_json(&map, &keys::revoked(&serial)).unwrap().unwrap();
        assert_eq!((r.revoked_at, r.reason), (300, Reason::ReEnrolled));
        assert_eq!(map.get(keys::REVOCATIONS).unwrap(), b"1");
        // Not enrolled now: re-enrolling again is refused.
        let r = commit(
            &mut map,
            Command::ReEnroll {
                identity_id: "i1".into(),
                enrollment: enrollment("e2", "i1"),
                now: 300,
            },
        );
        assert!(matches!(r, Err(StoreError::InvalidState(_))));
    }

    #[test]
    fn a_deleted_third_party_certificate_binds_nothing_until_lifted() {
        let mut map = Map::new();
        let ca = crate::model::Ca {
            id: "ca".into(),
            name: "ca".into(),
            cert_pem: String::new(),
            fingerprint: "cafp".into(),
            is_verified: true,
            verification_token: String::new(),
            is_auto_ca_enrollment_enabled: true,
            is_ott_ca_enrollment_enabled: true,
            is_auth_enabled: true,
            identity_roles: vec![],
            identity_name_format: String::new(),
            created_at: 0,
            updated_at: 0,
        };
        assert!(commit(&mut map, Command::CreateCa { ca }).is_ok());
        let device = auth("fd", false);
        let auto = |id: &str| Command::AutoEnroll {
            ca_id: "ca".into(),
            identity: identity(id, false, Some(device.clone())),
        };
        assert!(commit(&mut map, auto("i1")).is_ok());
        let r = commit(
            &mut map,
            Command::DeleteIdentity {
                id: "i1".into(),
                now: 200,
            },
        );
        assert!(r.is_ok());
        assert!(map.contains_key(&keys::blocked("c-fd")));
        assert!(
            !map.contains_key(keys::REVOCATIONS),
            "no serial: the CRL is unchanged"
        );
        let before = map.clone();
        let r = commit(&mut map, auto("i2"));
        assert!(matches!(r, Err(StoreError::CertRevoked(_))), "{r:?}");
        assert_eq!(map, before);
        // Nor by an ottca token.
        let mut e = enrollment("e3", "i3");
        e.method = Method::Ottca;
        e.ca_id = Some("ca".into());
        e.token_sha256 = vec![crate::token::token_sha256("tok3")];
        let r = commit(
            &mut map,
            Command::CreateIdentity {
                identity: identity("i3", false, None),
                enrollment: Some(e),
            },
        );
        assert!(r.is_ok());
        let redeem = Command::Redeem {
            method: Method::Ottca,
            ca_id: Some("ca".into()),
            token: "tok3".into(),
            identity_id: "i3".into(),
            authenticator: device.clone(),
            now: 250,
        };
        let r = commit(&mut map, redeem);
        assert!(matches!(r, Err(StoreError::CertRevoked(_))), "{r:?}");
        // Lifted, it enrolls again.
        let r = commit(
            &mut map,
            Command::Lift {
                tbs_sha256: "c-fd".into(),
            },
        );
        assert!(r.is_ok());
        let r = commit(
            &mut map,
            Command::Lift {
                tbs_sha256: "c-fd".into(),
            },
        );
        assert!(matches!(r, Err(StoreError::NotFound(_))));
        assert!(commit(&mut map, auto("i2")).is_ok());
    }
}
