//! The `FlowStore` port's conformance suite (issue 23), run against every backend (today the
//! in-process one).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on purpose"
)]

use std::sync::Arc;
use std::time::Duration;
use warden_core::flow::{FlowError, FlowStore, SessionFlow};
use warden_state::{MemoryFlows, RedisFlows};

fn suite(store: &dyn FlowStore) {
    // Unknown sessions have an empty flow.
    assert_eq!(*store.load("a/s1").unwrap(), SessionFlow::default());
    // A change is kept, and only for its session.
    store
        .update("a/s1", &mut |f| {
            f.outputs += 1;
            f.trusted.insert(7);
            Ok(())
        })
        .unwrap();
    let f = store.load("a/s1").unwrap();
    assert_eq!((f.outputs, f.trusted.contains(&7)), (1, true));
    assert_eq!(store.load("a/s2").unwrap().outputs, 0);
    assert_eq!(store.load("b/s1").unwrap().outputs, 0);
    // A flow a decision holds is not changed under it.
    store
        .update("a/s1", &mut |f| {
            f.outputs += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(f.outputs, 1);
    assert_eq!(store.load("a/s1").unwrap().outputs, 2);
    // A refused change changes nothing.
    let e = store.update("a/s1", &mut |_| Err(FlowError::TaskFixed("test")));
    assert!(matches!(e, Err(FlowError::TaskFixed("test"))));
    assert_eq!(store.load("a/s1").unwrap().outputs, 2);
}

fn concurrent(store: Arc<dyn FlowStore>) {
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let s = Arc::clone(&store);
            std::thread::spawn(move || {
                for _ in 0..100 {
                    s.update("a/busy", &mut |f| {
                        f.outputs += 1;
                        Ok(())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        store.load("a/busy").unwrap().outputs,
        800,
        "no output is lost"
    );
}

#[test]
fn flow_store_suite_in_process() {
    suite(&MemoryFlows::default());
    concurrent(Arc::new(MemoryFlows::default()));
}

#[test]
fn idle_flows_are_forgotten_towards_stricter() {
    let store = MemoryFlows::new(Duration::from_millis(50));
    store
        .update("a/s", &mut |f| {
            f.outputs = 3;
            Ok(())
        })
        .unwrap();
    assert_eq!(store.load("a/s").unwrap().outputs, 3);
    std::thread::sleep(Duration::from_millis(120));
    // Forgotten towards stricter: everything it read counts as untrusted, and its task stays
    // fixed; a session never seen starts empty.
    let f = store.load("a/s").unwrap();
    assert!(f.saturated && f.read_untrusted && f.outputs > 0, "{f:?}");
    assert_eq!(*store.load("a/never").unwrap(), SessionFlow::default());
    store
        .update("a/s", &mut |f| {
            assert!(f.saturated);
            Ok(())
        })
        .unwrap();
}

/// The Redis of `WARDEN_TEST_REDIS_URL` and a key prefix of this run's own.
fn redis_place() -> Option<(String, String)> {
    let Ok(url) = std::env::var("WARDEN_TEST_REDIS_URL") else {
        eprintln!("notice: WARDEN_TEST_REDIS_URL is not set; skipping the Redis flow store");
        return None;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    Some((
        url,
        format!("warden-test:flows:{}:{nanos}:", std::process::id()),
    ))
}

#[test]
fn flow_store_suite_on_redis() {
    let Some((url, prefix)) = redis_place() else {
        return;
    };
    let day = Duration::from_secs(86_400);
    suite(&RedisFlows::new(&url, &prefix, day).unwrap());
    // Two instances on one prefix are one store, and neither loses the other's outputs.
    let (a, b): (Arc<dyn FlowStore>, Arc<dyn FlowStore>) = (
        Arc::new(RedisFlows::new(&url, &format!("{prefix}2:"), day).unwrap()),
        Arc::new(RedisFlows::new(&url, &format!("{prefix}2:"), day).unwrap()),
    );
    let t = {
        let a = Arc::clone(&a);
        std::thread::spawn(move || concurrent(a))
    };
    for _ in 0..100 {
        b.update("a/other", &mut |f| {
            f.outputs += 1;
            Ok(())
        })
        .unwrap();
    }
    t.join().unwrap();
    assert_eq!(a.load("a/other").unwrap().outputs, 100);
    assert_eq!(b.load("a/busy").unwrap().outputs, 800);
}

#[test]
fn a_damaged_flow_in_redis_is_an_error_never_an_empty_flow() {
    let Some((url, prefix)) = redis_place() else {
        return;
    };
    let store = RedisFlows::new(&url, &prefix, Duration::from_secs(60)).unwrap();
    let mut c = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}flow:a/s"))
        .arg("not a flow")
        .query(&mut c)
        .unwrap();
    let e = store.load("a/s").unwrap_err().to_string();
    assert!(e.contains("damaged"), "{e}");
    let e = store
        .update("a/s", &mut |_| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("damaged"), "{e}");
    // A key of the wrong type: also an error.
    let _: () = redis::cmd("DEL")
        .arg(format!("{prefix}flow:a/s"))
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("LPUSH")
        .arg(format!("{prefix}flow:a/s"))
        .arg("x")
        .query(&mut c)
        .unwrap();
    assert!(store.load("a/s").is_err());
    // An unreachable Redis: an error, at once.
    let down = RedisFlows::new("redis://127.0.0.1:1/", &prefix, Duration::from_secs(60)).unwrap();
    assert!(down.load("a/s").is_err());
}
