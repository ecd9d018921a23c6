//! Deciding the commands of a certificate's life after enrollment: a renewal bound beside
//! the active certificate, its activation, and an admin's request to renew.
//!
//! A renewal's certificate is indexed to its identity like the active one (I1), from the
//! moment it is issued: no other identity can bind it, and the gateway finds its identity
//! when it is presented. It authenticates nothing until [`Command::Activate`] swaps it in
//! and unbinds the old certificate, in one write.

use super::{keys, to_json, Batch, Outcome, Snapshot, StoreError, Write};
use crate::clock::UnixTime;
use crate::get_json;
use crate::model::{Activation, Identity, Renewal};

impl<S: super::Source + ?Sized> Batch<'_, S> {
    fn enrolled(&self, identity_id: &str) -> Result<Identity, StoreError> {
        let identity: Identity = get_json(self, &keys::identity(identity_id))?
            .ok_or_else(|| StoreError::NotFound(format!("no identity with id '{identity_id}'")))?;
        if identity.authenticator.is_none() {
            return Err(StoreError::InvalidState(format!(
                "identity '{}' has not enrolled",
                identity.name
            )));
        }
        Ok(identity)
    }

    pub(super) fn renew(
        &mut self,
        identity_id: &str,
        current_sha256: &str,
        renewal: Renewal,
        now: UnixTime,
    ) -> Result<Outcome, StoreError> {
        let mut identity = self.enrolled(identity_id)?;
        super::revoke::refuse_disabled(&identity, now)?;
        // The active certificate renews; so does the bootstrap certificate an EST device
        // enrolled with (recovery of a device that lost its issued certificate).
        let presented = |a: &Option<crate::model::Authenticator>| {
            a.as_ref()
                .is_some_and(|a| a.fingerprint_sha256 == current_sha256)
        };
        if !presented(&identity.authenticator) && !presented(&identity.lifecycle.bootstrap) {
            return Err(StoreError::InvalidState(
                "the certificate presented is no longer this identity's active certificate".into(),
            ));
        }
        let mut writes = Vec::new();
        if let Some(old) = identity.lifecycle.renewal.take() {
            writes.extend(
                keys::bound(&old.authenticator)
                    .into_iter()
                    .map(Write::Delete),
            );
        }
        // Unbound in the store as it will be once the replaced renewal is gone.
        let bound = keys::bound(&renewal.authenticator);
        for k in &bound {
            let replaced = writes
                .iter()
                .any(|w| matches!(w, Write::Delete(d) if d == k));
            if !replaced && self.get(k)?.is_some() {
                return Err(StoreError::CertInUse);
            }
        }
        writes.extend(
            bound
                .into_iter()
                .map(|k| Write::Put(k, identity.id.clone().into_bytes())),
        );
        identity.lifecycle.renewal = Some(renewal);
        identity.updated_at = now;
        writes.push(Write::Put(keys::identity(&identity.id), to_json(&identity)));
        self.commit_writes(writes);
        Ok(Outcome::Identity(Box::new(identity)))
    }

    pub(super) fn activate(
        &mut self,
        identity_id: &str,
        fingerprint_sha256: &str,
        now: UnixTime,
    ) -> Result<Outcome, StoreError> {
        let mut identity = self.enrolled(identity_id)?;
        super::revoke::refuse_disabled(&identity, now)?;
        let renewal = identity
            .lifecycle
            .renewal
            .take()
            .filter(|r| r.authenticator.fingerprint_sha256 == fingerprint_sha256)
            .ok_or_else(|| {
                StoreError::InvalidState(
                    "this certificate is not the identity's pending renewal (verified already, \
                     replaced by a newer one, or never issued to it)"
                        .into(),
                )
            })?;
        let mut writes = Vec::new();
        let first_use = renewal.activation == Activation::FirstUse;
        match identity.authenticator.replace(renewal.authenticator) {
            // A third-party certificate replaced by EST (only the bootstrap path renews
            // one) stays bound as the identity's bootstrap: it never binds elsewhere (I1).
            Some(old) if first_use && !old.issued_by_network => {
                if let Some(older) = identity.lifecycle.bootstrap.replace(old) {
                    writes.extend(keys::bound(&older).into_iter().map(Write::Delete));
                }
            }
            Some(old) => writes.extend(keys::bound(&old).into_iter().map(Write::Delete)),
            None => {}
        }
        identity.lifecycle.extend_requested = false;
        identity.lifecycle.key_roll_requested = false;
        identity.updated_at = now;
        writes.push(Write::Put(keys::identity(&identity.id), to_json(&identity)));
        self.commit_writes(writes);
        Ok(Outcome::Identity(Box::new(identity)))
    }

    pub(super) fn request_extend(
        &mut self,
        identity_id: &str,
        extend: bool,
        key_roll: bool,
        now: UnixTime,
    ) -> Result<Outcome, StoreError> {
        let mut identity = self.enrolled(identity_id)?;
        identity.lifecycle.extend_requested = extend || key_roll;
        identity.lifecycle.key_roll_requested = key_roll;
        identity.updated_at = now;
        self.commit_writes(vec![Write::Put(
            keys::identity(&identity.id),
            to_json(&identity),
        )]);
        Ok(Outcome::Identity(Box::new(identity)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{auth, commit_one, Map};
    use super::super::Command;
    use super::*;
    use crate::model::{Activation, Authenticator, IdentityType, Method};

    fn commit(map: &mut Map, cmd: Command) -> Result<Outcome, StoreError> {
        commit_one(map, cmd)
    }

    /// A store with identity `i1` enrolled with certificate `old`.
    fn enrolled() -> Map {
        enrolled_with(auth("old"))
    }

    fn enrolled_with(active: Authenticator) -> Map {
        let mut map = Map::new();
        let identity = Identity {
            id: "i1".into(),
            name: "dev".into(),
            kind: IdentityType::Device,
            is_admin: false,
            role_attributes: vec![],
            created_at: 100,
            updated_at: 100,
            enrollment_id: None,
            lifecycle: Default::default(),
            authenticator: Some(active),
        };
        let cmd = Command::CreateIdentity {
            identity,
            enrollment: None,
        };
        assert!(commit(&mut map, cmd).is_ok());
        map
    }

    fn renew(current: &str, new: &str) -> Command {
        Command::Renew {
            identity_id: "i1".into(),
            current_sha256: current.into(),
            renewal: Renewal {
                authenticator: auth(new),
                activation: Activation::Verify,
            },
            now: 300,
        }
    }

    fn activate(fp: &str) -> Command {
        Command::Activate {
            identity_id: "i1".into(),
            fingerprint_sha256: fp.into(),
            now: 400,
        }
    }

    fn owner(map: &Map, fp: &str) -> Option<String> {
        map.get(&keys::fingerprint(fp))
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    fn stored(map: &Map) -> Identity {
        get_json(map, &keys::identity("i1")).unwrap().unwrap()
    }

    fn fsck_clean(map: &Map) {
        let report = crate::fsck::check(map.clone());
        assert!(report.violations.is_empty(), "{:?}", report.violations);
    }

    #[test]
    fn a_renewal_is_bound_beside_the_active_certificate_until_activated() {
        let mut map = enrolled();
        commit(&mut map, renew("old", "new")).unwrap();
        let i = stored(&map);
        assert_eq!(i.authenticator.as_ref().unwrap().fingerprint_sha256, "old");
        assert_eq!(
            i.lifecycle
                .renewal
                .as_ref()
                .unwrap()
                .authenticator
                .fingerprint_sha256,
            "new"
        );
        assert_eq!(owner(&map, "old").as_deref(), Some("i1"));
        assert_eq!(owner(&map, "new").as_deref(), Some("i1"));
        fsck_clean(&map);

        commit(&mut map, activate("new")).unwrap();
        let i = stored(&map);
        assert_eq!(i.authenticator.as_ref().unwrap().fingerprint_sha256, "new");
        assert!(i.lifecycle.is_empty(), "{:?}", i.lifecycle);
        assert_eq!(owner(&map, "old"), None, "the old certificate is unbound");
        assert!(!map.contains_key(&keys::content("c-old")));
        assert_eq!(owner(&map, "new").as_deref(), Some("i1"));
        fsck_clean(&map);
    }

    #[test]
    fn a_replayed_or_stale_activation_changes_nothing() {
        let mut map = enrolled();
        commit(&mut map, renew("old", "new")).unwrap();
        commit(&mut map, activate("new")).unwrap();
        let before = map.clone();
        for cmd in [activate("new"), activate("old"), activate("other")] {
            let e = commit(&mut map, cmd).unwrap_err();
            assert!(matches!(e, StoreError::InvalidState(_)), "{e:?}");
        }
        // A renewal decided against the certificate that was just replaced.
        let e = commit(&mut map, renew("old", "newer")).unwrap_err();
        assert!(matches!(e, StoreError::InvalidState(_)), "{e:?}");
        assert_eq!(map, before);
    }

    #[test]
    fn a_second_renewal_replaces_the_first_and_unbinds_it() {
        let mut map = enrolled();
        commit(&mut map, renew("old", "r1")).unwrap();
        commit(&mut map, renew("old", "r2")).unwrap();
        assert_eq!(owner(&map, "r1"), None);
        assert_eq!(owner(&map, "r2").as_deref(), Some("i1"));
        let e = commit(&mut map, activate("r1")).unwrap_err();
        assert!(matches!(e, StoreError::InvalidState(_)), "{e:?}");
        commit(&mut map, activate("r2")).unwrap();
        fsck_clean(&map);
    }

    #[test]
    fn a_renewal_certificate_bound_elsewhere_is_refused() {
        let mut map = enrolled();
        let before = map.clone();
        let e = commit(&mut map, renew("old", "old")).unwrap_err();
        assert_eq!(e, StoreError::CertInUse);
        assert_eq!(map, before);
    }

    #[test]
    fn deleting_an_identity_unbinds_its_renewal_too() {
        let mut map = enrolled();
        commit(&mut map, renew("old", "new")).unwrap();
        commit(
            &mut map,
            Command::DeleteIdentity {
                id: "i1".into(),
                now: 0,
            },
        )
        .unwrap();
        assert!(map.is_empty(), "{:?}", map.keys().collect::<Vec<_>>());
    }

    #[test]
    fn an_admin_request_to_renew_is_cleared_by_the_activation() {
        let mut map = enrolled();
        let req = Command::RequestExtend {
            identity_id: "i1".into(),
            extend: false,
            key_roll: true,
            now: 250,
        };
        commit(&mut map, req).unwrap();
        let l = stored(&map).lifecycle;
        assert!(
            l.extend_requested && l.key_roll_requested,
            "a key roll is a renewal"
        );
        commit(&mut map, renew("old", "new")).unwrap();
        assert!(stored(&map).lifecycle.extend_requested, "until activated");
        commit(&mut map, activate("new")).unwrap();
        let l = stored(&map).lifecycle;
        assert!(!l.extend_requested && !l.key_roll_requested);
    }

    fn renew_est(current: &str, new: &str) -> Command {
        let Command::Renew {
            identity_id,
            current_sha256,
            renewal,
            now,
        } = renew(current, new)
        else {
            unreachable!()
        };
        Command::Renew {
            identity_id,
            current_sha256,
            renewal: Renewal {
                activation: Activation::FirstUse,
                ..renewal
            },
            now,
        }
    }

    #[test]
    fn a_bootstrap_certificate_replaced_by_est_stays_bound_and_may_ask_again() {
        let idevid = Authenticator {
            issued_by_network: false,
            method: Method::Ca,
            ..auth("idev")
        };
        let mut map = enrolled_with(idevid.clone());
        commit(&mut map, renew_est("idev", "l1")).unwrap();
        commit(&mut map, activate("l1")).unwrap();
        let i = stored(&map);
        assert_eq!(i.authenticator.as_ref().unwrap().fingerprint_sha256, "l1");
        assert_eq!(i.lifecycle.bootstrap.as_ref(), Some(&idevid));
        assert_eq!(
            owner(&map, "idev").as_deref(),
            Some("i1"),
            "never binds elsewhere"
        );
        fsck_clean(&map);

        // Recovery: the bootstrap certificate renews; its renewal replaces the active one.
        commit(&mut map, renew_est("idev", "l2")).unwrap();
        commit(&mut map, activate("l2")).unwrap();
        let i = stored(&map);
        assert_eq!(i.authenticator.as_ref().unwrap().fingerprint_sha256, "l2");
        assert_eq!(i.lifecycle.bootstrap.as_ref(), Some(&idevid));
        assert_eq!(owner(&map, "l1"), None);
        fsck_clean(&map);

        let e = commit(&mut map, renew_est("l1", "l3")).unwrap_err();
        assert!(matches!(e, StoreError::InvalidState(_)), "{e:?}");
        commit(
            &mut map,
            Command::DeleteIdentity {
                id: "i1".into(),
                now: 0,
            },
        )
        .unwrap();
        // Nothing of the identity is left but the block of its bootstrap certificate
        // (revocation, I7): it cannot auto-enroll another identity by itself.
        let left: Vec<&Vec<u8>> = map.keys().collect();
        assert!(
            left.iter()
                .all(|k| **k == keys::blocked(&idevid.tbs_sha256) || k.starts_with(b"m:")),
            "{left:?}"
        );
        assert!(map.contains_key(&keys::blocked(&idevid.tbs_sha256)));
    }

    #[test]
    fn an_issued_certificate_replaced_by_first_use_is_unbound() {
        let mut map = enrolled();
        commit(&mut map, renew_est("old", "new")).unwrap();
        commit(&mut map, activate("new")).unwrap();
        assert_eq!(owner(&map, "old"), None);
        assert!(stored(&map).lifecycle.is_empty());
        fsck_clean(&map);
    }

    #[test]
    fn only_an_enrolled_identity_renews() {
        let mut map = Map::new();
        let e = commit(&mut map, renew("old", "new")).unwrap_err();
        assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    }

    /// A disabled identity neither renews nor activates a renewal, and nothing changes.
    #[test]
    fn a_disabled_identity_neither_renews_nor_activates() {
        let mut map = enrolled();
        commit(&mut map, renew("old", "new")).unwrap();
        let disable = Command::Disable {
            identity_id: "i1".into(),
            until: None,
            now: 250,
        };
        commit(&mut map, disable).unwrap();
        let before = map.clone();
        for cmd in [activate("new"), renew("old", "newer")] {
            let e = commit(&mut map, cmd).unwrap_err();
            assert!(matches!(e, StoreError::Disabled(_)), "{e:?}");
        }
        assert_eq!(map, before);
        let enable = Command::Enable {
            identity_id: "i1".into(),
            now: 260,
        };
        commit(&mut map, enable).unwrap();
        commit(&mut map, activate("new")).unwrap();
    }
}
