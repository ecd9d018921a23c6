//! The storage contract every backend passes: what the committer relies on, whatever
//! keeps the records. `basic` holds for every backend; `shared` for the backends other
//! gateways write too (RocksDB has one writer, the committer, and checks no expectation:
//! they hold by construction).

use enrollgate::store::backend::{Backend, Change, CommitError, Expect, Versioned, WriteSet};

fn key(ns: &str, k: &str) -> Vec<u8> {
    format!("t:{ns}:{k}").into_bytes()
}

fn set(expect: Vec<Expect>, changes: Vec<Change>) -> WriteSet {
    WriteSet { expect, changes }
}

fn value(b: &dyn Backend, k: &[u8]) -> Option<Vec<u8>> {
    b.read(k).unwrap().map(|v| v.value)
}

fn version(b: &dyn Backend, k: &[u8]) -> i64 {
    b.read(k).unwrap().expect("present").version
}

/// Reads, scans and all-or-nothing commits of write sets that expect the truth.
pub fn basic(b: &dyn Backend, ns: &str) {
    let (k1, k2, k3) = (key(ns, "a"), key(ns, "b"), key(ns, "c"));
    assert_eq!(b.read(&k1).unwrap(), None);
    b.commit(
        &set(
            vec![Expect::Absent(k3.clone())],
            vec![
                Change::Insert(k1.clone(), b"one".to_vec()),
                Change::Insert(k2.clone(), b"two".to_vec()),
            ],
        ),
        true,
    )
    .unwrap();
    assert_eq!(value(b, &k1).as_deref(), Some(&b"one"[..]));
    assert_eq!(value(b, &k3), None);
    // Several at once, in order, absent ones as None.
    let many = b.read_many(&[k2.clone(), k3.clone(), k1.clone()]).unwrap();
    let values: Vec<_> = many.into_iter().map(|v| v.map(|v| v.value)).collect();
    assert_eq!(
        values,
        vec![Some(b"two".to_vec()), None, Some(b"one".to_vec())]
    );
    // Update and delete at the version read.
    let v1 = version(b, &k1);
    let v2 = version(b, &k2);
    b.commit(
        &set(
            vec![],
            vec![
                Change::Update(k1.clone(), b"uno".to_vec(), v1),
                Change::Delete(k2.clone(), v2),
            ],
        ),
        false,
    )
    .unwrap();
    assert_eq!(value(b, &k1).as_deref(), Some(&b"uno"[..]));
    assert_eq!(value(b, &k2), None);
    // A scan sees the prefix only, in key order, and stops when told.
    b.commit(
        &set(
            vec![],
            vec![
                Change::Insert(key(ns, "b1"), b"x".to_vec()),
                Change::Insert(key(ns, "b2"), b"y".to_vec()),
                Change::Insert(key(&format!("{ns}z"), "a"), b"other".to_vec()),
            ],
        ),
        true,
    )
    .unwrap();
    let mut seen = Vec::new();
    b.scan(format!("t:{ns}:").as_bytes(), &mut |k, v, _| {
        seen.push((k.to_vec(), v.to_vec()));
        true
    })
    .unwrap();
    assert_eq!(
        seen,
        vec![
            (k1.clone(), b"uno".to_vec()),
            (key(ns, "b1"), b"x".to_vec()),
            (key(ns, "b2"), b"y".to_vec()),
        ]
    );
    let mut first = 0;
    b.scan(format!("t:{ns}:b").as_bytes(), &mut |_, _, _| {
        first += 1;
        false
    })
    .unwrap();
    assert_eq!(first, 1);
    // Binary keys and values survive as they are.
    let binary = [&b"t:"[..], ns.as_bytes(), &[0, 0xff, b':', 0x80]].concat();
    b.commit(
        &set(
            vec![],
            vec![Change::Insert(binary.clone(), vec![0, 1, 0xfe])],
        ),
        true,
    )
    .unwrap();
    assert_eq!(value(b, &binary), Some(vec![0, 1, 0xfe]));
}

