//! `fsck` of the revocation records (I7): each decodes and is filed under its own key, no
//! revoked serial is still bound to an identity, and no blocked certificate content is.

use std::collections::BTreeMap;

use super::Violation;
use crate::model::Identity;
use crate::revocation::{content_of, serial_hex, Blocked, Revoked};

/// The revocation records read from a store, by key (without the prefix).
#[derive(Default)]
pub(super) struct Records {
    revoked: BTreeMap<String, Revoked>,
    blocked: BTreeMap<String, Blocked>,
}

fn bad(invariant: &'static str, detail: String) -> Violation {
    Violation { invariant, detail }
}

impl Records {
    /// Reads an `r:` record.
    pub(super) fn revoked(&mut self, key: String, v: &[u8], out: &mut Vec<Violation>) {
        match serde_json::from_slice::<Revoked>(v) {
            Ok(r)
                if r.serial == key
                    && !key.is_empty()
                    && key.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                self.revoked.insert(key, r);
            }
            Ok(_) => out.push(bad(
                "DECODE",
                format!("revoked serial record {key} is not filed under its serial"),
            )),
            Err(_) => out.push(bad(
                "DECODE",
                format!("revoked serial record {key} does not decode"),
            )),
        }
    }

    /// Reads an `x:` record.
    pub(super) fn blocked(&mut self, key: String, v: &[u8], out: &mut Vec<Violation>) {
        match serde_json::from_slice::<Blocked>(v) {
            Ok(b) if b.tbs_sha256 == key => {
                self.blocked.insert(key, b);
            }
            Ok(_) => out.push(bad(
                "DECODE",
                format!("blocked certificate record {key} is not filed under its content"),
            )),
            Err(_) => out.push(bad(
                "DECODE",
                format!("blocked certificate record {key} does not decode"),
            )),
        }
    }

    /// Checks the records against the identities and the content index.
    pub(super) fn check(
        &self,
        identities: &BTreeMap<String, Identity>,
        contents: &BTreeMap<String, String>,
        out: &mut Vec<Violation>,
    ) {
        for (id, i) in identities {
            for a in i.certificates() {
                if a.issued_by_network {
                    if let Some(serial) =
                        serial_hex(&a.cert_pem).filter(|s| self.revoked.contains_key(s))
                    {
                        out.push(bad(
                            "I7",
                            format!("revoked serial {serial} is still bound to identity {id}"),
                        ));
                    }
                }
                if let Some(tbs) = content_of(a).filter(|c| self.blocked.contains_key(c)) {
                    out.push(bad(
                        "I7",
                        format!(
                            "blocked certificate content {tbs} is still bound to identity {id}"
                        ),
                    ));
                }
            }
        }
        for (tbs, id) in contents {
            let held = identities.get(id).is_some_and(|i| {
                i.certificates()
                    .any(|a| content_of(a).as_deref() == Some(tbs.as_str()))
            });
            // Held: reported above, with the identity.
            if self.blocked.contains_key(tbs) && !held {
                out.push(bad(
                    "I7",
                    format!("blocked certificate content {tbs} is in the content index"),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{Authenticator, IdentityType, Method};
    use crate::revocation::Reason;

    fn pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec!["dev".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem()
    }

    #[test]
    fn a_revoked_serial_or_blocked_content_still_bound_is_reported() {
        let cert = pem();
        let serial = crate::revocation::serial_hex(&cert).unwrap();
        let identity = crate::model::Identity {
            id: "a".into(),
            name: "alpha".into(),
            kind: IdentityType::Device,
            is_admin: false,
            role_attributes: vec![],
            created_at: 0,
            updated_at: 0,
            enrollment_id: None,
            lifecycle: Default::default(),
            authenticator: Some(Authenticator {
                fingerprint_sha256: "fa".into(),
                fingerprint_sha1: String::new(),
                tbs_sha256: "ca".into(),
                cert_pem: cert,
                issued_by_network: true,
                not_before: 0,
                not_after: 1,
                method: Method::Ott,
                created_at: 0,
                ca_id: None,
            }),
        };
        let revoked = super::Revoked {
            serial: serial.clone(),
            fingerprint_sha256: "fa".into(),
            identity_id: "a".into(),
            not_after: 1,
            revoked_at: 0,
            reason: Reason::Deleted,
        };
        let blocked = super::Blocked {
            tbs_sha256: "ca".into(),
            fingerprint_sha256: "fa".into(),
            identity_id: "a".into(),
            identity_name: "alpha".into(),
            ca_id: None,
            not_after: 1,
            revoked_at: 0,
            reason: Reason::Deleted,
        };
        let base = vec![
            (b"i:a".to_vec(), serde_json::to_vec(&identity).unwrap()),
            (b"n:alpha".to_vec(), b"a".to_vec()),
            (b"f:fa".to_vec(), b"a".to_vec()),
            (b"b:ca".to_vec(), b"a".to_vec()),
        ];
        assert!(super::super::check(base.clone()).violations.is_empty());
        let mut with = base.clone();
        with.push((format!("r:{serial}").into_bytes(), j(&revoked)));
        with.push((b"x:ca".to_vec(), j(&blocked)));
        let r = super::super::check(with);
        let i7: Vec<_> = r
            .violations
            .iter()
            .filter(|v| v.invariant == "I7")
            .collect();
        assert_eq!(i7.len(), 2, "{:?}", r.violations);
        // Unbound, the same records are clean; one under another key is not.
        let mut unbound = vec![
            (format!("r:{serial}").into_bytes(), j(&revoked)),
            (b"x:ca".to_vec(), j(&blocked)),
        ];
        assert!(super::super::check(unbound.clone()).violations.is_empty());
        unbound.push((b"x:other".to_vec(), j(&blocked)));
        unbound.push((b"r:zz".to_vec(), b"{".to_vec()));
        let r = super::super::check(unbound);
        assert_eq!(r.violations.len(), 2, "{:?}", r.violations);
        assert!(r.violations.iter().all(|v| v.invariant == "DECODE"));
    }

    fn j<T: serde::Serialize>(v: &T) -> Vec<u8> {
        serde_json::to_vec(v).unwrap()
    }
}
