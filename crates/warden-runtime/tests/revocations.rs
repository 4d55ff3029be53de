//! One conformance suite for the revocation store port, run against every implementation:
//! in process (`MemoryRevocations`), the data directory's `DATA/revoked` (`FileRevocations`)
//! and a fleet's Redis (`RedisRevocations`, with `WARDEN_TEST_REDIS_URL`). Each gets two handles on one backend, as two instances sharing it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on purpose"
)]

use warden_identity::{
    MemoryRevocations, RedisRevocations, Revocation, RevocationError, RevocationStore, Revocations,
    RevokedKind,
};
use warden_runtime::revocations::FileRevocations;

fn agent(id: &str) -> Revocation {
    Revocation::new(RevokedKind::Agent, id).unwrap()
}

fn credential(id: &str) -> Revocation {
    Revocation::new(RevokedKind::Credential, id).unwrap()
}

fn suite(name: &str, one: &dyn RevocationStore, other: &dyn RevocationStore) {
    // Nothing revoked yet.
    let (none, start) = one.since(0).unwrap();
    assert!(none.is_empty(), "{name}");
    // What is revoked comes back, in order, once.
    one.revoke(&agent("coder-1")).unwrap();
    one.revoke(&credential("c0ffee")).unwrap();
    let (new, cursor) = one.since(start).unwrap();
    assert_eq!(new, [agent("coder-1"), credential("c0ffee")], "{name}");
    let (again, same) = one.since(cursor).unwrap();
    assert!(again.is_empty() && same == cursor, "{name}: nothing new");
    // Another instance's revocation reaches this one.
    other.revoke(&agent("ops-1")).unwrap();
    let (new, next) = one.since(cursor).unwrap();
    assert_eq!(new, [agent("ops-1")], "{name}");
    // ... and everything from the start reaches a newcomer.
    let (all, end) = other.since(0).unwrap();
    assert_eq!(all.len(), 3, "{name}");
    assert_eq!(end, next, "{name}: both instances see the same store");
    // Applied, a revocation reaches the chain below it.
    let set = Revocations::new();
    for r in &all {
        r.apply(&set);
    }
    assert!(set.revokes(&[], &["coder-1".into(), "coder-1.helper".into()]));
    assert!(set.revokes(&["c0ffee".into()], &[]), "{name}");
    assert!(
        !set.revokes(&["beef".into()], &["coder-2".into()]),
        "{name}"
    );
    // An id that could not be read back as one is refused, and nothing is written.
    for bad in ["", "two words", "tab\there", "new\nline"] {
        assert!(
            matches!(
                one.revoke(&Revocation {
                    kind: RevokedKind::Agent,
                    id: bad.into()
                }),
                Err(RevocationError::BadId(_))
            ),
            "{name}: {bad:?}"
        );
    }
    assert!(one.since(next).unwrap().0.is_empty(), "{name}");
}

#[test]
fn in_process() {
    let one = MemoryRevocations::new();
    let other = one.clone();
    suite("memory", &one, &other);
}

#[test]
fn shared_redis() {
    let Ok(url) = std::env::var("WARDEN_TEST_REDIS_URL") else {
        eprintln!("notice: WARDEN_TEST_REDIS_URL is not set; skipping the Redis revocations");
        return;
    };
    // A prefix of this run's own: the suite starts from an empty list.
    let prefix = format!(
        "warden-test:revocations:{}-{}:",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    suite(
        "redis",
        &RedisRevocations::new(&url, &prefix).unwrap(),
        &RedisRevocations::new(&url, &prefix).unwrap(),
    );
    // A Redis that does not answer refuses (callers then refuse the request).
    let down = RedisRevocations::new("redis://127.0.0.1:1/", &prefix).unwrap();
    assert!(matches!(down.since(0), Err(RevocationError::Store { .. })));
    assert!(matches!(
        down.revoke(&agent("x")),
        Err(RevocationError::Store { .. })
    ));
}

/// A Redis that restarts (its own `redis-server` on a free loopback port, killed and started
/// again) closes the connection the store kept: the next request reconnects rather than being
/// refused, and what was revoked before is still there (`appendonly yes`).
#[test]
fn a_restarted_redis_is_reconnected_to_on_the_next_request() {
    let Some(mut redis) = warden_testkit::OwnRedis::start("the revocations' restart test") else {
        return;
    };
    let store = RedisRevocations::new(&redis.url(), "t:").unwrap();
    store.revoke(&agent("coder-1")).unwrap();
    assert_eq!(store.since(0).unwrap().0, [agent("coder-1")]);
    redis.restart();
    assert_eq!(store.since(0).unwrap().0, [agent("coder-1")]);
    store.revoke(&agent("coder-2")).unwrap();
    assert_eq!(store.since(1).unwrap().0, [agent("coder-2")]);
}

#[test]
fn data_directory() {
    let dir = tempfile::tempdir().unwrap();
    suite(
        "file",
        &FileRevocations::new(dir.path()),
        &FileRevocations::new(dir.path()),
    );
}

/// The file is shared with `warden agents revoke` and edited by hand: a line still being
/// written is read once whole; a file replaced by a shorter one is read again from the start;
/// a line that is not a revocation is an error (requests are refused), never skipped.
#[test]
fn the_file_is_read_only_in_whole_lines_and_again_after_a_replacement() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileRevocations::new(dir.path());
    let path = dir.path().join("revoked");
    std::fs::write(&path, "agent a\nagent b").unwrap();
    let (new, cursor) = store.since(0).unwrap();
    assert_eq!(new, [agent("a")]);
    std::fs::write(&path, "agent a\nagent b\n").unwrap();
    let (new, cursor) = store.since(cursor).unwrap();
    assert_eq!(new, [agent("b")]);
    std::fs::write(&path, "credential z\n").unwrap();
    let (new, _) = store.since(cursor).unwrap();
    assert_eq!(new, [credential("z")], "replaced: read from the start");
    std::fs::write(&path, "credential z\nrevoke everyone\n").unwrap();
    let e = store.since(0).unwrap_err();
    assert!(e.to_string().contains("bad line"), "{e}");
}
