//! Deciding store commands inside a batch.
//!
//! A [`Batch`] reads through to a [`Snapshot`] of the store, overlaid with the writes already
//! decided in this batch, so two commands in one batch see each other: the second redemption
//! of a token, the second binding of a certificate, the second use of a name all fail here,
//! exactly as they would in separate writes. Each command checks everything first and only
//! then records its writes, so a refused command leaves nothing behind.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use super::backend::{Change, Expect, Source, Version, WriteSet};
use super::{get_json, keys, pending_by_token, Snapshot, StoreError};
use crate::clock::UnixTime;
use crate::enroll::{check_token, EnrollError};
use crate::model::{Authenticator, Ca, Enrollment, Identity, Method};
pub use command::{CaChanges, Command, Outcome};

mod command;
mod lifecycle;
mod revoke;
#[cfg(test)]
mod testing;

/// Suffixes tried for a colliding auto-enrolled name (`dev-7-000001` ... `dev-7-999999`):
/// one constant with the room `enroll::MAX_AUTO_NAME_LEN` leaves for them.
pub use crate::enroll::MAX_NAME_SUFFIX;

enum Write {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// Where the search for a free `-NNNNNN` suffix of a base name starts, kept by the
/// committer across batches. Invariant: every suffix below a base's hint is taken, so the
/// search still finds the smallest free one while a fleet of devices sharing a name costs
/// one lookup each, not one per device already enrolled.
pub type SuffixHints = HashMap<String, u32>;

/// The writes decided so far in one atomic batch, and what the decisions read.
pub struct Batch<'a, S: Source + ?Sized> {
    snap: &'a S,
    overlay: HashMap<Vec<u8>, Option<Vec<u8>>>,
    writes: Vec<Write>,
    /// Every key read from `snap` (not from the overlay), with the version first seen
    /// (`None`: absent): the write set's expectations.
    observed: RefCell<HashMap<Vec<u8>, Option<Version>>>,
    /// The keys of `observed` in the order they were first read, so that what a refused
    /// command read can be forgotten.
    observed_order: RefCell<Vec<Vec<u8>>>,
    hints: Option<&'a mut SuffixHints>,
}

/// `base` and `n` when `name` is `base-NNNNNN`.
fn split_suffix(name: &str) -> Option<(&str, u32)> {
    let (base, digits) = name.rsplit_once('-')?;
    if digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit()) {
        Some((base, digits.parse().ok()?))
    } else {
        None
    }
}

impl<S: Source + ?Sized> Batch<'_, S> {
    /// Notes that `key` was read from the source at `version`, unless it was read before:
    /// the first reading is what the commit expects.
    fn observe(&self, key: &[u8], version: Option<Version>) {
        let mut observed = self.observed.borrow_mut();
        if !observed.contains_key(key) {
            observed.insert(key.to_vec(), version);
            self.observed_order.borrow_mut().push(key.to_vec());
        }
    }
}

impl<S: Source + ?Sized> Snapshot for Batch<'_, S> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        let read = self.snap.read(key)?;
        self.observe(key, read.as_ref().map(|r| r.version));
        Ok(read.map(|r| r.value))
    }

    fn any_under(
        &self,
        prefix: &[u8],
        pred: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<bool, StoreError> {
        // This batch's writes first; the snapshot's records only where it left them.
        for (k, v) in &self.overlay {
            if let (true, Some(v)) = (k.starts_with(prefix), v) {
                if pred(k, v) {
                    return Ok(true);
                }
            }
        }
        // Every record seen is expected unchanged at commit (one deleted or replaced by
        // another writer could have answered otherwise). A record created meanwhile is not
        // seen: the decisions that scan (is there another admin?) only lose by a deletion.
        let overlay = &self.overlay;
        let mut found = false;
        self.snap.scan(prefix, &mut |k, v, version| {
            if overlay.contains_key(k) {
                return true;
            }
            self.observe(k, Some(version));
            found = pred(k, v);
            !found
        })?;
        Ok(found)
    }
}

/// The deletions that consume enrollment `e`: its record and every token that redeems it.
fn consumed(e: &Enrollment) -> Vec<Write> {
    let mut writes = vec![Write::Delete(keys::enrollment(&e.id))];
    writes.extend(
        e.token_sha256
            .iter()
            .map(|h| Write::Delete(keys::token_hash(h))),
    );
    writes
}

/// The admin index entry of `identity`, if it can manage the gateway.
fn admin_index(identity: &Identity) -> Option<Write> {
    identity
        .manages()
        .then(|| Write::Put(keys::admin(&identity.id), Vec::new()))
}

fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // Serializing our own plain structs (strings, numbers, vectors) cannot fail.
    serde_json::to_vec(v).expect("records serialize to JSON")
}

impl<'a, S: Source + ?Sized> Batch<'a, S> {
    /// An empty batch over `snap`.
    pub fn new(snap: &'a S) -> Self {
        Self {
            snap,
            overlay: HashMap::new(),
            writes: Vec::new(),
            observed: RefCell::new(HashMap::new()),
            observed_order: RefCell::new(Vec::new()),
            hints: None,
        }
    }

    /// An empty batch over `snap` that uses and maintains `hints`.
    pub fn with_hints(snap: &'a S, hints: &'a mut SuffixHints) -> Self {
        Self {
            hints: Some(hints),
            ..Self::new(snap)
        }
    }

