//! One sequential pass over the identity (and pending enrollment) records that decodes only
//! what listing filters look at: name, type, pending enrollment, certificate expiry. For
//! filtered listings of a large fleet (the console's type and state filters): reading each
//! identity by its name index entry and decoding it whole, certificate PEM included, took
//! 0.8 s for 100,000 identities, and 1.7 s with each pending token's expiry read as well.

use std::collections::HashMap;

use serde::Deserialize;

use super::{keys, Store, StoreError};
use crate::clock::UnixTime;
use crate::model::IdentityType;

/// What a listing filter needs of an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityBrief {
    /// Its id.
    pub id: String,
    /// Its name (what listings are ordered by).
    pub name: String,
    /// Its type.
    pub kind: IdentityType,
    /// Its pending enrollment, if any.
    pub enrollment_id: Option<String>,
    /// When its bound certificate expires; `None` before it enrolls.
    pub cert_not_after: Option<UnixTime>,
}

/// The fields of a stored identity that a brief keeps; serde skips the rest unread.
#[derive(Deserialize)]
struct Stored {
    id: String,
    name: String,
    #[serde(rename = "type")]
    kind: IdentityType,
    #[serde(default)]
    enrollment_id: Option<String>,
    #[serde(default)]
    authenticator: Option<StoredAuthenticator>,
}

#[derive(Deserialize)]
struct StoredAuthenticator {
    not_after: UnixTime,
}

#[derive(Deserialize)]
struct StoredEnrollment {
    expires_at: UnixTime,
}

impl Store {
    /// The briefs of every identity for which `keep` holds, in id order.
    pub fn identity_briefs(
        &self,
        keep: &mut dyn FnMut(&IdentityBrief) -> bool,
    ) -> Result<Vec<IdentityBrief>, StoreError> {
        let mut out = Vec::new();
        self.each_under(keys::IDENTITY, &mut |k, v| {
            let s: Stored = super::decode(k, v)?;
            let brief = IdentityBrief {
                id: s.id,
                name: s.name,
                kind: s.kind,
                enrollment_id: s.enrollment_id,
                cert_not_after: s.authenticator.map(|a| a.not_after),
            };
            if keep(&brief) {
                out.push(brief);
            }
            Ok(true)
        })?;
        Ok(out)
    }

    /// The expiry of every pending enrollment, by enrollment id.
    pub fn enrollment_expiries(&self) -> Result<HashMap<String, UnixTime>, StoreError> {
        let mut out = HashMap::new();
        self.each_under(keys::ENROLLMENT, &mut |k, v| {
            // Left over from before hashed tokens (an id-to-token index): not a record.
            if !v.starts_with(b"{") {
                return Ok(true);
            }
            let e: StoredEnrollment = super::decode(k, v)?;
            let id = String::from_utf8_lossy(&k[keys::ENROLLMENT.len()..]).into_owned();
            out.insert(id, e.expires_at);
            Ok(true)
        })?;
        Ok(out)
    }
}
