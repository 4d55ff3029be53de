//! One test suite, run against every state backend.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on purpose"
)]

use std::sync::Arc;
use warden_core::state::{
    Charge, ChargeOutcome, Hold, HoldKind, HoldScope, Observe, Settle, Settled, StateStore,
};
use warden_state::{FileState, MemoryState, OpenError, RedisState};

fn charge(key: &str, amount: u64, limit: u64, expires_at: i64) -> Charge {
    Charge {
        key: key.into(),
        amount,
        limit,
        expires_at,
    }
}

fn suite(name: &str, store: &dyn StateStore) {
    // A charge that fits is applied to every counter.
    let c = [charge("a", 1, 2, 100), charge("b", 5, 10, 100)];
    assert_eq!(
        store.check_and_charge(&c, 0).unwrap(),
        ChargeOutcome::Charged,
        "{name}"
    );
    assert_eq!(
        store.check_and_charge(&c, 1).unwrap(),
        ChargeOutcome::Charged,
        "{name}"
    );
    // The third passes `a`'s limit: nothing is charged, `b` included.
    assert_eq!(
        store.check_and_charge(&c, 2).unwrap(),
        ChargeOutcome::Exceeded {
            index: 0,
            current: 2
        },
        "{name}"
    );
    // `b` holds 10 after two charges of 5: one more does not fit.
    assert_eq!(
        store
            .check_and_charge(&[charge("b", 1, 10, 100)], 3)
            .unwrap(),
        ChargeOutcome::Exceeded {
            index: 0,
            current: 10
        },
        "{name}"
    );
    // After the window ends, counters start from zero.
    assert_eq!(
        store
            .check_and_charge(&[charge("a", 2, 2, 200)], 100)
            .unwrap(),
        ChargeOutcome::Charged,
        "{name}"
    );
    // The same key twice in one call counts both.
    assert_eq!(
        store
            .check_and_charge(&[charge("d", 2, 3, 100), charge("d", 2, 3, 100)], 0)
            .unwrap(),
        ChargeOutcome::Exceeded {
            index: 1,
            current: 2
        },
        "{name}"
    );

    // Loop observation counts consecutive identical calls per session.
    let f1 = [1u8; 32];
    let f2 = [2u8; 32];
    assert_eq!(store.observe_call("s1", f1, 0, 60).unwrap(), 1, "{name}");
    assert_eq!(store.observe_call("s1", f1, 1, 60).unwrap(), 2, "{name}");
    assert_eq!(store.observe_call("s2", f1, 1, 60).unwrap(), 1, "{name}");
    assert_eq!(store.observe_call("s1", f1, 2, 60).unwrap(), 3, "{name}");
    assert_eq!(store.observe_call("s1", f2, 3, 60).unwrap(), 1, "{name}");
    assert_eq!(
        store.observe_call("s1", f2, 100, 60).unwrap(),
        1,
        "{name}: expired history"
    );

    // Holds.
    let hold = Hold {
        scope: HoldScope::Tenant("acme".into()),
        kind: HoldKind::Kill,
        reason: "incident 7".into(),
        since: 5,
    };
    store.set_hold(hold.clone()).unwrap();
    let found = store
        .holds(&[HoldScope::Global, HoldScope::Tenant("acme".into())])
        .unwrap();
    assert_eq!(found, vec![hold.clone()], "{name}");
    assert!(
        store
            .holds(&[HoldScope::Tenant("other".into())])
            .unwrap()
            .is_empty(),
        "{name}"
    );
    assert!(
        store.clear_hold(&hold.scope, HoldKind::Kill).unwrap(),
        "{name}"
    );
    assert!(
        !store.clear_hold(&hold.scope, HoldKind::Kill).unwrap(),
        "{name}"
    );
    assert!(store.all_holds().unwrap().is_empty(), "{name}");

    settle_suite(name, store);
}

