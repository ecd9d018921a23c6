//! `enrollgate fsck`: checks the invariants of DESIGN.md over every record of a store.
//!
//! | check | invariant |
//! |---|---|
//! | every `f:` entry points at a live identity bound to that fingerprint | I1, I5 |
//! | every bound identity is in the fingerprint index | I5 |
//! | every `n:` entry points at the identity of that name; every identity is indexed | I2 |
//! | every pending enrollment belongs to a live, unenrolled identity that names it | I3, I5 |
//! | every token hash of a pending enrollment is indexed to it, and every `h:` entry points at a pending enrollment that lists it | I3, I5 |
//!
//! A store of a version that kept tokens (`t:<token>` records, `e:` → token) is checked
//! in that form too, with a note: the gateway hashes its tokens when it next opens it.
//!
//! The admin index (`m:admin:<id>`) is a hint, not an invariant: deleting an admin checks
//! each entry's record and scans the identities before refusing. Where it disagrees with
//! the records (after a rollback to a version without it, and an upgrade), `fsck` says so
//! in a note, which fails nothing.
//! | no revoked serial (`r:`) and no blocked certificate content (`x:`) is bound to an identity; each such record decodes under its own key | I7 |
//! | every record decodes | |

use std::collections::BTreeMap;

mod revoked;

use crate::model::{Ca, Enrollment, Identity};

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// `I1`, `I2`, `I3`, `I5`, `I7` or `DECODE`.
    pub invariant: &'static str,
    /// What is wrong (never a token).
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

