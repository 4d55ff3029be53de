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
use warden_state::MemoryFlows;

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
fn idle_flows_are_forgotten() {
    let store = MemoryFlows::new(Duration::from_millis(50));
    store
        .update("a/s", &mut |f| {
            f.outputs = 3;
            Ok(())
        })
        .unwrap();
    assert_eq!(store.load("a/s").unwrap().outputs, 3);
    std::thread::sleep(Duration::from_millis(120));
    assert_eq!(store.load("a/s").unwrap().outputs, 0);
}