/// `settle`: one decision's reads and writes, in their order, in one call.
fn settle_suite(name: &str, store: &dyn StateStore) {
    let scopes = [HoldScope::Global, HoldScope::Agent("ag".into())];
    let charges = [charge("settle/a", 1, 2, 100), charge("settle/b", 1, 9, 100)];
    let observe = |fingerprint: u8| Observe {
        session: "ag/s",
        fingerprint: [fingerprint; 32],
        ttl: 60,
        loop_at: 3,
    };
    let settle = |observe: Option<Observe<'static>>, charge: Option<&[Charge]>, now: i64| {
        store
            .settle(&Settle {
                scopes: &scopes,
                observe,
                charge,
                now,
            })
            .unwrap()
    };
    let settled = |repeats: Option<u32>, charged: Option<ChargeOutcome>, used: &[u64]| Settled {
        holds: Vec::new(),
        repeats,
        charged,
        used: used.to_vec(),
    };

    // No hold: the call is observed, then charged.
    assert_eq!(
        settle(Some(observe(1)), Some(&charges), 0),
        settled(Some(1), Some(ChargeOutcome::Charged), &[1, 1]),
        "{name}"
    );
    // Neither asked: only the holds are read, and nothing is written.
    assert_eq!(settle(None, None, 0), settled(None, None, &[]), "{name}");
    // An empty charge charges nothing, and fits.
    assert_eq!(
        settle(Some(observe(2)), Some(&[]), 1),
        settled(Some(1), Some(ChargeOutcome::Charged), &[]),
        "{name}"
    );
    // A charge that does not fit: the observation stays, no counter moves.
    assert_eq!(
        settle(Some(observe(2)), Some(&charges), 2),
        settled(Some(2), Some(ChargeOutcome::Charged), &[2, 2]),
        "{name}"
    );
    assert_eq!(
        settle(Some(observe(5)), Some(&charges), 3),
        settled(
            Some(1),
            Some(ChargeOutcome::Exceeded {
                index: 0,
                current: 2
            }),
            &[]
        ),
        "{name}"
    );
    assert_eq!(
        store
            .check_and_charge(&[charge("settle/b", 7, 9, 100)], 3)
            .unwrap(),
        ChargeOutcome::Charged,
        "{name}: the refused charge left `settle/b` at 2"
    );
    // The repeat that reaches `loop_at` is observed but charges nothing.
    let fresh = [charge("settle/c", 1, 10, 100)];
    assert_eq!(
        settle(Some(observe(5)), Some(&fresh), 4),
        settled(Some(2), Some(ChargeOutcome::Charged), &[1]),
        "{name}"
    );
    assert_eq!(
        settle(Some(observe(5)), Some(&fresh), 5),
        settled(Some(3), None, &[]),
        "{name}"
    );
    assert_eq!(
        store
            .check_and_charge(&[charge("settle/c", 9, 10, 100)], 5)
            .unwrap(),
        ChargeOutcome::Charged,
        "{name}: the looping call charged nothing"
    );
    // A hold over any scope stops the round trip after the read: nothing observed or charged.
    let hold = Hold {
        scope: HoldScope::Agent("ag".into()),
        kind: HoldKind::Demote,
        reason: "violation".into(),
        since: 6,
    };
    store.set_hold(hold.clone()).unwrap();
    assert_eq!(
        settle(Some(observe(5)), Some(&[charge("settle/d", 1, 1, 100)]), 6),
        Settled {
            holds: vec![hold.clone()],
            repeats: None,
            charged: None,
            used: Vec::new(),
        },
        "{name}"
    );
    assert!(store.clear_hold(&hold.scope, hold.kind).unwrap(), "{name}");
    assert_eq!(
        settle(Some(observe(5)), Some(&[charge("settle/d", 1, 1, 100)]), 7),
        settled(Some(4), None, &[]),
        "{name}: the held call was not observed, so this is the fourth repeat"
    );
    assert_eq!(
        settle(Some(observe(6)), Some(&[charge("settle/d", 1, 1, 100)]), 8),
        settled(Some(1), Some(ChargeOutcome::Charged), &[1]),
        "{name}: the held call charged nothing"
    );
    // A hold out of scope does not stop it.
    store
        .set_hold(Hold {
            scope: HoldScope::Agent("other".into()),
            ..hold
        })
        .unwrap();
    assert_eq!(
        settle(Some(observe(7)), None, 9),
        settled(Some(1), None, &[]),
        "{name}"
    );
    // A counter named twice shows its value after each charge; a counter's earlier value counts.
    let twice = [
        charge("settle/e", 1, 10, 100),
        charge("settle/e", 2, 10, 100),
        charge("settle/a", 1, 5, 100),
    ];
    assert_eq!(
        settle(Some(observe(8)), Some(&twice), 10),
        settled(Some(1), Some(ChargeOutcome::Charged), &[1, 3, 3]),
        "{name}"
    );
}

#[test]
fn memory_store_passes_the_suite() {
    suite("memory", &MemoryState::new());
}

#[test]
fn file_store_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileState::open(dir.path(), 0).unwrap();
    suite("file", &store);
}

