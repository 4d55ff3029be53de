//! The `FailureCounts` port's conformance suite (issue 22): every backend counts an agent's
//! failures in a row, per agent, and starts again from zero on a reset.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on purpose"
)]

mod common;

use std::time::{Duration, Instant};
use warden_core::breakers::FailureCounts;
use warden_state::{MemoryFailures, RedisFailures};

fn suite(f: &dyn FailureCounts) {
    assert_eq!(f.failed("a").unwrap(), 1);
    assert_eq!(f.failed("a").unwrap(), 2);
    assert_eq!(f.failed("b").unwrap(), 1, "counted per agent");
    f.reset("a").unwrap();
    assert_eq!(f.failed("a").unwrap(), 1);
    // Resetting an agent with no failures is no error.
    f.reset("never").unwrap();
    f.reset("never").unwrap();
    assert_eq!(f.failed("b").unwrap(), 2);
}

#[test]
fn failure_counts_suite_in_process() {
    suite(&MemoryFailures::new());
}

#[test]
fn failure_counts_suite_on_redis() {
    let Some((url, prefix)) = common::redis_place("failures") else {
        return;
    };
    suite(&RedisFailures::new(&url, &prefix).unwrap());
    // Two instances count one agent's failures together; a success on either resets it once
    // the other's failures are known (read every second).
    let p = format!("{prefix}2:");
    let (a, b) = (
        RedisFailures::new(&url, &p).unwrap(),
        RedisFailures::new(&url, &p).unwrap(),
    );
    assert_eq!(a.failed("x").unwrap(), 1);
    assert_eq!(b.failed("x").unwrap(), 2);
    assert_eq!(a.failed("x").unwrap(), 3);
    b.reset("x").unwrap();
    assert_eq!(a.failed("x").unwrap(), 1);
    // A success on an instance that has not yet learned of another's failure: reset within a
    // second of it at most late, never lost for good.
    let c = RedisFailures::new(&url, &p).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        c.reset("x").unwrap();
        if a.failed("x").unwrap() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reset never reached the count"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // An unreachable Redis: an error, at once.
    let down = RedisFailures::new("redis://127.0.0.1:1/", &prefix).unwrap();
    assert!(down.failed("x").is_err());
}
