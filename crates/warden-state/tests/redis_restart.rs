//! A Redis that restarts under the Redis-backed ports: the connections they kept idle are closed
//! by it, and the first requests after it comes back must be served, not refused for a
//! connection the pool no longer has. Each test starts a `redis-server` of its own
//! (`warden_testkit::OwnRedis`, its data in an append-only file) so that it can kill and
//! restart it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on purpose"
)]

use std::time::Duration;
use warden_core::events::{Event, EventQueue};
use warden_core::state::{HoldScope, StateStore};
use warden_state::{RedisEvents, RedisState};
use warden_testkit::OwnRedis;

#[test]
fn the_state_store_serves_the_first_requests_after_its_redis_restarts() {
    let Some(mut redis) = OwnRedis::start("the restart tests") else {
        return;
    };
    let store = RedisState::connect(&redis.url(), "t:").unwrap();
    // Several requests at once leave several connections idle in the pool.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| store.holds(&[HoldScope::Global]).unwrap());
        }
    });
    redis.restart();
    for i in 0..6 {
        let held = store.holds(&[HoldScope::Global]);
        assert!(held.is_ok(), "request {i} after the restart: {held:?}");
    }
}

#[test]
fn the_event_queue_serves_the_first_requests_after_its_redis_restarts() {
    let Some(mut redis) = OwnRedis::start("the restart tests") else {
        return;
    };
    let queue = RedisEvents::new(&redis.url(), "t:", 16).unwrap();
    let event = |n: i64| Event {
        kind: "brake.kill".into(),
        text: format!("event {n}"),
        details: serde_json::json!({ "n": n }),
        time: n,
    };
    queue.publish(event(1)).unwrap();
    assert_eq!(queue.take(10, Duration::ZERO).unwrap().len(), 1);
    redis.restart();
    queue.publish(event(2)).unwrap();
    let taken = queue.take(10, Duration::ZERO).unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken.first().map(|e| e.time), Some(2));
}
