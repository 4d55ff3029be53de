//! The `FleetManifest` port's conformance suite (issue 22): every backend keeps the newest
//! manifest a fleet serves, and says when an offer is behind it or conflicts with it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on purpose"
)]

mod common;

use warden_core::fleet_manifest::{FleetManifest, Published, Served};
use warden_state::{MemoryFleetManifest, RedisFleetManifest};

fn served(version: u64, bundle: &str) -> Served {
    Served {
        version,
        bundle: format!("sha256:{bundle}"),
    }
}

fn suite(r: &dyn FleetManifest) {
    // The first ledger origin offered is the fleet's; another is answered with it.
    assert_eq!(r.agree_ledger("warden/ledger-aa").unwrap(), None);
    assert_eq!(r.agree_ledger("warden/ledger-aa").unwrap(), None);
    assert_eq!(
        r.agree_ledger("warden/ledger-bb").unwrap(),
        Some("warden/ledger-aa".to_owned())
    );
    assert_eq!(r.current().unwrap(), None);
    assert_eq!(r.publish(&served(3, "aa")).unwrap(), Published::Stored);
    assert_eq!(r.publish(&served(3, "aa")).unwrap(), Published::Same);
    // Two manifests under one version number: a conflict; the first stays.
    assert_eq!(
        r.publish(&served(3, "bb")).unwrap(),
        Published::Conflict(served(3, "aa"))
    );
    // Older: behind; the newer stays.
    assert_eq!(
        r.publish(&served(2, "cc")).unwrap(),
        Published::Behind(served(3, "aa"))
    );
    assert_eq!(r.current().unwrap(), Some(served(3, "aa")));
    // Newer: in force.
    assert_eq!(r.publish(&served(4, "dd")).unwrap(), Published::Stored);
    assert_eq!(r.current().unwrap(), Some(served(4, "dd")));
    assert_eq!(
        r.publish(&served(3, "aa")).unwrap(),
        Published::Behind(served(4, "dd"))
    );
    // Versions compare exactly to the last of 64 bits (past what a double holds).
    let big = (1u64 << 53) + 1;
    assert_eq!(
        r.publish(&served(big - 1, "e0")).unwrap(),
        Published::Stored
    );
    assert_eq!(r.publish(&served(big, "e1")).unwrap(), Published::Stored);
    assert_eq!(r.current().unwrap(), Some(served(big, "e1")));
    assert_eq!(
        r.publish(&served(u64::MAX, "ff")).unwrap(),
        Published::Stored
    );
    assert_eq!(
        r.publish(&served(u64::MAX - 1, "fe")).unwrap(),
        Published::Behind(served(u64::MAX, "ff"))
    );
}

#[test]
fn fleet_manifest_suite_in_process() {
    suite(&MemoryFleetManifest::new());
}

#[test]
fn fleet_manifest_suite_on_redis() {
    let Some((url, prefix)) = common::redis_place("manifest") else {
        return;
    };
    suite(&RedisFleetManifest::new(&url, &prefix).unwrap());
    // Two instances on one prefix are one register.
    let (a, b) = (
        RedisFleetManifest::new(&url, &format!("{prefix}2:")).unwrap(),
        RedisFleetManifest::new(&url, &format!("{prefix}2:")).unwrap(),
    );
    a.publish(&served(7, "ee")).unwrap();
    assert_eq!(b.current().unwrap(), Some(served(7, "ee")));
    assert_eq!(
        b.publish(&served(6, "ff")).unwrap(),
        Published::Behind(served(7, "ee"))
    );
}

#[test]
fn what_warden_did_not_write_is_an_error_and_is_not_overwritten() {
    let Some((url, prefix)) = common::redis_place("manifest") else {
        return;
    };
    let r = RedisFleetManifest::new(&url, &prefix).unwrap();
    let mut c = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let key = format!("{prefix}manifest");
    for garbage in [
        "not a manifest",
        "12",
        "x sha256:aa",
        "3 ",
        "3 md5:aa",
        "3 sha256:zz",
    ] {
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(garbage)
            .query(&mut c)
            .unwrap();
        assert!(r.current().is_err(), "{garbage}");
        assert!(r.publish(&served(9, "aa")).is_err(), "{garbage}");
        let kept: String = redis::cmd("GET").arg(&key).query(&mut c).unwrap();
        assert_eq!(kept, garbage);
    }
    let _: () = redis::cmd("DEL").arg(&key).query(&mut c).unwrap();
    let _: () = redis::cmd("LPUSH")
        .arg(&key)
        .arg("x")
        .query(&mut c)
        .unwrap();
    assert!(r.current().is_err());
    assert!(r.publish(&served(9, "aa")).is_err());
    let down = RedisFleetManifest::new("redis://127.0.0.1:1/", &prefix).unwrap();
    assert!(down.current().is_err());
}
