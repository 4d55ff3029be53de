//! Grants end to end: forged, expired, replayed, cross-session and stale grants are refused;
//! a grant in flight across a manifest change is not honored without a new decision.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on purpose"
)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use proptest::prelude::*;
use std::sync::{Arc, RwLock};
use warden_identity::{Call, GrantError, GrantKeys, MemoryReplayGuard};
use zeroize::Zeroizing;

const NOW: i64 = 1_795_341_600_000;

fn call<'a>(session: &'a str, args: &'a str) -> Call<'a> {
    Call {
        session,
        agent: "coder-1",
        tool: "fs.read_file",
        arguments_hash: args,
    }
}

fn keys(byte: u8) -> GrantKeys {
    GrantKeys::new(1, vec![(1, Zeroizing::new([byte; 32]))]).unwrap()
}

#[test]
fn a_grant_runs_exactly_its_call_once() {
    let k = keys(1);
    let guard = MemoryReplayGuard::new();
    let c = call("s1", "sha256:aa");
    let t = k.mint(&c, 3, NOW, 30_000).unwrap();
    let claims = k.redeem(&t, &c, 3, NOW + 10, &guard).unwrap();
    assert_eq!(claims.session, "s1");
    assert_eq!(claims.id_hex().len(), 32);
    // Replayed.
    assert_eq!(
        k.redeem(&t, &c, 3, NOW + 20, &guard),
        Err(GrantError::Replayed)
    );
}

#[test]
fn wrong_call_expired_forged_and_stale_grants_are_refused() {
    let k = keys(1);
    let guard = MemoryReplayGuard::new();
    let c = call("s1", "sha256:aa");
    let t = k.mint(&c, 3, NOW, 30_000).unwrap();
    // Another session, other arguments, another agent or tool.
    assert_eq!(
        k.redeem(&t, &call("s2", "sha256:aa"), 3, NOW, &guard),
        Err(GrantError::WrongCall { field: "session" })
    );
    assert_eq!(
        k.redeem(&t, &call("s1", "sha256:bb"), 3, NOW, &guard),
        Err(GrantError::WrongCall { field: "arguments" })
    );
    let other_tool = Call {
        tool: "db.drop_table",
        ..c.clone()
    };
    assert_eq!(
        k.redeem(&t, &other_tool, 3, NOW, &guard),
        Err(GrantError::WrongCall { field: "tool" })
    );
    // Expired.
    assert!(matches!(
        k.redeem(&t, &c, 3, NOW + 30_000, &guard),
        Err(GrantError::Expired { .. })
    ));
    // Made under another key (forged).
    assert_eq!(
        keys(2).redeem(&t, &c, 3, NOW, &guard),
        Err(GrantError::BadMac)
    );
    // The manifest moved on: decide again.
    assert_eq!(
        k.redeem(&t, &c, 4, NOW, &guard),
        Err(GrantError::ManifestChanged {
            granted: 3,
            current: 4
        })
    );
    // None of the refusals consumed it: the right call still redeems once.
    assert!(k.redeem(&t, &c, 3, NOW, &guard).is_ok());
    // Garbage.
    for junk in ["", "x", "!!!", &"A".repeat(5000)] {
        assert!(
            matches!(k.open(junk), Err(GrantError::Malformed(_))),
            "{junk}"
        );
    }
}

#[test]
fn rotated_keys_still_verify_old_grants() {
    let old = Zeroizing::new([1u8; 32]);
    let new = Zeroizing::new([2u8; 32]);
    let before = GrantKeys::new(1, vec![(1, old.clone())]).unwrap();
    let after = GrantKeys::new(2, vec![(1, old), (2, new)]).unwrap();
    let c = call("s", "sha256:aa");
    let t_old = before.mint(&c, 1, NOW, 30_000).unwrap();
    let t_new = after.mint(&c, 1, NOW, 30_000).unwrap();
    assert_eq!(after.open(&t_old).unwrap().key_id, 1);
    assert_eq!(after.open(&t_new).unwrap().key_id, 2);
    assert_eq!(before.open(&t_new), Err(GrantError::UnknownKey(2)));
    // Key bytes are never printed.
    assert!(!format!("{after:?}").contains("2, 2, 2"));
}

