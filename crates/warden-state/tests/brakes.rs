//! One test suite, run against every brake bus: what is announced reaches every listener (two
//! here: two instances), each scope as it was sent, quickly; a listener stops when asked; a bus
//! that cannot be reached is an error, never a silent success.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on purpose"
)]

mod common;

use common::bus::{publish_raw, subscribed, Listen, Listener};
use std::sync::Arc;
use std::time::{Duration, Instant};
use warden_core::brakes::BrakeBus;
use warden_core::state::HoldScope;
use warden_state::{MemoryBrakes, RedisBrakes};

fn listen_to(bus: &Arc<dyn BrakeBus>) -> Listen<HoldScope> {
    let bus = Arc::clone(bus);
    Box::new(move |on, stop| bus.listen(on, stop).map_err(|e| e.to_string()))
}

fn suite(name: &str, a: Arc<dyn BrakeBus>, b: Arc<dyn BrakeBus>, ready: &dyn Fn()) {
    let (la, lb) = (
        Listener::start(listen_to(&a)),
        Listener::start(listen_to(&b)),
    );
    ready();
    let scopes = [
        HoldScope::Agent("coder-1".into()),
        HoldScope::Tenant("acme".into()),
        HoldScope::Session("coder-1/s-\"quoted\"".into()),
        HoldScope::Global,
    ];
    let mut sent = Vec::new();
    for (i, s) in scopes.iter().enumerate() {
        // Announced through either instance, heard by both.
        let through = if i % 2 == 0 { &a } else { &b };
        sent.push(Instant::now());
        through.announce(s).unwrap();
    }
    for l in [&la, &lb] {
        let heard = l.heard(scopes.len());
        let got: Vec<HoldScope> = heard.iter().map(|(s, _)| s.clone()).collect();
        assert_eq!(got, scopes, "{name}: what a listener heard");
        for ((_, at), sent) in heard.iter().zip(&sent) {
            let delay = at.duration_since(*sent);
            // Generous: a loaded CI machine; the benchmark measures the real delay.
            assert!(
                delay < Duration::from_secs(2),
                "{name}: heard after {delay:?}"
            );
        }
    }
    la.stop();
    lb.stop();
}

#[test]
fn memory_brakes_pass_the_suite() {
    // One process: both "instances" share the bus, as one instance's operator and Executor do.
    let bus: Arc<dyn BrakeBus> = Arc::new(MemoryBrakes::new());
    // In process, a listener hears what is announced after it starts listening; give both a
    // moment to be in.
    suite("memory", Arc::clone(&bus), bus, &|| {
        std::thread::sleep(Duration::from_millis(300));
    });
}

fn redis() -> Option<(String, String)> {
    common::redis_place("brake bus")
}

#[test]
fn redis_brakes_pass_the_suite() {
    let Some((url, prefix)) = redis() else { return };
    // Two instances: two buses on the same Redis and prefix.
    let a: Arc<dyn BrakeBus> = Arc::new(RedisBrakes::new(&url, &prefix).unwrap());
    let b: Arc<dyn BrakeBus> = Arc::new(RedisBrakes::new(&url, &prefix).unwrap());
    let channel = format!("{prefix}brakes");
    suite("redis", a, b, &|| subscribed(&url, &channel, 2));
}

#[test]
fn a_fleet_hears_only_its_own_brakes_and_ignores_what_is_not_a_scope() {
    let Some((url, prefix)) = redis() else { return };
    let ours: Arc<dyn BrakeBus> = Arc::new(RedisBrakes::new(&url, &prefix).unwrap());
    let other = RedisBrakes::new(&url, &format!("{prefix}other:")).unwrap();
    let l = Listener::start(listen_to(&ours));
    subscribed(&url, &format!("{prefix}brakes"), 1);
    other.announce(&HoldScope::Global).unwrap();
    // Garbage on the fleet's own channel (anyone with access to the Redis can publish).
    publish_raw(
        &url,
        &format!("{prefix}brakes"),
        "{\"scope\":\"everything\"}",
    );
    ours.announce(&HoldScope::Agent("a1".into())).unwrap();
    let heard: Vec<HoldScope> = l.heard(1).into_iter().map(|(s, _)| s).collect();
    std::thread::sleep(Duration::from_millis(200));
    let heard_later: Vec<HoldScope> = l.heard(1).into_iter().map(|(s, _)| s).collect();
    assert_eq!(heard, [HoldScope::Agent("a1".into())]);
    assert_eq!(heard_later, heard);
    l.stop();
}

#[test]
fn an_unreachable_redis_is_an_error_not_a_silent_success() {
    let bus = RedisBrakes::new("redis://127.0.0.1:1/", "warden-test:").unwrap();
    assert!(bus.announce(&HoldScope::Global).is_err());
    assert!(bus.listen(&mut |_| {}, &|| false).is_err());
}