/// What `fsck` counted and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Identities.
    pub identities: usize,
    /// Pending enrollments.
    pub enrollments: usize,
    /// Bound certificates.
    pub certificates: usize,
    /// Third-party CAs.
    pub cas: usize,
    /// Broken invariants.
    pub violations: Vec<Violation>,
    /// Findings that break no invariant (a stale admin index).
    pub notes: Vec<String>,
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// Checks every record; `records` is the whole store in any order.
pub fn check(records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Report {
    let mut identities: BTreeMap<String, Identity> = BTreeMap::new();
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    // Pending enrollments of the form with hashed tokens (`e:` → record, `h:` → id) and of
    // the form before it (`t:<token>` → record, `e:` → token).
    let mut pending: BTreeMap<String, Enrollment> = BTreeMap::new();
    let mut token_hashes: BTreeMap<String, String> = BTreeMap::new();
    let mut tokens: Vec<Enrollment> = Vec::new();
    let mut enrollment_ids: BTreeMap<String, String> = BTreeMap::new();
    let mut fingerprints: BTreeMap<String, String> = BTreeMap::new();
    let mut contents: BTreeMap<String, String> = BTreeMap::new();
    let mut admins: std::collections::BTreeSet<String> = Default::default();
    let mut admins_indexed = false;
    let mut revocations = revoked::Records::default();
    let mut r = Report::default();
    let bad = |invariant: &'static str, detail: String| Violation { invariant, detail };
    let mut violations = Vec::new();

    for (k, v) in records {
        let key = text(&k);
        let kind = key.split(':').next().unwrap_or_default().to_string();
        let rest = key
            .split_once(':')
            .map(|x| x.1)
            .unwrap_or_default()
            .to_string();
        match kind.as_str() {
            "i" => match serde_json::from_slice::<Identity>(&v) {
                Ok(i) => {
                    identities.insert(rest, i);
                }
                Err(_) => violations.push(bad(
                    "DECODE",
                    format!("identity record {rest} does not decode"),
                )),
            },
            "n" => {
                names.insert(rest, text(&v));
            }
            "t" => match serde_json::from_slice::<Enrollment>(&v) {
                Ok(e) => tokens.push(e),
                Err(_) => {
                    violations.push(bad("DECODE", "an enrollment record does not decode".into()))
                }
            },
            "e" => match serde_json::from_slice::<Enrollment>(&v) {
                Ok(e) => {
                    pending.insert(rest, e);
                }
                // The old form's id index holds the token, never a JSON object.
                Err(_) if !v.starts_with(b"{") => {
                    enrollment_ids.insert(rest, text(&v));
                }
                Err(_) => violations.push(bad(
                    "DECODE",
                    format!("enrollment record {rest} does not decode"),
                )),
            },
            "h" => {
                token_hashes.insert(rest, text(&v));
            }
            "f" => {
                fingerprints.insert(rest, text(&v));
            }
            "b" => {
                contents.insert(rest, text(&v));
            }
            "m" => match k.strip_prefix(crate::keys::ADMIN) {
                Some(id) => {
                    admins.insert(text(id));
                }
                None => admins_indexed |= k == crate::keys::ADMIN_INDEXED,
            },
            "c" => match serde_json::from_slice::<Ca>(&v) {
                Ok(_) => r.cas += 1,
                Err(_) => {
                    violations.push(bad("DECODE", format!("CA record {rest} does not decode")))
                }
            },
            "r" => revocations.revoked(rest, &v, &mut violations),
            "x" => revocations.blocked(rest, &v, &mut violations),
            "cn" | "cf" | "sr" => {}
            _ => violations.push(bad("DECODE", format!("unknown record kind '{kind}:'"))),
        }
    }
    r.identities = identities.len();
    r.enrollments = tokens.len() + pending.len();
    r.certificates = fingerprints.len();

    for (fp, id) in &fingerprints {
        match identities.get(id) {
            None => violations.push(bad("I5", format!("certificate {fp} points at missing identity {id}"))),
            Some(i) if !i.certificates().any(|a| a.fingerprint_sha256 == *fp) => {
                violations.push(bad("I1", format!("certificate {fp} points at identity {id}, which is bound to another certificate")))
            }
            Some(_) => {}
        }
    }
    for (tbs, id) in &contents {
        match identities.get(id) {
            None => violations.push(bad(
                "I5",
                format!("certificate content {tbs} points at missing identity {id}"),
            )),
            Some(i) if !i.certificates().any(|a| a.tbs_sha256 == *tbs) => {
                violations.push(bad("I1", format!("certificate content {tbs} points at identity {id}, which is bound to another certificate")))
            }
            Some(_) => {}
        }
    }
    // One certificate, whatever the encoding of its signature, bound to two identities: the
    // content of a record from before the content index (empty hash) is read from its PEM.
    let mut by_content: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (id, i) in &identities {
        for a in i.certificates() {
            let content = if a.tbs_sha256.is_empty() {
                ::pem::parse(&a.cert_pem)
                    .ok()
                    .and_then(|p| crate::pki::fingerprint::tbs_sha256_hex(p.contents()))
            } else {
                Some(a.tbs_sha256.clone())
            };
            if let Some(c) = content {
                by_content.entry(c).or_default().push(id);
            }
        }
    }
    for (content, ids) in &by_content {
        if ids.len() > 1 {
            violations.push(bad(
                "I1",
                format!(
                    "identities {} are bound to one certificate (content {content}); delete all but one",
                    ids.join(", ")
                ),
            ));
        }
    }
    for (id, i) in &identities {
        // An empty content hash is a record from before the content index, which the
        // store indexes when it is next opened (unless another identity holds its
        // certificate: reported above).
        for a in i.certificates().filter(|a| !a.tbs_sha256.is_empty()) {
            if contents.get(&a.tbs_sha256) != Some(id) {
                violations.push(bad(
                    "I1",
                    format!(
                        "identity {id} is bound to certificate content {}, which is not indexed to it",
                        a.tbs_sha256
                    ),
                ));
            }
        }
        for a in i.certificates() {
            if fingerprints.get(&a.fingerprint_sha256) != Some(id) {
                violations.push(bad(
                    "I5",
                    format!(
                        "identity {id} is bound to {}, which is not indexed to it",
                        a.fingerprint_sha256
                    ),
                ));
            }
        }
        if names.get(&i.name) != Some(id) {
            violations.push(bad(
                "I2",
                format!(
                    "identity {id} ('{}') is not the owner of its name in the index",
                    i.name
                ),
            ));
        }
        if &i.id != id {
            violations.push(bad(
                "DECODE",
                format!("identity record {id} holds id {}", i.id),
            ));
        }
    }
    for (name, id) in &names {
        if identities.get(id).map(|i| &i.name) != Some(name) {
            violations.push(bad(
                "I2",
                format!("name '{name}' points at {id}, which does not carry it"),
            ));
        }
    }
    for (id, e) in &pending {
        if &e.id != id {
            violations.push(bad(
                "DECODE",
                format!("enrollment record {id} holds id {}", e.id),
            ));
        }
        if e.token_sha256.is_empty() {
            violations.push(bad(
                "I3",
                format!("enrollment {id} has no token that could redeem it"),
            ));
        }
        for h in &e.token_sha256 {
            if token_hashes.get(h) != Some(id) {
                violations.push(bad(
                    "I3",
                    format!("a token of enrollment {id} is not in the token index"),
                ));
            }
        }
    }
    for (h, id) in &token_hashes {
        if !pending.get(id).is_some_and(|e| e.token_sha256.contains(h)) {
            violations.push(bad(
                "I5",
                format!("token index entry {h} points at no pending enrollment {id} that lists it"),
            ));
        }
    }
    if !tokens.is_empty() {
        r.notes.push(format!(
            "{} pending enrollment(s) keep their token in clear, as versions before hashed \
             tokens did: the gateway hashes them when it next starts",
            tokens.len()
        ));
    }
    for e in tokens.iter().chain(pending.values()) {
        match identities.get(&e.identity_id) {
            None => violations.push(bad(
                "I5",
                format!(
                    "enrollment {} belongs to missing identity {}",
                    e.id, e.identity_id
                ),
            )),
            Some(i) if i.authenticator.is_some() => violations.push(bad(
                "I3",
                format!(
                    "enrollment {} is still pending for identity {}, which has enrolled",
                    e.id, i.id
                ),
            )),
            Some(i) if i.enrollment_id.as_deref() != Some(e.id.as_str()) => violations.push(bad(
                "I5",
                format!(
                    "enrollment {} is not the pending enrollment of identity {}",
                    e.id, i.id
                ),
            )),
            Some(_) => {}
        }
    }
    for e in &tokens {
        if enrollment_ids.get(&e.id) != Some(&e.token) {
            violations.push(bad(
                "I5",
                format!("enrollment {} is not indexed by its id", e.id),
            ));
        }
    }
    // The admin index: entries only for admins that can manage; every such admin indexed
    // once the store was (a store from before the index is indexed when it is next opened).
    for id in &admins {
        if !identities.get(id).is_some_and(Identity::manages) {
            r.notes.push(format!(
                "admin index entry {id} points at no enrolled admin identity (ignored by the \
                 gateway)"
            ));
        }
    }
    if admins_indexed {
        for (id, i) in &identities {
            if i.manages() && !admins.contains(id) {
                r.notes.push(format!(
                    "enrolled admin identity {id} is not in the admin index (found all the \
                     same when an admin is deleted)"
                ));
            }
        }
    }
    let live_tokens: std::collections::BTreeSet<&str> =
        tokens.iter().map(|e| e.token.as_str()).collect();
    for (eid, token) in &enrollment_ids {
        if !live_tokens.contains(token.as_str()) {
            violations.push(bad(
                "I5",
                format!("enrollment index {eid} points at no pending enrollment"),
            ));
        }
    }
    revocations.check(&identities, &contents, &mut violations);
    r.violations = violations;
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Authenticator, IdentityType, Method};

    fn identity(id: &str, name: &str, fp: Option<&str>, eid: Option<&str>) -> Identity {
        Identity {
            id: id.into(),
            name: name.into(),
            kind: IdentityType::Device,
            is_admin: false,
            role_attributes: vec![],
            created_at: 0,
            updated_at: 0,
            enrollment_id: eid.map(Into::into),
            lifecycle: Default::default(),
            authenticator: fp.map(|fp| Authenticator {
                fingerprint_sha256: fp.into(),
                fingerprint_sha1: String::new(),
                tbs_sha256: String::new(),
                cert_pem: String::new(),
                issued_by_network: true,
                not_before: 0,
                not_after: 1,
                method: Method::Ott,
                created_at: 0,
                ca_id: None,
            }),
        }
    }

    fn rec(k: &str, v: impl serde::Serialize) -> (Vec<u8>, Vec<u8>) {
        (k.as_bytes().to_vec(), serde_json::to_vec(&v).unwrap())
    }

    fn raw(k: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
        (k.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    fn enrollment(id: &str, token: &str, identity: &str) -> Enrollment {
        Enrollment {
            id: id.into(),
            token: token.into(),
            method: Method::Ott,
            identity_id: identity.into(),
            ca_id: None,
            created_at: 0,
            expires_at: 1,
            jwt: String::new(),
            token_sha256: vec![crate::token::token_sha256(token)],
        }
    }

    fn hash(token: &str) -> String {
        crate::token::token_sha256(token)
    }

    fn healthy() -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![
            rec("i:a", identity("a", "alpha", Some("fa"), None)),
            raw("n:alpha", "a"),
            raw("f:fa", "a"),
            rec("i:b", identity("b", "beta", None, Some("eb"))),
            raw("n:beta", "b"),
            rec("e:eb", enrollment("eb", "tokb", "b")),
            raw(&format!("h:{}", hash("tokb")), "eb"),
        ]
    }

    /// A pending enrollment as versions before hashed tokens stored it.
    fn old_form(id: &str, token: &str, identity: &str) -> [(Vec<u8>, Vec<u8>); 2] {
        let mut e = serde_json::to_value(enrollment(id, token, identity)).unwrap();
        e["token"] = token.into();
        e.as_object_mut().unwrap().remove("token_sha256");
        [
            rec(&format!("t:{token}"), e),
            raw(&format!("e:{id}"), token),
        ]
    }

    #[test]
    fn the_token_index_is_checked_both_ways() {
        // A hash of the enrollment missing from the index; an index entry to nothing; one
        // to an enrollment that does not list it.
        let mut recs = healthy();
        recs.retain(|(k, _)| !k.starts_with(b"h:"));
        recs.push(raw("h:0000", "zz"));
        recs.push(raw("h:1111", "eb"));
        let r = check(recs);
        let details: Vec<&str> = r.violations.iter().map(|v| v.detail.as_str()).collect();
        assert_eq!(r.violations.len(), 3, "{details:?}");
        assert!(details.iter().any(|d| d.contains("not in the token index")));
        assert!(details
            .iter()
            .any(|d| d.contains("h:0000") || d.contains("0000")));
        assert!(details.iter().any(|d| d.contains("1111")));
    }

    /// A store of a version that kept tokens passes, with a note, and never prints a token.
    #[test]
    fn a_store_that_kept_tokens_is_checked_in_its_form() {
        let mut recs = healthy();
        recs.retain(|(k, _)| !k.starts_with(b"h:") && !k.starts_with(b"e:"));
        recs.extend(old_form("eb", "tokb", "b"));
        let r = check(recs.clone());
        assert_eq!(r.violations, vec![]);
        assert_eq!(r.enrollments, 1);
        assert_eq!(r.notes.len(), 1, "{:?}", r.notes);
        recs.push(raw("e:ghost", "tokghost"));
        let r = check(recs);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        let printed = format!("{:?}{:?}", r.violations, r.notes);
        assert!(
            !printed.contains("tokb") && !printed.contains("tokghost"),
            "{printed}"
        );
    }

    #[test]
    fn a_healthy_store_has_no_violation() {
        let r = check(healthy());
        assert_eq!(r.violations, vec![]);
        assert_eq!((r.identities, r.enrollments, r.certificates), (2, 1, 1));
    }

    #[test]
    fn each_broken_invariant_is_reported() {
        let mut recs = healthy();
        recs.retain(|(k, _)| k != b"f:fa"); // bound but not indexed
        recs.push(raw("f:ghost", "zz")); // index to a missing identity
        recs.push(raw("n:orphan", "zz")); // name of nobody
        recs.push(rec("e:ec", enrollment("ec", "tokc", "a"))); // pending for an enrolled identity
        recs.push(raw(&format!("h:{}", hash("tokc")), "ec"));
        recs.push(raw("i:broken", "{not json"));
        let r = check(recs);
        let kinds: Vec<&str> = r.violations.iter().map(|v| v.invariant).collect();
        for k in ["I5", "I2", "I3", "DECODE"] {
            assert!(kinds.contains(&k), "{k} missing from {:?}", r.violations);
        }
        assert!(
            !r.violations.iter().any(|v| v.detail.contains("tokc")),
            "tokens are never printed"
        );
    }

    /// Two identities bound to one certificate content, one of them a record from before
    /// the content index (its content read from its PEM), are reported.
    #[test]
    fn one_certificate_bound_twice_is_reported_whatever_the_records_age() {
        let cert = crate::self_signed_for_tests("dev");
        let tbs = crate::pki::fingerprint::tbs_sha256_hex(cert.der()).unwrap();
        let bound = |id: &str, fp: &str, content: &str| {
            let mut i = identity(id, id, Some(fp), None);
            if let Some(a) = i.authenticator.as_mut() {
                a.cert_pem = cert.pem();
                a.tbs_sha256 = content.into();
            }
            i
        };
        let recs = vec![
            rec("i:x", bound("x", "fx", &tbs)),
            raw("n:x", "x"),
            raw("f:fx", "x"),
            raw(&format!("b:{tbs}"), "x"),
            rec("i:y", bound("y", "fy", "")),
            raw("n:y", "y"),
            raw("f:fy", "y"),
        ];
        let r = check(recs);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert_eq!(r.violations[0].invariant, "I1");
        assert!(
            r.violations[0].detail.contains("x, y"),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn the_admin_index_is_noted_once_the_store_was_indexed_and_fails_nothing() {
        let admin = |id: &str| Identity {
            is_admin: true,
            ..identity(id, id, Some(&format!("f{id}")), None)
        };
        let with_admins = |extra: Vec<(Vec<u8>, Vec<u8>)>| {
            let mut recs = healthy();
            for id in ["x", "y"] {
                recs.push(rec(&format!("i:{id}"), admin(id)));
                recs.push(raw(&format!("n:{id}"), id));
                recs.push(raw(&format!("f:f{id}"), id));
            }
            recs.extend(extra);
            let r = check(recs);
            assert_eq!(r.violations, vec![], "a hint breaks no invariant");
            r.notes
        };
        // From before the index: nothing indexed, nothing wrong.
        assert_eq!(with_admins(vec![]), Vec::<String>::new());
        // Indexed: both admins in the index.
        let marker = || raw("m:admin-index", "1");
        assert_eq!(
            with_admins(vec![marker(), raw("m:admin:x", ""), raw("m:admin:y", "")]),
            Vec::<String>::new()
        );
        // One missing, and entries for a device and for nobody.
        let v = with_admins(vec![
            marker(),
            raw("m:admin:x", ""),
            raw("m:admin:a", ""),
            raw("m:admin:zz", ""),
        ]);
        let details: Vec<&str> = v.iter().map(String::as_str).collect();
        assert_eq!(v.len(), 3, "{v:?}");
        assert!(details
            .iter()
            .any(|d| d.contains("identity y is not in the admin index")));
        assert!(details.iter().any(|d| d.contains("entry a points")));
        assert!(details.iter().any(|d| d.contains("entry zz points")));
    }

    #[test]
    fn the_content_index_is_checked_and_older_records_are_tolerated() {
        // A record from before the content index (no content hash): no violation.
        let r = check(healthy().into_iter().chain([raw("m:content-index", "1")]));
        assert_eq!(r.violations, vec![]);
        let with_content = |tbs: &str| {
            let mut a = identity("a", "alpha", Some("fa"), None);
            if let Some(auth) = a.authenticator.as_mut() {
                auth.tbs_sha256 = tbs.into();
            }
            let mut recs = healthy();
            recs[0] = rec("i:a", a);
            recs
        };
        let mut recs = with_content("ca");
        recs.push(raw("b:ca", "a"));
        assert_eq!(check(recs).violations, vec![]);
        // Bound by content but not indexed; an index entry to another content.
        let r = check(with_content("ca"));
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert_eq!(r.violations[0].invariant, "I1");
        let mut recs = with_content("ca");
        recs.push(raw("b:ca", "a"));
        recs.push(raw("b:other", "a"));
        let r = check(recs);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert!(r.violations[0].detail.contains("other"));
    }
}