/// The checks a shared backend makes: what was read still holds, or nothing is written and
/// the keys that moved are named.
pub fn shared(b: &dyn Backend, ns: &str) {
    assert!(b.shared());
    let (k1, k2, k3) = (key(ns, "a"), key(ns, "b"), key(ns, "c"));
    b.commit(
        &set(vec![], vec![Change::Insert(k1.clone(), b"one".to_vec())]),
        true,
    )
    .unwrap();
    let v1 = version(b, &k1);

    // An insert of a key that exists: a conflict, never an overwrite.
    let err = b
        .commit(
            &set(
                vec![],
                vec![
                    Change::Insert(k1.clone(), b"again".to_vec()),
                    Change::Insert(k2.clone(), b"two".to_vec()),
                ],
            ),
            true,
        )
        .unwrap_err();
    assert_eq!(err, CommitError::Conflict(vec![k1.clone()]));
    assert_eq!(
        value(b, &k1).as_deref(),
        Some(&b"one"[..]),
        "not overwritten"
    );
    assert_eq!(value(b, &k2), None, "all or nothing");

    // An update or delete at a version that moved: a conflict.
    b.commit(
        &set(vec![], vec![Change::Update(k1.clone(), b"1".to_vec(), v1)]),
        true,
    )
    .unwrap();
    let v1b = version(b, &k1);
    assert_ne!(v1b, v1, "a write moves the version");
    for stale in [
        Change::Update(k1.clone(), b"stale".to_vec(), v1),
        Change::Delete(k1.clone(), v1),
    ] {
        let err = b
            .commit(
                &set(
                    vec![],
                    vec![stale, Change::Insert(k3.clone(), b"three".to_vec())],
                ),
                true,
            )
            .unwrap_err();
        assert_eq!(err, CommitError::Conflict(vec![k1.clone()]));
        assert_eq!(value(b, &k3), None, "all or nothing");
    }
    // An update of a key that is gone: a conflict.
    let err = b
        .commit(
            &set(vec![], vec![Change::Update(k2.clone(), b"x".to_vec(), 1)]),
            true,
        )
        .unwrap_err();
    assert_eq!(err, CommitError::Conflict(vec![k2.clone()]));
    assert_eq!(value(b, &k2), None);

    // Expectations on keys left unchanged.
    let err = b
        .commit(
            &set(
                vec![Expect::Absent(k1.clone()), Expect::At(k2.clone(), 7)],
                vec![Change::Insert(k3.clone(), b"three".to_vec())],
            ),
            true,
        )
        .unwrap_err();
    let CommitError::Conflict(mut keys) = err else {
        panic!("{err:?}");
    };
    keys.sort();
    assert_eq!(keys, vec![k1.clone(), k2.clone()], "every failed key named");
    assert_eq!(value(b, &k3), None);
    b.commit(
        &set(
            vec![Expect::At(k1.clone(), v1b), Expect::Absent(k2.clone())],
            vec![Change::Insert(k3.clone(), b"three".to_vec())],
        ),
        true,
    )
    .unwrap();
    assert_eq!(value(b, &k3).as_deref(), Some(&b"three"[..]));

    // A key deleted and created again has a new version: a reader of the first cannot
    // mistake the second for it.
    let v3 = version(b, &k3);
    b.commit(&set(vec![], vec![Change::Delete(k3.clone(), v3)]), true)
        .unwrap();
    b.commit(
        &set(vec![], vec![Change::Insert(k3.clone(), b"three".to_vec())]),
        true,
    )
    .unwrap();
    assert_ne!(version(b, &k3), v3);
    let err = b
        .commit(&set(vec![Expect::At(k3.clone(), v3)], vec![]), true)
        .unwrap_err();
    assert_eq!(err, CommitError::Conflict(vec![k3.clone()]));
    let read = b.read(&k3).unwrap();
    assert!(matches!(read, Some(Versioned { ref value, .. }) if value == b"three"));
}

mod memory {
    use enrollgate::store::memory::{Fault, Memory};

    use super::*;

    #[test]
    fn the_memory_backend_keeps_the_contract() {
        let b = Memory::new();
        basic(&b, "basic");
        shared(&b, "shared");
    }

    #[test]
    fn injected_faults_write_nothing_or_say_the_outcome_is_unknown() {
        let b = Memory::new();
        let k = key("faults", "a");
        let insert = set(vec![], vec![Change::Insert(k.clone(), b"v".to_vec())]);
        b.inject(Fault::Conflict);
        assert_eq!(
            b.commit(&insert, true).unwrap_err(),
            CommitError::Conflict(vec![k.clone()])
        );
        b.inject(Fault::Fail);
        assert!(!b.probe());
        assert!(matches!(
            b.commit(&insert, true),
            Err(CommitError::Failed(_))
        ));
        b.inject(Fault::Unknown { landed: false });
        assert!(matches!(
            b.commit(&insert, true),
            Err(CommitError::Unknown(_))
        ));
        assert_eq!(value(&b, &k), None);
        b.inject(Fault::Unknown { landed: true });
        assert!(matches!(
            b.commit(&insert, true),
            Err(CommitError::Unknown(_))
        ));
        assert_eq!(value(&b, &k).as_deref(), Some(&b"v"[..]));
        assert!(b.probe());
    }
}

mod rocksdb {
    use enrollgate::store::Store;

    use super::*;

    #[test]
    fn the_rocksdb_backend_keeps_the_contract_of_a_single_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), true).unwrap();
        let b = store.backend();
        assert!(!b.shared());
        basic(&**b, "basic");
        // Durable across a reopen.
        drop(store);
        let store = Store::open(&dir.path().join("db"), false).unwrap();
        assert_eq!(
            value(&**store.backend(), &key("basic", "a")).as_deref(),
            Some(&b"uno"[..])
        );
    }
}