    /// Number of writes decided.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// True when nothing was decided.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    fn commit_writes(&mut self, writes: Vec<Write>) {
        for w in writes {
            match &w {
                Write::Put(k, v) => self.overlay.insert(k.clone(), Some(v.clone())),
                Write::Delete(k) => self.overlay.insert(k.clone(), None),
            };
            self.writes.push(w);
        }
    }

    /// The decided writes as one write set: the last value of each key written, as an
    /// insert, an update or a delete of the version the decisions read, and the keys read
    /// and left unchanged as expectations. A key written without being read is read now,
    /// so that a create is always an insert.
    pub fn into_write_set(self) -> Result<WriteSet, StoreError> {
        let mut observed = self.observed.into_inner();
        drop(self.observed_order);
        let mut last: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for w in self.writes {
            match w {
                Write::Put(k, v) => last.insert(k, Some(v)),
                Write::Delete(k) => last.insert(k, None),
            };
        }
        let mut changes = Vec::with_capacity(last.len());
        for (k, v) in last {
            let base = match observed.remove(&k) {
                Some(base) => base,
                None => self.snap.read(&k)?.map(|r| r.version),
            };
            match (base, v) {
                (None, Some(v)) => changes.push(Change::Insert(k, v)),
                (Some(at), Some(v)) => changes.push(Change::Update(k, v, at)),
                (Some(at), None) => changes.push(Change::Delete(k, at)),
                // Created and deleted within the batch: it must still be absent.
                (None, None) => {
                    observed.insert(k, None);
                }
            }
        }
        let mut expect: Vec<Expect> = observed
            .into_iter()
            .map(|(k, base)| match base {
                None => Expect::Absent(k),
                Some(at) => Expect::At(k, at),
            })
            .collect();
        expect.sort_unstable_by(|a, b| a.key().cmp(b.key()));
        Ok(WriteSet { expect, changes })
    }

    /// The decided writes as a map (for tests).
    pub fn into_map_changes(self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        self.writes
            .into_iter()
            .map(|w| match w {
                Write::Put(k, v) => (k, Some(v)),
                Write::Delete(k) => (k, None),
            })
            .collect()
    }

    /// Decides one command; on success its writes join the batch. A refused command writes
    /// nothing, and what it read is not expected at commit either: a refusal is answered
    /// from what the store held when it was read, and must not make the batch's commit
    /// conflict with changes that concern only it (a scan of every identity, say).
    pub fn apply(&mut self, cmd: Command) -> Result<Outcome, StoreError> {
        let read_before = self.observed_order.borrow().len();
        let decided = self.decide(cmd);
        if decided.is_err() {
            let forgotten = self.observed_order.borrow_mut().split_off(read_before);
            let mut observed = self.observed.borrow_mut();
            for key in forgotten {
                observed.remove(&key);
            }
        }
        decided
    }

    fn decide(&mut self, cmd: Command) -> Result<Outcome, StoreError> {
        match cmd {
            Command::CreateIdentity {
                identity,
                enrollment,
            } => self.create_identity(identity, enrollment),
            Command::Redeem {
                method,
                ca_id,
                token,
                identity_id,
                authenticator,
                now,
            } => self.redeem(
                method,
                ca_id.as_deref(),
                &token,
                &identity_id,
                authenticator,
                now,
            ),
            Command::DeleteIdentity { id, now } => self.delete_identity(&id, now),
            Command::Disable {
                identity_id,
                until,
                now,
            } => self.disable(&identity_id, until, now),
            Command::Enable { identity_id, now } => self.enable(&identity_id, now),
            Command::ReEnroll {
                identity_id,
                enrollment,
                now,
            } => self.re_enroll(&identity_id, enrollment, now),
            Command::Lift { tbs_sha256 } => self.lift(&tbs_sha256),
            Command::ReplaceEnrollment {
                identity_id,
                enrollment,
            } => self.replace_enrollment(&identity_id, enrollment),
            Command::AutoEnroll { ca_id, identity } => self.auto_enroll(&ca_id, identity),
            Command::EndSession {
                session_id,
                expires_at,
                now,
            } => self.end_session(&session_id, expires_at, now),
            Command::CreateCa { ca } => self.create_ca(ca),
            Command::UpdateCa { id, changes, now } => self.update_ca(&id, changes, now),
            Command::VerifyCa {
                id,
                verification_token,
                now,
            } => self.verify_ca(&id, &verification_token, now),
            Command::DeleteCa { id } => self.delete_ca(&id),
            Command::Renew {
                identity_id,
                current_sha256,
                renewal,
                now,
            } => self.renew(&identity_id, &current_sha256, renewal, now),
            Command::Activate {
                identity_id,
                fingerprint_sha256,
                now,
            } => self.activate(&identity_id, &fingerprint_sha256, now),
            Command::RequestExtend {
                identity_id,
                extend,
                key_roll,
                now,
            } => self.request_extend(&identity_id, extend, key_roll, now),
        }
    }

    /// The index keys that will bind `auth`, once none of them binds another identity
    /// (I1): neither this certificate's DER nor another encoding of its signature.
    fn unbound(&self, auth: &Authenticator) -> Result<Vec<Vec<u8>>, StoreError> {
        let bound = keys::bound(auth);
        for k in &bound {
            if self.get(k)?.is_some() {
                return Err(StoreError::CertInUse);
            }
        }
        Ok(bound)
    }

    fn ca(&self, id: &str) -> Result<Option<Ca>, StoreError> {
        get_json(self, &keys::ca(id))
    }

    fn auto_enroll(&mut self, ca_id: &str, mut identity: Identity) -> Result<Outcome, StoreError> {
        let ca = self
            .ca(ca_id)?
            .filter(|ca| ca.is_verified && ca.is_auto_ca_enrollment_enabled)
            .ok_or_else(|| {
                StoreError::CaNotUsable("the CA no longer allows auto-enrollment".into())
            })?;
        let auth = identity.authenticator.as_mut().ok_or_else(|| {
            StoreError::InvalidState("auto-enrollment needs a certificate".into())
        })?;
        auth.ca_id = Some(ca.id.clone());
        let auth = &*auth;
        self.refuse_blocked(auth)?;
        let bound = self.unbound(auth)?;
        if self.get(&keys::identity(&identity.id))?.is_some() {
            return Err(StoreError::InvalidState("identity id collision".into()));
        }
        // The collision check is part of this atomic decision, never a separate read.
        let base = identity.name.clone();
        let mut name = base.clone();
        let mut allocated = None;
        if self.name_taken(&name)? {
            let start = self
                .hints
                .as_ref()
                .and_then(|h| h.get(&base).copied())
                .unwrap_or(1);
            let mut suffix = start.max(1);
            loop {
                if suffix > MAX_NAME_SUFFIX {
                    return Err(StoreError::NameInUse(base));
                }
                name = crate::enroll::suffixed_name(&base, suffix);
                if !self.name_taken(&name)? {
                    break;
                }
                suffix += 1;
            }
            allocated = Some(suffix);
        }
        identity.name = name;
        if identity.role_attributes.is_empty() {
            identity.role_attributes = ca.identity_roles.clone();
        }
        let mut writes: Vec<Write> = bound
            .into_iter()
            .map(|k| Write::Put(k, identity.id.clone().into_bytes()))
            .collect();
        writes.push(Write::Put(
            keys::name(&identity.name),
            identity.id.clone().into_bytes(),
        ));
        writes.extend(admin_index(&identity));
        writes.push(Write::Put(keys::identity(&identity.id), to_json(&identity)));
        self.commit_writes(writes);
        if let (Some(n), Some(hints)) = (allocated, self.hints.as_mut()) {
            hints.insert(base, n + 1);
        }
        Ok(Outcome::Identity(Box::new(identity)))
    }

    fn create_ca(&mut self, ca: Ca) -> Result<Outcome, StoreError> {
        if self.get(&keys::ca(&ca.id))?.is_some() {
            return Err(StoreError::InvalidState("CA id collision".into()));
        }
        if self.get(&keys::ca_name(&ca.name))?.is_some() {
            return Err(StoreError::CaNameInUse(ca.name));
        }
        if self.get(&keys::ca_fingerprint(&ca.fingerprint))?.is_some() {
            return Err(StoreError::CaExists);
        }
        self.commit_writes(vec![
            Write::Put(keys::ca_name(&ca.name), ca.id.clone().into_bytes()),
            Write::Put(
                keys::ca_fingerprint(&ca.fingerprint),
                ca.id.clone().into_bytes(),
            ),
            Write::Put(keys::ca(&ca.id), to_json(&ca)),
        ]);
        Ok(Outcome::Ca(Box::new(ca)))
    }

    fn find_ca(&self, id: &str) -> Result<Ca, StoreError> {
        self.ca(id)?
            .ok_or_else(|| StoreError::NotFound(format!("no CA with id '{id}'")))
    }

    fn update_ca(&mut self, id: &str, c: CaChanges, now: UnixTime) -> Result<Outcome, StoreError> {
        let mut ca = self.find_ca(id)?;
        let mut writes = Vec::new();
        if let Some(name) = c.name.filter(|n| *n != ca.name) {
            if self.get(&keys::ca_name(&name))?.is_some() {
                return Err(StoreError::CaNameInUse(name));
            }
            writes.push(Write::Delete(keys::ca_name(&ca.name)));
            writes.push(Write::Put(keys::ca_name(&name), ca.id.clone().into_bytes()));
            ca.name = name;
        }
        if let Some(v) = c.auto {
            ca.is_auto_ca_enrollment_enabled = v;
        }
        if let Some(v) = c.ottca {
            ca.is_ott_ca_enrollment_enabled = v;
        }
        if let Some(v) = c.auth {
            ca.is_auth_enabled = v;
        }
        if let Some(v) = c.identity_roles {
            ca.identity_roles = v;
        }
        if let Some(v) = c.identity_name_format {
            ca.identity_name_format = v;
        }
        ca.updated_at = now;
        writes.push(Write::Put(keys::ca(&ca.id), to_json(&ca)));
        self.commit_writes(writes);
        Ok(Outcome::Ca(Box::new(ca)))
    }

    fn verify_ca(&mut self, id: &str, token: &str, now: UnixTime) -> Result<Outcome, StoreError> {
        let mut ca = self.find_ca(id)?;
        if ca.is_verified {
            return Err(StoreError::CaAlreadyVerified);
        }
        if ca.verification_token != token {
            return Err(StoreError::InvalidState(
                "the verification token changed; fetch the CA again".into(),
            ));
        }
        ca.is_verified = true;
        ca.updated_at = now;
        self.commit_writes(vec![Write::Put(keys::ca(&ca.id), to_json(&ca))]);
        Ok(Outcome::Ca(Box::new(ca)))
    }

    fn delete_ca(&mut self, id: &str) -> Result<Outcome, StoreError> {
        let ca = self.find_ca(id)?;
        self.commit_writes(vec![
            Write::Delete(keys::ca(id)),
            Write::Delete(keys::ca_name(&ca.name)),
            Write::Delete(keys::ca_fingerprint(&ca.fingerprint)),
        ]);
        Ok(Outcome::Deleted)
    }

    /// Whether `name` is taken: by another identity's name or, for a name shaped like an
    /// id, by another identity's id (the CLI resolves an id first, so that identity would
    /// answer to the name). Only an id-shaped name costs the second read.
    fn name_taken(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.get(&keys::name(name))?.is_some()
            || (crate::ids::is_id_shaped(name) && self.get(&keys::identity(name))?.is_some()))
    }

    fn create_identity(
        &mut self,
        mut identity: Identity,
        enrollment: Option<Enrollment>,
    ) -> Result<Outcome, StoreError> {
        if self.get(&keys::identity(&identity.id))?.is_some() {
            return Err(StoreError::InvalidState(format!(
                "an identity with id '{}' already exists",
                identity.id
            )));
        }
        if self.name_taken(&identity.name)? {
            return Err(StoreError::NameInUse(identity.name));
        }
        let mut writes = Vec::new();
        if let Some(auth) = &identity.authenticator {
            for k in self.unbound(auth)? {
                writes.push(Write::Put(k, identity.id.clone().into_bytes()));
            }
        }
        if let Some(e) = &enrollment {
            writes.extend(self.pending_writes(e)?);
            identity.enrollment_id = Some(e.id.clone());
        }
        writes.push(Write::Put(
            keys::name(&identity.name),
            identity.id.clone().into_bytes(),
        ));
        writes.extend(admin_index(&identity));
        writes.push(Write::Put(keys::identity(&identity.id), to_json(&identity)));
        self.commit_writes(writes);
        Ok(Outcome::Identity(Box::new(identity)))
    }

    fn redeem(
        &mut self,
        method: Method,
        ca_id: Option<&str>,
        token: &str,
        identity_id: &str,
        authenticator: Authenticator,
        now: UnixTime,
    ) -> Result<Outcome, StoreError> {
        let enrollment = pending_by_token(self, token)?;
        let enrollment = check_token(enrollment.as_ref(), method, now)?;
        if enrollment.identity_id != identity_id {
            return Err(EnrollError::UnknownToken.into());
        }
        if method == Method::Ottca {
            // The chain was checked against this CA by the handler; it must still be the
            // token's CA and still allow ottca now.
            let usable = match (enrollment.ca_id.as_deref(), ca_id) {
                (Some(want), Some(got)) if want == got => self
                    .ca(want)?
                    .is_some_and(|ca| ca.is_verified && ca.is_ott_ca_enrollment_enabled),
                _ => false,
            };
            if !usable {
                return Err(StoreError::CaNotUsable(
                    "the enrollment's CA no longer allows ottca enrollment".into(),
                ));
            }
        }
        let mut identity: Identity =
            get_json(self, &keys::identity(identity_id))?.ok_or(EnrollError::IdentityGone)?;
        if identity.authenticator.is_some() {
            return Err(EnrollError::UnknownToken.into());
        }
        revoke::refuse_disabled(&identity, now)?;
        self.refuse_blocked(&authenticator)?;
        let bound = self.unbound(&authenticator)?;
        // Every token of the enrollment goes with it (an enrollment migrated from before
        // hashed tokens has two).
        let mut writes = consumed(enrollment);
        for k in bound {
            writes.push(Write::Put(k, identity.id.clone().into_bytes()));
        }
        identity.enrollment_id = None;
        identity.updated_at = now;
        let mut authenticator = authenticator;
        if method == Method::Ottca {
            authenticator.ca_id = enrollment.ca_id.clone();
        }
        identity.authenticator = Some(authenticator);
        writes.extend(admin_index(&identity));
        writes.push(Write::Put(keys::identity(&identity.id), to_json(&identity)));
        self.commit_writes(writes);
        Ok(Outcome::Identity(Box::new(identity)))
    }

    /// The writes that make `e` pending: its record and one token-index entry per token
    /// hash, once none of them is taken (a taken one would let a token redeem another
    /// enrollment).
    fn pending_writes(&self, e: &Enrollment) -> Result<Vec<Write>, StoreError> {
        if e.token_sha256.is_empty() {
            return Err(StoreError::InvalidState(
                "an enrollment needs a token".into(),
            ));
        }
        if self.get(&keys::enrollment(&e.id))?.is_some() {
            return Err(StoreError::InvalidState("enrollment id collision".into()));
        }
        let mut writes = Vec::with_capacity(e.token_sha256.len() + 1);
        for h in &e.token_sha256 {
            if self.get(&keys::token_hash(h))?.is_some() {
                return Err(StoreError::InvalidState("token collision".into()));
            }
            writes.push(Write::Put(keys::token_hash(h), e.id.clone().into_bytes()));
        }
        writes.push(Write::Put(keys::enrollment(&e.id), to_json(e)));
        Ok(writes)
    }

    /// The writes that retire the pending enrollment of `identity`, if it has one.
    fn retire_pending(&self, identity: &Identity) -> Result<Vec<Write>, StoreError> {
        let Some(eid) = &identity.enrollment_id else {
            return Ok(Vec::new());
        };
        Ok(
            match get_json::<Enrollment>(self, &keys::enrollment(eid))? {
                Some(e) => consumed(&e),
                None => vec![Write::Delete(keys::enrollment(eid))],
            },
        )
    }

    /// Whether an identity other than `id` can manage the gateway. Reads the admin index
    /// (a few keys, whatever the number of identities), and each entry's record: an entry
    /// left by an older version that did not keep the index (after a downgrade and an
    /// upgrade) cannot stand in for an admin that is gone. When the index holds no other
    /// admin, the identities are scanned before refusing, so that an admin enrolled under
    /// such a version is found all the same: a scan only when the deletion would be
    /// refused, which leaves an admin in place. An admin disabled at `now` cannot manage
    /// and does not count.
    fn another_admin(&self, id: &str, now: UnixTime) -> Result<bool, StoreError> {
        if self.another_indexed_admin(id, now)? {
            return Ok(true);
        }
        let this = keys::identity(id);
        self.any_under(keys::IDENTITY, &mut |k, v| {
            k != this.as_slice()
                && serde_json::from_slice::<Identity>(v)
                    .is_ok_and(|i| i.manages() && !i.is_disabled_at(now))
        })
    }

    /// Whether the admin index holds an enrolled, usable admin other than `id`.
    fn another_indexed_admin(&self, id: &str, now: UnixTime) -> Result<bool, StoreError> {
        let this = keys::admin(id);
        let mut failed = None;
        let found = self.any_under(keys::ADMIN, &mut |k, _| {
            if k == this.as_slice() {
                return false;
            }
            let other = String::from_utf8_lossy(&k[keys::ADMIN.len()..]);
            match get_json::<Identity>(self, &keys::identity(&other)) {
                Ok(other) => other.is_some_and(|i| i.manages() && !i.is_disabled_at(now)),
                Err(e) => {
                    failed = Some(e);
                    true
                }
            }
        })?;
        match failed {
            Some(e) => Err(e),
            None => Ok(found),
        }
    }

    fn delete_identity(&mut self, id: &str, now: UnixTime) -> Result<Outcome, StoreError> {
        let identity: Identity = get_json(self, &keys::identity(id))?
            .ok_or_else(|| StoreError::NotFound(format!("no identity with id '{id}'")))?;
        // Nobody could manage the gateway any more, and nothing but a new data directory
        // would make an admin again. Decided in the batch: two admins deleting each other
        // at once cannot both go.
        // Only an enrolled admin can manage: one still waiting for its token does not count.
        if identity.manages() && !self.another_admin(id, now)? {
            return Err(StoreError::InvalidState(format!(
                "'{}' is the only enrolled admin identity: create another one (identity \
                 create ... --admin) and enroll it first",
                identity.name
            )));
        }
        let mut writes = vec![
            Write::Delete(keys::identity(id)),
            Write::Delete(keys::name(&identity.name)),
        ];
        if identity.manages() {
            writes.push(Write::Delete(keys::admin(id)));
        }
        for auth in identity.certificates() {
            writes.extend(keys::bound(auth).into_iter().map(Write::Delete));
        }
        writes.extend(self.revocation_writes(
            &identity,
            crate::revocation::Reason::Deleted,
            now,
        )?);
        writes.extend(self.retire_pending(&identity)?);
        self.commit_writes(writes);
        // A freed suffix is free again for the next device with that base name.
        if let (Some((base, n)), Some(hints)) = (split_suffix(&identity.name), self.hints.as_mut())
        {
            if let Some(h) = hints.get_mut(base) {
                *h = (*h).min(n);
            }
        }
        Ok(Outcome::Deleted)
    }

    /// A logout: the session's id is recorded until it would have expired; records of
    /// sessions past their expiry go in the same write. A second logout finds it ended.
    fn end_session(
        &mut self,
        session_id: &str,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> Result<Outcome, StoreError> {
        let key = keys::session_ended(session_id);
        if expires_at <= now || self.get(&key)?.is_some() {
            return Err(StoreError::NotFound("the session has ended".into()));
        }
        let mut expired = Vec::new();
        self.any_under(keys::SESSION_ENDED, &mut |k, v| {
            let until = std::str::from_utf8(v)
                .ok()
                .and_then(|t| t.parse::<UnixTime>().ok());
            if until.is_none_or(|u| u <= now) {
                expired.push(k.to_vec());
            }
            false
        })?;
        let mut writes: Vec<Write> = expired.into_iter().map(Write::Delete).collect();
        writes.push(Write::Put(key, expires_at.to_string().into_bytes()));
        self.commit_writes(writes);
        Ok(Outcome::Deleted)
    }

    fn replace_enrollment(
        &mut self,
        identity_id: &str,
        enrollment: Enrollment,
    ) -> Result<Outcome, StoreError> {
        let mut identity: Identity = get_json(self, &keys::identity(identity_id))?
            .ok_or_else(|| StoreError::NotFound(format!("no identity with id '{identity_id}'")))?;
        if identity.authenticator.is_some() {
            return Err(StoreError::InvalidState(format!(
                "identity '{}' has already enrolled",
                identity.name
            )));
        }
        let mut writes = self.retire_pending(&identity)?;
        writes.extend(self.pending_writes(&enrollment)?);
        identity.enrollment_id = Some(enrollment.id.clone());
        identity.updated_at = enrollment.created_at;
        writes.push(Write::Put(keys::identity(&identity.id), to_json(&identity)));
        self.commit_writes(writes);
        Ok(Outcome::Identity(Box::new(identity)))
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{auth, Map};
    use super::*;
    use crate::model::IdentityType;

    fn identity(id: &str, name: &str) -> Identity {
        Identity {
            id: id.into(),
            name: name.into(),
            kind: IdentityType::Device,
            is_admin: false,
            role_attributes: vec![],
            created_at: 100,
            updated_at: 100,
            enrollment_id: None,
            lifecycle: Default::default(),
            authenticator: None,
        }
    }

    fn enrollment(id: &str, token: &str, identity_id: &str) -> Enrollment {
        Enrollment {
            id: id.into(),
            token: token.into(),
            method: Method::Ott,
            identity_id: identity_id.into(),
            ca_id: None,
            created_at: 100,
            expires_at: 1000,
            jwt: String::new(),
            token_sha256: vec![crate::token::token_sha256(token)],
        }
    }

    /// The token-index key of `token`.
    fn tkey(token: &str) -> Vec<u8> {
        keys::token_hash(&crate::token::token_sha256(token))
    }

    fn commit(map: &mut Map, cmds: Vec<Command>) -> Vec<Result<Outcome, StoreError>> {
        let snapshot = map.clone();
        let mut b = Batch::new(&snapshot);
        let results = cmds.into_iter().map(|c| b.apply(c)).collect();
        for (k, v) in b.into_map_changes() {
            match v {
                Some(v) => map.insert(k, v),
                None => map.remove(&k),
            };
        }
        results
    }

    fn redeem(token: &str, identity_id: &str, fp: &str, now: UnixTime) -> Command {
        Command::Redeem {
            method: Method::Ott,
            ca_id: None,
            token: token.into(),
            identity_id: identity_id.into(),
            authenticator: auth(fp),
            now,
        }
    }

    fn with_pending(map: &mut Map, id: &str, name: &str, token: &str) {
        let r = commit(
            map,
            vec![Command::CreateIdentity {
                identity: identity(id, name),
                enrollment: Some(enrollment(&format!("e-{id}"), token, id)),
            }],
        );
        assert!(r[0].is_ok());
    }

    #[test]
    fn a_name_that_is_another_identitys_id_is_taken() {
        let mut map = Map::new();
        with_pending(&mut map, "AAAAAAAAAAAAAAAA", "first", "tok1");
        assert!(crate::ids::is_id_shaped("AAAAAAAAAAAAAAAA"));
        let r = commit(
            &mut map,
            vec![Command::CreateIdentity {
                identity: identity("i2", "AAAAAAAAAAAAAAAA"),
                enrollment: None,
            }],
        );
        assert!(matches!(&r[0], Err(StoreError::NameInUse(_))), "{r:?}");
        // An auto-enrolled device whose format gives that name gets a suffix instead.
        commit(&mut map, vec![Command::CreateCa { ca: ca_record() }]);
        let r = commit(&mut map, vec![auto("i3", "AAAAAAAAAAAAAAAA", "fp3")]);
        let Ok(Outcome::Identity(i)) = &r[0] else {
            panic!("{r:?}")
        };
        assert_eq!(i.name, "AAAAAAAAAAAAAAAA-000001");
    }

    #[test]
    fn the_last_admin_identity_is_never_deleted() {
        // An admin as init makes it: enrolled, so able to manage.
        let enrolled = |map: &mut Map, id: &str| {
            let admin = Identity {
                is_admin: true,
                lifecycle: Default::default(),
                authenticator: Some(auth(&format!("fp-{id}"))),
                ..identity(id, &format!("admin-{id}"))
            };
            map.insert(keys::identity(id), to_json(&admin));
            map.insert(keys::admin(id), Vec::new());
        };
        let pending = Command::CreateIdentity {
            identity: Identity {
                is_admin: true,
                ..identity("p1", "admin-p1")
            },
            enrollment: None,
        };
        let delete = |id: &str| Command::DeleteIdentity {
            id: id.into(),
            now: 0,
        };
        let mut map = Map::new();
        with_pending(&mut map, "d1", "dev1", "tok1");
        enrolled(&mut map, "a1");
        // An admin that has not enrolled yet cannot manage: it does not count.
        assert!(commit(&mut map, vec![pending])[0].is_ok());
        let before = map.clone();
        let r = commit(&mut map, vec![delete("a1")]);
        assert!(
            matches!(&r[0], Err(StoreError::InvalidState(m)) if m.contains("only enrolled admin"))
        );
        assert_eq!(map, before);
        // With a second enrolled admin one may go, but not both, even within one batch.
        enrolled(&mut map, "a2");
        let r = commit(&mut map, vec![delete("a1"), delete("a2")]);
        assert!(r[0].is_ok());
        assert!(matches!(&r[1], Err(StoreError::InvalidState(_))));
        // The pending admin and devices are deleted as before.
        assert!(commit(&mut map, vec![delete("p1"), delete("d1")])
            .iter()
            .all(Result::is_ok));
    }

    /// The admin index follows the records: an admin enters it when it enrolls (or is
    /// created enrolled), leaves it when deleted; devices and pending admins never enter it.
    /// An entry whose identity is gone or is no admin (left by a version without the index)
    /// does not let the last admin go.
    #[test]
    fn the_admin_index_follows_enrollment_and_deletion() {
        let mut map = Map::new();
        let admins = |map: &Map| -> Vec<String> {
            map.keys()
                .filter_map(|k| k.strip_prefix(keys::ADMIN))
                .map(|id| String::from_utf8_lossy(id).into_owned())
                .collect()
        };
        // Created enrolled, as init makes its admin.
        let first = Identity {
            is_admin: true,
            lifecycle: Default::default(),
            authenticator: Some(auth("fp-a1")),
            ..identity("a1", "admin-1")
        };
        let r = commit(
            &mut map,
            vec![Command::CreateIdentity {
                identity: first,
                enrollment: None,
            }],
        );
        assert!(r[0].is_ok());
        // A pending admin and a device: not in the index until the admin enrolls.
        let r = commit(
            &mut map,
            vec![Command::CreateIdentity {
                identity: Identity {
                    is_admin: true,
                    ..identity("a2", "admin-2")
                },
                enrollment: Some(enrollment("e-a2", "tok-a2", "a2")),
            }],
        );
        assert!(r[0].is_ok());
        with_pending(&mut map, "d1", "dev1", "tok-d1");
        assert!(commit(&mut map, vec![redeem("tok-d1", "d1", "fp-d1", 500)])[0].is_ok());
        assert_eq!(admins(&map), ["a1"]);
        assert!(commit(&mut map, vec![redeem("tok-a2", "a2", "fp-a2", 500)])[0].is_ok());
        assert_eq!(admins(&map), ["a1", "a2"]);
        // Deleted: out of the index.
        let delete = |id: &str| Command::DeleteIdentity {
            id: id.into(),
            now: 0,
        };
        assert!(commit(&mut map, vec![delete("a1")])[0].is_ok());
        assert_eq!(admins(&map), ["a2"]);
        // Stale entries: a device's, and one of an identity that is gone.
        map.insert(keys::admin("d1"), Vec::new());
        map.insert(keys::admin("gone"), Vec::new());
        let before = map.clone();
        let r = commit(&mut map, vec![delete("a2")]);
        assert!(
            matches!(&r[0], Err(StoreError::InvalidState(m)) if m.contains("only enrolled admin")),
            "{r:?}"
        );
        assert_eq!(map, before);
        // An admin enrolled under a version without the index (a downgrade, then an
        // upgrade): not in the index, found by the scan before a refusal.
        let unindexed = Identity {
            is_admin: true,
            lifecycle: Default::default(),
            authenticator: Some(auth("fp-a3")),
            ..identity("a3", "admin-3")
        };
        map.insert(keys::identity("a3"), to_json(&unindexed));
        assert!(commit(&mut map, vec![delete("a2")])[0].is_ok());
        assert_eq!(
            admins(&map),
            ["d1", "gone"],
            "only the stale entries are left"
        );
    }

    #[test]
    fn a_token_is_redeemed_once_even_within_one_batch() {
        let mut map = Map::new();
        with_pending(&mut map, "i1", "dev1", "tok1");
        let r = commit(
            &mut map,
            vec![
                redeem("tok1", "i1", "fpA", 500),
                redeem("tok1", "i1", "fpB", 500),
            ],
        );
        assert!(r[0].is_ok());
        assert_eq!(
            r[1].as_ref().unwrap_err(),
            &StoreError::Enroll(EnrollError::UnknownToken)
        );
        // The enrollment is gone, the certificate indexed, the identity bound.
        assert!(!map.contains_key(&tkey("tok1")));
        assert!(!map.contains_key(&keys::enrollment("e-i1")));
        assert_eq!(map.get(&keys::fingerprint("fpA")).unwrap(), b"i1");
        assert!(!map.contains_key(&keys::fingerprint("fpB")));
        let stored: Identity = get_json(&map, &keys::identity("i1")).unwrap().unwrap();
        assert_eq!(stored.authenticator.unwrap().fingerprint_sha256, "fpA");
        assert_eq!(stored.enrollment_id, None);
        // A later batch sees the same.
        let r = commit(&mut map, vec![redeem("tok1", "i1", "fpC", 500)]);
        assert!(r[0].is_err());
    }

    /// An enrollment migrated from before hashed tokens redeems with either of its two
    /// tokens (the old random one, the derived one), once: the other goes with it.
    #[test]
    fn either_token_of_a_migrated_enrollment_redeems_it_once() {
        for (first, second) in [("old", "derived"), ("derived", "old")] {
            let mut map = Map::new();
            let mut e = enrollment("e-i1", "old", "i1");
            e.token_sha256.push(crate::token::token_sha256("derived"));
            let r = commit(
                &mut map,
                vec![Command::CreateIdentity {
                    identity: identity("i1", "dev1"),
                    enrollment: Some(e),
                }],
            );
            assert!(r[0].is_ok());
            let r = commit(
                &mut map,
                vec![
                    redeem(first, "i1", "fpA", 500),
                    redeem(second, "i1", "fpB", 500),
                ],
            );
            assert!(r[0].is_ok(), "{r:?}");
            assert_eq!(
                r[1].as_ref().unwrap_err(),
                &StoreError::Enroll(EnrollError::UnknownToken)
            );
            for k in [tkey("old"), tkey("derived"), keys::enrollment("e-i1")] {
                assert!(!map.contains_key(&k));
            }
            let r = commit(&mut map, vec![redeem(second, "i1", "fpC", 500)]);
            assert!(r[0].is_err());
        }
    }

    /// No record holds a token or its JWT: only hashes of the tokens.
    #[test]
    fn the_store_holds_no_token() {
        let mut map = Map::new();
        let mut e = enrollment("e-i1", "SECRET-TOKEN", "i1");
        e.token = "SECRET-TOKEN".into();
        e.jwt = "SECRET.JWT".into();
        let r = commit(
            &mut map,
            vec![Command::CreateIdentity {
                identity: identity("i1", "dev1"),
                enrollment: Some(e),
            }],
        );
        assert!(r[0].is_ok());
        for (k, v) in &map {
            for secret in [&b"SECRET"[..], b"SECRET-TOKEN"] {
                assert!(!k.windows(secret.len()).any(|w| w == secret));
                assert!(!v.windows(secret.len()).any(|w| w == secret));
            }
        }
        assert_eq!(map.get(&tkey("SECRET-TOKEN")).unwrap(), b"e-i1");
        // An enrollment without a token hash is refused, not stored unredeemable.
        let mut bare = enrollment("e-i2", "t2", "i2");
        bare.token_sha256.clear();
        let r = commit(
            &mut map,
            vec![Command::CreateIdentity {
                identity: identity("i2", "dev2"),
                enrollment: Some(bare),
            }],
        );
        assert!(matches!(r[0], Err(StoreError::InvalidState(_))), "{r:?}");
    }

    #[test]
    fn an_expired_token_is_refused_and_left_in_place() {
        let mut map = Map::new();
        with_pending(&mut map, "i1", "dev1", "tok1");
        let before = map.clone();
        let r = commit(&mut map, vec![redeem("tok1", "i1", "fpA", 1000)]);
        assert!(matches!(
            r[0],
            Err(StoreError::Enroll(EnrollError::Expired { .. }))
        ));
        assert_eq!(map, before);
    }

    #[test]
    fn a_certificate_binds_to_one_identity() {
        let mut map = Map::new();
        with_pending(&mut map, "i1", "dev1", "tok1");
        with_pending(&mut map, "i2", "dev2", "tok2");
        let r = commit(
            &mut map,
            vec![
                redeem("tok1", "i1", "same", 500),
                redeem("tok2", "i2", "same", 500),
            ],
        );
        assert!(r[0].is_ok());
        assert_eq!(r[1].as_ref().unwrap_err(), &StoreError::CertInUse);
        // The loser's token is still pending.
        assert!(map.contains_key(&tkey("tok2")));
    }

    /// Another encoding of a bound certificate's signature (an ECDSA (r, n - s)) has
    /// another fingerprint but the same content: it binds no second identity, by any
    /// method, within a batch or across batches, until the first identity is deleted.
    #[test]
    fn another_encoding_of_a_bound_certificate_binds_nothing() {
        let twin = |id: &str, name: &str| {
            let mut i = identity(id, name);
            i.authenticator = Some(Authenticator {
                fingerprint_sha256: "fpB".into(),
                tbs_sha256: "c-fpA".into(),
                ..auth("fpB")
            });
            Command::AutoEnroll {
                ca_id: "ca".into(),
                identity: i,
            }
        };
        let mut map = Map::new();
        commit(&mut map, vec![Command::CreateCa { ca: ca_record() }]);
        let r = commit(&mut map, vec![auto("i1", "dev", "fpA"), twin("i2", "dev")]);
        assert!(r[0].is_ok());
        assert_eq!(r[1].as_ref().unwrap_err(), &StoreError::CertInUse);
        let r = commit(&mut map, vec![twin("i3", "dev")]);
        assert_eq!(r[0].as_ref().unwrap_err(), &StoreError::CertInUse);
        with_pending(&mut map, "i4", "plc", "tok4");
        let mut redeem_twin = redeem("tok4", "i4", "fpB", 500);
        if let Command::Redeem { authenticator, .. } = &mut redeem_twin {
            authenticator.tbs_sha256 = "c-fpA".into();
        }
        let r = commit(&mut map, vec![redeem_twin.clone()]);
        assert_eq!(r[0].as_ref().unwrap_err(), &StoreError::CertInUse);
        assert_eq!(map.get(&keys::content("c-fpA")).unwrap(), b"i1");
        // Deleted, the content is free again.
        let r = commit(
            &mut map,
            vec![Command::DeleteIdentity {
                id: "i1".into(),
                now: 0,
            }],
        );
        assert!(r[0].is_ok());
        assert!(!map.contains_key(&keys::content("c-fpA")));
        let r = commit(&mut map, vec![redeem_twin]);
        assert!(r[0].is_ok(), "{r:?}");
    }

    #[test]
    fn a_write_set_expects_what_was_read_and_forgets_what_a_refused_command_read() {
        let mut map = Map::new();
        commit(
            &mut map,
            vec![Command::CreateIdentity {
                identity: identity("a", "taken"),
                enrollment: None,
            }],
        );
        let mut batch = Batch::new(&map);
        // Refused: the name is taken. What it read is not the commit's business.
        assert!(batch
            .apply(Command::CreateIdentity {
                identity: identity("x", "taken"),
                enrollment: None,
            })
            .is_err());
        batch
            .apply(Command::CreateIdentity {
                identity: identity("b", "fresh"),
                enrollment: None,
            })
            .unwrap();
        let set = batch.into_write_set().unwrap();
        let expected: Vec<&[u8]> = set.expect.iter().map(|e| e.key()).collect();
        assert!(
            !expected.contains(&keys::name("taken").as_slice()),
            "{expected:?}"
        );
        assert!(
            !expected.contains(&keys::identity("x").as_slice()),
            "{expected:?}"
        );
        // The accepted command's writes are creates: inserts, never overwrites.
        let changed: Vec<(&[u8], bool)> = set
            .changes
            .iter()
            .map(|c| (c.key(), matches!(c, crate::backend::Change::Insert(..))))
            .collect();
        assert!(
            changed.contains(&(keys::name("fresh").as_slice(), true)),
            "{changed:?}"
        );
        assert!(
            changed.contains(&(keys::identity("b").as_slice(), true)),
            "{changed:?}"
        );
        assert!(changed.iter().all(|(_, insert)| *insert), "{changed:?}");
    }

    #[test]
    fn names_are_unique_within_and_across_batches() {
        let mut map = Map::new();
        let r = commit(
            &mut map,
            vec![
                Command::CreateIdentity {
                    identity: identity("a", "same"),
                    enrollment: None,
                },
                Command::CreateIdentity {
                    identity: identity("b", "same"),
                    enrollment: None,
                },
            ],
        );
        assert!(r[0].is_ok());
        assert_eq!(
            r[1].as_ref().unwrap_err(),
            &StoreError::NameInUse("same".into())
        );
        assert!(!map.contains_key(&keys::identity("b")));
    }

    fn auto(id: &str, name: &str, fp: &str) -> Command {
        let mut i = identity(id, name);
        i.authenticator = Some(auth(fp));
        Command::AutoEnroll {
            ca_id: "ca".into(),
            identity: i,
        }
    }

    fn ca_record() -> Ca {
        Ca {
            id: "ca".into(),
            name: "ca".into(),
            cert_pem: String::new(),
            fingerprint: "cafp".into(),
            is_verified: true,
            verification_token: String::new(),
            is_auto_ca_enrollment_enabled: true,
            is_ott_ca_enrollment_enabled: false,
            is_auth_enabled: true,
            identity_roles: vec!["r".into()],
            identity_name_format: String::new(),
            created_at: 0,
            updated_at: 0,
        }
    }

    fn commit_hinted(
        map: &mut Map,
        hints: &mut SuffixHints,
        cmds: Vec<Command>,
    ) -> Vec<Result<Outcome, StoreError>> {
        let snapshot = map.clone();
        let mut b = Batch::with_hints(&snapshot, hints);
        let results = cmds.into_iter().map(|c| b.apply(c)).collect();
        for (k, v) in b.into_map_changes() {
            match v {
                Some(v) => map.insert(k, v),
                None => map.remove(&k),
            };
        }
        results
    }

    fn name_of(r: &Result<Outcome, StoreError>) -> String {
        match r {
            Ok(Outcome::Identity(i)) => i.name.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn colliding_names_get_the_smallest_free_suffix_with_or_without_hints() {
        for use_hints in [false, true] {
            let mut map = Map::new();
            let mut hints = SuffixHints::new();
            commit(&mut map, vec![Command::CreateCa { ca: ca_record() }]);
            let mut run = |map: &mut Map, cmds| {
                if use_hints {
                    commit_hinted(map, &mut hints, cmds)
                } else {
                    commit(map, cmds)
                }
            };
            let r = run(
                &mut map,
                (0..4)
                    .map(|i| auto(&format!("i{i}"), "dev", &format!("fp{i}")))
                    .collect(),
            );
            let names: Vec<String> = r.iter().map(name_of).collect();
            assert_eq!(names, ["dev", "dev-000001", "dev-000002", "dev-000003"]);
            // Freeing dev-000002 makes it the next one given.
            assert!(run(
                &mut map,
                vec![Command::DeleteIdentity {
                    id: "i2".into(),
                    now: 0
                }]
            )[0]
            .is_ok());
            let r = run(
                &mut map,
                vec![auto("i9", "dev", "fp9"), auto("i10", "dev", "fp10")],
            );
            assert_eq!(name_of(&r[0]), "dev-000002", "hints={use_hints}");
            assert_eq!(name_of(&r[1]), "dev-000004", "hints={use_hints}");
            // The same certificate twice: one identity.
            let r = run(&mut map, vec![auto("i11", "x", "fp0")]);
            assert_eq!(r[0].as_ref().unwrap_err(), &StoreError::CertInUse);
        }
    }

    #[test]
    fn a_taken_ca_name_is_reported_as_a_ca_name() {
        let mut map = Map::new();
        let mut other = ca_record();
        other.id = "ca2".into();
        other.name = "other".into();
        other.fingerprint = "otherfp".into();
        commit(
            &mut map,
            vec![
                Command::CreateCa { ca: ca_record() },
                Command::CreateCa { ca: other },
            ],
        );
        let mut dup = ca_record();
        dup.id = "ca3".into();
        dup.fingerprint = "dupfp".into();
        let rename = CaChanges {
            name: Some("ca".into()),
            ..CaChanges::default()
        };
        let r = commit(
            &mut map,
            vec![
                Command::CreateCa { ca: dup },
                Command::UpdateCa {
                    id: "ca2".into(),
                    changes: rename,
                    now: 1,
                },
            ],
        );
        for e in r {
            let e = e.unwrap_err();
            assert_eq!(e, StoreError::CaNameInUse("ca".into()));
            assert_eq!(e.to_string(), "a CA named 'ca' already exists");
        }
        assert!(!map.contains_key(&keys::ca("ca3")));
    }

    #[test]
    fn auto_enrollment_needs_the_ca_to_still_allow_it() {
        let mut map = Map::new();
        let r = commit(&mut map, vec![auto("i1", "dev", "fp")]);
        assert!(matches!(r[0], Err(StoreError::CaNotUsable(_))));
        assert!(map.is_empty());
    }

    /// The CA that bound a third-party certificate is recorded with it (what deleting the
    /// CA touches), by auto-enrollment and by `ottca`; an `ott` certificate names none.
    #[test]
    fn the_binding_ca_is_recorded_with_a_third_party_certificate() {
        let mut map = Map::new();
        let mut ottca = ca_record();
        ottca.is_ott_ca_enrollment_enabled = true;
        commit(&mut map, vec![Command::CreateCa { ca: ottca }]);
        let mut pending = enrollment("e-i2", "tok2", "i2");
        pending.method = Method::Ottca;
        pending.ca_id = Some("ca".into());
        let r = commit(
            &mut map,
            vec![
                Command::CreateIdentity {
                    identity: identity("i2", "plc"),
                    enrollment: Some(pending),
                },
                Command::CreateIdentity {
                    identity: identity("i3", "user"),
                    enrollment: Some(enrollment("e-i3", "tok3", "i3")),
                },
            ],
        );
        assert!(r.iter().all(Result::is_ok));
        let r = commit(
            &mut map,
            vec![
                auto("i1", "dev", "fp1"),
                Command::Redeem {
                    method: Method::Ottca,
                    ca_id: Some("ca".into()),
                    token: "tok2".into(),
                    identity_id: "i2".into(),
                    authenticator: auth("fp2"),
                    now: 200,
                },
                redeem("tok3", "i3", "fp3", 200),
            ],
        );
        let bound_by = |r: &Result<Outcome, StoreError>| match r {
            Ok(Outcome::Identity(i)) => i.authenticator.as_ref().unwrap().ca_id.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(bound_by(&r[0]), Some("ca".into()));
        assert_eq!(bound_by(&r[1]), Some("ca".into()));
        assert_eq!(bound_by(&r[2]), None);
        let stored: Identity = serde_json::from_slice(&map[&keys::identity("i1")]).unwrap();
        assert_eq!(stored.authenticator.unwrap().ca_id, Some("ca".into()));
    }

    #[test]
    fn suffixes_parse() {
        assert_eq!(split_suffix("dev-7-000001"), Some(("dev-7", 1)));
        assert_eq!(split_suffix("dev-7"), None);
        assert_eq!(split_suffix("dev-00001"), None);
    }

    #[test]
    fn a_token_of_another_identity_is_refused() {
        let mut map = Map::new();
        with_pending(&mut map, "i1", "dev1", "tok1");
        let r = commit(&mut map, vec![redeem("tok1", "other", "fp", 500)]);
        assert!(r[0].is_err());
    }

    #[test]
    fn delete_removes_every_index() {
        let mut map = Map::new();
        with_pending(&mut map, "i1", "dev1", "tok1");
        with_pending(&mut map, "i2", "dev2", "tok2");
        commit(&mut map, vec![redeem("tok1", "i1", "fp1", 500)]);
        let r = commit(
            &mut map,
            vec![
                Command::DeleteIdentity {
                    id: "i1".into(),
                    now: 0,
                },
                Command::DeleteIdentity {
                    id: "i2".into(),
                    now: 0,
                },
            ],
        );
        assert!(r.iter().all(Result::is_ok));
        assert!(map.is_empty(), "{:?}", map.keys().collect::<Vec<_>>());
        let r = commit(
            &mut map,
            vec![Command::DeleteIdentity {
                id: "i1".into(),
                now: 0,
            }],
        );
        assert!(matches!(r[0], Err(StoreError::NotFound(_))));
    }

    #[test]
    fn delete_then_redeem_in_one_batch_fails_cleanly() {
        let mut map = Map::new();
        with_pending(&mut map, "i1", "dev1", "tok1");
        let r = commit(
            &mut map,
            vec![
                Command::DeleteIdentity {
                    id: "i1".into(),
                    now: 0,
                },
                redeem("tok1", "i1", "fp", 500),
            ],
        );
        assert!(r[0].is_ok());
        assert!(r[1].is_err());
        assert!(map.is_empty());
    }

    #[test]
    fn replacing_an_enrollment_retires_the_old_token() {
        let mut map = Map::new();
        with_pending(&mut map, "i1", "dev1", "old");
        let r = commit(
            &mut map,
            vec![Command::ReplaceEnrollment {
                identity_id: "i1".into(),
                enrollment: enrollment("e2", "new", "i1"),
            }],
        );
        assert!(r[0].is_ok());
        assert!(!map.contains_key(&tkey("old")));
        assert!(!map.contains_key(&keys::enrollment("e-i1")));
        assert!(map.contains_key(&tkey("new")));
        let stored: Identity = get_json(&map, &keys::identity("i1")).unwrap().unwrap();
        assert_eq!(stored.enrollment_id.as_deref(), Some("e2"));
        // Not once enrolled.
        commit(&mut map, vec![redeem("new", "i1", "fp", 500)]);
        let r = commit(
            &mut map,
            vec![Command::ReplaceEnrollment {
                identity_id: "i1".into(),
                enrollment: enrollment("e3", "newer", "i1"),
            }],
        );
        assert!(matches!(r[0], Err(StoreError::InvalidState(_))));
    }
}
