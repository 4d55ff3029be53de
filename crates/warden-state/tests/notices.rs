//! One test suite, run against every session notice bus: a notice published through one
//! instance reaches every listener (two here: two instances), as it was sent, in order; a
//! listener stops when asked; a bus that cannot be reached is an error, never a silent
//! success; on Redis, what is not a notice, or another fleet's, is ignored.

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
use std::time::Duration;
use warden_core::sessions::{NoticeBus, SessionNotice};
use warden_state::{MemoryNotices, RedisNotices};

fn listen_to(bus: &Arc<dyn NoticeBus>) -> Listen<SessionNotice> {
    let bus = Arc::clone(bus);
    Box::new(move |on, stop| bus.listen(on, stop).map_err(|e| e.to_string()))
}

fn updated(session: &str, uri: &str) -> SessionNotice {
    SessionNotice::Updated {
        session: session.into(),
        uri: uri.into(),
    }
}

fn suite(name: &str, a: Arc<dyn NoticeBus>, b: Arc<dyn NoticeBus>, ready: &dyn Fn()) {
    let (la, lb) = (
        Listener::start(listen_to(&a)),
        Listener::start(listen_to(&b)),
    );
    ready();
    let notices = [
        updated("s1", "file:///a"),
        SessionNotice::Unsubscribed {
            session: "s1".into(),
            uri: "file:///a".into(),
            at_ms: 1_800_000_000_000,
        },
        updated("s-\"quoted\"", "demo://x/{y}?z=1#w"),
    ];
    for (i, n) in notices.iter().enumerate() {
        // Published through either instance, heard by both.
        let through = if i % 2 == 0 { &a } else { &b };
        through.publish(n).unwrap();
    }
    for l in [&la, &lb] {
        let heard: Vec<SessionNotice> =
            l.heard(notices.len()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(heard, notices, "{name}: what a listener heard");
    }
    assert_eq!(notices[2].session(), "s-\"quoted\"");
    la.stop();
    lb.stop();
}

#[test]
fn memory_notices_pass_the_suite() {
    let bus: Arc<dyn NoticeBus> = Arc::new(MemoryNotices::new());
    // In process, a listener hears what is published after it starts listening.
    suite("memory", Arc::clone(&bus), bus, &|| {
        std::thread::sleep(Duration::from_millis(300));
    });
}

#[test]
fn redis_notices_pass_the_suite() {
    let Some((url, prefix)) = common::redis_place("notice bus") else {
        return;
    };
    let a: Arc<dyn NoticeBus> = Arc::new(RedisNotices::new(&url, &prefix).unwrap());
    let b: Arc<dyn NoticeBus> = Arc::new(RedisNotices::new(&url, &prefix).unwrap());
    let channel = format!("{prefix}mcp-notices");
    suite("redis", a, b, &|| subscribed(&url, &channel, 2));
}

#[test]
fn a_fleet_hears_only_its_own_notices_and_ignores_what_is_not_one() {
    let Some((url, prefix)) = common::redis_place("notice bus") else {
        return;
    };
    let ours: Arc<dyn NoticeBus> = Arc::new(RedisNotices::new(&url, &prefix).unwrap());
    let other = RedisNotices::new(&url, &format!("{prefix}other:")).unwrap();
    let l = Listener::start(listen_to(&ours));
    let channel = format!("{prefix}mcp-notices");
    subscribed(&url, &channel, 1);
    other.publish(&updated("s", "file:///other")).unwrap();
    publish_raw(&url, &channel, "{\"notice\":\"updated\",\"session\":\"s\"}");
    publish_raw(&url, &channel, "not json");
    ours.publish(&updated("s", "file:///ours")).unwrap();
    let heard: Vec<SessionNotice> = l.heard(1).into_iter().map(|(n, _)| n).collect();
    std::thread::sleep(Duration::from_millis(200));
    let later: Vec<SessionNotice> = l.heard(1).into_iter().map(|(n, _)| n).collect();
    assert_eq!(heard, [updated("s", "file:///ours")]);
    assert_eq!(later, heard);
    l.stop();
}

#[test]
fn an_unreachable_redis_is_an_error_not_a_silent_success() {
    let bus = RedisNotices::new("redis://127.0.0.1:1/", "warden-test:").unwrap();
    assert!(bus.publish(&updated("s", "file:///a")).is_err());
    assert!(bus.listen(&mut |_| {}, &|| false).is_err());
}