fn concurrent_limit(store: Arc<dyn StateStore>) {
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let mut ok = 0u32;
                for _ in 0..200 {
                    let c = [
                        charge("shared", 1, 500, 1000),
                        charge("other", 1, 10_000, 1000),
                    ];
                    // Half the threads charge through `settle`, half directly: one limit.
                    let outcome = if t % 2 == 0 {
                        store.check_and_charge(&c, 0).unwrap()
                    } else {
                        let s = Settle {
                            scopes: &[HoldScope::Global],
                            observe: None,
                            charge: Some(&c),
                            now: 0,
                        };
                        store.settle(&s).unwrap().charged.unwrap()
                    };
                    if outcome == ChargeOutcome::Charged {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let total: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(total, 500, "exactly the limit is granted, never more");
    assert_eq!(
        store
            .check_and_charge(&[charge("other", 9_500, 10_000, 1000)], 0)
            .unwrap(),
        ChargeOutcome::Charged,
        "refused charges consumed nothing on the second counter"
    );
    assert!(matches!(
        store
            .check_and_charge(&[charge("other", 1, 10_000, 1000)], 0)
            .unwrap(),
        ChargeOutcome::Exceeded { .. }
    ));
}

/// The Redis of `WARDEN_TEST_REDIS_URL` (`.ci/run` sets it) and a key prefix of this run's own
/// (the suite's fixed keys never meet another run's); `None` after a notice when unset.
fn redis_place() -> Option<(String, String)> {
    let Ok(url) = std::env::var("WARDEN_TEST_REDIS_URL") else {
        eprintln!("notice: WARDEN_TEST_REDIS_URL is not set; skipping the Redis state store");
        return None;
    };
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!(
        "warden-test:state:{}-{nanos}-{}:",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    Some((url, prefix))
}

fn redis() -> Option<RedisState> {
    let (url, prefix) = redis_place()?;
    Some(RedisState::connect(&url, &prefix).unwrap())
}

#[test]
fn redis_store_passes_the_suite() {
    let Some(store) = redis() else { return };
    suite("redis", &store);
}

#[test]
fn redis_store_never_passes_a_limit_under_contention() {
    let Some(store) = redis() else { return };
    concurrent_limit(Arc::new(store));
}

#[test]
fn two_redis_stores_on_one_prefix_are_one_state() {
    // Two instances of a fleet: a budget charged through one is spent for the other, and a
    // hold set through one stops the other.
    let Some((url, prefix)) = redis_place() else {
        return;
    };
    let a = RedisState::connect(&url, &prefix).unwrap();
    let b = RedisState::connect(&url, &prefix).unwrap();
    let c = [charge("fleet/budget", 6, 10, 100)];
    assert_eq!(a.check_and_charge(&c, 0).unwrap(), ChargeOutcome::Charged);
    assert_eq!(
        b.check_and_charge(&c, 1).unwrap(),
        ChargeOutcome::Exceeded {
            index: 0,
            current: 6
        }
    );
    let hold = Hold {
        scope: HoldScope::Global,
        kind: HoldKind::Kill,
        reason: "kill switch on instance a".into(),
        since: 2,
    };
    a.set_hold(hold.clone()).unwrap();
    assert_eq!(b.holds(&[HoldScope::Global]).unwrap(), vec![hold]);
    assert!(b.clear_hold(&HoldScope::Global, HoldKind::Kill).unwrap());
    assert!(a.all_holds().unwrap().is_empty());
}

#[test]
fn memory_store_never_passes_a_limit_under_contention() {
    concurrent_limit(Arc::new(MemoryState::new()));
}

#[test]
fn file_store_never_passes_a_limit_under_contention() {
    let dir = tempfile::tempdir().unwrap();
    concurrent_limit(Arc::new(FileState::open(dir.path(), 0).unwrap()));
}

#[test]
fn file_store_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = FileState::open(dir.path(), 0).unwrap();
        store
            .check_and_charge(&[charge("k", 3, 5, 1000)], 0)
            .unwrap();
        store.observe_call("s", [7; 32], 0, 600).unwrap();
        store
            .set_hold(Hold {
                scope: HoldScope::Global,
                kind: HoldKind::Kill,
                reason: "stop".into(),
                since: 1,
            })
            .unwrap();
    }
    let store = FileState::open(dir.path(), 10).unwrap();
    assert_eq!(
        store
            .check_and_charge(&[charge("k", 3, 5, 1000)], 10)
            .unwrap(),
        ChargeOutcome::Exceeded {
            index: 0,
            current: 3
        }
    );
    assert_eq!(store.observe_call("s", [7; 32], 10, 600).unwrap(), 2);
    assert_eq!(store.holds(&[HoldScope::Global]).unwrap().len(), 1);
    drop(store);
    // Expired counters are dropped at reopen.
    let store = FileState::open(dir.path(), 5000).unwrap();
    assert_eq!(
        store
            .check_and_charge(&[charge("k", 5, 5, 9000)], 5000)
            .unwrap(),
        ChargeOutcome::Charged
    );
}

#[test]
fn file_store_cuts_a_torn_tail_and_refuses_damage() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = FileState::open(dir.path(), 0).unwrap();
        store
            .check_and_charge(&[charge("k", 1, 5, 1000)], 0)
            .unwrap();
        store
            .check_and_charge(&[charge("k", 1, 5, 1000)], 0)
            .unwrap();
    }
    let journal = dir.path().join("state.journal");
    // A torn tail (half a line, no newline) is cut.
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes.extend_from_slice(b"0000abcd {\"op\":\"cha");
    std::fs::write(&journal, &bytes).unwrap();
    {
        let store = FileState::open(dir.path(), 1).unwrap();
        assert_eq!(
            store
                .check_and_charge(&[charge("k", 4, 5, 1000)], 1)
                .unwrap(),
            ChargeOutcome::Exceeded {
                index: 0,
                current: 2
            }
        );
    }
    // A damaged complete line is refused, naming the line.
    let mut text = std::fs::read_to_string(&journal).unwrap();
    text = text.replacen("\"k\"", "\"K\"", 1);
    std::fs::write(&journal, text).unwrap();
    match FileState::open(dir.path(), 2) {
        Err(OpenError::Corrupted { line, problem, .. }) => {
            assert_eq!(line, 1);
            assert!(problem.contains("checksum mismatch"), "{problem}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn file_store_is_exclusive() {
    let dir = tempfile::tempdir().unwrap();
    let _first = FileState::open(dir.path(), 0).unwrap();
    match FileState::open(dir.path(), 0) {
        Err(OpenError::Locked(_)) => {}
        other => panic!("expected a lock error, got {other:?}"),
    }
}

/// Mounts a tiny tmpfs (needs root); `None`, with a printed notice, where that is not allowed.
struct TinyFs {
    dir: tempfile::TempDir,
}

impl TinyFs {
    fn mount(bytes: u64) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        if status.success() {
            Some(Self { dir })
        } else {
            eprintln!("notice: cannot mount a tmpfs here (not root?); skipping the disk-full test");
            None
        }
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn file_store_fails_closed_on_a_full_disk_and_loses_nothing_acknowledged() {
    let Some(fs) = TinyFs::mount(64 * 1024) else {
        return;
    };
    let root = fs.dir.path();
    let state_dir = root.join("state");
    let store = FileState::open(&state_dir, 0).unwrap();
    // Fill the rest of the filesystem.
    let filler = vec![0u8; 4096];
    let mut f = std::fs::File::create(root.join("filler")).unwrap();
    use std::io::Write as _;
    while f.write_all(&filler).is_ok() {}
    drop(f);
    let mut acknowledged = 0u64;
    let mut refused = false;
    for i in 0..10_000u64 {
        let key = format!("counter-{i}");
        match store.check_and_charge(&[charge(&key, 1, 10, 1000)], 0) {
            Ok(ChargeOutcome::Charged) => acknowledged += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => {
                assert!(
                    e.to_string().contains("cannot append to state journal"),
                    "{e}"
                );
                refused = true;
                break;
            }
        }
    }
    assert!(refused, "a full disk must refuse the change");
    // Holds cannot be set either: the caller is told, not silently ignored.
    assert!(store
        .set_hold(Hold {
            scope: HoldScope::Global,
            kind: HoldKind::Kill,
            reason: "x".into(),
            since: 0
        })
        .is_err());
    drop(store);
    // Free space: the journal reopens (no torn fragment left behind) with every acknowledged
    // change present.
    std::fs::remove_file(root.join("filler")).unwrap();
    let store = FileState::open(&state_dir, 1).unwrap();
    for i in 0..acknowledged {
        let key = format!("counter-{i}");
        assert_eq!(
            store
                .check_and_charge(&[charge(&key, 10, 10, 1000)], 1)
                .unwrap(),
            ChargeOutcome::Exceeded {
                index: 0,
                current: 1
            },
            "counter {i} lost"
        );
    }
}
