//! One test suite, run against every event queue.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on purpose"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};
use warden_core::events::{Event, EventError, EventQueue};
use warden_state::{MemoryEvents, RedisEvents};

fn event(n: i64) -> Event {
    Event {
        kind: "brake.kill".into(),
        text: format!("event {n}"),
        details: serde_json::json!({ "n": n }),
        time: n,
    }
}

/// `queue` must hold at least 8 and at most 64 undelivered events.
fn suite(name: &str, queue: &dyn EventQueue, capacity: usize) {
    // Nothing published: `take` waits about as long as asked, then answers empty.
    let started = Instant::now();
    assert!(
        queue
            .take(10, Duration::from_millis(50))
            .unwrap()
            .is_empty(),
        "{name}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(45) && waited < Duration::from_secs(5),
        "{name}: waited {waited:?}"
    );

    // Oldest first, at most `max` at a time, each once.
    for n in 0..5 {
        queue.publish(event(n)).unwrap();
    }
    let first = queue.take(3, Duration::from_secs(1)).unwrap();
    assert_eq!(first, vec![event(0), event(1), event(2)], "{name}");
    let rest = queue.take(10, Duration::from_secs(1)).unwrap();
    assert_eq!(rest, vec![event(3), event(4)], "{name}");
    assert!(queue.take(10, Duration::ZERO).unwrap().is_empty(), "{name}");

    // At its bound, the queue refuses and keeps what it holds.
    for n in 0..capacity {
        queue.publish(event(n as i64)).unwrap();
    }
    assert!(
        matches!(queue.publish(event(-1)), Err(EventError::Full(_))),
        "{name}"
    );
    let held = queue.take(capacity + 1, Duration::ZERO).unwrap();
    assert_eq!(held.len(), capacity, "{name}");
    assert_eq!(held.last(), Some(&event(capacity as i64 - 1)), "{name}");
    queue.publish(event(7)).unwrap();
    assert_eq!(
        queue.take(1, Duration::ZERO).unwrap(),
        vec![event(7)],
        "{name}: room again once taken"
    );
}

/// Several dispatchers taking at once: every event is delivered exactly once.
fn competing_takers(queue: Arc<dyn EventQueue>) {
    // Takers stop once everything is published and the queue is empty (not after a quiet
    // spell: a publisher descheduled for a while must not leave nobody taking).
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let takers: Vec<_> = (0..4)
        .map(|_| {
            let queue = Arc::clone(&queue);
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut got = Vec::new();
                loop {
                    let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                    let batch = queue.take(7, Duration::from_millis(50)).unwrap();
                    if batch.is_empty() && finished {
                        return got;
                    }
                    got.extend(batch.into_iter().map(|e| e.time));
                }
            })
        })
        .collect();
    for n in 0..400 {
        // A full queue is the publisher's to handle: wait for room, as a test may.
        while let Err(EventError::Full(_)) = queue.publish(event(n)) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut all: Vec<i64> = takers.into_iter().flat_map(|t| t.join().unwrap()).collect();
    all.sort_unstable();
    assert_eq!(all, (0..400).collect::<Vec<_>>());
}

#[test]
fn memory_events_pass_the_suite() {
    suite("memory", &MemoryEvents::new(16), 16);
}

#[test]
fn memory_events_are_taken_once_by_competing_takers() {
    competing_takers(Arc::new(MemoryEvents::new(64)));
}

/// A queue on the Redis of `WARDEN_TEST_REDIS_URL`, under a key of this call's own; `None`
/// after a notice when unset.
fn redis(capacity: usize) -> Option<RedisEvents> {
    let Ok(url) = std::env::var("WARDEN_TEST_REDIS_URL") else {
        eprintln!("notice: WARDEN_TEST_REDIS_URL is not set; skipping the Redis event queue");
        return None;
    };
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let prefix = format!(
        "warden-test:events:{}-{}-{}:",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    Some(RedisEvents::new(&url, &prefix, capacity).unwrap())
}

#[test]
fn redis_events_pass_the_suite() {
    let Some(q) = redis(16) else { return };
    suite("redis", &q, 16);
}

#[test]
fn redis_events_are_taken_once_by_competing_takers() {
    let Some(q) = redis(64) else { return };
    competing_takers(Arc::new(q));
}

#[test]
fn a_redis_that_does_not_answer_is_unavailable() {
    let q = RedisEvents::new("redis://127.0.0.1:1/", "x:", 8).unwrap();
    assert!(matches!(
        q.publish(event(1)),
        Err(EventError::Unavailable(_))
    ));
    assert!(matches!(
        q.take(1, Duration::ZERO),
        Err(EventError::Unavailable(_))
    ));
}

#[test]
fn a_waiting_taker_wakes_when_an_event_arrives() {
    waking(Arc::new(MemoryEvents::new(8)));
    if let Some(q) = redis(8) {
        waking(Arc::new(q));
    }
}

fn waking(queue: Arc<dyn EventQueue>) {
    let taker = {
        let queue = Arc::clone(&queue);
        std::thread::spawn(move || {
            let started = Instant::now();
            (
                queue.take(1, Duration::from_secs(30)).unwrap(),
                started.elapsed(),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    queue.publish(event(1)).unwrap();
    let (got, waited) = taker.join().unwrap();
    assert_eq!(got, vec![event(1)]);
    assert!(waited < Duration::from_secs(10), "woke after {waited:?}");
}