proptest! {
    /// Changing any byte of a token makes it refused: nothing in it is believed before the MAC.
    #[test]
    fn any_altered_byte_is_refused(pos in any::<usize>(), flip in 1u8..=255) {
        let k = keys(1);
        let c = call("session-1", "sha256:0123");
        let t = k.mint(&c, 9, NOW, 30_000).unwrap();
        let mut raw = B64.decode(&t).unwrap();
        let i = pos % raw.len();
        raw[i] ^= flip;
        let altered = B64.encode(&raw);
        prop_assert!(k.open(&altered).is_err());
    }
}

/// A tool's tier is raised while a grant for it is in flight. The Executor reads the manifest
/// version current at redemption (swapped atomically on another thread); the old grant is not
/// honored, and the call must be decided again under the new version.
#[test]
fn manifest_change_races_a_grant_in_flight() {
    for round in 0..200u32 {
        let manifest = Arc::new(RwLock::new(1u64));
        let k = Arc::new(keys(3));
        let guard = Arc::new(MemoryReplayGuard::new());
        let args = format!("sha256:{round:08x}");
        // Governor: decided under v1 (low tier, allowed) and minted.
        let token = k.mint(&call("s", &args), 1, NOW, 30_000).unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let (m2, b2) = (Arc::clone(&manifest), Arc::clone(&barrier));
        let swapper = std::thread::spawn(move || {
            b2.wait();
            // The new manifest (tool raised to critical) is swapped in whole.
            *m2.write().unwrap() = 2;
        });
        let (m3, k3, g3, b3) = (
            Arc::clone(&manifest),
            Arc::clone(&k),
            Arc::clone(&guard),
            Arc::clone(&barrier),
        );
        let executor = std::thread::spawn(move || {
            b3.wait();
            let current = *m3.read().unwrap();
            (
                current,
                k3.redeem(&token, &call("s", &args), current, NOW + 1, &*g3),
            )
        });
        swapper.join().unwrap();
        let (seen, outcome) = executor.join().unwrap();
        match seen {
            // The executor read the version before the swap: the grant was still current then.
            1 => assert!(outcome.is_ok(), "round {round}: {outcome:?}"),
            // After the swap: never honored without re-decision.
            _ => assert_eq!(
                outcome,
                Err(GrantError::ManifestChanged {
                    granted: 1,
                    current: 2
                }),
                "round {round}"
            ),
        }
    }
}

#[test]
fn replay_guard_forgets_only_expired_ids() {
    use warden_identity::ReplayGuard as _;
    let g = MemoryReplayGuard::new();
    g.consume(&[1; 16], NOW + 100, NOW).unwrap();
    assert!(g.consume(&[1; 16], NOW + 100, NOW + 50).is_err());
    // Well after expiry the id is swept (and a token carrying it is refused as expired anyway).
    let mut other = [1u8; 16];
    other[1] = 2; // same shard
    g.consume(&other, NOW + 5_000, NOW + 2_000).unwrap();
    assert_eq!(g.len(), 1);
}

#[test]
fn fuzz_entry_never_panics() {
    let k = GrantKeys::new(1, vec![(1, Zeroizing::new([7u8; 32]))]).unwrap();
    let t = k.mint(&call("s", "sha256:aa"), 1, NOW, 1).unwrap();
    for cut in 0..=t.len() {
        warden_identity::fuzz::grant(&t.as_bytes()[..cut]);
    }
    warden_identity::fuzz::grant(&[0xff, 0xfe]);
    warden_identity::fuzz::grant("A".repeat(100_000).as_bytes());
}
